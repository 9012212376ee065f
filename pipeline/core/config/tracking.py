"""The schema of conf/tracking/: the MLflow store, names and system metrics."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.core.config.base import check


@dataclass
class TrackingConfig:
    # None: $MLFLOW_TRACKING_URI, else SQLite at the repository root (see pipeline.tracking).
    uri: str | None = None
    log_model: bool = True
    # Put before every MLflow experiment and registered-model name (tracking.experiment_name),
    # so that projects sharing one server keep apart: "acme-" gives "acme-mnist".
    experiment_prefix: str = ""
    # MLflow system metrics (CPU, memory; GPU where pynvml finds one), sampled every
    # `system_metrics_interval` seconds: on train runs, and on each search trial's run.
    system_metrics: bool = True
    trial_system_metrics: bool = False
    system_metrics_interval: float = 2.0
    # TensorBoard logs (per-epoch losses, metrics, learning rate) of train runs, and of search
    # trials with their hyperparameters in the HParams view (TensorFlow backend), each attached
    # to its MLflow run; under `tensorboard_dir` (None: tensorboard/ at the repository root).
    tensorboard: bool = True
    trial_tensorboard: bool = False
    tensorboard_dir: str | None = None

    def sampling(self, of_trials: bool = False) -> float | None:
        """How often runs (trial runs with `of_trials`) sample system metrics; None: not."""
        wanted = self.trial_system_metrics if of_trials else self.system_metrics
        return self.system_metrics_interval if wanted else None

    def __post_init__(self) -> None:
        # Characters every store and the model registry accept in names and in models:/ URIs.
        check(
            re.fullmatch(r"[A-Za-z0-9._-]*", self.experiment_prefix) is not None,
            "tracking.experiment_prefix may hold only letters, digits, '.', '_' and '-', got "
            f"{self.experiment_prefix!r}",
        )
        check(
            self.system_metrics_interval > 0,
            "tracking.system_metrics_interval must be > 0 seconds, got "
            f"{self.system_metrics_interval}",
        )
