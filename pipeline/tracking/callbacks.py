"""Keras' per-epoch metrics into the active MLflow run."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.entities import Metric

if TYPE_CHECKING:
    pass


METRICS_FLUSH_SECONDS = 10.0  # the longest per-epoch metrics wait before they are written


def keras_callback(model_summary: bool = True) -> Any:
    """MLflow's Keras callback, logging the per-epoch metrics (loss, val_loss, ...) by step;
    with `model_summary`, also the optimizer's settings and the layer summary at the start."""
    from mlflow.entities import Metric
    from mlflow.keras import MlflowCallback

    class EpochMetrics(MlflowCallback):
        def __init__(self) -> None:
            super().__init__()
            # Used for several fits in a row (a trial's k folds), it numbers their epochs on
            # from one fit to the next rather than logging each over the last.
            self.next_step = 0

        def on_train_begin(self, logs: dict | None = None) -> None:
            self.first_step = self.next_step
            self.pending: list[Metric] = []
            self.flushed_at = time.monotonic()
            if model_summary:
                super().on_train_begin(logs)

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            # Batched: one store write per epoch cost a search of short trials 13 % of its time
            # (benchmarks/search_overhead.py), and MlflowCallback's asynchronous logging waits
            # about a second per run for its thread to stop. A long run still shows its epochs
            # live, METRICS_FLUSH_SECONDS apart.
            now = int(time.time() * 1000)
            step = self.first_step + epoch
            self.next_step = step + 1
            self.pending += [Metric(k, float(v), now, step) for k, v in (logs or {}).items()]
            if time.monotonic() - self.flushed_at >= METRICS_FLUSH_SECONDS:
                self.flush()

        def on_train_end(self, logs: dict | None = None) -> None:
            self.flush()

        def on_test_end(self, logs: dict | None = None) -> None:
            # MlflowCallback would log every validation pass again, unstepped, as validation_*:
            # the same numbers as val_*, under other keys.
            pass

        def flush(self) -> None:
            if self.pending:
                run_id = mlflow.active_run().info.run_id
                mlflow.MlflowClient().log_batch(run_id, metrics=self.pending)
            self.pending = []
            self.flushed_at = time.monotonic()

    return EpochMetrics()
