"""MLflow: which store runs go to, the tags every run carries, and runs that end with the stage.

A run that raises ends FAILED (with the reason as the `failure_reason` tag), one interrupted by
Ctrl-C or SIGTERM ends KILLED; none is left RUNNING.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import RunStatus

from pipeline.files import sha256_of

STORE_FILE = "mlflow.db"
ARTIFACTS_FOLDER = "mlartifacts"
METRICS_FLUSH_SECONDS = 10.0  # the longest per-epoch metrics wait before they are written


def repo_root() -> Path:
    """The repository the stages run in (stages always start at its root)."""
    cwd = Path.cwd().resolve()
    # `dvc exp run --temp/--queue` runs stages in a copy under <repo>/.dvc/tmp/exps/; their runs
    # belong in the repository's store, not in one deleted with the copy.
    if ".dvc" in cwd.parts:
        return Path(*cwd.parts[: cwd.parts.index(".dvc")])
    return cwd


def tracking_uri(configured: str | None = None) -> str:
    if configured:
        return configured
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / STORE_FILE}"


def use_experiment(experiment: str, configured_uri: str | None = None) -> None:
    """Point MLflow at the store and experiment. A new experiment in an SQLite store keeps its
    artifacts in mlartifacts/ beside the database file, an absolute path, wherever the stage
    runs from; a server store places them itself."""
    uri = tracking_uri(configured_uri)
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        location = None
        if uri.startswith("sqlite:///"):
            database = Path(uri.removeprefix("sqlite:///")).resolve()
            location = (database.parent / ARTIFACTS_FOLDER / experiment).as_uri()
        # Another process may create it first: then it exists, which is all that is needed.
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)


@contextmanager
def run(name: str, tags: dict[str, str], run_id: str | None = None) -> Iterator[Any]:
    """An MLflow run (a new one, or `run_id` resumed) that ends with the block's outcome."""
    active = mlflow.start_run(run_id=run_id, run_name=None if run_id else name, tags=tags)
    try:
        yield active
    except KeyboardInterrupt:
        _end_open_runs(active.info.run_id, RunStatus.KILLED, "interrupted")
        raise
    except BaseException as error:
        _end_open_runs(active.info.run_id, RunStatus.FAILED, f"{type(error).__name__}: {error}")
        raise
    mlflow.end_run()


def _end_open_runs(outer_id: str, status: int, reason: str) -> None:
    """End run `outer_id` and any run still open inside it (a trial cut short with its search)."""
    while (current := mlflow.active_run()) is not None:
        mlflow.set_tag("failure_reason", reason[:5000])
        mlflow.end_run(RunStatus.to_string(status))
        if current.info.run_id == outer_id:
            break


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


def context_tags(stage: str, data_files: dict[str, Path]) -> dict[str, str]:
    """Where a run came from: code version, data versions, DVC experiment, Hydra sweep."""
    tags = {"stage": stage, "git_commit": git_commit()}
    for name, path in data_files.items():
        tags[f"data.{name}.sha256"] = sha256_of(path)
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    tags.update(hydra_sweep_tags())
    return tags


def hydra_sweep_tags() -> dict[str, str]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN:
        return {}
    # The sweep folder's name (its start time) is what every job of one sweep shares.
    return {"hydra_sweep_id": Path(hydra.sweep.dir).name, "hydra_job_num": str(hydra.job.num)}


def git_commit() -> str:
    """HEAD's commit, with "-dirty" when tracked files differ from it; "unknown" outside git.

    The pipeline's own tracked outputs (dvc.lock, reports/) do not count: `dvc repro` rewrites
    them before the last stage runs, which would mark every repro of a clean checkout dirty.
    """
    try:
        commit = _git("rev-parse", "HEAD")
        dirty = _git(
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":(exclude)dvc.lock",
            ":(exclude)reports",
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], capture_output=True, text=True, check=True, cwd=repo_root()
    ).stdout.strip()
