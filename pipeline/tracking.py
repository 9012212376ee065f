"""MLflow: which store runs go to, the tags every run carries, and runs that end with the stage.

A run that raises ends FAILED (with the reason as the `failure_reason` tag: a PipelineError's
one line, else the error's type and message), one interrupted by Ctrl-C or SIGTERM ends KILLED;
none is left RUNNING, unless the store itself takes no more writes. A write the store refuses
(SQLite's file or disk full or read-only, an artifact that cannot be written) stops the stage
with one line naming the store (`store_failure`). Stages that add to a finished run (evaluate,
crossval) write to it by id and never reopen it: its status and end time stay its own.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import os
import re
import socket
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.entities import Metric, RunStatus, RunTag

from pipeline import backend, interrupts
from pipeline.errors import PipelineError
from pipeline.files import sha256_of, write_failure

if TYPE_CHECKING:
    import numpy as np

    from pipeline.datasets import Split

STORE_FILE = "mlflow.db"
ARTIFACTS_FOLDER = "mlartifacts"
METRICS_FLUSH_SECONDS = 10.0  # the longest per-epoch metrics wait before they are written
PROBE_TIMEOUT_S = 10.0  # how long a tracking server may take to answer before a stage gives up
# Without it MLflow's UI opens an experiment on its GenAI overview instead of its training runs.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# A split's parts (Split's x_<part>, y_<part>) and their MLflow dataset contexts.
SPLIT_PARTS = {"train": "training", "val": "validation", "test": "test"}
# Tags of the process that owns a run (owner_tags).
OWNER_HOST, OWNER_PID, OWNER_STARTED = "owner.host", "owner.pid", "owner.started"
STORE_ELSEWHERE = "set tracking.uri (or MLFLOW_TRACKING_URI) to another store"
# What SQLite says when its file or folder takes no write, and the OSError it stands for.
SQLITE_REFUSALS = {
    "database or disk is full": errno.ENOSPC,
    "attempt to write a readonly database": errno.EROFS,
    "unable to open database file": errno.EACCES,
}

log = logging.getLogger(__name__)
# MLflow logs a failed SQLite statement with its traceback, then raises it: the stage says it
# once, as one line (store_failure) or as the traceback of what it raised.
logging.getLogger("mlflow.store.db.utils").addFilter(
    lambda record: not str(record.msg).startswith("SQLAlchemy database error")
)


def store_failure(error: BaseException) -> PipelineError | None:
    """The one line for a write the MLflow store refused, naming the store's file (mlflow.db:
    full or read-only) or artifact folder (mlartifacts/, for an OSError raised in MLflow's
    artifact repository) and the fix; None for any other error."""
    uri = mlflow.get_tracking_uri()
    database = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    link: BaseException | None = error
    while link is not None and not isinstance(link, PipelineError):
        said = [code for say, code in SQLITE_REFUSALS.items() if say in str(link).lower()]
        # "unable to open" also means a folder that is not there: no refusal of the place.
        if database is not None and said and (said[0] != errno.EACCES or _unwritable(database)):
            return write_failure(database, OSError(said[0], str(link)), STORE_ELSEWHERE)
        if isinstance(link, OSError) and _raised_in("mlflow.store.artifact", link):
            target = link.filename2 or link.filename
            folder = database.parent / ARTIFACTS_FOLDER if database else Path(target or ".")
            return write_failure(folder, link, STORE_ELSEWHERE)
        link = link.__cause__ or link.__context__
    return None


def _unwritable(database: Path) -> bool:
    return database.parent.is_dir() and not os.access(database.parent, os.W_OK)


def _raised_in(package: str, error: BaseException) -> bool:
    traceback = error.__traceback__
    while traceback is not None:
        if traceback.tb_frame.f_globals.get("__name__", "").startswith(package):
            return True
        traceback = traceback.tb_next
    return False


@contextmanager
def store_errors() -> Iterator[None]:
    """Turn a write the MLflow store refused in the block (or the decorated function) into its
    one line (`store_failure`)."""
    try:
        yield
    except Exception as error:
        failure = store_failure(error)
        if failure is None:
            raise
        raise failure from error


def failure_reason(error: BaseException) -> str:
    """A failed run's `failure_reason`: the line the stage ends with for a PipelineError (a
    refused store write included), else the error's type and message."""
    error = store_failure(error) or error
    return str(error) if isinstance(error, PipelineError) else f"{type(error).__name__}: {error}"


