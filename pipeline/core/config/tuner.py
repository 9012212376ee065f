"""The schema of conf/tuner/: the search's algorithm, budget, scoring and workers."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pipeline.core.config.base import check


class Algorithm(Enum):
    hyperband = "hyperband"
    random = "random"
    bayesian = "bayesian"


@dataclass
class TunerConfig:
    algorithm: Algorithm = Algorithm.hyperband
    objective: str = "val_accuracy"  # a Keras log key, measured on the validation part
    direction: str = "max"
    max_trials: int = 10  # random and bayesian; Hyperband sizes itself from max_epochs/factor
    max_epochs: int = 10  # hyperband: epochs of its longest trials; others: epochs per trial
    factor: int = 3  # hyperband
    hyperband_iterations: int = 1
    early_stopping_patience: int | None = 3  # inside each trial, on the objective
    # The search's budget: this fraction of the training part (stratified, seeded). The final
    # `train` always uses all of it.
    train_fraction: float = 1.0
    # k: score each trial by k-fold cross-validation over the training and validation parts
    # together, for data sets so small that one validation part ranks trials by luck. None:
    # score on the validation part. The test part is never used.
    cv_folds: int | None = None
    seed: int = 1
    # Trials whose scores differ by less than this tie, and the fewest parameters win
    # (pipeline/core/selection.py). None: one standard error of the best accuracy on the samples
    # that score the trials; 0 for other objectives.
    tie_tolerance: float | None = None
    # Processes running trials at once, each with its own trial, served by one Keras Tuner
    # oracle in this process (pipeline/search/chief.py); 1: trials run here, one after another.
    # Not part of a search's identity: the same trials get the same scores either way.
    workers: int = 1
    # A worker on another machine silent this long mid-trial (no heartbeat) is taken for dead:
    # its trial run ends KILLED and its trial goes to another worker.
    worker_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        # Keras Tuner takes a seed of 0 for "no seed" and draws a random one.
        check(self.seed >= 1, f"tuner.seed must be >= 1, got {self.seed}")
        check(
            self.direction in ("min", "max"),
            f"tuner.direction must be min or max, got {self.direction}",
        )
        check(self.max_trials > 0, f"tuner.max_trials must be > 0, got {self.max_trials}")
        check(self.max_epochs > 0, f"tuner.max_epochs must be > 0, got {self.max_epochs}")
        check(self.workers >= 1, f"tuner.workers must be >= 1, got {self.workers}")
        check(
            self.tie_tolerance is None or self.tie_tolerance >= 0,
            f"tuner.tie_tolerance must be >= 0 (or null for one standard error), got "
            f"{self.tie_tolerance}",
        )
        check(
            self.worker_timeout_s >= 10,  # several heartbeats (pipeline/search/worker.py)
            f"tuner.worker_timeout_s must be >= 10, got {self.worker_timeout_s}",
        )
        check(self.factor >= 2, f"tuner.factor must be >= 2, got {self.factor}")
        check(
            0 < self.train_fraction <= 1,
            f"tuner.train_fraction must be in (0, 1], got {self.train_fraction}",
        )
        check(
            self.cv_folds is None or self.cv_folds >= 2,
            f"tuner.cv_folds must be >= 2 (or null for the validation part), got {self.cv_folds}",
        )
        # Hyperband carries one model on from an earlier trial's checkpoint, not k of them.
        check(
            self.cv_folds is None or self.algorithm != Algorithm.hyperband,
            "tuner.cv_folds needs tuner=random or tuner=bayesian, not hyperband",
        )
