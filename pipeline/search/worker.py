"""One search on several processes, the workers' side: Keras Tuner's distributed mode.

The chief (search/chief.py) serves the search's oracle (which trial comes next, the scores so
far) over gRPC and runs no trials; each worker asks it for a trial, trains it, logs it as a
nested MLflow run under the chief's search run and reports the score back. Keras Tuner picks a
process's part from the environment: KERASTUNER_TUNER_ID ("chief", or a worker's own id such as
"tuner0"), KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT. `tuner.workers=N` with none of them
set starts the chief in this process and N workers as its subprocesses, on a free loopback port.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import mlflow

from pipeline.core import interrupts
from pipeline.core.errors import ConfigError, TrainingError

TUNER_ID = "KERASTUNER_TUNER_ID"


ORACLE_IP = "KERASTUNER_ORACLE_IP"


ORACLE_PORT = "KERASTUNER_ORACLE_PORT"


SEARCH_RUN = "PIPELINE_SEARCH_RUN_ID"  # a worker's search run, set by a chief that starts it


CHIEF_PID = "PIPELINE_CHIEF_PID"  # set by a chief for the workers it starts on this machine


LOOPBACK = "127.0.0.1"


POLL_S = 0.5


HEARTBEAT_S = 2.0  # how often a worker tells its chief, mid-trial, that it is alive


# Identity tags a worker compares with its chief's search run, and what each part is.
IDENTITY_PARTS = {
    "search_identity.config": "config",
    "search_identity.data": "data",
    "search_identity.code": "code",
}


def role(workers: int) -> str:
    """This process's part: "single" (no distribution), "local" (a chief starting `workers`
    workers here), "chief" (a chief for workers started elsewhere) or "worker"."""
    named = [name for name in (TUNER_ID, ORACLE_IP, ORACLE_PORT) if os.environ.get(name)]
    if named:
        missing = sorted({TUNER_ID, ORACLE_IP, ORACLE_PORT} - set(named))
        if missing:
            raise ConfigError(
                f"distributed search: {', '.join(named)} set but not {', '.join(missing)}"
            )
        # Keras Tuner's own test (distribute/utils.py: is_chief_oracle).
        return "chief" if "chief" in os.environ[TUNER_ID] else "worker"
    return "local" if workers > 1 else "single"


class Worker:
    """Mixed into a worker's tuner. While it runs a trial, a thread asks the chief for that
    trial every HEARTBEAT_S: Keras Tuner's workers call the oracle only between trials, so a
    chief could not tell a long trial from a worker that died in it on another machine. Told
    to wait (an idle trial), it asks again POLL_S later, where Keras Tuner would at once."""

    oracle: Any

    def pre_create_trial(self) -> None:
        if getattr(self, "waiting", False):
            time.sleep(POLL_S)
        self.waiting = True
        super().pre_create_trial()  # type: ignore[misc]

    def on_trial_begin(self, trial: Any) -> None:
        import grpc

        self.waiting = False
        self.beating = threading.Event()
        oracle, beating = self.oracle, self.beating

        def beat() -> None:
            while not beating.wait(HEARTBEAT_S):
                with contextlib.suppress(grpc.RpcError):  # one missed beat is not silence
                    oracle.get_trial(trial.trial_id)

        threading.Thread(target=beat, name=f"heartbeat-{trial.trial_id}", daemon=True).start()
        super().on_trial_begin(trial)  # type: ignore[misc]

    def on_trial_end(self, trial: Any) -> None:
        self.beating.set()
        super().on_trial_end(trial)  # type: ignore[misc]


def watch_chief() -> None:
    """In a worker started by a chief on this machine: die with it. A worker whose chief is
    gone would otherwise wait up to an hour on the oracle (Keras Tuner's gRPC timeout)."""
    chief = os.environ.get(CHIEF_PID)
    if chief and not interrupts.die_with(int(chief)):
        raise TrainingError("the chief of this worker has already exited")


def wait_for_oracle() -> None:
    """Block until the chief's oracle answers: it serves only once its search run exists."""
    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_client import TIMEOUT

    address = f"{os.environ[ORACLE_IP]}:{os.environ[ORACLE_PORT]}"
    # gRPC's reconnection backoff grows to 2 minutes; a local worker waits from before the
    # chief serves, and would then keep on waiting well after it does.
    backoff = [(f"grpc.{kind}_reconnect_backoff_ms", 250) for kind in ("initial", "min")]
    options = [*backoff, ("grpc.max_reconnect_backoff_ms", 1000)]
    with grpc.insecure_channel(address, options=options) as channel:
        stub = protos.get_service_grpc().OracleStub(channel)
        try:
            request = protos.get_service().GetSpaceRequest()
            stub.GetSpace(request, wait_for_ready=True, timeout=TIMEOUT)
        except grpc.RpcError as error:
            raise TrainingError(f"no oracle answered at {address}: {error.code().name}") from None


def search_run(identity_tags: dict[str, str], state_file: Path) -> str:
    """The chief's search run this worker logs its trials under: the one named in
    PIPELINE_SEARCH_RUN_ID, else for a chief on this machine the one in its search folder's
    state, else the running search run of this worker's identity. A worker whose config, data
    or code differ from its chief's would score other trials than the chief's: refused."""
    client = mlflow.MlflowClient()
    named = os.environ.get(SEARCH_RUN)
    if not named and os.environ.get(CHIEF_PID):
        wait_for_oracle()  # it serves once the state names its run
        named = json.loads(state_file.read_text())["parent_run_id"]
    if named:
        try:
            runs = [client.get_run(named)]
        except mlflow.exceptions.MlflowException:
            raise ConfigError(
                f"{SEARCH_RUN}={named}: no such run in {mlflow.get_tracking_uri()}"
            ) from None
    else:
        wait_for_oracle()
        digest = identity_tags["search_identity"]
        runs = mlflow.search_runs(
            filter_string=f"tags.search_identity = '{digest}' and attributes.status = 'RUNNING'",
            order_by=["start_time DESC"],
            output_format="list",
        ) or mlflow.search_runs(
            filter_string="tags.variant = 'search' and attributes.status = 'RUNNING'",
            order_by=["start_time DESC"],
            output_format="list",
        )
        if not runs:
            raise ConfigError(
                f"no search is running in {mlflow.get_tracking_uri()}: start the chief first, "
                "with the same tracking URI"
            )
    run = runs[0]
    theirs = run.data.tags
    if theirs.get("search_identity") != identity_tags["search_identity"]:
        differ = [
            part for tag, part in IDENTITY_PARTS.items() if theirs.get(tag) != identity_tags[tag]
        ]
        raise ConfigError(
            f"this worker's search differs from its chief's (run {run.info.run_id}) in its "
            f"{', '.join(differ) or 'identity'}: start workers with the chief's config, data "
            "and code"
        )
    return run.info.run_id