def _with_store_errors(
    generator: Callable[..., Iterator[Any]],
) -> Callable[..., Iterator[Any]]:
    """`store_errors` around a generator's every step: a run's start and end write too."""

    @functools.wraps(generator)
    def steps(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with store_errors():
            return (yield from generator(*args, **kwargs))

    return steps


def repo_root() -> Path:
    """The repository whose store the runs go to: DVC's DVC_ROOT, else where stages start.

    `dvc exp run --temp/--queue` runs stages in a copy under <repo>/.dvc/tmp/exps/ and sets
    DVC_ROOT to the repository it came from; their runs belong in that repository's store, not
    in one deleted with the copy.
    """
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri(configured: str | None = None) -> str:
    if configured:
        return configured
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / STORE_FILE}"


def experiment_name(task: str, prefix: str = "") -> str:
    """The MLflow experiment of task `task`, and the name its champion is registered under:
    tracking.experiment_prefix + task ("acme-" + "mnist"). Every name given to MLflow comes from
    here."""
    return prefix + task


@store_errors()
def connect(uri: str) -> None:
    """Point MLflow at store `uri`. A tracking server that does not answer stops the stage at
    once with one line: MLflow itself would retry for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES,
    with backoff) and then end in a traceback."""
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:"):
        open_sqlite_store(uri)
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        # Any answer, even an error status (a proxy, a server wanting credentials), means the
        # server is there; MLflow's own requests then report what is wrong with them.
        requests.get(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S).close()
    except requests.exceptions.SSLError:
        return  # MLflow may trust certificates (MLFLOW_TRACKING_SERVER_CERT_PATH) this does not
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as error:
        if isinstance(error, requests.exceptions.Timeout):
            reason = f"no answer in {PROBE_TIMEOUT_S:.0f} s"
        else:
            found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(error))
            reason = found.group(1).strip().lower() if found else "cannot connect"
        raise PipelineError(
            f"MLflow tracking server {uri} is unreachable ({reason}); start it "
            "(./dev.sh team-server) or set MLFLOW_TRACKING_URI / tracking.uri to a running one"
        ) from None


