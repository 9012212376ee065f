"""Fitting a configured model: what `train` and `crossval` share."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf

from pipeline import backend, config, models
from pipeline.datasets import Split, batches
from pipeline.errors import ConfigError, DataError, TrainingError, missing, remake, unreadable
from pipeline.files import seal_holds


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
    spec = models.inputs_of(data.x_train, settings.dataset.standardize)
    net = models.build_keras(settings.model, spec, data.n_classes)
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
    callbacks += models.learning_rate_schedule(
        settings.train.lr_schedule, settings.model.optimizer.lr, settings.train.epochs
    )
    callbacks.append(models.nan_guard(TrainingError))
    batch_size = settings.train.batch_size
    start = time.perf_counter()
    epochs = settings.train.epochs
    validation = batches(data.x_val, data.y_val, batch_size)["x"] if len(data.y_val) else None
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

    spec = models.inputs_of(data.x_train, settings.dataset.standardize)
    net = models.build_sklearn(settings.model, spec, settings.train.epochs, settings.train.seed)
    start = time.perf_counter()
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
    if models.is_keras(settings.model):
        return fit_keras(settings, data, callbacks)
    return fit_sklearn(settings, data)
