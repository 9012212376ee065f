"""The data files every later stage reads, and what makes one unreadable.

A split is `data/split/<task>.npz` holding `x_train`, `y_train`, `x_val`, `y_val`, `x_test`,
`y_test` and `class_names` (and a table's `features`). Images stay uint8 on disk and are made
float32 by `load_split`, so the files stay small and every stage sees the same numbers.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import missing, remake, unreadable

SPLIT_ARRAYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "class_names")


RAW_ARRAYS = ("x", "y")


@dataclass
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    label_errata_changed: int | None = None  # labels the source's errata list corrected
    # A table's columns, as `fetch` found them (pipeline/data/table_rows.py); None for other data.
    features: list[dict[str, Any]] | None = None

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def read_arrays(path: Path, names: Iterable[str], what: str, stage: str) -> dict[str, np.ndarray]:
    """Every array of data file `path` (a .npz holding at least `names`). A file that is
    missing, cut short or not such a file stops the stage with one line naming `what` it should
    be and the `dvc repro` stage that makes it again."""
    if not path.exists():
        raise missing(path, stage)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    # np.load opens a .npy (or a pickle) as one array, which has no `with`: AttributeError.
    except (zipfile.BadZipFile, ValueError, KeyError, EOFError, AttributeError):
        raise unreadable(path, what, remake(stage)) from None
    if not set(names) <= set(arrays):
        raise unreadable(path, what, remake(stage))
    return arrays


def load_raw(path: str | Path, source: str) -> dict[str, np.ndarray]:
    """The arrays `fetch` wrote for `source` (`x`, `y`, and what else the source gives)."""
    return read_arrays(Path(path), RAW_ARRAYS, "a raw data file", f"fetch@{source}")


def load_split(path: str | Path) -> Split:
    path = Path(path)
    arrays = read_arrays(path, SPLIT_ARRAYS, "a split file", f"split@{path.stem}")
    for key in ("x_train", "x_val", "x_test"):
        # As the source gives them (pixels 0-255, raw points): models scale their own inputs.
        arrays[key] = arrays[key].astype(np.float32)
    return Split(
        **{
            key: arrays[key] for key in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
        },
        class_names=[str(name) for name in arrays["class_names"]],
        label_errata_changed=(
            int(arrays["label_errata_changed"]) if "label_errata_changed" in arrays else None
        ),
        features=json.loads(str(arrays["features"])) if "features" in arrays else None,
    )
