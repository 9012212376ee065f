"""Predict with a registered model: a label and its probability for each input.

    python -m pipeline.predict task=mnist digit.png seven.jpg
    python -m pipeline.predict task=circles points.csv
    python -m pipeline.predict model=runs:/<run id>/model images.npy

Loads the task's champion (`models:/<task>@champion`) from the MLflow store, or the model URI
given. Inputs are what the source provides: image files (PNG, JPEG, ...) made grayscale or RGB
and resized exactly as `fetch` does, a .npy array of images or points, or a .csv of points, one per
row. The model does its own scaling; nothing else is applied.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.config import Color
from pipeline.core.errors import DataError, PipelineError
from pipeline.data.images import IMAGE_SUFFIXES, decode

USAGE = (
    "usage: python -m pipeline.predict task=<task> | model=<model URI> "
    "[tracking.uri=<store>] [tracking.experiment_prefix=<prefix>] "
    "<image files, a .npy or a .csv>"
)


@dataclass
class Inputs:
    names: list[str]  # one per input: the file, or file:row
    x: np.ndarray  # shaped as the model takes them


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


def input_shape(model: Any) -> tuple[int, ...]:
    schema = model.metadata.get_input_schema()
    if schema is None or not schema.is_tensor_spec():
        raise DataError("the model has no tensor signature; log it again with `train`")
    return tuple(schema.inputs[0].shape[1:])


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
            model = mlflow.pyfunc.load_model(uri)
        except mlflow.exceptions.MlflowException as error:
            raise PipelineError(
                f"{uri}: {str(error).splitlines()[0]}; run `dvc repro` (the report registers "
                "each task's champion) or give model=<model URI>"
            ) from None
        inputs = read_inputs(files, input_shape(model))
        if model.metadata.flavors.get("keras"):
            import keras

            keras.utils.disable_interactive_logging()  # progress bars would mix with the answers
        probs = probabilities(model.predict(inputs.x))
        names = model.metadata.metadata.get("class_names") if model.metadata.metadata else None
        names = names or [str(i) for i in range(probs.shape[1])]
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    for name, row in zip(inputs.names, probs, strict=True):
        print(f"{name}\t{names[int(row.argmax())]}\t{row.max():.4f}")


if __name__ == "__main__":
    main()
