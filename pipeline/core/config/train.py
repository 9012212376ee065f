"""The schema of `train`: epochs, batches, stopping, schedule and seed of a fit."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.config.base import check
from pipeline.core.config.model import LrSchedule


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    early_stopping_patience: int | None = None  # on validation loss; None trains all epochs
    # Halve the learning rate after this many epochs without a better validation loss.
    reduce_lr_patience: int | None = None
    lr_schedule: LrSchedule = LrSchedule.constant  # in search trials too
    seed: int = 0
    cv_folds: int = 5  # the crossval stage's k
    # YAML of hyperparameters (shaped like this config: model.*, train.*) merged over the
    # config before training: how `train` takes what `tune` found.
    hparams_file: str | None = None

    @property
    def reads_validation(self) -> bool:
        """Whether training itself uses the validation part (early stopping, halving the
        learning rate), not only reports on it."""
        return self.early_stopping_patience is not None or self.reduce_lr_patience is not None

    def __post_init__(self) -> None:
        check(self.epochs > 0, f"train.epochs must be > 0, got {self.epochs}")
        check(self.batch_size > 0, f"train.batch_size must be > 0, got {self.batch_size}")
        check(self.cv_folds >= 2, f"train.cv_folds must be >= 2, got {self.cv_folds}")
        for key in ("early_stopping_patience", "reduce_lr_patience"):
            value = getattr(self, key)
            check(value is None or value >= 0, f"train.{key} must be >= 0, got {value}")
        check(
            self.lr_schedule == LrSchedule.constant or self.reduce_lr_patience is None,
            "train.lr_schedule=cosine sets the learning rate every epoch; "
            "set train.reduce_lr_patience=null",
        )
