"""TensorBoard logs of train runs and search trials, in one folder that `tensorboard --logdir`
shows whole (README):

    tensorboard/<task>/<variant>/<run id>/             a train run: train/ and validation/
    tensorboard/<task>/search/<search run id>/<trial>/  a trial, as Keras Tuner lays it out:
                                                        execution0/ with its HParams

Each run's own folder is also attached to its MLflow run, under the artifact path tensorboard/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow

from pipeline.tracking.store import repo_root

FOLDER = "tensorboard"  # at the repository root, beside mlflow.db, unless configured


ARTIFACT_PATH = "tensorboard"


def root(configured: str | None) -> Path:
    """Where every run's logs go: `configured` (tracking.tensorboard_dir), else tensorboard/ at
    the repository root (DVC_ROOT for `dvc exp run --temp`, like the MLflow store)."""
    return Path(configured).resolve() if configured else repo_root() / FOLDER


def callback(log_dir: Path) -> Any:
    """Keras' own TensorBoard callback, writing each epoch's losses, metrics and learning rate
    to `log_dir`. Its class exactly: Keras Tuner gives each trial its own folder and HParams
    only for that class."""
    import keras

    return keras.callbacks.TensorBoard(
        log_dir=str(log_dir), histogram_freq=0, write_graph=False, profile_batch=0
    )


def attach(log_dir: Path, run_id: str) -> None:
    """Log the event files under `log_dir` to MLflow run `run_id` (finished or not)."""
    if log_dir.is_dir():
        mlflow.MlflowClient().log_artifacts(run_id, str(log_dir), ARTIFACT_PATH)
