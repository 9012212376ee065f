"""One search on several processes, the chief's side: the oracle served, its workers watched.

The chief here is not Keras Tuner's own serving loop (`oracle_chief.start_server`): that one
waits forever for a worker that died mid-trial (it never ends the trial) and can bind a port
another chief holds (gRPC's SO_REUSEPORT). This one watches its workers, puts a dead worker's
trial back for another to run, as a resumed search does, and refuses a port in use. Workers on
this machine are watched as processes; those elsewhere by a heartbeat: a worker asks the chief
for its trial every HEARTBEAT_S while it runs it, and one silent for tuner.worker_timeout_s is
taken for dead.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import mlflow

from pipeline.core import interrupts
from pipeline.core.errors import ConfigError, TrainingError
from pipeline.core.files import writing
from pipeline.search.worker import CHIEF_PID, LOOPBACK, ORACLE_IP, ORACLE_PORT, POLL_S, TUNER_ID

log = logging.getLogger(__name__)

WORKER_LOGS = "workers"  # in the search folder: each local worker's output


class OracleServer:
    """The oracle's gRPC server, bound at once (a port in use stops the search before any
    work), serving once `start` gives it the oracle."""

    def __init__(self, ip: str, port: int) -> None:
        import grpc
        from keras_tuner.src import protos
        from keras_tuner.src.distribute.oracle_chief import OracleServicer

        # Threads: a worker waiting on the oracle lock must not hold up the others' calls.
        # so_reuseport off: with it, a second chief binds the same port and workers split
        # between two oracles.
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.so_reuseport", 0)]
        )
        self.servicer = _heeding(OracleServicer)(None)
        protos.get_service_grpc().add_OracleServicer_to_server(self.servicer, self.server)
        address = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError:
            self.port = 0
        if not self.port:
            raise ConfigError(
                f"the oracle cannot listen on {address}: the port is in use (another search's "
                f"chief?) or the address is not this machine's; set {ORACLE_PORT} to a free port"
            )

    def start(self, oracle: Any) -> None:
        self.servicer.oracle = oracle
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=2).wait()


def _heeding(servicer_class: type) -> type:
    """Keras Tuner's servicer, noting when it last heard of each trial (`heard`, by trial id):
    its creation, a heartbeat, an update."""

    class Heeding(servicer_class):  # type: ignore[misc, valid-type]
        def __init__(self, oracle: Any) -> None:
            super().__init__(oracle)
            self.heard: dict[str, float] = {}

        def CreateTrial(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC's name)
            from keras_tuner.src import protos
            from keras_tuner.src.engine.trial import Trial, TrialStatus

            response = super().CreateTrial(request, context)
            trial = Trial.from_proto(response.trial)
            if trial.status == TrialStatus.STOPPED and trials_pending(self.oracle):
                # Not yet: a trial still running elsewhere comes back if its worker dies, and
                # then needs a worker. Idle, this one asks again (Worker.pre_create_trial).
                trial.status = TrialStatus.IDLE
                return protos.get_service().CreateTrialResponse(trial=trial.to_proto())
            self.heard[trial.trial_id] = time.monotonic()
            return response

        def GetTrial(self, request: Any, context: Any) -> Any:  # noqa: N802
            self.heard[request.trial_id] = time.monotonic()
            return super().GetTrial(request, context)

        def UpdateTrial(self, request: Any, context: Any) -> Any:  # noqa: N802
            self.heard[request.trial_id] = time.monotonic()
            return super().UpdateTrial(request, context)

    return Heeding


def _synchronized(function: Any) -> Any:
    """Keras Tuner's lock on the oracle (kt.synchronized), imported at the first call: Keras
    Tuner imports Keras, which must wait until the stage has set its backend."""

    @functools.wraps(function)
    def locked(*args: Any, **kwargs: Any) -> Any:
        import keras_tuner as kt

        return kt.synchronized(function)(*args, **kwargs)

    return locked


@_synchronized
def abandon_trial(oracle: Any, tuner_id: str) -> str | None:
    """Forget worker `tuner_id`; its unfinished trial, if any, goes back to be run again, as
    Oracle.reload does with the trials a killed search cut short. Returns that trial's id."""
    oracle.tuner_ids.discard(tuner_id)
    trial = oracle.ongoing_trials.pop(tuner_id, None)
    if trial is None:
        return None
    oracle._retry_queue.append(trial.trial_id)
    oracle.save()
    return trial.trial_id


@_synchronized
def abandon_silent(oracle: Any, heard: dict[str, float], timeout: float) -> dict[str, str]:
    """Abandon (as `abandon_trial`) the workers whose ongoing trial the chief has not heard of
    for `timeout` seconds; returns their trials' ids by worker."""
    now = time.monotonic()
    silent = [
        tuner_id
        for tuner_id, trial in oracle.ongoing_trials.items()
        if now - heard.setdefault(trial.trial_id, now) > timeout  # a reloaded trial: from now
    ]
    return {tuner_id: abandon_trial(oracle, tuner_id) for tuner_id in silent}


@_synchronized
def trials_pending(oracle: Any) -> bool:
    return bool(oracle._retry_queue or oracle.ongoing_trials)


@_synchronized
def all_done(oracle: Any) -> bool:
    """Keras Tuner's own end of a search (oracle_chief.exit_chief), for workers this chief does
    not watch: some worker was told to stop, and no trial or worker is left."""
    return not oracle.ongoing_trials and not oracle.tuner_ids and not oracle._retry_queue


