"""Fitting a configured model: what `train`, `crossval` and a search's trials share.

The same data in the same batches on every backend (`batches`), the learning-rate schedule, the
stop on a diverged loss, and the hyperparameters a search found merged over the config.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf

from pipeline.core import backend, config, interrupts, timings
from pipeline.core.config import LrSchedule
from pipeline.core.errors import ConfigError, DataError, TrainingError, missing, remake, unreadable
from pipeline.core.files import seal_holds
from pipeline.data.splits import Split
from pipeline.models.nets import build_keras, build_sklearn, inputs_of, is_keras

if TYPE_CHECKING:
    import pandas as pd
from collections.abc import Iterator


@dataclass
class Fitted:
    net: Any
    history: pd.DataFrame  # one row per epoch: epoch, loss, accuracy, val_loss, val_accuracy
    seconds: float


def with_hparams(cfg: DictConfig) -> DictConfig:
    """The config with `train.hparams_file` (what `tune` found) merged over it. A relative path
    is found like any earlier stage's output: in this job's folder, else the pipeline's.

    A file that is missing, cut short or no hyperparameters file stops the stage with one line.
    `tune` seals the values it writes with their SHA-256 (`files.sealed`), as YAML cut short at a
    line end still parses; a file without that line (written by hand) is taken as it is.
    """
    if not cfg.train.hparams_file:
        return cfg
    path = Path(cfg.train.hparams_file)
    if not path.is_absolute():
        paths: config.PathsConfig = OmegaConf.to_object(cfg.paths)
        path = paths.read.path(str(path))
    tune = f"tune@{cfg.dataset.name}"
    if not path.exists():
        raise missing(path, tune)
    try:
        text = path.read_text()
        values = OmegaConf.create(text)
    except (ValueError, yaml.YAMLError):  # not text, not YAML
        text, values = "", None
    if seal_holds(text) is False:
        raise DataError(
            f"{path}: its values do not match the sha256 line above them (truncated, or edited "
            f"by hand); {remake(tune)}, or delete that line to keep an edit"
        )
    if not isinstance(values, DictConfig) or not values:
        raise unreadable(path, "a hyperparameters file", remake(tune))
    try:
        return OmegaConf.merge(cfg, values)
    except Exception as error:
        raise ConfigError(f"{path}: {str(error).splitlines()[0]}; {remake(tune)}") from None


def fit_keras(settings: config.Config, data: Split, callbacks: list[Any]) -> Fitted:
    import keras

    backend.seed(settings.train.seed)
    spec = inputs_of(data.x_train, settings.dataset.standardize, data.features)
    net = build_keras(settings.model, spec, data.n_classes)
    callbacks = list(callbacks)
    if settings.train.early_stopping_patience is not None:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                patience=settings.train.early_stopping_patience, restore_best_weights=True
            )
        )
    if settings.train.reduce_lr_patience is not None:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                factor=0.5, patience=settings.train.reduce_lr_patience, verbose=1
            )
        )
    callbacks += learning_rate_schedule(
        settings.train.lr_schedule, settings.model.optimizer.lr, settings.train.epochs
    )
    callbacks.append(nan_guard(TrainingError))
    callbacks.append(interrupts.keras_callback())  # where Ctrl-C stops the fit
    batch_size = settings.train.batch_size
    start = time.perf_counter()
    epochs = settings.train.epochs
    validation = batches(data.x_val, data.y_val, batch_size)["x"] if len(data.y_val) else None
    with timings.computing(), interrupts.cooperative():
        result = net.fit(
            **batches(data.x_train, data.y_train, batch_size, settings.train.seed, epochs),
            # None where crossval keeps no validation slice: nothing in training reads one.
            validation_data=validation,
            epochs=epochs,
            shuffle=False,  # batches() shuffles; Keras would warn that it cannot
            callbacks=callbacks,
            verbose=2,
        )
    seconds = time.perf_counter() - start
    history = pd.DataFrame(result.history)
    history.insert(0, "epoch", np.arange(1, len(history) + 1))
    return Fitted(net, history, seconds)


def fit_sklearn(settings: config.Config, data: Split) -> Fitted:
    from sklearn.metrics import accuracy_score, log_loss

    spec = inputs_of(data.x_train, settings.dataset.standardize, data.features)
    net = build_sklearn(settings.model, spec, settings.train.epochs, settings.train.seed)
    start = time.perf_counter()
    with timings.computing():
        net.fit(data.x_train, data.y_train)
    seconds = time.perf_counter() - start
    # One row: the solver's final state, in the same columns as a Keras history.
    row = {"epoch": int(np.max(net[-1].n_iter_))}
    for prefix, x, y in (("", data.x_train, data.y_train), ("val_", data.x_val, data.y_val)):
        if not len(y):  # crossval's folds keep no validation slice where training reads none
            continue
        row[f"{prefix}loss"] = log_loss(y, net.predict_proba(x), labels=net.classes_)
        row[f"{prefix}accuracy"] = accuracy_score(y, net.predict(x))
    return Fitted(net, pd.DataFrame([row]), seconds)


def fit(settings: config.Config, data: Split, callbacks: list[Any]) -> Fitted:
    """Train the configured model on `data`; `callbacks` go to Keras' fit."""
    if is_keras(settings.model):
        return fit_keras(settings, data, callbacks)
    return fit_sklearn(settings, data)


