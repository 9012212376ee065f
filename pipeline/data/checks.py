"""The checks every data set passes before any training, and the data summary they write.

`fetch` counts the samples per class, finds exact copies (the same pixels or the same row) and
names the bad files it dropped; `split` keeps the copies of one sample in one part and stops on
a class too small for its parts. The summary goes next to the data (data/raw/<source>.json,
data/split/<task>.json), into the report and onto every MLflow run that uses the data.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import DataError, unreadable
from pipeline.core.files import write_json

EXAMPLES = 10  # of the copies and of the bad files, named in the summary


@dataclass
class Fetched:
    """A fetched source: its arrays (data/raw/<source>.npz) and what fetch saw of them."""

    arrays: dict[str, np.ndarray]
    summary: dict[str, Any] = field(default_factory=dict)


def content_keys(x: np.ndarray) -> np.ndarray:
    """One key per sample, equal for exact copies (the same values, shape and type)."""
    rows = np.ascontiguousarray(x).reshape(len(x), -1)
    return np.array(
        [hashlib.sha1(row.tobytes(), usedforsecurity=False).hexdigest() for row in rows]
    )


def copies(keys: np.ndarray) -> list[np.ndarray]:
    """The groups of indices whose samples are exact copies of one another (two or more each)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, key in enumerate(keys):
        groups[key].append(index)
    return [np.array(group) for group in groups.values() if len(group) > 1]


def duplicates_summary(
    keys: np.ndarray, y: np.ndarray, names: list[str], class_names: list[str]
) -> dict[str, Any]:
    """The exact copies in the data: how many, which (by name), and those labelled apart."""
    groups = copies(keys)
    conflicting = [group for group in groups if len(set(y[group].tolist())) > 1]
    return {
        "groups": len(groups),
        "copies": int(sum(len(group) - 1 for group in groups)),
        "conflicting_labels": len(conflicting),
        "examples": [
            [f"{names[i]} ({class_names[y[i]]})" for i in group] for group in groups[:EXAMPLES]
        ],
    }


def class_counts(y: np.ndarray, class_names: list[str]) -> dict[str, int]:
    counts = np.bincount(y.astype(np.int64), minlength=len(class_names))
    return {name: int(count) for name, count in zip(class_names, counts, strict=True)}


def require_classes(y: np.ndarray, class_names: list[str], where: str) -> None:
    """Stop on data that a classifier cannot learn from: one class, or a class with none."""
    counts = class_counts(y, class_names)
    present = [name for name, count in counts.items() if count]
    if len(present) < 2:
        raise DataError(
            f"{where}: a single class ({', '.join(present) or 'none'}) in {len(y)} samples; a "
            "classifier needs two or more: add the other classes' data"
        )
    empty = [name for name, count in counts.items() if not count]
    if empty:
        raise DataError(
            f"{where}: class {empty[0]} has no samples; add some, or leave it out of "
            "source.class_names"
        )


def per_class_need(fractions: list[float], folds: int | None = None) -> int:
    """The samples a class needs for each of the parts cut by `fractions` (validation, test)
    to hold at least one of it, and for `folds`-fold cross-validation to have it in every fold."""
    need = max([2, *(math.ceil(1 / fraction) for fraction in fractions)])
    return max(need, folds or 0)


def require_per_class(y: np.ndarray, class_names: list[str], need: int, why: str) -> None:
    """Stop, naming the class, if one has fewer than `need` samples (`why`: what needs them)."""
    counts = class_counts(y, class_names)
    small = sorted((count, name) for name, count in counts.items() if count < need)
    if small:
        count, name = small[0]
        others = f" (and {len(small) - 1} more classes)" if len(small) > 1 else ""
        raise DataError(
            f"class {name} has {count} samples{others}; {why} needs at least {need} per class: "
            f"add samples of {name}, or leave it out with dataset.classes"
        )


def summary_file(data_file: Path) -> Path:
    """The summary beside a data file: data/raw/<source>.json, data/split/<task>.json."""
    return data_file.with_suffix(".json")


def write_summary(data_file: Path, summary: dict[str, Any]) -> None:
    write_json(summary_file(data_file), summary)


def read_summary(data_file: Path, stage: str) -> dict[str, Any]:
    """The summary written beside `data_file` by dvc.yaml's `stage`; {} where there is none
    (a data file made by hand)."""
    path = summary_file(data_file)
    if not path.exists():
        return {}
    try:
        summary = json.loads(path.read_text())
    except ValueError:
        summary = None
    if not isinstance(summary, dict):
        raise unreadable(path, "a data summary", f"run `dvc repro {stage}` to make it again")
    return summary


def counted(values: list[str]) -> dict[str, int]:
    """How often each value occurs, the most frequent first."""
    return dict(Counter(values).most_common())
