"""What the pipeline's train stage costs over a bare Keras script, on each Keras backend
installed, and what a no-op DVC run costs.

    .venv/bin/python benchmarks/train_overhead.py [--dataset mnist] [--preset baseline]
        [--epochs 5] [--repeats 1] [--backends tensorflow,jax,torch]

Both runs are fresh subprocesses on the same backend (KERAS_BACKEND), split file, model (built
from the preset conf/experiment/<dataset>/<preset>.yaml, with the search's pick for `tuned`),
epochs and batch size:

  bare      python -c <BARE_SCRIPT>: compose the config, load the split, build, fit; no MLflow
  pipeline  python -m pipeline.train experiment=<dataset>/<preset>, into a throwaway MLflow
            store and model folder, so the repository's mlflow.db, mlartifacts/ and models/
            stay as they are

Reported per backend: wall clock of each whole process (imports, logging, saving included), the
fit alone (the pipeline's run.json `train_seconds` against the bare script's own timer) and the
bare fit's seconds per epoch after the first (which compiles); then `dvc status` next to a
no-op `dvc repro`, the latter only when the pipeline is up to date.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness import PYTHON, ROOT, TARGET, quiet_env, ratio, run, scratch_store

from pipeline.core.backend import MODULES as BACKEND_MODULES

DVC = str(Path(sys.executable).parent / "dvc")

# Mirrors pipeline.models.fitting.fit_keras minus its callbacks, MLflow and batching: Keras' own
# shuffling of arrays. Validation runs every epoch in both, so the fit-only ratio shows the
# pipeline's additions, not a difference in work.
BARE_SCRIPT = """
import json, sys, time
from pathlib import Path

from hydra import compose, initialize_config_dir

from pipeline import models
from pipeline.core import config
from pipeline.data.splits import load_split

experiment, epochs = sys.argv[1], int(sys.argv[2])
config.register()
with initialize_config_dir(config_dir=str(Path.cwd() / "conf"), version_base="1.3"):
    cfg = compose("config", overrides=[f"experiment={experiment}", f"train.epochs={epochs}"])
settings = config.load(models.with_hparams(cfg))
data = load_split(settings.paths.read.split_file(settings.dataset.name))

import keras