def nan_guard(error: Callable[[str], Exception]) -> Any:
    """A Keras callback that stops training at the first epoch whose loss is not finite and
    then raises `error(reason)`. Put it last: the callbacks before it (MLflow's among them)
    finish their epoch and their training first, so the diverged epochs are recorded too."""
    import keras

    class NanGuard(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict | None = None) -> None:
            self.diverged_at: int | None = None

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                self.diverged_at = epoch + 1
                self.model.stop_training = True

        def on_train_end(self, logs: dict | None = None) -> None:
            if self.diverged_at is not None:
                lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
                raise error(
                    f"loss became NaN at epoch {self.diverged_at}; lower model.optimizer.lr "
                    f"(now {lr:.3g}) or add regularisation"
                )

    return NanGuard()


def learning_rate_schedule(schedule: LrSchedule, lr: float, epochs: int) -> list[Any]:
    """The Keras callbacks that set the learning rate by `schedule` (train.lr_schedule) for a
    fit of `epochs` epochs starting at `lr`: none for a constant rate."""
    import keras

    if schedule == LrSchedule.constant:
        return []
    return [
        keras.callbacks.LearningRateScheduler(
            lambda epoch: lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        )
    ]


def epoch_orders(rows: int, seed: int) -> Iterator[np.ndarray]:
    """Each epoch's order of the rows: a new one per epoch, the same for the same seed."""
    rng = np.random.default_rng(seed)
    order = np.arange(rows)
    while True:
        rng.shuffle(order)
        yield order.copy()


def batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, shuffle_seed: int | None = None, epochs: int = 1
) -> dict[str, Any]:
    """What Keras' fit takes as `x` (and `steps_per_epoch`) to see `x` and `y` in batches for
    `epochs` epochs, in the orders `epoch_orders(len(x), shuffle_seed)` gives (in order without
    a seed): the same batches on every backend.

    A `keras.utils.PyDataset`, except on TensorFlow: there it costs about 0.1 s of Python an
    epoch (two thirds of a small model's fit), so TensorFlow gets every epoch's order up front
    in one tf.data pipeline."""
    import keras

    steps = -(-len(x) // batch_size)
    orders = epoch_orders(len(x), shuffle_seed) if shuffle_seed is not None else None
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if orders is None:
            data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
            return {"x": data.prefetch(tf.data.AUTOTUNE)}
        x_all, y_all = tf.constant(x), tf.constant(y)
        rows = tf.data.Dataset.from_tensor_slices(np.stack([next(orders) for _ in range(epochs)]))
        data = rows.flat_map(
            lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size)
        )
        data = data.map(lambda picked: (tf.gather(x_all, picked), tf.gather(y_all, picked)))
        # One iterator across all epochs: Keras keeps it from epoch to epoch when told
        # the steps per epoch.
        return {"x": data.prefetch(tf.data.AUTOTUNE), "steps_per_epoch": steps}

    class Batches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.order = np.arange(len(x)) if orders is None else next(orders)
            self.served = 0

        def __len__(self) -> int:
            return steps

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            self.served += 1
            rows = self.order[index * batch_size : (index + 1) * batch_size]
            return x[rows], y[rows]

        def on_epoch_end(self) -> None:
            # Keras also calls this before the first epoch, after reading one batch to build
            # the model: the order moves on only once an epoch's worth has been read.
            if orders is not None and self.served >= steps:
                self.order, self.served = next(orders), 0

    return {"x": Batches()}
