"""A trained model's folder, models/<task>/<variant>/: the model, its run and its history.

Written whole by `train`; whatever reads one (evaluate, crossval, report) stops with one line
naming the file and the stage that makes it again when a file is missing, cut short or foreign.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.errors import DataError, missing, remake, unreadable
from pipeline.core.files import atomic_output
from pipeline.data.table_rows import one_hot_columns
from pipeline.models.nets import is_keras_net

if TYPE_CHECKING:
    import pandas as pd


KERAS_FILE = "model.keras"


SKLEARN_FILE = "model.joblib"


RUN_FILE = "run.json"  # the MLflow run that trained the model, and train's numbers


HISTORY_FILE = "history.csv"  # one row per epoch


HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")


def save(net: Any, folder: Path) -> None:
    if is_keras_net(net):
        net.save(folder / KERAS_FILE)
    else:
        import joblib

        joblib.dump(net, folder / SKLEARN_FILE)


def stage_of(stage: str, task: str, variant: str) -> str:
    """dvc.yaml's name of `stage` (train, evaluate) for one model: the searched model has stages
    of its own (train_tuned@<task>), the baselines one per task and variant."""
    return f"{stage}_tuned@{task}" if variant == "tuned" else f"{stage}@{task}-{variant}"


def _train_stage(folder: Path) -> str:
    return stage_of("train", folder.parent.name, folder.name)  # models/<task>/<variant>


def save_weights(net: Any, path: str | Path) -> None:
    """Keras' `net.save_weights(path)`, whole or not at all (`atomic_output`), through memory:
    h5py writing the file itself on a full disk crashes the process (a segfault closing it)
    instead of raising."""
    import keras

    path = Path(path)

    class Buffer(io.BytesIO):
        def __str__(self) -> str:  # Keras picks the format by the name's suffix
            return path.name

    buffer = Buffer()
    keras.saving.save_weights(net, buffer)
    with atomic_output(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load(folder: Path) -> Any:
    """The model `save` wrote into `folder`; one cut short or not a model stops the stage with
    one line."""
    for name, what in ((KERAS_FILE, "a saved Keras model"), (SKLEARN_FILE, "a saved model")):
        if (folder / name).exists():
            try:
                net = _load(folder / name)
            # What Keras, zipfile, h5py and pickle raise for bytes that are not their format.
            except (
                ValueError,
                KeyError,
                EOFError,
                OSError,
                zipfile.BadZipFile,
                pickle.PickleError,
            ):
                net = None
            if net is None or not hasattr(net, "predict"):
                raise unreadable(folder / name, what, remake(_train_stage(folder)))
            return net
    raise DataError(
        f"{folder}: holds no trained model; run `dvc repro {_train_stage(folder)}` to make it"
    )


def _load(path: Path) -> Any:
    if path.name == KERAS_FILE:
        import keras

        one_hot_columns()  # a table model's layer: known to Keras before the model is read
        return keras.saving.load_model(path)
    import joblib

    return joblib.load(path)


def read_run(folder: Path) -> dict[str, Any]:
    """The run file train wrote into model folder `folder`."""
    path = folder / RUN_FILE
    if not path.exists():
        raise missing(path, _train_stage(folder))
    try:
        summary = json.loads(path.read_text())
    except ValueError:  # not JSON, or not text
        summary = None
    if not isinstance(summary, dict) or not isinstance(summary.get("run_id"), str):
        raise unreadable(path, "a trained model's run file", remake(_train_stage(folder)))
    return summary


def read_history(path: Path, stage: str, epochs: int | None = None) -> pd.DataFrame:
    """A model's per-epoch history as train wrote it (history.csv, evaluate's learning curve),
    made by dvc.yaml's `stage`; with `epochs`, it must end at that epoch (run.json's
    epochs_trained): a CSV cut short at a line end still parses."""
    import pandas as pd

    if not path.exists():
        raise missing(path, stage)
    try:
        history = pd.read_csv(path)
    except ValueError:  # pandas' parser and empty-file errors, bytes that are not text
        history = None
    columns = list(HISTORY_COLUMNS)
    if (
        history is None
        or not set(columns) <= set(history.columns)
        or history.empty
        or history[columns].isna().any(axis=None)
        or (epochs is not None and history["epoch"].iloc[-1] != epochs)
    ):
        raise unreadable(path, "a training history", remake(stage))
    return history
