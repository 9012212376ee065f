"""The table kind: a CSV or Parquet file, one row per sample, a label column and features.

Features are typed as Ludwig's input features are: `number` or `category` (`source.features`;
by default every other column, numbers as numbers and text as categories). Categories are kept
as indices into each column's sorted values, which the model one-hot encodes itself, so the
logged model takes raw rows with the category as text (pipeline/data/table_rows.py). A missing value
stops fetch, naming the column and the count, unless `source.missing` says to drop or fill.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.config import Missing, TableSource
from pipeline.core.errors import DataError
from pipeline.data import table_rows as rows
from pipeline.data.checks import Fetched
from pipeline.data.origin import locate

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def read_table(path: Path) -> pd.DataFrame:
    """The file as a frame; CSV cells as text, so that a column's type is decided by its
    values (and `category` codes stay as written: "7", not 7.0)."""
    kind = FORMATS.get(path.suffix.lower())
    if path.is_dir() or kind is None:
        raise DataError(
            f"{path}: not a table file; give a .csv or .parquet file as source.path or url"
        )
    try:
        if kind == "csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
        return pd.read_parquet(path)
    except (ValueError, OSError, UnicodeDecodeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{path}: cannot be read as {kind} ({reason}); check the file") from None


def feature_types(frame: pd.DataFrame, source: TableSource, where: Path) -> dict[str, str]:
    """Each feature column and its type: as `source.features` gives them, else inferred."""
    if source.features is not None:
        absent = [name for name in source.features if name not in frame]
        if absent:
            raise DataError(
                f"source.features: no column {absent[0]} in {where} (columns: "
                f"{', '.join(frame.columns)}); name its columns as the file's header does"
            )
        return {name: kind.value for name, kind in source.features.items()}
    return {name: infer_type(frame[name]) for name in frame.columns if name != source.label}


def infer_type(column: pd.Series) -> str:
    """`number` where every value is one, `category` where most are text; a column of mostly
    numbers with some text is a mistake in the data, named."""
    _, text_cells = rows.numbers(column)
    present = int((~rows.is_missing(column)).sum())
    if not text_cells.any() and present:
        return rows.NUMBER
    if text_cells.sum() * 2 < present:
        raise DataError(_text_in_numbers(column, text_cells, declared=False))
    return rows.CATEGORY


def _text_in_numbers(column: pd.Series, text_cells: pd.Series, declared: bool) -> str:
    row = int(np.flatnonzero(text_cells)[0])
    why = "is a number column" if declared else "holds numbers"
    return (
        f"column {column.name} {why} but {int(text_cells.sum())} values are text (row "
        f"{row + 1}: {column.iloc[row]!r}); fix them, leave them empty (a missing value), or "
        f"make it a category: source.features.{column.name}=category"
    )


def fetch_table(source: TableSource, downloads: Path, mirror: Path | None) -> Fetched:
    path = locate(source, downloads, mirror).top
    frame = read_table(path)
    if source.label not in frame:
        raise DataError(
            f"source.label: no column {source.label} in {path} (columns: "
            f"{', '.join(map(str, frame.columns))}); set source.label to the column of classes"
        )
    types = feature_types(frame, source, path)
    if not types:
        raise DataError(f"{path}: no feature columns beside the label {source.label}")
    frame = frame[[*types, source.label]].reset_index(drop=True)
    for name, kind in types.items():
        _, text_cells = rows.numbers(frame[name])
        if kind == rows.NUMBER and text_cells.any():
            raise DataError(_text_in_numbers(frame[name], text_cells, declared=True))

    missing = {name: int(rows.is_missing(frame[name]).sum()) for name in frame.columns}
    dropped = 0
    labelled = ~rows.is_missing(frame[source.label])
    if not labelled.all() and source.missing != Missing.drop:
        raise DataError(
            f"column {source.label} (the label) has {int((~labelled).sum())} missing values; "
            "fill them in, or set source.missing=drop to leave those rows out"
        )
    gaps = {name: count for name, count in missing.items() if count and name != source.label}
    if source.missing == Missing.drop:
        keep = ~np.logical_or.reduce([rows.is_missing(frame[name]) for name in frame.columns])
        dropped = int((~keep).sum())
        frame = frame[keep].reset_index(drop=True)
    elif gaps and source.missing == Missing.error:
        name, count = next(iter(gaps.items()))
        raise DataError(
            f"column {name} has {count} missing values (of {len(frame)} rows); fill them in, or "
            "set source.missing to drop (those rows) or fill (median or most frequent value)"
        )

    features = []
    for name, kind in types.items():
        feature: dict[str, Any] = {"name": name, "type": kind}
        if kind == rows.CATEGORY:
            present = frame[name][~rows.is_missing(frame[name])]
            feature["categories"] = sorted({rows.text(value) for value in present})
        if source.missing == Missing.fill and gaps.get(name):
            feature["fill"] = rows.fill_value(frame[name], kind)
        features.append(feature)
    try:
        x = rows.encode(frame, features)
    except ValueError as error:
        raise DataError(f"{path}: {error}") from None

    labels = [rows.text(value) for value in frame[source.label]]
    found = sorted(set(labels), key=_label_order)
    class_names = source.class_names or found
    unknown = sorted(set(labels) - set(class_names))
    if unknown:
        raise DataError(
            f"column {source.label} holds {unknown[0]!r}, which source.class_names does not "
            f"list ({class_names}); list every class, or null to take them from the data"
        )
    y = np.array([class_names.index(label) for label in labels])
    arrays = {
        "x": x,
        "y": y.astype(np.uint8 if len(class_names) < 256 else np.int32),
        "names": np.array([f"row {i + 1}" for i in range(len(frame))]),
        "class_names": np.array(class_names),
        "features": np.array(json.dumps(features)),
    }
    summary = {
        "columns": {
            feature["name"]: {
                "type": feature["type"],
                "missing": missing[feature["name"]],
                **(
                    {"categories": len(feature["categories"])}
                    if feature["type"] == rows.CATEGORY
                    else {}
                ),
                **({"filled_with": feature["fill"]} if "fill" in feature else {}),
            }
            for feature in features
        },
        "label": source.label,
        "dropped": {"count": dropped, "rows with missing values": dropped},
    }
    return Fetched(arrays, summary)


def _label_order(label: str) -> tuple[int, float, str]:
    """Numbers in numeric order (2 before 10), then text in alphabetical order."""
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, label)
