"""What MLflow tracking adds to a Keras Tuner search: the same search with and without it.

    .venv/bin/python benchmarks/search_overhead.py [--experiment circles/tuned] [--trials 6]
        [--epochs 20] [--repeats 1] [--overrides key=value ...]

The preset conf/experiment/<experiment>.yaml is composed with `tuner=random
tuner.max_trials=<trials> tuner.max_epochs=<epochs> tuner.early_stopping_patience=null`, so that
both searches do exactly the same work: a seeded random search draws the same trials, and each
trains for all its epochs. Each search runs in a fresh subprocess (this script again, with the
hidden --mode flag) on data/split/<task>.npz:

  bare     pipeline.tune.search(..., track=False): plain Keras Tuner, no MLflow
  tracked  pipeline.tune.search(..., track=True) inside a parent run: every trial a nested run
           with its params, the per-epoch metrics (MLflow's Keras callback) and its score

The tracked search logs into a throwaway SQLite store whose artifacts also stay in the temporary
folder, so the repository's mlflow.db, mlartifacts/ and models/ stay as they are.

Reported: the seconds inside search() (what the issue's 5 % target is about), the wall clock of
each whole process for information, and as a sanity check the trials run and the MLflow runs
the tracked search created (1 parent + one per trial).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import PYTHON, ROOT, TARGET, quiet_env, ratio, run, scratch_store

EXPERIMENT = "search_overhead"  # the MLflow experiment, in the throwaway store only

WARM_UP = (
    "hydra",
    "keras",
    "keras_tuner",
    "pandas",
    "sklearn",
    "pipeline.tune",
)  # imported once, untimed, before both runs


@dataclass
class Timing:
    whole: float  # seconds, the subprocess from start to exit
    search: float  # seconds inside search()
    result: dict[str, Any]  # the rest of what the subprocess reported


def compose(experiment: str, trials: int, epochs: int, extra: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from pipeline.core import config

    config.register()
    overrides = [
        f"experiment={experiment}",
        "tuner=random",
        f"tuner.max_trials={trials}",
        f"tuner.max_epochs={epochs}",
        "tuner.early_stopping_patience=null",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def split_file(settings: Any) -> Path:
    return ROOT / settings.paths.read.split_file(settings.dataset.name)


def draws(tuner: Any) -> str:
    """A digest of every trial's hyperparameters: equal digests mean the same trials ran."""
    trials = {tid: t.hyperparameters.values for tid, t in sorted(tuner.oracle.trials.items())}
    return hashlib.sha256(json.dumps(trials, sort_keys=True, default=str).encode()).hexdigest()


def child(args: argparse.Namespace) -> None:
    """One search, timed; its numbers as JSON on the last line of stdout."""
    from pipeline.core import config
    from pipeline.data.splits import load_split
    from pipeline.search import space
    from pipeline.search.tuning import Setup, search

    cfg = compose(args.experiment, args.trials, args.epochs, args.overrides)
    settings = config.load(cfg)
    params = space.parse(settings.search_space)
    data = load_split(split_file(settings))
    folder = Path(tempfile.mkdtemp(prefix=f"{args.mode}_", dir=args.scratch))
    result: dict[str, Any] = {}

    if args.mode == "bare":
        start = time.perf_counter()
        tuner = search(Setup(settings, cfg, params, data, folder), resume=False, track=False)
        seconds = time.perf_counter() - start
    else:
        import mlflow

        mlflow.set_tracking_uri(args.tracking_uri)
        mlflow.set_experiment(EXPERIMENT)
        # The parent run is opened before the clock starts: `tune` opens it before search()
        # too, and its first call pays for the store's one-off set-up.
        with mlflow.start_run(run_name="bench/search") as parent:
            start = time.perf_counter()
            tuner = search(Setup(settings, cfg, params, data, folder), resume=False, track=True)
            seconds = time.perf_counter() - start
        result.update(logged(parent.info.run_id, parent.info.experiment_id))

    result.update(
        search_seconds=seconds,
        trials=len(tuner.oracle.trials),
        completed=sum(t.status == "COMPLETED" for t in tuner.oracle.trials.values()),
        draws=draws(tuner),
    )
    print(json.dumps(result))


def logged(parent_id: str, experiment_id: str) -> dict[str, Any]:
    """What the store holds for this search, read back from it rather than taken on trust."""
    from mlflow import MlflowClient

    client = MlflowClient()
    parents = client.search_runs(
        [experiment_id], filter_string=f"attributes.run_id = '{parent_id}'"
    )
    children = client.search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
        max_results=10_000,
    )
    epochs = [len(client.get_metric_history(r.info.run_id, "loss")) for r in children]
    return {
        "runs": len(parents) + len(children),
        "trial_runs_finished": sum(r.info.status == "FINISHED" for r in children),
        "logged_epochs": [min(epochs), max(epochs)] if epochs else [0, 0],
    }


