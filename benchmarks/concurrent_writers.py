"""Concurrent writers, as the jobs of a parallel sweep: the team server against the SQLite default.

    .venv/bin/python benchmarks/concurrent_writers.py [--writers 8] [--steps 50] [--params 40]
        [--repeats 1] [--stores postgres,sqlite]

Each writer is its own process that opens a run through the pipeline's own code
(`tracking.use_experiment`, `tracking.run`), logs `--params` params, `--steps` epochs of four
metrics one request per epoch (MLflow's own Keras callback does so; the pipeline's batches them,
so this is the harsher load), a tag and a small artifact, and ends the run. All writers import
first and then start together, so the figures are the stores' and not Python's start-up. Stores:

  postgres  `python -m pipeline.tracking.team_server` (PostgreSQL, mlflow server with its
            default workers,
            artifacts served), in a throwaway folder; writers use its http:// URI
  sqlite    the pipeline's default: each writer opens sqlite:///<tmp>/mlflow.db itself

Afterwards it counts, through MLflow, what each store holds: runs (FINISHED), params and metric
steps against what the writers sent, and greps the writers' output for "database is locked".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from harness import PYTHON, ROOT, quiet_env, run

EXPERIMENT = "concurrent_writers"  # in the throwaway stores only
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
START_TIMEOUT_S = 180

# One writer: imports, says it is ready, waits for the go file, then logs one run.
WRITER_SCRIPT = """
import json, sys, time
from pathlib import Path
import mlflow
from pipeline import tracking

uri, experiment, index, params, steps, ready, go = sys.argv[1:]
index, params, steps = int(index), int(params), int(steps)
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.01)
start = time.perf_counter()
tracking.use_experiment(experiment, uri)
with tracking.run(f"writer-{index}", {"writer": str(index)}):
    mlflow.log_params({f"model.p{i:03d}": i * 1000 + index for i in range(params)})
    for step in range(steps):
        loss = 1.0 / (step + 1 + index)
        metrics = {"loss": loss, "accuracy": 1 - loss, "val_loss": 1.1 * loss}
        mlflow.log_metrics({**metrics, "val_accuracy": 1 - loss}, step=step)
    mlflow.log_text(f"writer {index}\\n", "notes.txt")
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


@dataclass
class Outcome:
    store: str
    wall: float  # seconds from the go signal until the last writer exited
    writer_seconds: list[float]  # each successful writer's own time
    failed: int  # writers that exited non-zero
    locked: int  # writers whose output says "database is locked"
    runs: int  # FINISHED runs found
    params: int  # params found, over all runs
    steps: int  # metric steps found, over all runs and keys
    first_error: str


def start_team_server(folder: Path) -> tuple[subprocess.Popen, str]:
    from pipeline.tracking.team_server import free_port

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = (folder / "team-server.log").open("w")
    process = subprocess.Popen(
        [PYTHON, "-m", "pipeline.tracking.team_server", "--data", str(folder / "data")]
        + ["--port", str(port)],
        cwd=ROOT,
        env=quiet_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"error: the team server exited:\n{(folder / 'team-server.log').read_text()}")
        try:
            with opener.open(uri + "/health", timeout=2) as response:
                if response.status == 200:
                    return process, uri
        except OSError:
            pass
        time.sleep(0.25)
    process.kill()
    sys.exit(f"error: the team server was not ready after {START_TIMEOUT_S} s")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def prepare(uri: str) -> None:
    """The store's schema and the experiment, made before the writers, as a sweep's would be
    by earlier runs: the benchmark is about concurrent runs, not a race to create the store."""
    script = f"from pipeline import tracking; tracking.use_experiment({EXPERIMENT!r}, {uri!r})"
    run("store set-up", [PYTHON, "-c", script], quiet_env())


