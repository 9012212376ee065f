"""Predict with a registered model: a label and its probability for each input.

    python -m pipeline.predict task=mnist digit.png seven.jpg
    python -m pipeline.predict task=circles points.csv
    python -m pipeline.predict task=<a table task> rows.csv
    python -m pipeline.predict model=runs:/<run id>/model images.npy

Loads the task's champion (`models:/<task>@champion`) from the MLflow store, or the model URI
given. Inputs are what the source provides: image files (PNG, JPEG, ...) made grayscale or RGB
and resized exactly as `fetch` does, a .npy array of images or points, or a .csv of points, one per
row; for a table's model, a .csv of rows with a header naming its columns (categories as text,
other columns such as the label ignored). The model does its own scaling and encoding; nothing
else is applied.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.config import Color
from pipeline.core.errors import DataError, PipelineError
from pipeline.data import table_rows
from pipeline.data.images import IMAGE_SUFFIXES, decode

USAGE = (
    "usage: python -m pipeline.predict task=<task> | model=<model URI> "
    "[tracking.uri=<store>] [tracking.experiment_prefix=<prefix>] "
    "<image files, a .npy or a .csv>"
)


@dataclass
class Inputs:
    names: list[str]  # one per input: the file, or file:row
    x: Any  # shaped as the model takes them: an array, or a table's rows as a data frame


def read_inputs(paths: list[Path], shape: tuple[int, ...]) -> Inputs:
    """The inputs in `paths` as one array of the model's input `shape` (without the batch
    axis): (rows, cols) for grayscale images, (rows, cols, 3) for colour ones, (features,) for
    points."""
    names: list[str] = []
    parts: list[np.ndarray] = []
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        suffix = path.suffix.lower()
        if suffix == ".npy":
            try:
                array = np.load(path, allow_pickle=False)
            except ValueError as error:
                raise DataError(f"{path}: not a NumPy array file ({error})") from None
            if array.shape == shape:  # a single input
                array = array[np.newaxis]
        elif suffix == ".csv":
            array = _read_csv(path)
        elif suffix in IMAGE_SUFFIXES:
            if len(shape) == 1:
                raise DataError(
                    f"{path}: the model takes points of {shape[0]} values, not images; "
                    "give a .csv or .npy of points"
                )
            color = Color.grayscale if len(shape) == 2 else Color.rgb
            array = decode(path.read_bytes(), shape[0], color, origin=str(path))[np.newaxis]
        else:
            raise DataError(
                f"{path}: unknown kind of file '{suffix}'; give images "
                f"({', '.join(IMAGE_SUFFIXES)}), a .npy or a .csv"
            )
        if array.shape[1:] != shape:
            raise DataError(
                f"{path}: inputs of shape {array.shape[1:]}, the model takes {shape}"
                + (" (one row per point)" if len(shape) == 1 else "")
            )
        parts.append(array.astype(np.float32))
        names += (
            [str(path)]
            if len(array) == 1 and suffix != ".csv"
            else [f"{path}:{row + 1}" for row in range(len(array))]
        )
    return Inputs(names, np.concatenate(parts))


def _read_csv(path: Path) -> np.ndarray:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    try:
        float(lines[0].split(",")[0])
    except (ValueError, IndexError):
        lines = lines[1:]  # a header
    try:
        return np.array([[float(v) for v in line.split(",")] for line in lines], np.float32)
    except ValueError as error:
        raise DataError(f"{path}: not a CSV of numbers ({error})") from None


def probabilities(outputs: Any) -> np.ndarray:
    """The model's output as (n, classes) probabilities: one sigmoid unit is P(class 1)."""
    probs = np.asarray(outputs, dtype=np.float64)
    if probs.ndim == 1:
        probs = probs[:, np.newaxis]
    if probs.shape[1] == 1:
        probs = np.hstack([1 - probs, probs])
    return probs