def open_sqlite_store(uri: str) -> None:
    """Open SQLite store `uri`, creating its tables if new, under a lock every stage takes.

    MLflow's tracking store creates and migrates a new database's tables without a lock, so
    stages starting together on a new mlflow.db (the jobs of a parallel sweep, experiments run
    by `dvc queue start -j 2`) raced and failed: "table experiments already exists", "Online
    migration expected to match one row" (2 or 3 of 4 processes, every time). Once the tables
    exist, MLflow's own 20 s SQLite busy timeout carries concurrent writers: 8 processes logging
    20 runs each at once, 2 cores, lost nothing and saw no "database is locked".
    """
    import fcntl
    import tempfile

    # Imported first, so that the lock is held only while the store opens: 0.05 s for an existing
    # one, about 1 s for a new one (0.6 s more with the import inside).
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

    # One lock for every store of this user, in the temp folder: none lands in the repository,
    # and one file per store would pile up (each test makes its own); stages opening other
    # stores at the same moment wait that briefly.
    lock_file = Path(tempfile.gettempdir()) / f"pipeline-mlflow-init-{os.getuid()}.lock"
    with open(lock_file, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            # MLflow keeps the store it opens here for the process: this is its only
            # initialisation.
            mlflow.MlflowClient(uri).search_experiments(max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@store_errors()
def use_experiment(task: str, configured_uri: str | None = None, prefix: str = "") -> str:
    """Point MLflow at the store and at task `task`'s experiment (`experiment_name`, returned),
    ending the runs that killed processes left RUNNING there (`end_orphans`).
    A new experiment in an SQLite store keeps its artifacts in mlartifacts/ beside the database
    file, an absolute path, wherever the stage runs from; a server store places them itself."""
    uri = tracking_uri(configured_uri)
    connect(uri)
    experiment = experiment_name(task, prefix)
    if mlflow.get_experiment_by_name(experiment) is None:
        location = None
        if uri.startswith("sqlite:///"):
            database = Path(uri.removeprefix("sqlite:///")).resolve()
            location = (database.parent / ARTIFACTS_FOLDER / experiment).as_uri()
        # Another process may create it first: then it exists, which is all that is needed.
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            mlflow.create_experiment(
                experiment,
                artifact_location=location,
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
    existing = mlflow.set_experiment(experiment)
    # Experiments made before the tag, or by hand. A kind the UI only guessed (`*_inferred`,
    # `no_inferred_type`) is replaced; one somebody chose is kept.
    kind = existing.tags.get(EXPERIMENT_KIND_TAG)
    if kind is None or "inferred" in kind:
        mlflow.set_experiment_tag(EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    end_orphans(existing.experiment_id)
    return experiment


def system_metrics(every_seconds: float | None) -> bool:
    """Whether the next run started records MLflow's system metrics: with `every_seconds`, it
    does, sampled that often (MLflow's default, 10 s, misses most of a short run)."""
    if every_seconds is None:
        return False
    mlflow.set_system_metrics_sampling_interval(every_seconds)
    return True


@contextmanager
@_with_store_errors
def run(
    name: str,
    tags: dict[str, str],
    run_id: str | None = None,
    system_metrics_every: float | None = None,
) -> Iterator[Any]:
    """An MLflow run (a new one, or `run_id` resumed) that ends with the block's outcome, with
    system metrics sampled every `system_metrics_every` seconds if given.

    Only for the stage that owns the run (train, tune resuming its own search): resuming sets
    the run's status and end time anew. Other stages add to a run with `add_to_run`.
    """
    active = None
    try:
        with interrupts.deferred():  # MLflow makes the run's record before it hands it over
            active = mlflow.start_run(
                run_id=run_id,
                run_name=None if run_id else name,
                tags={**tags, **owner_tags()},
                log_system_metrics=system_metrics(system_metrics_every),
            )
        yield active
    except KeyboardInterrupt:
        if active is not None:
            end_open_runs(active.info.run_id, RunStatus.KILLED, "interrupted")
        raise
    except BaseException as error:
        if active is not None:
            end_open_runs(active.info.run_id, RunStatus.FAILED, failure_reason(error))
        raise
    with interrupts.deferred():
        if run_id is not None and "failure_reason" in mlflow.get_run(run_id).data.tags:
            # The earlier attempt's reason: the run now ends FINISHED, and a FINISHED run with
            # a failure_reason would say it failed.
            mlflow.MlflowClient().delete_tag(run_id, "failure_reason")
        mlflow.end_run()


def owner_tags() -> dict[str, str]:
    """The process that owns a run, on which machine: how `end_orphans` tells a run whose
    process died (SIGKILL runs no handler) from one still going."""
    import psutil

    me = psutil.Process()
    return {
        OWNER_HOST: socket.gethostname(),
        OWNER_PID: str(me.pid),
        OWNER_STARTED: f"{me.create_time():.3f}",  # a pid can be taken again by another process
    }


def end_orphans(experiment_id: str) -> None:
    """End KILLED, with the reason, the experiment's runs left RUNNING by a process of this
    machine that is gone: killed outright (SIGKILL, out of memory) or crashed, it could not
    end them. Runs of live processes and of other machines are left alone."""
    import psutil

    client = mlflow.MlflowClient()
    host = socket.gethostname()
    running = client.search_runs(
        [experiment_id],
        f"attributes.status = 'RUNNING' and tags.`{OWNER_HOST}` = '{host}'",
        max_results=1000,
    )
    for stale in running:
        pid, started = stale.data.tags.get(OWNER_PID), stale.data.tags.get(OWNER_STARTED)
        if not (pid and started):
            continue
        try:
            alive = abs(psutil.Process(int(pid)).create_time() - float(started)) < 1.0
        except psutil.NoSuchProcess:
            alive = False
        if alive:
            continue
        client.set_tag(
            stale.info.run_id,
            "failure_reason",
            f"its process (pid {pid} on {host}) ended without ending the run: killed "
            "(SIGKILL, out of memory) or crashed",
        )
        client.set_terminated(stale.info.run_id, "KILLED")


def require_run(run_id: str, named_in: Path) -> None:
    """Stop with one line if run `run_id`, named in file `named_in`, is not in the store in use
    (models trained against another store), before any work that would be lost."""
    from pipeline.errors import DataError

    try:
        mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException as error:
        raise DataError(
            f"{named_in}: MLflow run {run_id} is not in the store {mlflow.get_tracking_uri()} "
            "(trained against another store?); train the model again with this one"
        ) from error


@store_errors()
def add_to_run(
    run_id: str, metrics: dict[str, float] | None = None, tags: dict[str, str] | None = None
) -> None:
    """Log metrics and tags to run `run_id` (finished or not) without reopening it, so that its
    status and end time stay those of the stage that made it, whatever happens here."""
    now = int(time.time() * 1000)
    mlflow.MlflowClient().log_batch(
        run_id,
        metrics=[Metric(key, float(value), now, 0) for key, value in (metrics or {}).items()],
        tags=[RunTag(key, str(value)) for key, value in (tags or {}).items()],
    )


@store_errors()
def log_split(
    run_id: str, split_file: Path, data: Split, parts: Sequence[str] = ("train", "val")
) -> None:
    """Log parts of a split ("train", "val", "test") as dataset inputs of run `run_id`: named
    `<task>-<part>` (the task being the split file's stem), in context training, validation or
    test, with the split file as source and a digest of the part's whole content."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    unknown = sorted(set(parts) - set(SPLIT_PARTS))
    if unknown:
        raise ValueError(f"log_split: unknown part(s) {unknown}; known: {list(SPLIT_PARTS)}")
    source = str(Path(split_file).resolve())
    inputs = []
    for part in parts:
        with warnings.catch_warnings():
            # MLflow registers its local-file source class twice and warns that a path could be
            # either of them; they are the same class.
            warnings.filterwarnings("ignore", message="The specified dataset source can be")
            dataset = mlflow.data.from_numpy(
                getattr(data, f"x_{part}"),
                targets=getattr(data, f"y_{part}"),
                source=source,
                name=f"{Path(split_file).stem}-{part}",
                digest=content_digest(getattr(data, f"x_{part}"), getattr(data, f"y_{part}")),
            )
        inputs.append(
            DatasetInput(
                dataset._to_mlflow_entity(),
                tags=[InputTag(MLFLOW_DATASET_CONTEXT, SPLIT_PARTS[part])],
            )
        )
    client = mlflow.MlflowClient()
    try:
        client.log_inputs(run_id, datasets=inputs)
    except mlflow.exceptions.MlflowException as error:
        # MLflow's store looks a dataset up, then inserts it if new: two jobs of a parallel
        # sweep logging the same new dataset at once both insert, and one breaks the unique
        # constraint (SQLite and PostgreSQL alike). Its second try finds the other's dataset.
        if "unique constraint" not in str(error).lower():
            raise
        client.log_inputs(run_id, datasets=inputs)


def content_digest(*arrays: np.ndarray) -> str:
    """A short hash of the arrays' dtypes, shapes and every value.

    MLflow's own digest (from_numpy's default) hashes the shape and only the first 10000 values:
    for MNIST, under 13 images. MLflow files datasets by name and digest, so two different
    training parts that begin alike would pass for one. Hashing everything costs 0.12 s for
    MNIST's 60000x28x28 float32 training part.
    """
    import numpy as np

    digest = hashlib.sha256()
    for array in arrays:
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()[:16]


def end_open_runs(outer_id: str | None, status: int, reason: str) -> None:
    """End run `outer_id` and any run still open inside it (a trial cut short with its search);
    with None, every open run. A store that takes no more writes keeps them RUNNING: the
    stage's own error, not the store's refusal to record it, is what the stage ends with."""
    with interrupts.deferred():
        while (current := mlflow.active_run()) is not None:
            refused = None
            # end_run takes the run off MLflow's stack before it writes: tried whatever
            # set_tag did.
            for write in (
                functools.partial(mlflow.set_tag, "failure_reason", reason[:5000]),
                functools.partial(mlflow.end_run, RunStatus.to_string(status)),
            ):
                try:
                    write()
                except Exception as error:
                    refused = store_failure(error)
                    if refused is None:
                        raise
            if refused is not None:
                log.warning("run %s is left RUNNING: %s", current.info.run_id, refused)
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
    """Where a run came from: code version, data versions, DVC experiment, Hydra sweep, and
    Keras' backend and device."""
    tags = {"stage": stage, "git_commit": git_commit(), **backend.tags()}
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
    """The commit the run's code came from, with "-dirty" when the tracked files the run used
    differ from it; "unknown" outside git.

    The commit is DVC_EXP_BASELINE_REV under `dvc exp run` (the experiment's baseline), else
    HEAD. The files compared are those of the working copy the stage runs in: for `--temp` and
    `--queue`, DVC's copy under .dvc/tmp/exps/ (a git repository checked out at the baseline,
    with the experiment's changes and `-S` params applied on top), not the workspace it came
    from, which may have changed since. The pipeline's own tracked outputs (dvc.lock, reports/)
    do not count: `dvc repro` rewrites them before the last stage runs, which would mark every
    repro of a clean checkout dirty.
    """
    import tempfile

    paths = ("--", ".", ":(exclude)dvc.lock", ":(exclude)reports")
    try:
        commit = _git("rev-parse", "--verify", os.environ.get("DVC_EXP_BASELINE_REV") or "HEAD")
        # Working tree and index against the commit, whether or not HEAD is that commit.
        dirty = _git("diff", "--name-only", commit, *paths)
        if not dirty:
            # Again by content, through an index of the commit's own: DVC's queue applies `-S`
            # to a copy whose index already holds the edited file's size and time, so git's
            # own index took `lr: 0.01` -> `lr: 0.02` for no change at all.
            with tempfile.TemporaryDirectory() as scratch:
                fresh = {"GIT_INDEX_FILE": str(Path(scratch) / "index")}
                _git("read-tree", commit, env=fresh)
                dirty = _git("diff", "--name-only", *paths, env=fresh)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def _git(*args: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(
        ["git", *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path.cwd(),
        env={**os.environ, **(env or {})},
    ).stdout.strip()
