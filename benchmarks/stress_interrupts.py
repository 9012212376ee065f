"""Interrupts and kills at random moments must leave no MLflow run RUNNING:

    ./dev.sh python benchmarks/stress_interrupts.py [--tries 20] [--seed N] [--burners 2]
        [--cases stage,sweep-basic,sweep-joblib,chief,worker] [--signals SIGINT,SIGTERM,SIGKILL]

Each case (a train stage, a -m sweep on the basic and on the joblib launcher, a distributed
search's chief, one of its workers) is run once without a signal to time it, then per signal
until `--tries` signals have landed, each at a uniform random moment of that time and a
quarter more (WINDOW): start-up, epochs, trials and the ends of runs all get hit. A signal due
after the command's exit (for `worker`: after its workers') is "missed" and tried again, and
that run's time joins the calibration's: the window is their median, which so follows the
load of shared cores. SIGINT goes to the command's whole process
group, as a terminal's Ctrl-C does; SIGTERM and SIGKILL to the one process (for `worker`, every
signal goes to one worker alone). `--burners` CPU-bound processes run beside it all the time.

Every try runs real stages in a fresh copy of a project made once here (conf/, pipeline/,
dvc.yaml, circles fetched and split by the real stages, an MLflow store with its tables made
but no runs), then reads that copy's store. A try fails if:

- the command outlives its time-out, or any of its processes outlives it by LINGER_S;
- SIGINT, SIGTERM: a run is left RUNNING, a run ended neither FINISHED nor KILLED, or the
  command exited 0 with runs KILLED;
- SIGKILL: the same command run again, short, fails, or leaves a run RUNNING, or a run of the
  killed command ended KILLED without a `failure_reason` tag;
- chief, any signal: the search run again (which resumes it, or starts it anew where nothing
  could be resumed) fails, or its finished search run does not hold each trial FINISHED once;
- worker: the chief does not finish the search (exit 0, each trial FINISHED once), or a run
  other than the signalled worker's trial is not FINISHED.

Prints a line per try and a table of cases, tries and failures with the first failure's
detail; the project copies of failed tries are kept for their logs. Exit status 1 if any failed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
from harness import PYTHON, ROOT

sys.path.insert(0, str(ROOT / "tests"))
from conftest import all_runs, copy_project, mlflow_client, stage_env  # noqa: E402

# MLflow's telemetry would phone out from every process (benchmarks/harness.py quiet_env).
ENV = stage_env(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1")
# This process reads hundreds of stores, each deleted after its try: pooled connections would
# hold every one of them open.
os.environ["MLFLOW_SQLALCHEMYSTORE_POOLCLASS"] = "NullPool"
logging.getLogger("mlflow").setLevel(logging.WARNING)  # its notes on opening each store
EPOCHS = 150  # circles' 60 training points: a few seconds of epochs on loaded cores
TRIALS = 3
# Signals land in [0, WINDOW x the unsignalled time]: on shared cores a try can take longer than
# its calibration did, and its last moments (a run ending) must be hit too.
WINDOW = 1.25
LINGER_S = 30.0  # how long a command's other processes may outlive it (workers ending runs)
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}

TRAIN = ("pipeline.train", "experiment=circles/baseline")
SWEEP = ("pipeline.train", "-m", *TRAIN[1:], "model.optimizer.lr=0.01,0.02")  # -m goes first
JOBLIB = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
SHORT = ("train.epochs=1", "tracking.log_model=false")
SEARCH = (
    "pipeline.tune",
    "search=circles",
    "tuner=random",
    f"tuner.max_trials={TRIALS}",
    "tuner.max_epochs=30",
    "tuner.workers=2",
    "tuner.cv_folds=null",
    "hydra.run.dir=.",  # as DVC runs it: the search folder a rerun resumes from
)


@dataclass(frozen=True)
class Case:
    command: tuple[str, ...]
    rerun: tuple[str, ...] = ()  # after SIGKILL: ends what the killed command left
    search: bool = False  # check its search: rerun after every signal, or (worker) itself
    at_worker: bool = False  # the signal goes to one of the chief's workers


CASES = {
    "stage": Case(
        (*TRAIN, f"train.epochs={EPOCHS}", "hydra.run.dir=."), (*TRAIN, *SHORT, "hydra.run.dir=.")
    ),
    "sweep-basic": Case((*SWEEP, f"train.epochs={EPOCHS}"), (*SWEEP, *SHORT)),
    "sweep-joblib": Case((*SWEEP, *JOBLIB, f"train.epochs={EPOCHS}"), (*SWEEP, *JOBLIB, *SHORT)),
    "chief": Case(SEARCH, SEARCH, search=True),
    "worker": Case(SEARCH, search=True, at_worker=True),
}


class Command:
    """`python -m <args>` in `folder`, in a session of its own: every process it starts (a
    launcher's workers, a search's) stays in it, orphaned or not, to be found and killed."""

    def __init__(self, args: tuple[str, ...], folder: Path, name: str) -> None:
        self.log = folder / f"{name}.log"
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(
                [PYTHON, "-m", *args],
                cwd=folder,
                env=ENV,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def members(self) -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getsid(process.pid) == self.process.pid and process.status() != "zombie":
                    found.append(process)
        return found

    def tail(self, lines: int = 6) -> str:
        text = self.log.read_text(errors="replace").strip().splitlines()
        return " | ".join(line.strip()[:160] for line in text[-lines:])

    def finish(self, timeout: float) -> tuple[int | None, str | None]:
        """Its exit status (None past `timeout`), and what outlived it by LINGER_S, if any."""
        try:
            code = self.process.wait(timeout=max(0.0, timeout - self.elapsed()))
        except subprocess.TimeoutExpired:
            return None, None
        _, left = psutil.wait_procs(self.members(), timeout=LINGER_S)
        alive = []
        for process in left:
            with contextlib.suppress(psutil.Error):
                alive.append(f"pid {process.pid} {' '.join(process.cmdline()[1:6])}")
        return code, "; ".join(alive) or None

    def kill(self) -> None:
        for process in [*self.members(), self.process]:
            with contextlib.suppress(psutil.Error, OSError):
                process.kill()
        self.process.wait()


@contextlib.contextmanager
def command(args: tuple[str, ...], folder: Path, name: str) -> Iterator[Command]:
    started = Command(args, folder, name)
    try:
        yield started
    finally:
        started.kill()  # whatever happened: nothing of a try runs on into the next


def workers_of(chief: int) -> dict[int, str]:
    """The chief's worker processes: their tuner id by pid."""
    found = {}
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(chief).children():
            with contextlib.suppress(psutil.Error):
                tuner_id = child.environ().get("KERASTUNER_TUNER_ID")
                if tuner_id:
                    found[child.pid] = tuner_id
    return found


