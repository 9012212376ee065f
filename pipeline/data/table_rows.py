"""Table rows as model inputs, the same way in `fetch` and in a served model.

A table's features are described once, as `fetch` found them (`features`: each column's name,
type, categories and fill value), and `encode` turns raw rows (categories as text) into the
numbers a model takes: numbers as they are, each category as its index in the column's list.
The model one-hot encodes those indices itself (`one_hot_columns`), so that what is logged and
served takes raw rows.

This module needs nothing of the pipeline (NumPy and pandas; Keras for the layer): it is logged
beside each table model, which then serves without this project's code.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import pandas as pd

NUMBER, CATEGORY = "number", "category"


def text(value: Any) -> str:
    """A category's value as text: 3, 3.0 and "3" are the same category."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def is_missing(column: pd.Series) -> pd.Series:
    """Where the column has no value: empty cells, NaN and None."""
    return column.isna() | (column.astype(str).str.strip() == "")


def numbers(column: pd.Series) -> tuple[pd.Series, pd.Series]:
    """The column as floats, and where it holds text that is not a number (missing cells are
    neither)."""
    values = pd.to_numeric(column.where(~is_missing(column)), errors="coerce")
    return values.astype(float), values.isna() & ~is_missing(column)


def encode(frame: pd.DataFrame, features: list[dict[str, Any]]) -> np.ndarray:
    """Rows of raw values as float32 model inputs, one column per feature. A missing value
    takes the feature's fill value (where it has one); a value that cannot be encoded raises
    ValueError naming the column, the row and the value."""
    columns = []
    for feature in features:
        name = feature["name"]
        if name not in frame:
            raise ValueError(f"no column {name} (the model takes {[f['name'] for f in features]})")
        column = frame[name].reset_index(drop=True)
        missing = is_missing(column)
        if missing.any() and feature.get("fill") is not None:
            column = column.where(~missing, feature["fill"])
            missing = is_missing(column)
        if missing.any():
            row = int(np.flatnonzero(missing)[0]) + 1
            raise ValueError(f"column {name}: row {row} has no value")
        if feature["type"] == NUMBER:
            values, text_cells = numbers(column)
            if text_cells.any():
                row = int(np.flatnonzero(text_cells)[0])
                raise ValueError(
                    f"column {name}: row {row + 1} holds {column[row]!r}, not a number"
                )
            columns.append(values.to_numpy(np.float64))
        else:
            index = {category: code for code, category in enumerate(feature["categories"])}
            values = [text(value) for value in column]
            unknown = next((value for value in values if value not in index), None)
            if unknown is not None:
                raise ValueError(
                    f"column {name}: {unknown!r} is not one of its categories "
                    f"{feature['categories']}"
                )
            columns.append(np.array([index[value] for value in values], np.float64))
    return np.column_stack(columns).astype(np.float32) if columns else np.zeros((len(frame), 0))


def decode(x: np.ndarray, features: list[dict[str, Any]]) -> pd.DataFrame:
    """Model inputs back as raw rows: categories as text (what `encode` was given)."""
    return pd.DataFrame(
        {
            feature["name"]: (
                x[:, i].astype(float)
                if feature["type"] == NUMBER
                else [feature["categories"][int(code)] for code in x[:, i]]
            )
            for i, feature in enumerate(features)
        }
    )


def category_sizes(features: list[dict[str, Any]]) -> list[int]:
    """Per feature, its number of categories; 0 for a number."""
    return [len(f["categories"]) if f["type"] == CATEGORY else 0 for f in features]


@functools.cache
def one_hot_columns() -> type:
    """The Keras layer that one-hot encodes the category columns of its input (their indices)
    and passes the numbers through: registered with Keras on first use, also before a saved
    model that holds it is loaded."""
    import keras

    @keras.saving.register_keras_serializable(package="pipeline")
    class OneHotColumns(keras.layers.Layer):
        def __init__(self, sizes: list[int], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.sizes = list(sizes)

        def call(self, x: Any) -> Any:
            parts = []
            for i, size in enumerate(self.sizes):
                column = x[:, i : i + 1]
                if size:
                    codes = keras.ops.cast(column[:, 0], "int32")
                    column = keras.ops.one_hot(codes, size, dtype=x.dtype)
                parts.append(column)
            return keras.ops.concatenate(parts, axis=-1)

        def compute_output_shape(self, shape: tuple) -> tuple:
            return (shape[0], sum(size or 1 for size in self.sizes))

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "sizes": self.sizes}

    return OneHotColumns


def fill_value(column: pd.Series, kind: str) -> Any:
    """What a missing value of the column becomes with `missing: fill`: the median of a number
    column, the most frequent value of a category column."""
    present = column[~is_missing(column)]
    if kind == NUMBER:
        median = float(numbers(present)[0].median())
        return median if math.isfinite(median) else 0.0
    return text(present.map(text).mode().iloc[0])
