"""MLflow's store: which one runs go to, its experiments, and the runs killed processes left.

A write the store refuses (SQLite's file or disk full or read-only, an artifact that cannot be
written) stops the stage with one line naming the store (`store_failure`). Every run carries the
process that owns it (`owner_tags`), so the next stage on that machine ends KILLED the runs of a
process killed outright (`end_orphans`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow

from pipeline.core.errors import PipelineError
from pipeline.core.files import write_failure
from pipeline.tracking.auth import check_credentials, is_forbidden, refusal

if TYPE_CHECKING:
    pass


STORE_FILE = "mlflow.db"


ARTIFACTS_FOLDER = "mlartifacts"


PROBE_TIMEOUT_S = 10.0  # how long a tracking server may take to answer before a stage gives up


# Without it MLflow's UI opens an experiment on its GenAI overview instead of its training runs.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"


EXPERIMENT_KIND = "custom_model_development"


# Tags of the process that owns a run (owner_tags).
OWNER_HOST, OWNER_PID, OWNER_STARTED = "owner.host", "owner.pid", "owner.started"


# Where `mlflow ui` serves a local store by default (README: ./dev.sh mlflow ui ...).
LOCAL_UI = "http://127.0.0.1:5000"


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
        if is_forbidden(link):  # a registered model, say, that this user may not change
            return refusal(uri, "a write (" + str(link).splitlines()[0][:200] + ")")
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


def runs_page(experiment_id: str, search_filter: str = "") -> str:
    """The MLflow UI's Runs tab of an experiment, showing the runs `search_filter` selects: on
    the tracking server in use, else on `mlflow ui` serving the local store. A bare experiment
    link lands on whichever tab the UI picks for its kind."""
    import urllib.parse

    uri = mlflow.get_tracking_uri()
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI
    query = f"?searchFilter={urllib.parse.quote(search_filter)}" if search_filter else ""
    return f"{base}/#/experiments/{experiment_id}/runs{query}"


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
    check_credentials(uri, PROBE_TIMEOUT_S)


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
    # `no_inferred_type`) is replaced; one somebody chose is kept. Written every time: on a
    # server with users, the write a user may not make stops the stage here, before any work.
    kind = existing.tags.get(EXPERIMENT_KIND_TAG)
    if kind is None or "inferred" in kind:
        kind = EXPERIMENT_KIND
    try:
        mlflow.set_experiment_tag(EXPERIMENT_KIND_TAG, kind)
    except mlflow.exceptions.MlflowException as error:
        if not is_forbidden(error):
            raise
        raise refusal(uri, f"experiment {experiment!r}") from None
    end_orphans(existing.experiment_id)
    return experiment


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