def end_worker_runs(parent_run_id: str, tuner_id: str, reason: str) -> None:
    """End the trial runs a dead worker left RUNNING as KILLED."""
    client = mlflow.MlflowClient()
    stale = mlflow.search_runs(
        filter_string=(
            f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.worker = '{tuner_id}' "
            "and attributes.status = 'RUNNING'"
        )
    )
    for run_id in stale.get("run_id", []):
        client.set_tag(run_id, "failure_reason", reason)
        client.set_terminated(run_id, "KILLED")


def exit_reason(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
    return f"exit status {returncode}"


def last_error(log_file: Path) -> str:
    """The worker's own one-line error (the stage's `error: ...`), if it wrote one."""
    with contextlib.suppress(OSError):
        for line in reversed(log_file.read_text(errors="replace").splitlines()):
            if line.startswith("error: "):
                return line.removeprefix("error: ")
    return f"see {log_file}"


class LocalWorkers:
    """Workers started by this chief on this machine: subprocesses of the same stage command
    (its Hydra overrides, into the same job folder) with the Keras Tuner variables set; they
    read the search run from the search folder's state once the oracle answers. Stopped when
    the block ends, however it ends. None started for a `count` of 0."""

    def __init__(self, count: int, port: int, folder: Path) -> None:
        self.running: dict[str, subprocess.Popen] = {}
        self.count = count
        if not count:
            return
        from hydra.core.hydra_config import HydraConfig

        hydra = HydraConfig.get()
        self.command = [
            sys.executable,
            "-m",
            "pipeline.tune",
            *hydra.overrides.task,
            # The chief's job folder, so that a run by hand or a sweep job shares its paths.
            f"hydra.run.dir={Path(hydra.runtime.output_dir).resolve()}",
        ]
        self.env = {
            **os.environ,
            ORACLE_IP: LOOPBACK,
            ORACLE_PORT: str(port),
            CHIEF_PID: str(os.getpid()),
            "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
        }
        self.logs = folder / WORKER_LOGS
        with writing(self.logs):
            self.logs.mkdir(parents=True, exist_ok=True)
        self.parent_run_id = ""  # known once the chief's run is
        self.started = 0
        self.replaced_allowed = count  # replacements for workers killed from outside
        self.failures: list[str] = []
        self.stopped = 0  # workers the oracle told to stop: it had no trial left for them
        for _ in range(count):
            self.start_one()

    def __enter__(self) -> LocalWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start_one(self) -> None:
        tuner_id = f"tuner{self.started}"
        self.started += 1
        with open(self.logs / f"{tuner_id}.log", "w") as out:
            self.running[tuner_id] = subprocess.Popen(
                self.command,
                env={**self.env, TUNER_ID: tuner_id},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        log.info("started worker %s (pid %d)", tuner_id, self.running[tuner_id].pid)

    def check(self, oracle: Any) -> bool:
        """Reap the workers that ended; True once the search is over. A worker that died has
        its trial put back and its trial run ended KILLED; if no worker is left to run what is
        left, a new one is started for one killed from outside, else the search stops."""
        for tuner_id, process in list(self.running.items()):
            code = process.poll()
            if code is None:
                continue
            del self.running[tuner_id]
            if code == 0:
                self.stopped += 1
                continue
            why = exit_reason(code)
            trial_id = abandon_trial(oracle, tuner_id)
            end_worker_runs(self.parent_run_id, tuner_id, f"worker {tuner_id} died ({why})")
            if code > 0:
                self.failures.append(
                    f"worker {tuner_id} failed: {last_error(self.logs / f'{tuner_id}.log')}"
                )
            cut = f"; trial {trial_id} goes to another worker" if trial_id else ""
            log.warning("worker %s died (%s)%s", tuner_id, why, cut)
        if self.running:
            return False
        if not trials_pending(oracle) and self.stopped:
            return True
        if self.failures:
            raise TrainingError(self.failures[0])
        # Killed from outside (an OOM kill, by hand) after the others had stopped: its trial
        # still needs a worker. Bounded, lest a trial that kills its worker be retried forever.
        if self.replaced_allowed > 0:
            self.replaced_allowed -= 1
            self.start_one()
            return False
        raise TrainingError("every worker died with trials left; run the search again to resume")

    def stop(self) -> None:
        """Stop the workers still running: SIGTERM ends their trial runs KILLED."""
        interrupts.terminate(self.running.values())


def serve(
    tuner: Any,
    server: OracleServer,
    local: LocalWorkers,
    parent_run_id: str,
    worker_timeout_s: float,
) -> None:
    """Serve `tuner`'s oracle until the search is over: to the `local` workers, watched; with
    none, to workers started elsewhere (Keras Tuner's own end: all told to stop), any silent
    for `worker_timeout_s` mid-trial taken for dead."""
    tuner.save()  # what a restarted chief reloads, as Keras Tuner's chief does first
    local.parent_run_id = parent_run_id
    server.start(tuner.oracle)
    if not local.count:
        log.info(
            "oracle listening on port %d; start workers with %s=tuner0, tuner1, ..., %s=<this "
            "machine's address>, %s=%d",
            server.port, TUNER_ID, ORACLE_IP, ORACLE_PORT, server.port,
        )  # fmt: skip
    try:
        while True:
            time.sleep(POLL_S)
            if local.count:
                if local.check(tuner.oracle):
                    break
                continue
            heard = server.servicer.heard
            for tuner_id, trial_id in abandon_silent(tuner.oracle, heard, worker_timeout_s).items():
                why = f"worker {tuner_id} went silent for {worker_timeout_s:g} s"
                end_worker_runs(parent_run_id, tuner_id, why)
                log.warning("%s; trial %s goes to another worker", why, trial_id)
            if server.servicer.stop_triggered and all_done(tuner.oracle):
                break
    finally:
        local.stop()
        server.stop()
