"""What the runs record about the code they ran."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from conftest import ROOT, stage_env

from pipeline import tracking


def test_git_commit_is_dirty_for_code_changes_not_for_the_pipelines_own_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "reports").mkdir()
    for name in ("train.py", "dvc.lock", "reports/README.md"):
        (tmp_path / name).write_text("first\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    monkeypatch.chdir(tmp_path)

    for name in ("dvc.lock", "reports/README.md"):
        (tmp_path / name).write_text("rewritten by dvc repro\n")
    assert not tracking.git_commit().endswith("-dirty")

    (tmp_path / "train.py").write_text("edited\n")
    assert tracking.git_commit().endswith("-dirty")


def git_repo(path: Path, files: dict[str, str]) -> str:
    """A git repository at `path` with `files` committed; returns the commit, the same for the
    same files (its dates fixed: on a loaded machine two commits straddled a second)."""
    date = "2026-01-01T00:00:00+0000"
    env = {**os.environ, "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=path, env=env, check=True, capture_output=True, text=True
        ).stdout.strip()

    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text)
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    return git("rev-parse", "HEAD")


def test_under_dvc_exp_the_run_records_its_own_copy_and_the_baseline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dvc exp run --temp/--queue` runs in a copy (a git repository checked out at the
    baseline, the experiment's changes on top) and sets DVC_ROOT to the workspace it came from:
    the commit and its dirty state are the copy's, the store the workspace's."""
    baseline = git_repo(tmp_path / "workspace", {"train.py": "first\n"})
    copy = tmp_path / "workspace/.dvc/tmp/exps/standalone/tmpabc"
    assert git_repo(copy, {"train.py": "first\n"}) == baseline
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "workspace"))
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", baseline)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(copy)

    (tmp_path / "workspace/train.py").write_text("edited in the workspace since\n")
    assert tracking.git_commit() == baseline
    (copy / "train.py").write_text("the experiment's change\n")
    assert tracking.git_commit() == baseline + "-dirty"
    assert tracking.tracking_uri() == f"sqlite:///{(tmp_path / 'workspace').resolve()}/mlflow.db"

    # The baseline, not whatever HEAD the copy has moved to.
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "exp"],
        cwd=copy,
        check=True,
    )
    assert tracking.git_commit() == baseline + "-dirty"


def test_a_real_dvc_exp_run_temp_records_the_copy_and_the_experiment(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    probe = tmp_path / "probe.json"
    code = (
        "import json, os; from pipeline import tracking; "
        f"open({str(probe)!r}, 'w').write(json.dumps(["
        "tracking.git_commit(), str(tracking.repo_root()), os.environ.get('DVC_EXP_NAME')]))"
    )
    stage = {"cmd": f'{sys.executable} -c "{code}"', "params": ["a"]}
    git_repo(repo, {"params.yaml": "a: 1\n", "dvc.yaml": json.dumps({"stages": {"probe": stage}})})
    env = stage_env(PYTHONPATH=str(ROOT))

    def run(*command: str) -> str:
        done = subprocess.run(command, cwd=repo, env=env, check=True, capture_output=True)
        return done.stdout.decode().strip()

    run("dvc", "init", "-q")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "dvc init")
    baseline = run("git", "rev-parse", "HEAD")
    run("dvc", "exp", "run", "--temp", "-S", "a=2", "-n", "probed")
    commit, root, name = json.loads(probe.read_text())
    # -S changed params.yaml in the copy only: the files the run used differ from the baseline,
    # while the workspace it came from is clean.
    assert run("git", "status", "--porcelain", "--untracked-files=no") == ""
    assert (commit, root, name) == (baseline + "-dirty", str(repo.resolve()), "probed")


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[mlflow.MlflowClient]:
    """A fresh SQLite store as this process's MLflow store, for the test only."""
    from mlflow.tracking import _tracking_service, fluent

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    # MLflow keeps the store and experiment set in module globals and MLFLOW_EXPERIMENT_ID (which
    # stages started later in this process would inherit): all put back after the test.
    monkeypatch.setattr(_tracking_service.utils, "_tracking_uri", None)
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID")
    yield mlflow.MlflowClient(uri)