def time_search(mode: str, args: argparse.Namespace, scratch: Path, tracking_uri: str) -> Timing:
    command = [
        PYTHON,
        str(Path(__file__).resolve()),
        f"--mode={mode}",
        f"--scratch={scratch}",
        f"--tracking-uri={tracking_uri}",
        f"--experiment={args.experiment}",
        f"--trials={args.trials}",
        f"--epochs={args.epochs}",
        "--overrides",
        *args.overrides,
    ]
    seconds, stdout = run(f"{mode} search", command, quiet_env(MLFLOW_TRACKING_URI=tracking_uri))
    # Keras Tuner prints its progress on stdout too; the JSON is the last line.
    result = json.loads(stdout.strip().splitlines()[-1])
    return Timing(seconds, result.pop("search_seconds"), result)


def check_preset(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Any:
    """The composed settings, checked before any search starts."""
    from pipeline import models
    from pipeline.core import config
    from pipeline.core.errors import PipelineError
    from pipeline.search import space

    preset = ROOT / "conf" / "experiment" / f"{args.experiment}.yaml"
    if not preset.exists():
        parser.error(f"{preset.relative_to(ROOT)}: no such preset")
    try:
        settings = config.load(compose(args.experiment, args.trials, args.epochs, args.overrides))
    except PipelineError as error:
        parser.error(str(error))
    if not space.parse(settings.search_space) or not models.is_keras(settings.model):
        parser.error(f"experiment={args.experiment} has no search space over a Keras model")
    split = split_file(settings)
    if not split.exists():
        task = settings.dataset.name
        sys.exit(f"error: {split} is missing; make it with `./dev.sh repro split@{task}`")
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--experiment", default="circles/tuned", help="a preset in conf/experiment/"
    )
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=20, help="per trial, all of them run")
    parser.add_argument("--repeats", type=int, default=1, help="searches of each; medians reported")
    parser.add_argument("--overrides", nargs="*", default=[], help="more Hydra overrides")
    # The child processes' side of the benchmark, not for use by hand.
    parser.add_argument("--mode", choices=["bare", "tracked"], help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tracking-uri", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        child(args)
        return
    if min(args.trials, args.epochs, args.repeats) < 1:
        parser.error("--trials, --epochs and --repeats must be >= 1")
    settings = check_preset(parser, args)
    load = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="search_overhead_") as tmp:
        scratch = Path(tmp)
        tracking_uri = scratch_store(scratch, EXPERIMENT, WARM_UP, quiet_env())

        bare: list[Timing] = []
        tracked: list[Timing] = []
        for i in range(args.repeats):
            # Alternating the order spreads any drift (thermal, cache, a neighbour's load)
            # over both.
            if i % 2 == 0:
                bare.append(time_search("bare", args, scratch, tracking_uri))
                tracked.append(time_search("tracked", args, scratch, tracking_uri))
            else:
                tracked.append(time_search("tracked", args, scratch, tracking_uri))
                bare.append(time_search("bare", args, scratch, tracking_uri))

    b_whole = statistics.median(t.whole for t in bare)
    b_search = statistics.median(t.search for t in bare)
    t_whole = statistics.median(t.whole for t in tracked)
    t_search = statistics.median(t.search for t in tracked)
    print(
        f"{args.experiment} ({settings.dataset.name}): random search, {args.trials} trials x "
        f"{args.epochs} epochs, no early stopping; {os.cpu_count()} cores, load average "
        f"{load:.2f} at start; median of {args.repeats} search(es) each"
    )
    print(f"  {'':<12}{'whole process s':>16}{'search s':>10}")
    print(f"  {'bare':<12}{b_whole:>16.2f}{b_search:>10.2f}")
    print(f"  {'tracked':<12}{t_whole:>16.2f}{t_search:>10.2f}")
    print(f"  {'extra':<12}{t_whole - b_whole:>+16.2f}{t_search - b_search:>+10.2f}")
    print(f"  extra per trial in search: {(t_search - b_search) / args.trials:+.3f} s")
    print(f"search ratio tracked/bare = {ratio(t_search, b_search)}")
    print(f"target: <= {TARGET:.2f}")
    print(f"whole-process ratio tracked/bare = {ratio(t_whole, b_whole)} (for information)")

    results = [t.result for t in bare + tracked]
    trials = sorted({r["trials"] for r in results})
    completed = sorted({r["completed"] for r in results})
    same = len({r["draws"] for r in results}) == 1
    print(
        f"trials per search: {'/'.join(map(str, trials))} run, "
        f"{'/'.join(map(str, completed))} completed (expected {args.trials}); the same draws "
        f"in every search: {'yes' if same else 'NO'}"
    )
    for i, timing in enumerate(tracked, 1):
        r = timing.result
        low, high = r["logged_epochs"]
        epochs = f"{low}" if low == high else f"{low}-{high}"
        print(
            f"MLflow runs created by tracked search {i}: {r['runs']} (expected 1 parent + "
            f"{args.trials} trials = {args.trials + 1}); {r['trial_runs_finished']} trial runs "
            f"FINISHED, {epochs} epochs of loss logged in each"
        )


if __name__ == "__main__":
    main()