def deliver(run: Command, case: Case, signum: int, at: float) -> tuple[str | None, str | None]:
    """Send `signum` `at` seconds after the start, where the case says; where it landed (the
    command's last line of output then; None if it had exited) and the signalled worker's id."""
    while run.elapsed() < at or (case.at_worker and not workers_of(run.process.pid)):
        if run.process.poll() is not None:
            return None, None
        time.sleep(0.01)
    landed = f"at {run.elapsed():.1f} s, after: {run.tail(1)[:70] or '(no output yet)'}"
    if case.at_worker:
        pid, tuner_id = random.choice(sorted(workers_of(run.process.pid).items()))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
        return f"{landed} (worker {tuner_id})", tuner_id
    if signum == signal.SIGINT:  # a terminal's Ctrl-C reaches the whole foreground group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.process.pid, signum)
    else:
        run.process.send_signal(signum)
    return landed, None


def describe(runs: list) -> str:
    return ", ".join(
        f"{r.info.run_name} {r.info.status}"
        + "".join(f" {t}={r.data.tags[t]}" for t in ("hydra_job_num", "worker") if t in r.data.tags)
        for r in runs
    )


def stuck(runs: list) -> str | None:
    """What no signal may leave: runs RUNNING, or ended otherwise than FINISHED or KILLED."""
    running = [r for r in runs if r.info.status == "RUNNING"]
    if running:
        return f"left RUNNING: {describe(running)}"
    odd = [r for r in runs if r.info.status not in ("FINISHED", "KILLED")]
    return f"ended {describe(odd)}" if odd else None


