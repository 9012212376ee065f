"""A -m sweep of the train stage one job at a time (Hydra's basic launcher) against the joblib
launcher's parallel workers, on the same jobs:

    .venv/bin/python benchmarks/parallel_sweep.py [--jobs 4] [--n-jobs 2] [--epochs 20]
        [--dataset circles] [--repeats 1]

Both run in a throwaway copy of the project (conf/, pipeline/) with its own split and MLflow
store, made and opened before any timing, so the repository is left alone. With --repeats above
1 the order alternates and the medians are reported. Prints each sweep's wall time and the ratio
joblib/basic (below 1: the parallel sweep is faster).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import PYTHON, ROOT, quiet_env, ratio


def stage(folder: Path, *args: str) -> float:
    """Run `python -m pipeline.<args>` in `folder`; its wall seconds. A failure ends the run."""
    start = time.perf_counter()
    result = subprocess.run(
        [PYTHON, "-m", *args], cwd=folder, env=quiet_env(), capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(args[:3])} failed:\n{result.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=4, help="jobs in the sweep")
    parser.add_argument("--n-jobs", type=int, default=2, help="the joblib launcher's workers")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--dataset", default="circles")
    parser.add_argument("--repeats", type=int, default=1)
    options = parser.parse_args()
    if options.jobs < 1 or options.n_jobs < 1 or options.repeats < 1 or options.epochs < 1:
        sys.exit("error: --jobs, --n-jobs, --epochs and --repeats must be >= 1")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in ("conf", "pipeline"):
            skip = shutil.ignore_patterns("__pycache__")
            shutil.copytree(ROOT / name, folder / name, ignore=skip)
        source = "mnist" if options.dataset.startswith("mnist") else options.dataset
        source = "sign_digits" if options.dataset.startswith("sign_digits") else source
        stage(folder, "pipeline.fetch", f"source={source}", "hydra.run.dir=.")
        stage(folder, "pipeline.split", f"dataset={options.dataset}", "hydra.run.dir=.")
        # One untimed job: the store and experiment exist, and the imports are in the file cache.
        stage(folder, "pipeline.train", f"experiment={options.dataset}/baseline", "train.epochs=1")

        # Distinct learning rates so that each job is its own configuration, as in a real sweep.
        rates = ",".join(f"{0.001 * (index + 1):g}" for index in range(options.jobs))
        sweep = (
            "pipeline.train",
            "-m",
            f"experiment={options.dataset}/baseline",
            f"model.optimizer.lr={rates}",
            f"train.epochs={options.epochs}",
            "tracking.log_model=false",
        )
        parallel = ("hydra/launcher=joblib", f"hydra.launcher.n_jobs={options.n_jobs}")
        times: dict[str, list[float]] = {"basic": [], "joblib": []}
        for repeat in range(options.repeats):
            order = ["basic", "joblib"] if repeat % 2 == 0 else ["joblib", "basic"]
            for launcher in order:
                extra = parallel if launcher == "joblib" else ()
                times[launcher].append(stage(folder, *sweep, *extra))

    basic, joblib = (statistics.median(times[k]) for k in ("basic", "joblib"))
    print(
        f"{options.jobs} jobs of {options.dataset}/baseline, {options.epochs} epochs "
        f"({options.repeats} repeat(s), medians)"
    )
    print(f"  basic launcher, one at a time   {basic:7.1f} s")
    print(f"  joblib launcher, n_jobs={options.n_jobs:<2}      {joblib:7.1f} s")
    print(f"  ratio joblib/basic              {ratio(joblib, basic)}")


if __name__ == "__main__":
    main()