def test_a_resumed_run_that_succeeds_keeps_no_failure_reason(
    store: mlflow.MlflowClient,
) -> None:
    tracking.use_experiment("task")
    with pytest.raises(KeyboardInterrupt), tracking.run("task/search", {}) as active:
        raise KeyboardInterrupt
    run_id = active.info.run_id
    assert store.get_run(run_id).data.tags["failure_reason"] == "interrupted"

    with tracking.run("task/search", {}, run_id=run_id):
        pass
    run = store.get_run(run_id)
    assert run.info.status == "FINISHED" and "failure_reason" not in run.data.tags


def test_adding_to_a_finished_run_leaves_its_status_and_end_time(
    store: mlflow.MlflowClient,
) -> None:
    tracking.use_experiment("task")
    with tracking.run("task/baseline", {}) as active:
        pass
    before = store.get_run(active.info.run_id).info
    time.sleep(0.01)
    tracking.add_to_run(active.info.run_id, {"test_accuracy": 0.5}, {"evaluated": "true"})
    run = store.get_run(active.info.run_id)
    assert (run.info.status, run.info.end_time) == ("FINISHED", before.end_time)
    assert run.data.metrics["test_accuracy"] == 0.5 and run.data.tags["evaluated"] == "true"


def test_experiments_open_on_their_training_runs_in_the_ui(store: mlflow.MlflowClient) -> None:
    kind = "mlflow.experimentKind"
    tracking.use_experiment("new")
    assert store.get_experiment_by_name("new").tags[kind] == "custom_model_development"

    old = store.create_experiment("old")  # made before the tag
    guessed = store.create_experiment("guessed", tags={kind: "genai_development_inferred"})
    chosen = store.create_experiment("chosen", tags={kind: "genai_development"})
    for name in ("old", "guessed", "chosen"):
        tracking.use_experiment(name)
    assert store.get_experiment(old).tags[kind] == "custom_model_development"
    assert store.get_experiment(guessed).tags[kind] == "custom_model_development"
    assert store.get_experiment(chosen).tags[kind] == "genai_development"


def test_log_split_tells_parts_apart_by_their_whole_content(
    store: mlflow.MlflowClient, tmp_path: Path
) -> None:
    import numpy as np

    from pipeline.data.splits import Split

    def split(last_label: int) -> Split:
        x = np.zeros((20_000, 2), "float32")  # more values than MLflow's own digest reads
        y = np.zeros(20_000, "int64")
        y[-1] = last_label
        return Split(x, y, x[:5], y[:5], x[:5], y[:5], ["a", "b"])

    tracking.use_experiment("task")
    with tracking.run("task/baseline", {}) as active:
        pass
    run_id = active.info.run_id
    tracking.log_split(run_id, tmp_path / "task.npz", split(0), parts=("train",))
    tracking.log_split(run_id, tmp_path / "task.npz", split(1), parts=("train",))
    datasets = [i.dataset for i in store.get_run(run_id).inputs.dataset_inputs]
    assert [d.name for d in datasets] == ["task-train", "task-train"]
    assert len({d.digest for d in datasets}) == 2
    with pytest.raises(ValueError, match="unknown part"):
        tracking.log_split(run_id, tmp_path / "task.npz", split(0), parts=("training",))