def search_done(runs: list) -> str | None:
    """A search ended as it should: one search run FINISHED, each of its trials FINISHED once."""
    searches = [
        r for r in runs if r.data.tags.get("stage") == "tune" and r.info.status == "FINISHED"
    ]
    if len(searches) != 1:
        return f"{len(searches)} search runs FINISHED"
    parent = searches[0].info.run_id
    finished = sorted(
        r.data.tags["trial_id"]
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent and r.info.status == "FINISHED"
    )
    if finished != [str(n) for n in range(TRIALS)]:
        return f"trials FINISHED under the search run: {finished}"
    return None


def one_try(
    case: Case, signum: int, at: float, timeout: float, folder: Path
) -> tuple[str, float | None, str]:
    """One try in `folder`: where the signal landed; the command's run time if it exited before
    the signal came (an unsignalled run, then); and "" or what went wrong."""
    with command(case.command, folder, "command") as run:
        landed, worker = deliver(run, case, signum, at)
        unsignalled = None if landed else run.elapsed()
        code, lingering = run.finish(timeout)
    if landed is None:
        landed = f"missed: exited at {unsignalled:.1f} s (signal due at {at:.1f} s)"
    if code is None:
        return landed, unsignalled, f"no exit in {timeout:.0f} s: {run.tail()}"
    if lingering:
        return landed, unsignalled, f"exit {code}; outlived it by LINGER_S: {lingering}"
    return landed, unsignalled, judge(case, signum, worker, run, timeout)


def judge(case: Case, signum: int, worker: str | None, run: Command, timeout: float) -> str:
    """What went wrong with a try whose command `run` has exited, if anything (else "")."""
    code, folder = run.process.returncode, run.log.parent
    runs = all_runs(mlflow_client(folder))
    if case.at_worker:
        others = [
            r
            for r in runs
            if r.info.status != "FINISHED"
            and (worker is None or r.data.tags.get("worker") != worker)
        ]
        if code != 0 or others:
            return f"the chief exited {code}, runs {describe(others)}: {run.tail()}"
        return stuck(runs) or search_done(runs) or ""
    if signum != signal.SIGKILL:
        if problem := stuck(runs):
            return f"exit {code}, {problem}: {run.tail()}"
        killed = [r for r in runs if r.info.status == "KILLED"]
        if code == 0 and killed:
            return f"exit 0 with runs KILLED: {describe(killed)}"
        if not case.search:
            return ""

    left = {r.info.run_id for r in runs}
    with command(case.rerun, folder, "rerun") as again:
        code, lingering = again.finish(timeout)
    if code != 0 or lingering:
        return f"rerun exited {code}, lingering {lingering}: {again.tail()}"
    runs = all_runs(mlflow_client(folder))
    unsaid = [
        r
        for r in runs
        if r.info.run_id in left
        and r.info.status == "KILLED"
        and "failure_reason" not in r.data.tags
    ]
    problem = stuck(runs) or (case.search and search_done(runs))
    if unsaid:
        problem = f"{problem or ''}; KILLED without a failure_reason: {describe(unsaid)}"
    if problem:
        return f"after the rerun: {problem}"
    return ""


def make_template(folder: Path) -> Path:
    """The project every try copies: circles fetched and split by the real stages, and an
    MLflow store whose tables exist, as a project's does after its first run."""
    copy_project(folder)
    for stage in (("pipeline.fetch", "source=circles"), ("pipeline.split", "dataset=circles")):
        subprocess.run(
            [PYTHON, "-m", *stage, "hydra.run.dir=."],
            cwd=folder,
            env=ENV,
            check=True,
            capture_output=True,
        )
    all_runs(mlflow_client(folder))  # makes the tables
    return folder