def write_concurrently(uri: str, folder: Path, writers: int, params: int, steps: int) -> tuple:
    go = folder / "go"
    processes = []
    for index in range(writers):
        ready = folder / f"ready-{index}"
        out = (folder / f"writer-{index}.log").open("w+")
        command = [
            PYTHON,
            "-c",
            WRITER_SCRIPT,
            uri,
            EXPERIMENT,
            str(index),
            str(params),
            str(steps),
        ]
        command += [str(ready), str(go)]
        process = subprocess.Popen(command, cwd=ROOT, env=quiet_env(), stdout=out, stderr=out)
        processes.append((process, ready, out))
    deadline = time.monotonic() + 300
    while not all(ready.exists() or p.poll() is not None for p, ready, _ in processes):
        if time.monotonic() > deadline:
            sys.exit("error: writers not ready after 300 s")
        time.sleep(0.05)
    start = time.perf_counter()
    go.touch()
    for process, _, _ in processes:
        process.wait(timeout=1800)
    wall = time.perf_counter() - start
    seconds, failed, locked, first_error = [], 0, 0, ""
    for process, _, out in processes:
        out.seek(0)
        text = out.read()
        out.close()
        locked += "database is locked" in text
        if process.returncode == 0:
            seconds.append(json.loads(text.strip().splitlines()[-1])["seconds"])
        else:
            failed += 1
            lines = [line for line in text.splitlines() if line.strip()]
            first_error = first_error or (lines[-1] if lines else f"exit {process.returncode}")
    return wall, seconds, failed, locked, first_error


def count(uri: str) -> tuple[int, int, int]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    finished = [run for run in runs if run.info.status == "FINISHED"]
    params = sum(len([k for k in run.data.params if k.startswith("model.p")]) for run in runs)
    steps = sum(
        len(client.get_metric_history(run.info.run_id, key)) for run in runs for key in METRICS
    )
    return len(finished), params, steps


def measure(store: str, writers: int, params: int, steps: int) -> Outcome:
    folder = Path(tempfile.mkdtemp(prefix=f"writers-{store}-"))
    folder.chmod(0o711)  # as root, the team server's PostgreSQL runs as nobody and needs it
    server = None
    try:
        if store == "postgres":
            server, uri = start_team_server(folder)
        else:
            uri = f"sqlite:///{folder / 'mlflow.db'}"
        prepare(uri)
        wall, seconds, failed, locked, first_error = write_concurrently(
            uri, folder, writers, params, steps
        )
        runs, found_params, found_steps = count(uri)
        return Outcome(
            store, wall, seconds, failed, locked, runs, found_params, found_steps, first_error
        )
    finally:
        if server is not None:
            stop(server)
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--params", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--stores", default="postgres,sqlite")
    options = parser.parse_args()
    stores = options.stores.split(",")
    unknown = set(stores) - {"postgres", "sqlite"}
    if unknown:
        sys.exit(f"error: unknown store {sorted(unknown)[0]}; choose from postgres, sqlite")

    expected = (
        options.writers,
        options.writers * options.params,
        options.writers * options.steps * len(METRICS),
    )
    print(
        f"{options.writers} writers at once, each 1 run: {options.params} params, "
        f"{options.steps} steps x {len(METRICS)} metrics (one request a step), 1 artifact; "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start; "
        f"expected runs/params/steps {'/'.join(map(str, expected))}"
    )
    header = (
        f"{'store':<10}{'wall s':>8}{'writer s med':>14}{'max':>7}{'runs':>6}{'params':>8}"
        f"{'steps':>7}{'failed':>8}{'locked':>8}"
    )
    print(header)
    for repeat in range(options.repeats):
        for store in stores if repeat % 2 == 0 else stores[::-1]:
            o = measure(store, options.writers, options.params, options.steps)
            median = statistics.median(o.writer_seconds) if o.writer_seconds else float("nan")
            longest = max(o.writer_seconds, default=float("nan"))
            complete = (o.runs, o.params, o.steps) == expected and not o.failed
            print(
                f"{o.store:<10}{o.wall:>8.2f}{median:>14.2f}{longest:>7.2f}{o.runs:>6}"
                f"{o.params:>8}{o.steps:>7}{o.failed:>8}{o.locked:>8}"
                f"  {'all present' if complete else 'MISSING DATA'}"
            )
            if o.first_error:
                print(f"  first error: {o.first_error[:300]}")


if __name__ == "__main__":
    main()