class EpochTimes(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.began = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        epoch_seconds.append(time.perf_counter() - self.began)

epoch_seconds = []
keras.utils.set_random_seed(settings.train.seed)
spec = models.inputs_of(data.x_train, settings.dataset.standardize)
net = models.build_keras(settings.model, spec, data.n_classes)
start = time.perf_counter()
net.fit(
    data.x_train,
    data.y_train,
    validation_data=(data.x_val, data.y_val),
    epochs=settings.train.epochs,
    batch_size=settings.train.batch_size,
    callbacks=[EpochTimes()],
    verbose=0,
)
fit_seconds = time.perf_counter() - start
print(json.dumps({"fit_seconds": fit_seconds, "epoch_seconds": epoch_seconds}))
"""

WARM_UP = (
    "hydra",
    "keras",
    "pandas",
    "sklearn",
    "pipeline.train",
)  # imported once, untimed, before both runs


@dataclass
class Timing:
    whole: float  # seconds, the subprocess from start to exit
    fit: float  # seconds inside model.fit
    per_epoch: float | None = None  # median seconds of an epoch after the first (bare only)


def time_bare(experiment: str, epochs: int, backend: str) -> Timing:
    seconds, stdout = run(
        f"bare Keras script on {backend}",
        [PYTHON, "-c", BARE_SCRIPT, experiment, str(epochs)],
        quiet_env(KERAS_BACKEND=backend),
    )
    timed = json.loads(stdout.strip().splitlines()[-1])
    later = timed["epoch_seconds"][1:]
    return Timing(seconds, timed["fit_seconds"], statistics.median(later) if later else None)


def time_pipeline(
    experiment: str, epochs: int, backend: str, scratch: Path, tracking_uri: str
) -> Timing:
    models = scratch / "models"
    command = [
        PYTHON,
        "-m",
        "pipeline.train",
        f"experiment={experiment}",
        f"train.epochs={epochs}",
        f"paths.outputs={scratch}",
    ]
    env = quiet_env(MLFLOW_TRACKING_URI=tracking_uri, KERAS_BACKEND=backend)
    seconds, _ = run(" ".join(command[1:]), command, env)
    # The stage names its output folder after the task and variant, as in the preset.
    (summary,) = models.glob("*/*/run.json")
    return Timing(seconds, json.loads(summary.read_text())["train_seconds"])


def median(timings: list[Timing]) -> Timing:
    per_epoch = [t.per_epoch for t in timings if t.per_epoch is not None]
    return Timing(
        statistics.median(t.whole for t in timings),
        statistics.median(t.fit for t in timings),
        statistics.median(per_epoch) if per_epoch else None,
    )


def dvc(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    result = subprocess.run([DVC, *args], cwd=ROOT, env=quiet_env(), capture_output=True, text=True)
    return time.perf_counter() - start, result


def dvc_up_to_date() -> bool:
    _, result = dvc("status", "--json")
    return result.returncode == 0 and json.loads(result.stdout or "null") == {}


def time_dvc(repeats: int) -> None:
    print("\ndvc, in the repository:")
    status = []
    for _ in range(repeats):
        seconds, result = dvc("status")
        if result.returncode != 0:
            # Not fatal: the train timings above stand; a shared checkout may hold DVC's lock.
            print(f"  dvc status failed (exit {result.returncode}): {result.stderr.strip()[-500:]}")
            return
        status.append(seconds)
    print(f"  {'dvc status':<20}{statistics.median(status):8.2f} s")
    # Checked again right before each repro: the checkout is shared, and a repro that finds a
    # change would retrain and overwrite the repository's models.
    repro = []
    for _ in range(repeats):
        if not dvc_up_to_date():
            print(
                f"  {'dvc repro (no-op)':<20}skipped: `dvc status` reports changed stages, the "
                "pipeline is not reproduced (run `./dev.sh repro` first); a real repro is never "
                "run here"
            )
            return
        seconds, result = dvc("repro")
        if result.returncode != 0:
            print(f"  dvc repro failed (exit {result.returncode}): {result.stderr.strip()[-500:]}")
            return
        repro.append(seconds)
    print(f"  {'dvc repro (no-op)':<20}{statistics.median(repro):8.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--dataset", default="mnist", help="a task with conf/experiment/<it>/")
    parser.add_argument("--preset", default="baseline", help="conf/experiment/<dataset>/<it>")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each; medians reported")
    installed = [
        name
        for name, modules in BACKEND_MODULES.items()
        if all(importlib.util.find_spec(module) is not None for module in modules)
    ]
    parser.add_argument(
        "--backends", default=",".join(installed), help="comma-separated; default: installed"
    )
    args = parser.parse_args()
    if args.epochs < 1 or args.repeats < 1:
        parser.error("--epochs and --repeats must be >= 1")
    backends = args.backends.split(",")
    if missing := [name for name in backends if name not in installed]:
        parser.error(f"--backends: {', '.join(missing)} not installed (installed: {installed})")
    experiment = f"{args.dataset}/{args.preset}"
    preset = ROOT / "conf" / "experiment" / f"{experiment}.yaml"
    if not preset.exists():
        parser.error(f"{preset.relative_to(ROOT)}: no such preset")
    split = ROOT / "data" / "split" / f"{args.dataset}.npz"
    if not split.exists():
        sys.exit(
            f"error: {split.relative_to(ROOT)} is missing; make it with "
            f"`./dev.sh repro split@{args.dataset}`"
        )

    rows: dict[str, tuple[Timing, Timing]] = {}
    for backend in backends:
        with tempfile.TemporaryDirectory(prefix="train_overhead_") as tmp:
            scratch = Path(tmp)
            env = quiet_env(KERAS_BACKEND=backend)
            tracking_uri = scratch_store(scratch, args.dataset, WARM_UP, env)
            bare: list[Timing] = []
            pipeline: list[Timing] = []
            for i in range(args.repeats):
                # Alternating the order spreads any drift (thermal, cache) over both.
                if i % 2 == 0:
                    bare.append(time_bare(experiment, args.epochs, backend))
                pipeline.append(
                    time_pipeline(experiment, args.epochs, backend, scratch, tracking_uri)
                )
                if i % 2 == 1:
                    bare.append(time_bare(experiment, args.epochs, backend))
            rows[backend] = median(bare), median(pipeline)

    print(
        f"{args.dataset}, {args.epochs} epochs, preset experiment={experiment}, "
        f"{os.cpu_count()} cores; median of {args.repeats} run(s) each"
    )
    print(
        f"  {'backend':<12}{'bare whole s':>14}{'stage whole s':>15}{'bare fit s':>12}"
        f"{'stage fit s':>13}{'fit ratio':>11}{'bare s/epoch':>14}"
    )
    for backend, (b, p) in rows.items():
        per_epoch = f"{b.per_epoch:>14.2f}" if b.per_epoch is not None else f"{'n/a':>14}"
        print(
            f"  {backend:<12}{b.whole:>14.2f}{p.whole:>15.2f}{b.fit:>12.2f}{p.fit:>13.2f}"
            f"{ratio(p.fit, b.fit):>11}{per_epoch}"
        )
    print(f"fit ratio = stage fit / bare fit; target: <= {TARGET:.2f}")

    time_dvc(args.repeats)


if __name__ == "__main__":
    main()