def read_rows(paths: list[Path], schema: Any) -> Inputs:
    """The rows of CSV files (with a header) as the columns a table's model takes, numbers as
    numbers and categories as text; other columns are left out."""
    import pandas as pd

    columns = {spec.name: spec.type.name for spec in schema.inputs}
    names, frames = [], []
    for path in paths:
        if path.suffix.lower() != ".csv":
            raise DataError(f"{path}: the model takes table rows; give a .csv with a header")
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
        absent = [name for name in columns if name not in frame]
        if absent:
            raise DataError(
                f"{path}: no column {absent[0]} (the model takes {', '.join(columns)}); "
                "give rows with a header naming its columns"
            )
        frame = frame[list(columns)]
        for name, kind in columns.items():
            if kind != "string":
                values, text_cells = table_rows.numbers(frame[name])
                if text_cells.any():
                    row = int(np.flatnonzero(text_cells)[0])
                    raise DataError(f"{path}: column {name}, row {row + 1}: not a number")
                frame[name] = values
        frames.append(frame)
        names += [f"{path}:{row + 1}" for row in range(len(frame))]
    return Inputs(names, pd.concat(frames, ignore_index=True))


def read_for(signature: Any, files: list[Path]) -> Inputs:
    """The files as the inputs a model of this signature takes."""
    schema = signature.inputs if signature else None
    if schema is None:
        raise DataError("the model has no signature; log it again with `train`")
    if not schema.is_tensor_spec():
        return read_rows(files, schema)
    return read_inputs(files, tuple(schema.inputs[0].shape[1:]))


def parse(argv: list[str]) -> tuple[dict[str, str], list[Path]]:
    options = dict(arg.split("=", 1) for arg in argv if "=" in arg)
    unknown = set(options) - {"task", "model", "tracking.uri", "tracking.experiment_prefix"}
    if unknown:
        raise PipelineError(f"unknown option {sorted(unknown)[0]}=...; {USAGE}")
    files = [Path(arg) for arg in argv if "=" not in arg]
    if not files or not ({"task", "model"} & set(options)):
        raise PipelineError(USAGE)
    return options, files


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv):
        print(f"{USAGE}\n\n{__doc__}")
        return
    try:
        options, files = parse(argv)
        for path in files:
            if not path.is_file():
                raise DataError(f"{path}: no such file")
        import mlflow

        from pipeline import tracking

        tracking.connect(tracking.tracking_uri(options.get("tracking.uri")))
        prefix = options.get("tracking.experiment_prefix", "")
        uri = options.get("model") or (
            f"models:/{tracking.experiment_name(options['task'], prefix)}@champion"
        )
        try:
            info = mlflow.models.get_model_info(uri)
            # Read by the model's signature before the model: a file it cannot take is one
            # line in a second, not after Keras' import.
            inputs = read_for(info.signature, files)
            metadata = info.metadata or {}
            if metadata.get("build"):  # a custom model's module, which may define its layers
                from pipeline.models.custom import build_function

                build_function(metadata["build"])
            model = mlflow.pyfunc.load_model(uri)
        except mlflow.exceptions.MlflowException as error:
            raise PipelineError(
                f"{uri}: {str(error).splitlines()[0]}; run `dvc repro` (the report registers "
                "each task's champion) or give model=<model URI>"
            ) from None
        if "sklearn" not in info.flavors:  # Keras, or a table's Keras inside
            import keras

            keras.utils.disable_interactive_logging()  # progress bars would mix with answers
        try:
            probs = probabilities(model.predict(inputs.x))
        except (ValueError, mlflow.exceptions.MlflowException) as error:  # a row it cannot take
            raise DataError(f"{', '.join(map(str, files))}: {str(error).splitlines()[0]}") from None
        names = metadata.get("class_names")
        names = names or [str(i) for i in range(probs.shape[1])]
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    for name, row in zip(inputs.names, probs, strict=True):
        print(f"{name}\t{names[int(row.argmax())]}\t{row.max():.4f}")


if __name__ == "__main__":
    main()
