"""One search on several workers (tuner.workers, Keras Tuner's distributed mode): real chief and
worker processes on loopback, a worker killed mid-trial, and set-ups refused in one line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import all_runs, mlflow_client, stage_env
from test_tune import runs_by_stage

from pipeline import tracking
from pipeline.search import worker
from pipeline.search.chief import OracleServer, abandon_silent
from pipeline.search.worker import LOOPBACK, ORACLE_IP, ORACLE_PORT, TUNER_ID, Worker

DISTRIBUTED = (
    "experiment=circles/tuned",
    "tuner=random",
    "tuner.max_trials=4",
    "tuner.max_epochs=2",
    "tuner.cv_folds=null",
    "tuner.workers=2",
)
# Long enough trials (no early stopping) that a kill lands inside one.
SLOW = (
    *DISTRIBUTED[:2],
    "tuner.max_trials=3",
    "tuner.max_epochs=30",
    "tuner.early_stopping_patience=null",
    "tuner.cv_folds=null",
)


def runs_so_far(project: Path) -> list:
    """The runs in the project's store while stages write to it: none before they make it, and
    read only once made (under the stages' own lock: not while MLflow creates its tables)."""
    store = project / "mlflow.db"
    if not store.exists():
        return []
    tracking.open_sqlite_store(f"sqlite:///{store}")
    return all_runs(mlflow_client(project))


def wait_until_in_a_trial(
    tuner_id: str, project: Path, chief: subprocess.Popen, output: Callable[[], str]
) -> None:
    """Until worker `tuner_id` is inside a trial (its trial run RUNNING); a failure, showing
    `output()`, if the chief ends first or 300 s pass."""
    deadline = time.monotonic() + 300
    while not any(
        r.data.tags.get("worker") == tuner_id and r.info.status == "RUNNING"
        for r in runs_so_far(project)
    ):
        assert chief.poll() is None, output()
        assert time.monotonic() < deadline, f"worker {tuner_id} never started a trial:\n{output()}"
        time.sleep(0.3)


def assert_its_trial_ran_again(project: Path, tuner_id: str, reason: str) -> None:
    """The search of SLOW finished, with the trial run of the worker that died ended KILLED
    for `reason`, and each of the three trials FINISHED once: the lost one run again."""
    parent, runs = runs_by_stage(project)
    assert parent.info.status == "FINISHED"
    (killed,) = [r for r in runs if r.info.status != "FINISHED"]
    assert killed.info.status == "KILLED"
    assert killed.data.tags["worker"] == tuner_id
    assert killed.data.tags["failure_reason"] == reason
    finished = sorted(r.data.tags["trial_id"] for r in runs if r.info.status == "FINISHED")
    assert finished == ["0", "1", "2"]
    assert parent.data.metrics["trials"] == 3


def worker_pids(chief: int) -> dict[str, int]:
    """The chief's worker processes by tuner id, read from /proc."""
    children = Path(f"/proc/{chief}/task/{chief}/children").read_text().split()
    pids = {}
    for pid in children:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:  # already gone
            continue
        for entry in environ:
            if entry.startswith(b"KERASTUNER_TUNER_ID="):
                pids[entry.split(b"=", 1)[1].decode()] = int(pid)
    return pids


@pytest.mark.slow
def test_two_workers_run_every_trial_once_under_one_search_run(
    run_stage, circles_split: Path, project: Path
) -> None:
    run_stage("tune", *DISTRIBUTED)

    parent, trials = runs_by_stage(project)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["trials"] == 4
    assert [r.data.tags["trial_id"] for r in trials] == ["0", "1", "2", "3"]  # none twice
    assert {r.data.tags["worker"] for r in trials} == {"tuner0", "tuner1"}
    assert {r.info.status for r in trials} == {"FINISHED"}
    assert all("score" in r.data.metrics for r in trials)
    best = (project / "models/circles/best_hparams.yaml").read_text()
    assert f"search run {parent.info.run_id}" in best
    # A worker's count is not part of the search: run again on one, it is the finished search.
    again = run_stage("tune", *DISTRIBUTED[:-1])
    assert f"already finished (MLflow run {parent.info.run_id})" in again.stdout

    # A worker started by hand with another config than its chief's.
    result = run_stage(
        "tune",
        *DISTRIBUTED,
        "search_space.model.dropout.max=0.2",
        check=False,
        KERASTUNER_TUNER_ID="tuner7",
        KERASTUNER_ORACLE_IP="127.0.0.1",
        KERASTUNER_ORACLE_PORT="1",
        PIPELINE_SEARCH_RUN_ID=parent.info.run_id,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: this worker's search differs from its chief's (run {parent.info.run_id}) in its"
        " config: start workers with the chief's config, data and code"
    )


@pytest.mark.slow
def test_a_worker_killed_mid_trial_leaves_it_killed_and_the_others_finish_the_search(
    run_stage, circles_split: Path, project: Path
) -> None:
    chief = subprocess.Popen(
        [sys.executable, "-m", "pipeline.tune", *SLOW, "tuner.workers=2", "hydra.run.dir=."],
        cwd=project,
        env=stage_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_until_in_a_trial("tuner1", project, chief, lambda: chief.communicate()[0][-4000:])
    pids = worker_pids(chief.pid)
    os.kill(pids["tuner1"], signal.SIGKILL)
    output, _ = chief.communicate(timeout=300)
    assert chief.returncode == 0, output[-4000:]

    assert_its_trial_ran_again(project, "tuner1", "worker tuner1 died (killed by SIGKILL)")
    assert (project / "models/circles/best_hparams.yaml").exists()


@pytest.mark.slow
def test_a_silent_worker_on_another_machine_is_taken_for_dead_and_its_trial_run_again(
    circles_split: Path, project: Path
) -> None:
    # A chief for workers started by hand, as on other machines: it cannot watch their
    # processes, only hear them.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])

    def start(tuner_id: str, *extra: str) -> subprocess.Popen:
        with open(project / f"{tuner_id}.log", "w") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "pipeline.tune", *SLOW, *extra, "hydra.run.dir=."],
                cwd=project,
                env=stage_env(
                    KERASTUNER_TUNER_ID=tuner_id,
                    KERASTUNER_ORACLE_IP="127.0.0.1",
                    KERASTUNER_ORACLE_PORT=port,
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log_of(tuner_id: str) -> str:
        return (project / f"{tuner_id}.log").read_text()[-4000:]

    chief = start("chief", "tuner.worker_timeout_s=10")
    workers = {tuner_id: start(tuner_id) for tuner_id in ("tuner0", "tuner1")}
    wait_until_in_a_trial("tuner1", project, chief, lambda: log_of("chief") + log_of("tuner1"))
    workers["tuner1"].kill()  # no last words: its trial run stays RUNNING
    assert chief.wait(timeout=300) == 0, log_of("chief")
    assert workers["tuner0"].wait(timeout=60) == 0, log_of("tuner0")

    assert_its_trial_ran_again(project, "tuner1", "worker tuner1 went silent for 10 s")


def test_an_oracle_port_in_use_stops_the_chief_in_one_line(run_stage, project: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_stage(
            "tune",
            *DISTRIBUTED,
            check=False,
            KERASTUNER_TUNER_ID="chief",
            KERASTUNER_ORACLE_IP="127.0.0.1",
            KERASTUNER_ORACLE_PORT=str(port),
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: the oracle cannot listen on 127.0.0.1:{port}: the port is in use (another "
        "search's chief?) or the address is not this machine's; set KERASTUNER_ORACLE_PORT to "
        "a free port"
    )
    assert not (project / "mlflow.db").exists()  # before any work


def test_half_a_distributed_set_up_is_refused_in_one_line(run_stage) -> None:
    result = run_stage("tune", *DISTRIBUTED, check=False, KERASTUNER_TUNER_ID="tuner0")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: distributed search: KERASTUNER_TUNER_ID set but not KERASTUNER_ORACLE_IP, "
        "KERASTUNER_ORACLE_PORT"
    )


def test_a_worker_is_heard_through_its_trial_and_one_gone_quiet_gives_it_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heartbeat in-process, on a real oracle served over loopback: trials last longer than
    any timeout a test could wait for, so the end-to-end test alone could not tell a beating
    worker from one that only finished quickly."""
    import keras_tuner as kt
    from keras_tuner.src.distribute.oracle_client import OracleClient

    monkeypatch.setattr(worker, "HEARTBEAT_S", 0.05)
    space = kt.HyperParameters()
    space.Float("x", 0, 1)
    oracle = kt.oracles.RandomSearchOracle(
        objective=kt.Objective("score", "max"), max_trials=2, hyperparameters=space, seed=1
    )
    oracle._set_project_dir(str(tmp_path), "search")
    server = OracleServer(LOOPBACK, 0)
    server.start(oracle)
    monkeypatch.setenv(ORACLE_IP, LOOPBACK)
    monkeypatch.setenv(ORACLE_PORT, str(server.port))
    monkeypatch.setenv(TUNER_ID, "tuner0")

    class KerasTuners:  # what Worker's hooks hand on to
        def on_trial_begin(self, trial: object) -> None:
            pass

        def on_trial_end(self, trial: object) -> None:
            pass

    class Tuner(Worker, KerasTuners):
        pass

    try:
        tuner = Tuner()
        tuner.oracle = OracleClient(oracle)
        trial = tuner.oracle.create_trial("tuner0")
        tuner.on_trial_begin(trial)
        time.sleep(0.5)  # ten beats
        assert abandon_silent(oracle, server.servicer.heard, 0.25) == {}
        tuner.on_trial_end(trial)  # no more beats, yet still its trial
        time.sleep(0.5)
        given_up = abandon_silent(oracle, server.servicer.heard, 0.25)
        assert given_up == {"tuner0": trial.trial_id}
        assert tuner.oracle.create_trial("tuner1").trial_id == trial.trial_id  # run again
    finally:
        server.stop()