def test_runs_logging_the_same_new_dataset_at_once_all_get_it(
    store: mlflow.MlflowClient, tmp_path: Path
) -> None:
    """The jobs of a parallel sweep log the same split at the same moment. MLflow's store looks
    a dataset up before inserting it, so all but one broke its unique constraint (17 of 60
    threads here before the retry)."""
    import threading

    import numpy as np

    from pipeline.data.splits import Split

    tracking.use_experiment("task")
    errors: list[Exception] = []
    for seed in range(5):  # a new dataset each time: only the first logging of one races
        x = np.random.default_rng(seed).random((50, 2), dtype=np.float32)
        y = np.zeros(50, "uint8")
        data = Split(x, y, x[:10], y[:10], x[:10], y[:10], ["a", "b"])
        run_ids = [
            store.create_run(store.get_experiment_by_name("task").experiment_id).info.run_id
            for _ in range(6)
        ]
        together = threading.Barrier(len(run_ids))

        def log(run_id: str, data: Split = data, together: threading.Barrier = together) -> None:
            together.wait()
            try:
                tracking.log_split(run_id, tmp_path / "task.npz", data)
            except Exception as error:  # noqa: BLE001 - collected for the assertion
                errors.append(error)

        threads = [threading.Thread(target=log, args=(run_id,)) for run_id in run_ids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors[0]
        for run_id in run_ids:
            inputs = store.get_run(run_id).inputs.dataset_inputs
            assert sorted(i.dataset.name for i in inputs) == ["task-train", "task-val"]


def test_an_interrupt_swallowed_by_a_garbage_collection_callback_is_raised_again() -> None:
    """A signal's KeyboardInterrupt raised while a gc callback runs (JAX registers one) is only
    printed: the stage would go on training with its run RUNNING (seen with a joblib sweep)."""
    code = """
import gc, os, signal, sys, time
from pipeline.core import interrupts

interrupts.install()

def callback(phase, info):
    if phase == "start" and not sent:
        sent.append(1)
        os.kill(os.getpid(), signal.SIGTERM)
        sum(range(1000))  # Python runs the handler here, inside the callback

sent = []
gc.callbacks.append(callback)
try:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)
except KeyboardInterrupt as error:
    print("interrupted:", error, "sent:", len(sent))
    sys.exit(0)
print("not interrupted, sent:", len(sent))
sys.exit(1)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=stage_env(), capture_output=True, text=True
    )
    assert "Exception ignored" in result.stderr, result.stderr  # it was swallowed once
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "interrupted: signal 15 sent: 1"


# A run, with SIGTERM sent to its process from inside an MlflowClient method: while start_run
# makes the run (right after its record is created) or while end_run ends it (just before its
# status is set), moments no test could hit by waiting.
SIGNAL_INSIDE_MLFLOW = """
import os, signal
from mlflow import MlflowClient
from pipeline import tracking
from pipeline.core import interrupts

interrupts.install()
tracking.use_experiment("task")
create_run, set_terminated = MlflowClient.create_run, MlflowClient.set_terminated

def create_then_signal(self, *args, **kwargs):
    made = create_run(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
    return made

def signal_then_end(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return set_terminated(self, *args, **kwargs)

MlflowClient.{method} = {wrapper}
try:
    with tracking.run("task/x", {{}}, system_metrics_every=0.5):
        pass
except KeyboardInterrupt as error:
    print("interrupted:", error)
"""


@pytest.mark.parametrize(
    ("method", "wrapper", "status"),
    [
        ("create_run", "create_then_signal", "KILLED"),
        ("set_terminated", "signal_then_end", "FINISHED"),
    ],
    ids=["while-starting", "while-ending"],
)
def test_a_signal_while_mlflow_starts_or_ends_a_run_never_leaves_it_running(
    store: mlflow.MlflowClient, tmp_path: Path, method: str, wrapper: str, status: str
) -> None:
    """MLflow makes a run's record before start_run returns, and ends it in steps: an interrupt
    landing inside either left the run RUNNING for ever (seen with a joblib sweep's jobs).
    Now it is acted on once the run is open (it ends KILLED), or once it has ended."""
    code = SIGNAL_INSIDE_MLFLOW.format(method=method, wrapper=wrapper)
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**stage_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.strip() == "interrupted: signal 15", result.stdout + result.stderr
    (run,) = store.search_runs([store.get_experiment_by_name("task").experiment_id])
    assert run.info.status == status
    assert ("failure_reason" in run.data.tags) == (status == "KILLED")


# SIGTERM from inside MLflow's SQL store, right after its n-th statement (of two log_params and
# the run's end: 28 statements in MLflow 3.17), for each n; then whether another connection can
# lock the store.
SIGNAL_INSIDE_THE_STORE = """
import os, signal, sqlite3, time
import mlflow
from sqlalchemy import event
from sqlalchemy.engine import Engine
from pipeline import tracking
from pipeline.core import interrupts

tracking.use_experiment("task")
executed = [0, None]  # statements so far, the one to signal after

@event.listens_for(Engine, "after_cursor_execute")
def signal_after(*_):
    executed[0] += 1
    if executed[0] == executed[1]:
        os.kill(os.getpid(), signal.SIGTERM)

for n in range(1, 29):
    interrupts.install()
    try:
        with tracking.run(f"task/{n}", {}):
            executed[:] = [0, n]
            mlflow.log_params({"a": 1})
            mlflow.log_param("b", 2)
            time.sleep(0.5)  # training: a signal held for a session is acted on by now
    except KeyboardInterrupt:
        pass
    outside = sqlite3.connect("mlflow.db", timeout=1)
    outside.execute("BEGIN EXCLUSIVE")  # raises 'database is locked' if a session still holds it
    outside.execute("ROLLBACK")
    outside.close()
print("unlocked after each")
"""


def test_a_signal_inside_a_store_session_waits_for_its_end_and_the_run_ends_killed(
    store: mlflow.MlflowClient, tmp_path: Path
) -> None:
    """Raised inside one of MLflow's SQLAlchemy sessions, an interrupt left its SQLite lock
    held: the run's end KILLED waited out the store's busy timeout (20 s), and a joblib sweep
    killed its workers first, both their runs left RUNNING (ci12). Now the signal waits for the
    session's end, wherever it lands among a run's statements."""
    result = subprocess.run(
        [sys.executable, "-c", SIGNAL_INSIDE_THE_STORE],
        cwd=tmp_path,
        env={**stage_env(), "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"},
        capture_output=True,
        text=True,
        timeout=300,  # a hang guard: the old code took 20 s per locked session
    )
    assert result.stdout.strip() == "unlocked after each", result.stderr[-3000:]
    runs = store.search_runs([store.get_experiment_by_name("task").experiment_id])
    statuses = [r.info.status for r in sorted(runs, key=lambda r: int(r.info.run_name[5:]))]
    # KILLED for a signal among the params' statements, FINISHED among the run's end's (one
    # that comes while a run ends is acted on once it has ended).
    killed = statuses.count("KILLED")
    assert statuses == ["KILLED"] * killed + ["FINISHED"] * (28 - killed), statuses
    assert 0 < killed < 28


def test_the_next_stage_ends_killed_the_runs_of_a_process_killed_outright(
    store: mlflow.MlflowClient, tmp_path: Path
) -> None:
    """SIGKILL runs no handler: the run its process had open stays RUNNING until a stage
    finds that process gone. A running process's run is left alone."""
    code = (
        "import os, signal\nfrom pipeline import tracking\ntracking.use_experiment('task')\n"
        "with tracking.run('task/x', {}):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**stage_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        timeout=120,
    )
    assert killed.returncode == -9
    experiment = store.get_experiment_by_name("task").experiment_id
    (orphan,) = store.search_runs([experiment])
    assert orphan.info.status == "RUNNING"
    mine = store.create_run(experiment, tags=tracking.owner_tags())  # a live process's run

    tracking.use_experiment("task")
    orphan = store.get_run(orphan.info.run_id)
    assert orphan.info.status == "KILLED"
    pid = orphan.data.tags["owner.pid"]
    assert orphan.data.tags["failure_reason"].startswith(f"its process (pid {pid} on ")
    assert store.get_run(mine.info.run_id).info.status == "RUNNING"


COOPERATIVE = """
import os, signal, time
from pipeline.core import interrupts

interrupts.install()
interrupts.COOPERATION_GRACE_S = 1.0
reached = []
try:
    with interrupts.cooperative():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.3)
        reached.append("after the signal")
        if {safe_point}:
            interrupts.safe_point()
        time.sleep(5)  # one batch that never ends: the grace is over first
        reached.append("end of the batch")
except KeyboardInterrupt:
    print("interrupted after", reached)
"""


@pytest.mark.parametrize("safe_point", [True, False], ids=["at-a-batch-end", "after-the-grace"])
def test_a_signal_inside_a_fit_waits_for_a_batch_end_or_the_grace(safe_point: bool) -> None:
    """A KeyboardInterrupt raised anywhere in a fit came out of TensorFlow's C++ bindings as a
    RuntimeError, or out of an MLflow write with its SQLite transaction left locked: in a fit,
    a signal is acted on where Keras calls its callbacks, or when a batch takes too long."""
    result = subprocess.run(
        [sys.executable, "-c", COOPERATIVE.format(safe_point=safe_point)],
        cwd=ROOT,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "interrupted after ['after the signal']", result.stderr


SWALLOWED = """
import os, signal, time
from pipeline.core import interrupts

interrupts.install()
interrupts.COOPERATION_GRACE_S = 0.5
batch = 0
try:
    with interrupts.cooperative():
        os.kill(os.getpid(), signal.SIGTERM)
        for batch in range(1, 4):
            try:
                time.sleep(2)  # a batch longer than the grace: the interrupt is raised in it
            except:  # noqa: E722 (and dropped, as bare excepts in Keras and TensorFlow do)
                print("swallowed in batch", batch)
            interrupts.safe_point()  # the batch's end
    print("trained on to the end")
except KeyboardInterrupt:
    print("interrupted after batch", batch)
"""


def test_an_interrupt_swallowed_inside_a_fit_is_raised_again_at_the_next_batch_end() -> None:
    """A joblib sweep's job, SIGTERMed in its first epoch, trained on with its run RUNNING until
    the sweep killed it: the interrupt had been raised inside one of Keras' bare excepts."""
    result = subprocess.run(
        [sys.executable, "-c", SWALLOWED],
        cwd=ROOT,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = result.stdout.strip().splitlines()
    assert lines == ["swallowed in batch 1", "interrupted after batch 1"], result.stderr


CAME_OUT_AS_ANOTHER_ERROR = """
import contextlib, os, signal, time
from pipeline import tracking
from pipeline.core import interrupts

interrupts.install()
interrupts.COOPERATION_GRACE_S = 0.5
tracking.use_experiment("task")
fit = interrupts.cooperative() if {fit} else contextlib.nullcontext()
try:
    with tracking.run("task/x", {{}}), fit:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # a fit's first step, longer than the grace; or any work, outside one
        except KeyboardInterrupt:  # let out by C code as CPython's own error
            raise SystemError("Objects/listobject.c:338: bad argument to internal function")
except KeyboardInterrupt as interrupt:
    print("interrupted, out of", type(interrupt.__cause__).__name__)
"""


@pytest.mark.parametrize("fit", [True, False], ids=["in-a-fit", "outside-a-fit"])
def test_an_interrupt_that_comes_out_as_another_error_ends_the_run_killed(
    store: mlflow.MlflowClient, tmp_path: Path, fit: bool
) -> None:
    """A joblib sweep's job, SIGTERMed in its first step, ended its run FAILED with `SystemError:
    Objects/listobject.c:338: bad argument to internal function`: cut at the grace inside
    TensorFlow's tracing, the interrupt came out of C code as another error (a loaded suite)."""
    result = subprocess.run(
        [sys.executable, "-c", CAME_OUT_AS_ANOTHER_ERROR.format(fit=fit)],
        cwd=tmp_path,
        env={**stage_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.strip() == "interrupted, out of SystemError", result.stderr[-3000:]
    (run,) = store.search_runs([store.get_experiment_by_name("task").experiment_id])
    assert (run.info.status, run.data.tags["failure_reason"]) == ("KILLED", "interrupted")


def test_a_process_unwinding_for_a_signal_still_counts_as_one_to_wait_for() -> None:
    """A sweep waits for its launcher's workers to end their runs, but not for children that
    ignore SIGTERM (joblib's resource tracker). A worker that got the group's Ctrl-C first and
    ignored further signals looked like one: the sweep exited, and joblib killed the worker
    with its runs RUNNING (benchmarks/stress_interrupts.py, sweep-joblib SIGINT)."""
    code = """
import os, signal
from pipeline.core import interrupts

# Ctrl-C as in a terminal, whatever the test's worker left: SIGINT ignored, or held in a mask
# (this test once printed nothing in a full run, as if the SIGINT had never come).
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
interrupts.install()
try:
    os.kill(os.getpid(), signal.SIGINT)
except KeyboardInterrupt:
    os.kill(os.getpid(), signal.SIGTERM)  # the sweep's, after the group's Ctrl-C: dropped
    print("unwinding; looks like it ignores SIGTERM:", interrupts._ignores_sigterm(os.getpid()))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=stage_env(), capture_output=True, text=True
    )
    assert result.stdout.strip() == "unwinding; looks like it ignores SIGTERM: False", (
        f"exit {result.returncode}: {result.stdout}{result.stderr}"
    )


def test_a_process_the_stage_started_dies_with_it_from_its_first_import_of_the_pipeline() -> None:
    """A sweep's joblib worker still importing its job when the sweep was killed outright lived
    on (benchmarks/stress_interrupts.py, sweep-joblib SIGKILL): the kernel now ends it, as soon
    as it has imported `pipeline`, whatever it does next."""
    stage = """
import os, subprocess, sys
os.environ["PIPELINE_STAGE_PID"] = str(os.getpid())
job = "import pipeline, time; print(flush=True); time.sleep(600)"
child = subprocess.Popen([sys.executable, "-c", job], stdout=subprocess.PIPE)
child.stdout.readline()  # it has imported the pipeline
print(child.pid, flush=True)
child.wait()
"""
    import psutil

    parent = subprocess.Popen(
        [sys.executable, "-c", stage], cwd=ROOT, env=stage_env(), stdout=subprocess.PIPE, text=True
    )
    child = psutil.Process(int(parent.stdout.readline()))
    parent.kill()
    parent.wait()
    try:
        # A guard against a hang, not a time limit: the child sleeps for ten minutes otherwise.
        child.wait(timeout=60)
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def test_a_sweeps_worker_told_to_stop_exits_after_its_siblings_have_ended_their_runs(
    tmp_path: Path,
) -> None:
    """loky kills a pool's workers as soon as one exits: an idle worker that exited at once on
    the sweep's SIGTERM had its sibling killed while that one still ended its run KILLED, the
    run left RUNNING (benchmarks/stress_interrupts.py, sweep-joblib SIGTERM). A stopped worker
    now exits only once no sibling is in a job (`interrupts.job_in_sweep`)."""
    ended = tmp_path / "ended"
    # As pipeline/core/cli.py runs a job: its runs end inside the job, it leaves after.
    busy = f"""
import time
from pipeline.core import interrupts
try:
    with interrupts.job_in_sweep():
        try:  # the signal can come before print returns, once the stage has read its line
            print(flush=True)
            time.sleep(600)
        except KeyboardInterrupt:
            time.sleep(2)  # ending its runs: the idle one exited long before, on the old code
            open({str(ended)!r}, "w").close()
            raise
except KeyboardInterrupt:
    interrupts.exit_with_the_sweep(143)
"""
    idle = "import time, pipeline; print(flush=True); time.sleep(600)"
    stage = f"""
import os, subprocess, sys
os.environ["PIPELINE_STAGE_PID"] = str(os.getpid())
workers = [subprocess.Popen([sys.executable, "-c", job], stdout=subprocess.PIPE)
           for job in ({busy!r}, {idle!r})]
for worker in workers:
    worker.stdout.readline()  # in its job, or idle
for worker in workers:
    worker.terminate()
idle = workers[1]
idle.wait()
print(idle.returncode, os.path.exists({str(ended)!r}), flush=True)
workers[0].wait()
"""
    result = subprocess.run(
        [sys.executable, "-c", stage],
        cwd=ROOT,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=120,  # a guard against a hang, not a time limit
    )
    assert result.stdout.split() == ["143", "True"], result.stderr[-2000:]
