"""One search on 1 worker and on N (tuner.workers): how much sooner it ends, and whether the same
trials got the same scores either way.

    .venv/bin/python benchmarks/distributed_search.py [--experiments circles/tuned ...]
        [--trials 8] [--epochs 20] [--workers 2] [--data data/split] [--overrides key=value ...]

Each preset conf/experiment/<experiment>.yaml is composed with `tuner=random
tuner.max_trials=<trials> tuner.max_epochs=<epochs> tuner.early_stopping_patience=null`, so that
both searches do the same work: a seeded random search draws the same trials whichever worker
asks for them, and each trains for all its epochs. Both run `python -m pipeline.tune` as a user
would, one after the other, in a throwaway copy of the project (conf/, pipeline/) with its own
MLflow store, each into a job folder of its own (hydra.run.dir), so neither resumes the other.
The split is data/split/<task>.npz from --data, else made there by the real fetch and split
stages (sign digits need the network or PIPELINE_DATA_MIRROR).

Reported per search: the wall clock of the whole command (the start of the chief and of its
workers included: what a user waits for) and the span of its trials (first trial run's start to
last one's end, from MLflow); the speed-ups (1 worker / N workers); and, trial by trial, whether
the hyperparameters and the score logged in MLflow are the same. The machine's load average is
printed as well: other work on its cores skews every figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import PYTHON, ROOT, quiet_env

TARGET = 1.5  # the speed-up for 2 workers on the 2-core machine


def stage(project: Path, label: str, args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run `python -m pipeline.<args>` in the project copy; its wall seconds and the CPU
    seconds of it and its workers. A failure ends the benchmark."""
    import resource

    def cpu() -> float:  # of waited-for descendants: the chief waits for its workers
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    cpu_before, start = cpu(), time.perf_counter()
    result = subprocess.run(
        [PYTHON, "-m", *args], cwd=project, env=env, capture_output=True, text=True
    )
    seconds, cpu_seconds = time.perf_counter() - start, cpu() - cpu_before
    if result.returncode != 0:
        sys.exit(
            f"error: {label} failed (exit {result.returncode}):\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        )
    return seconds, cpu_seconds


def task_of(project: Path, experiment: str) -> str:
    from hydra import compose, initialize_config_dir

    from pipeline.core import config

    config.register()
    with initialize_config_dir(config_dir=str(project / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"experiment={experiment}"]).dataset.name


def prepare(project: Path, task: str, data: Path, env: dict[str, str]) -> None:
    """data/split/<task>.npz in the project copy: from --data, else by the real stages."""
    split = project / "data" / "split" / f"{task}.npz"
    split.parent.mkdir(parents=True, exist_ok=True)
    if (data / f"{task}.npz").exists():
        shutil.copyfile(data / f"{task}.npz", split)
        return
    import yaml

    tasks = yaml.safe_load((project / "conf" / "tasks.yaml").read_text())["tasks"]
    source = tasks[task]["source"]
    for label, args in (
        (f"fetch {source}", ["pipeline.fetch", f"source={source}"]),
        (f"split {task}", ["pipeline.split", f"dataset={task}"]),
    ):
        stage(project, label, [*args, "hydra.run.dir=."], env)


def trials_of(project: Path, folder: str) -> tuple[dict[str, Any], float]:
    """The search's finished trials by id (hyperparameters, score) and the span of its trials,
    from the search run named in the job folder's best_hparams.yaml."""
    import re

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    best = next((project / folder / "models").glob("*/best_hparams.yaml")).read_text()
    parent_id = re.search(r"search run (\w+)", best).group(1)
    parent = client.get_run(parent_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
        max_results=1000,
    )
    span = (max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)) / 1000
    finished = {
        r.data.tags["trial_id"]: (r.data.params, r.data.metrics.get("score"))
        for r in runs
        if r.info.status == "FINISHED"
    }
    return finished, span


def compare(one: dict[str, Any], many: dict[str, Any]) -> str:
    if set(one) != set(many):
        return f"no: trials {sorted(one)} on 1 worker, {sorted(many)} on several"
    import numpy as np

    params = sum(one[t][0] == many[t][0] for t in one)
    scores = [(one[t][1], many[t][1]) for t in one]
    exact = sum(a == b for a, b in scores)
    # Keras Tuner's gRPC messages carry metrics as float32: a worker's scores come rounded.
    equal = sum(np.float32(a) == np.float32(b) for a, b in scores)
    worst = max(abs(a - b) for a, b in scores)
    same = params == len(one) and equal == len(one)
    return (
        f"{'yes' if same else 'no'}: {params} of {len(one)} trials with the same hyperparameters,"
        f" {equal} with the same score as float32 ({exact} to the last digit of a float64; "
        f"largest difference {worst:.2g})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--experiments", nargs="+", default=["circles/tuned", "sign_digits_01/tuned"]
    )
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=20, help="per trial, all of them run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "split")
    parser.add_argument("--overrides", nargs="*", default=[], help="more Hydra overrides")
    args = parser.parse_args()

    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"cores: {os.cpu_count()}")
    for experiment in args.experiments:
        with tempfile.TemporaryDirectory(prefix="distributed-search-") as scratch:
            project = Path(scratch) / "project"
            project.mkdir()
            for name in ("conf", "pipeline"):
                shutil.copytree(
                    ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__")
                )
            env = quiet_env()
            for leak in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "KERASTUNER_TUNER_ID"):
                env.pop(leak, None)
            task = task_of(project, experiment)
            prepare(project, task, args.data, env)
            search = [
                "pipeline.tune",
                f"experiment={experiment}",
                "tuner=random",
                f"tuner.max_trials={args.trials}",
                f"tuner.max_epochs={args.epochs}",
                "tuner.early_stopping_patience=null",
                *args.overrides,
            ]
            results = {}
            for workers in (1, args.workers):
                label = f"{experiment} on {workers} worker(s)"
                folder = f"runs/workers-{workers}"
                seconds, cpu_seconds = stage(
                    project,
                    label,
                    [*search, f"tuner.workers={workers}", f"hydra.run.dir={folder}"],
                    env,
                )
                trials, span = trials_of(project, folder)
                results[workers] = (seconds, span, trials, cpu_seconds)

            (whole_1, span_1, trials_1, cpu_1), (whole_n, span_n, trials_n, cpu_n) = (
                results.values()
            )
            print(
                f"\n{experiment}: {args.trials} trials x {args.epochs} epochs, random search "
                f"{' '.join(args.overrides)}"
            )
            print(
                f"  1 worker : {whole_1:6.1f} s whole command, {span_1:6.1f} s of trials, "
                f"{cpu_1:6.1f} s of CPU"
            )
            print(
                f"  {args.workers} workers: {whole_n:6.1f} s whole command, "
                f"{span_n:6.1f} s of trials, {cpu_n:6.1f} s of CPU"
            )
            print(
                f"  speed-up : {whole_1 / whole_n:.2f}x whole command, {span_1 / span_n:.2f}x "
                f"trials (target >= {TARGET}x)"
            )
            print(f"  same trials, same scores: {compare(trials_1, trials_n)}")
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