def calibrate(args: tuple[str, ...], template: Path, folder: Path) -> float:
    """Seconds from start to exit with no signal; a failure ends the benchmark."""
    shutil.copytree(template, folder)
    with command(args, folder, "calibration") as run:
        code, lingering = run.finish(timeout=900)
        seconds = run.elapsed()
    problem = stuck(all_runs(mlflow_client(folder)))
    if code != 0 or lingering or problem:
        sys.exit(f"error: {' '.join(args)} failed unsignalled ({code}, {problem}): {run.tail()}")
    shutil.rmtree(folder)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=20, help="signals landed per case, signal")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--signals", default=",".join(SIGNALS))
    parser.add_argument("--seed", type=int, default=random.SystemRandom().randrange(10**6))
    parser.add_argument("--burners", type=int, default=2, help="CPU-bound processes beside it")
    options = parser.parse_args()
    cases, signals = options.cases.split(","), options.signals.split(",")
    unknown = sorted(set(cases) - set(CASES)) + sorted(set(signals) - set(SIGNALS))
    if unknown or options.tries < 1:
        sys.exit(f"error: unknown {unknown}; cases {list(CASES)}, signals {list(SIGNALS)}")
    random.seed(options.seed)
    print(
        f"seed {options.seed}, {options.tries} landed tries per case and signal, "
        f"{options.burners} burners"
    )

    # A SIGTERM to this script unwinds it too, so that its finally blocks kill what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="stress-interrupts-"))
    print(f"working in {work}", flush=True)
    burners = [subprocess.Popen([PYTHON, "-c", "while True: pass"]) for _ in range(options.burners)]
    start = time.monotonic()
    rows = []
    try:
        template = make_template(work / "template")
        # Unsignalled run times by command: the calibration's, then those of tries whose
        # signal came after the exit. Their median sets the window, which so follows the
        # machine's load (other engineers' work comes and goes over a run of hours).
        durations: dict[tuple[str, ...], list[float]] = {}
        for name in cases:
            args = CASES[name].command
            if args not in durations:
                durations[args] = [calibrate(args, template, work / "calibration")]
            print(f"{name}: {durations[args][0]:.1f} s unsignalled", flush=True)
        for name in cases:
            case = CASES[name]
            for signame in signals:
                failures, missed, first = 0, 0, ""
                hits = 0
                # A missed signal tests nothing: tries go on until `--tries` signals landed
                # (up to three times as many, so that a case that never lands still ends).
                while hits < options.tries and hits + missed < 3 * options.tries:
                    n = hits + missed + 1
                    folder = work / f"{name}-{signame}-{n}"
                    shutil.copytree(template, folder)
                    estimate = statistics.median(durations[case.command])
                    at = random.uniform(0, WINDOW * estimate)
                    timeout = 3 * estimate + 120  # stops may take their grace (STOP_GRACE_S)
                    landed, unsignalled, failure = one_try(
                        case, SIGNALS[signame], at, timeout, folder
                    )
                    if unsignalled is None:
                        hits += 1
                    else:
                        durations[case.command].append(unsignalled)
                        missed += 1
                    outcome = failure or "ok"
                    print(f"{name} {signame} try {n}: {landed} -> {outcome}", flush=True)
                    if failure:
                        failures += 1
                        first = first or f"{failure} [{folder}]"
                    else:
                        shutil.rmtree(folder)
                rows.append((name, signame, hits, failures, missed, first))
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()

    print(f"\n{'case':<13}{'signal':<9}{'tries':>6}{'failures':>10}{'missed':>8}  first failure")
    for name, signame, tries, failures, missed, first in rows:
        print(f"{name:<13}{signame:<9}{tries:>6}{failures:>10}{missed:>8}  {first[:600]}")
    print(f"total wall time {(time.monotonic() - start) / 60:.1f} min (seed {options.seed})")
    if any(row[3] for row in rows):
        print(f"failed tries' project copies (logs, mlflow.db) kept in {work}")
        sys.exit(1)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
