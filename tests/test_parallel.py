"""Parallel runs into one SQLite MLflow store: a Hydra sweep on the joblib launcher, and DVC
experiments queued and run two at a time, each with real processes (loky workers, DVC's queue
workers) starting together on a store that does not exist yet."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from conftest import all_runs, mlflow_client, stage_env
from test_distributed import runs_so_far

EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
QUEUE_TIMEOUT_S = 240  # DVC's queue has reported hangs (iterative/dvc#10398): fail, never hang
EXPERIMENTS = {"exp-a": "0.02", "exp-b": "0.05"}  # name -> model.optimizer.lr
# A -m sweep of the train stage on circles, two jobs at a time in joblib's worker processes.
JOBLIB_SWEEP = (
    "train",
    "-m",
    "hydra/launcher=joblib",
    "hydra.launcher.n_jobs=2",
    "experiment=circles/baseline",
)


def overlapping(runs: list) -> bool:
    """Whether some two of the runs were open at the same time."""
    spans = sorted((r.info.start_time, r.info.end_time) for r in runs)
    return any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))


@pytest.mark.slow
def test_a_joblib_sweep_runs_jobs_side_by_side_each_in_its_own_folder_and_run(
    run_stage: Callable[..., subprocess.CompletedProcess], circles_split: Path, project: Path
) -> None:
    rates = ["0.001", "0.01", "0.1", "0.03"]
    result = run_stage(
        *JOBLIB_SWEEP,
        f"model.optimizer.lr={','.join(rates)}",
        "train.epochs=2",
        "tracking.log_model=false",
        by_hand=True,
    )
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr

    runs = all_runs(mlflow_client(project))
    assert sorted(r.data.params["model.optimizer.lr"] for r in runs) == sorted(rates)
    assert [r.info.status for r in runs] == ["FINISHED"] * 4
    (sweep_id,) = {r.data.tags["hydra_sweep_id"] for r in runs}
    by_job = {r.data.tags["hydra_job_num"]: r for r in runs}
    assert sorted(by_job) == ["0", "1", "2", "3"]
    assert overlapping(runs), "the jobs ran one after another, not side by side"
    client = mlflow_client(project)
    for run in runs:
        for key in EPOCH_METRICS:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert steps == [0, 1], (run.data.tags["hydra_job_num"], key, steps)

    # Each job wrote its model under its own folder of the one sweep folder, and nothing went
    # to the pipeline's own models/.
    assert [p.name for p in (project / "multirun").iterdir()] == [sweep_id]
    for job, run in by_job.items():
        summary = project / "multirun" / sweep_id / job / "models/circles/baseline/run.json"
        assert json.loads(summary.read_text())["run_id"] == run.info.run_id
    assert not (project / "models").exists()


@pytest.mark.slow
def test_a_failed_job_of_a_joblib_sweep_fails_the_sweep_after_the_others_ran(
    run_stage: Callable[..., subprocess.CompletedProcess], circles_split: Path, project: Path
) -> None:
    # The failure happens in a loky worker, so only its result can tell the parent process.
    result = run_stage(
        *JOBLIB_SWEEP,
        "train.epochs=2,-1",  # job 1 fails its config check, job 0 trains
        "tracking.log_model=false",
        by_hand=True,
        check=False,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.count("error: train.epochs must be > 0, got -1") == 1, result.stderr
    assert "Traceback" not in result.stderr

    (run,) = all_runs(mlflow_client(project))
    assert run.info.status == "FINISHED"
    assert run.data.tags["hydra_job_num"] == "0"
    summary = project / "multirun" / run.data.tags["hydra_sweep_id"] / "0"
    summary /= "models/circles/baseline/run.json"
    assert json.loads(summary.read_text())["run_id"] == run.info.run_id


@pytest.mark.slow
@pytest.mark.parametrize("kill", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_joblib_sweep_ends_each_jobs_run_killed(
    circles_split: Path, project: Path, kill: signal.Signals
) -> None:
    # The jobs run in loky workers, which joblib kills (SIGKILL) as soon as the sweep's own
    # process is interrupted: their runs could not end themselves. A sweep killed outright
    # left its workers training on, then waiting for jobs.
    stage, *overrides = JOBLIB_SWEEP
    log = project / "sweep.log"
    with open(log, "w") as out:
        sweep = subprocess.Popen(
            [sys.executable, "-m", f"pipeline.{stage}", *overrides, "model.optimizer.lr=0.01,0.02"]
            + ["train.epochs=100000", "tracking.log_model=false"],
            cwd=project,
            env=stage_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    workers: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 180
        running: list = []
        while len(running) < 2 and sweep.poll() is None and time.monotonic() < deadline:
            time.sleep(1)
            running = [r for r in runs_so_far(project) if r.info.status == "RUNNING"]
        assert len(running) == 2, f"the jobs' runs did not both start:\n{log.read_text()[-3000:]}"
        workers = psutil.Process(sweep.pid).children(recursive=True)

        signalled = time.monotonic()
        sweep.send_signal(kill)
        sweep.wait(timeout=120)
        # What tells a worker killed (the sweep waited its STOP_GRACE_S) from one that left
        # without ending its run, should a run be left RUNNING (once in ci12, SIGTERM).
        when = f"the sweep exited {sweep.returncode} {time.monotonic() - signalled:.1f} s after"
        alive = [w.pid for w in workers if w.is_running()]
        assert sweep.returncode != 0, log.read_text()[-3000:]
        _, left = psutil.wait_procs(workers, timeout=60)  # their runs ended, they exit
        runs = all_runs(mlflow_client(project))
        assert [r.info.status for r in runs] == ["KILLED"] * 2, (
            f"{when}, leaving {alive} of {[w.pid for w in workers]}:\n{log.read_text()[-3000:]}"
        )
        # joblib's resource trackers ignore SIGTERM; they leave once their pipes close.
        assert not [w for w in left if "resource_tracker" not in " ".join(w.cmdline())]
    finally:  # a failed test must not leave a sweep training on
        with contextlib.suppress(psutil.NoSuchProcess):
            workers += psutil.Process(sweep.pid).children(recursive=True)
        sweep.kill()
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    # A hang guard, not a timing: `dvc queue start` alone took over 120 s at a load of 10.
    result = subprocess.run(
        ["dvc", *args], cwd=repo, env=stage_env(), capture_output=True, text=True, timeout=300
    )
    if check and result.returncode != 0:
        pytest.fail(f"dvc {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr}")
    return result


def queue_report(repo: Path) -> str:
    """What the queue says of itself and each experiment's log tail: a failure's explanation."""
    parts = [dvc(repo, "queue", "status", check=False).stdout]
    for name in EXPERIMENTS:
        log = dvc(repo, "queue", "logs", name, check=False)
        parts.append(f"--- {name}:\n{(log.stdout + log.stderr)[-2500:]}")
    return "\n".join(parts)


def wait_for_queue(repo: Path) -> None:
    """Until the queue has nothing queued or running; a failure after QUEUE_TIMEOUT_S."""
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    asked = time.monotonic()
    while True:
        # An experiment's git ref appears as it ends, for 5 ms of git; `dvc queue status` (half a
        # second of CPU the experiments want) is asked then, or now and again to catch failures.
        refs = subprocess.run(
            ["git", "for-each-ref", "--format=%(refname:lstrip=-1)", "refs/exps"],
            cwd=repo,
            capture_output=True,
            text=True,
        ).stdout.split()
        if set(refs) >= set(EXPERIMENTS) or time.monotonic() - asked > 15:
            if not re.search(r"\b(Queued|Running)\b", dvc(repo, "queue", "status").stdout):
                return
            asked = time.monotonic()
        if time.monotonic() > deadline:
            pytest.fail(f"queue unfinished after {QUEUE_TIMEOUT_S} s:\n{queue_report(repo)}")
        time.sleep(1)


@pytest.fixture
def circles_repo(project: Path) -> Path:
    """The project as a git + DVC repository whose circles baseline trains for two epochs."""
    preset = project / "conf/experiment/circles/baseline.yaml"
    preset.write_text(re.sub(r"epochs: \d+", "epochs: 2", preset.read_text()))
    tracking = project / "conf/tracking/default.yaml"
    tracking.write_text(re.sub(r"log_model: true", "log_model: false", tracking.read_text()))
    (project / ".gitignore").write_text("/mlflow.db\n/mlartifacts/\n")
    env = stage_env()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for command in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
        ["git", "add", "-A"],
        [*git, "commit", "-qm", "circles"],
    ):
        subprocess.run(command, cwd=project, env=env, check=True, capture_output=True)
    return project


@pytest.mark.slow
def test_queued_dvc_experiments_run_two_at_a_time_each_into_its_own_run(
    circles_repo: Path,
) -> None:
    repo = circles_repo
    for name, lr in EXPERIMENTS.items():
        dvc(
            repo,
            "exp",
            "run",
            "--queue",
            "-n",
            name,
            "-S",
            f"conf/experiment/circles/baseline.yaml:model.optimizer.lr={lr}",
            "train@circles-baseline",  # with fetch@circles and split@circles before it
        )
    dvc(repo, "queue", "start", "-j", "2")
    try:
        wait_for_queue(repo)
    finally:
        # Its workers would otherwise wait for more experiments after the test.
        dvc(repo, "queue", "stop", "--kill", check=False)

    shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    experiments = [e for row in shown for e in row.get("experiments") or []]
    states = {e["name"]: e["executor"]["state"] for e in experiments}
    assert states == dict.fromkeys(EXPERIMENTS, "success"), queue_report(repo)
    for experiment in experiments:
        (rev,) = experiment["revs"]
        params = rev["data"]["params"]["conf/experiment/circles/baseline.yaml"]["data"]
        assert str(params["model"]["optimizer"]["lr"]) == EXPERIMENTS[experiment["name"]]

    runs = all_runs(mlflow_client(repo))
    assert {r.data.tags.get("dvc_exp_name"): r.data.params["model.optimizer.lr"] for r in runs} == (
        EXPERIMENTS
    )
    assert [r.info.status for r in runs] == ["FINISHED"] * 2
    assert overlapping(runs), "the queue ran its experiments one after another"
    # Each ran the baseline commit with its own -S edit on top, and says so.
    baseline = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert [r.data.tags["git_commit"] for r in runs] == [f"{baseline}-dirty"] * 2
