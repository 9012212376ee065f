"""What determinism costs: the tuned MNIST CNN's training and the sign-digits search, each run
with `deterministic=true` (the default) and `deterministic=false` in one go.

    .venv/bin/python benchmarks/determinism_cost.py [--epochs 2] [--search-epochs 4]
        [--repeats 1] [--backend tensorflow]

Needs the pipeline's data/split/mnist.npz, data/split/sign_digits.npz and
models/mnist/best_hparams.yaml (`./dev.sh repro tune@mnist split@sign_digits`). Every run is a
fresh stage process writing into a throwaway folder and MLflow store, so the repository's
outputs stay as they are; on and off alternate, first one then the other, to spread drift over
both. Reported: the training's fit seconds (run.json `train_seconds`) and the search's wall
seconds, each on over off; target at most 1.10.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from harness import PYTHON, ROOT, quiet_env, ratio, run, scratch_store

TARGET = 1.10
WARM_UP = ("hydra", "keras", "keras_tuner", "pandas", "sklearn", "pipeline.tune")
NEEDED = ("data/split/mnist.npz", "data/split/sign_digits.npz", "models/mnist/best_hparams.yaml")


def train_seconds(deterministic: bool, epochs: int, scratch: Path, env: dict) -> float:
    out = scratch / f"train-{deterministic}"
    command = [PYTHON, "-m", "pipeline.train", "experiment=mnist/tuned", f"train.epochs={epochs}"]
    command += [f"deterministic={deterministic}", f"paths.outputs={out}"]
    command += ["tracking.log_model=false", "tracking.system_metrics=false"]
    run(" ".join(command[2:]), command, env)
    summary = json.loads((out / "models/mnist/tuned/run.json").read_text())
    return summary["train_seconds"]


def search_seconds(deterministic: bool, epochs: int, scratch: Path, env: dict, i: int) -> float:
    out = scratch / f"search-{deterministic}-{i}"  # a folder of its own: it searches anew
    command = [PYTHON, "-m", "pipeline.tune", "search=sign_digits", f"tuner.max_epochs={epochs}"]
    command += [f"deterministic={deterministic}", f"paths.outputs={out}"]
    seconds, _ = run(" ".join(command[2:]), command, env)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2, help="of the tuned MNIST CNN")
    parser.add_argument("--search-epochs", type=int, default=4, help="tuner.max_epochs")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each; medians reported")
    parser.add_argument("--backend", default="tensorflow")
    args = parser.parse_args()
    if missing := [path for path in NEEDED if not (ROOT / path).exists()]:
        sys.exit(
            f"error: {', '.join(missing)} missing; make them with "
            "`./dev.sh repro tune@mnist split@sign_digits`"
        )
    with tempfile.TemporaryDirectory(prefix="determinism_cost_") as tmp:
        scratch = Path(tmp)
        env = quiet_env(KERAS_BACKEND=args.backend)
        env["MLFLOW_TRACKING_URI"] = scratch_store(scratch, "mnist", WARM_UP, env)
        times: dict[tuple[str, bool], list[float]] = {}
        for i in range(args.repeats):
            for deterministic in (True, False) if i % 2 == 0 else (False, True):
                times.setdefault(("train", deterministic), []).append(
                    train_seconds(deterministic, args.epochs, scratch, env)
                )
                times.setdefault(("search", deterministic), []).append(
                    search_seconds(deterministic, args.search_epochs, scratch, env, i)
                )
    print(
        f"{args.backend}; tuned MNIST CNN {args.epochs} epochs (fit s), sign-digits search to "
        f"{args.search_epochs} epochs (wall s); median of {args.repeats} run(s) each"
    )
    print(f"  {'run':<10}{'on s':>10}{'off s':>10}{'on/off':>9}")
    for what in ("train", "search"):
        on = statistics.median(times[what, True])
        off = statistics.median(times[what, False])
        print(f"  {what:<10}{on:>10.1f}{off:>10.1f}{ratio(on, off):>9}")
    print(f"on/off target: <= {TARGET:.2f}")


if __name__ == "__main__":
    main()
