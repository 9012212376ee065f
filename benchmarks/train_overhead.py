"""What the pipeline's train stage costs over a bare Keras script, and what a no-op DVC run costs.

    .venv/bin/python benchmarks/train_overhead.py [--dataset mnist] [--epochs 5] [--repeats 1]

Both runs are fresh subprocesses on the same split file, the same model (built from the preset
conf/experiment/<dataset>/baseline.yaml) and the same epochs and batch size:

  bare      python -c <BARE_SCRIPT>: compose the config, load the split, build, fit; no MLflow
  pipeline  python -m pipeline.train experiment=<dataset>/baseline, into a throwaway MLflow store
            and model folder, so the repository's mlflow.db, mlartifacts/ and models/ stay as
            they are

Reported: wall clock of each whole process (imports, logging, saving included) and the fit
alone (the pipeline's run.json `train_seconds` against the bare script's own timer), then
`dvc status` next to a no-op `dvc repro`, the latter only when the pipeline is up to date.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness import PYTHON, ROOT, SETUP_SCRIPT, TARGET, quiet_env, ratio, run

DVC = str(Path(sys.executable).parent / "dvc")

# Mirrors pipeline.train.fit_keras minus its callbacks and MLflow: validation runs every epoch
# in both, so the fit-only ratio shows the pipeline's additions, not a difference in work.
BARE_SCRIPT = """
import json, sys, time
from pathlib import Path

from hydra import compose, initialize_config_dir

from pipeline import config, models
from pipeline.datasets import load_split

dataset, epochs = sys.argv[1], int(sys.argv[2])
config.register()
with initialize_config_dir(config_dir=str(Path.cwd() / "conf"), version_base="1.3"):
    cfg = compose("config", overrides=[f"experiment={dataset}/baseline", f"train.epochs={epochs}"])
settings = config.load(cfg)
data = load_split(settings.paths.read.split_file(settings.dataset.name))

import keras

keras.utils.set_random_seed(settings.train.seed)
net = models.build_keras(settings.model, data.input_shape, data.n_classes)
start = time.perf_counter()
net.fit(
    data.x_train,
    data.y_train,
    validation_data=(data.x_val, data.y_val),
    epochs=settings.train.epochs,
    batch_size=settings.train.batch_size,
    verbose=0,
)
print(json.dumps({"fit_seconds": time.perf_counter() - start}))
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


def time_bare(dataset: str, epochs: int) -> Timing:
    seconds, stdout = run(
        "bare Keras script", [PYTHON, "-c", BARE_SCRIPT, dataset, str(epochs)], quiet_env()
    )
    fit = json.loads(stdout.strip().splitlines()[-1])["fit_seconds"]
    return Timing(seconds, fit)


def time_pipeline(dataset: str, epochs: int, scratch: Path, tracking_uri: str) -> Timing:
    models = scratch / "models"
    command = [
        PYTHON,
        "-m",
        "pipeline.train",
        f"experiment={dataset}/baseline",
        f"train.epochs={epochs}",
        f"paths.outputs={scratch}",
    ]
    seconds, _ = run(" ".join(command[1:]), command, quiet_env(MLFLOW_TRACKING_URI=tracking_uri))
    # The stage names its output folder after the task and variant, as in the preset.
    (summary,) = models.glob("*/*/run.json")
    return Timing(seconds, json.loads(summary.read_text())["train_seconds"])


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
    parser.add_argument("--repeats", type=int, default=1, help="runs of each; medians reported")
    args = parser.parse_args()
    if args.epochs < 1 or args.repeats < 1:
        parser.error("--epochs and --repeats must be >= 1")
    preset = ROOT / "conf" / "experiment" / args.dataset / "baseline.yaml"
    if not preset.exists():
        parser.error(f"{preset.relative_to(ROOT)}: no such preset")
    split = ROOT / "data" / "split" / f"{args.dataset}.npz"
    if not split.exists():
        sys.exit(
            f"error: {split.relative_to(ROOT)} is missing; make it with "
            f"`./dev.sh repro split@{args.dataset}`"
        )

    with tempfile.TemporaryDirectory(prefix="train_overhead_") as tmp:
        scratch = Path(tmp)
        tracking_uri = f"sqlite:///{scratch / 'mlflow.db'}"
        artifacts = (scratch / "mlartifacts").as_uri()
        run(
            "set-up (imports, MLflow store)",
            [PYTHON, "-c", SETUP_SCRIPT, tracking_uri, args.dataset, artifacts, *WARM_UP],
            quiet_env(),
        )

        bare: list[Timing] = []
        pipeline: list[Timing] = []
        for i in range(args.repeats):
            # Alternating the order spreads any drift (thermal, cache) over both.
            if i % 2 == 0:
                bare.append(time_bare(args.dataset, args.epochs))
                pipeline.append(time_pipeline(args.dataset, args.epochs, scratch, tracking_uri))
            else:
                pipeline.append(time_pipeline(args.dataset, args.epochs, scratch, tracking_uri))
                bare.append(time_bare(args.dataset, args.epochs))

    rows = {
        "bare Keras": Timing(
            statistics.median(t.whole for t in bare), statistics.median(t.fit for t in bare)
        ),
        "pipeline train": Timing(
            statistics.median(t.whole for t in pipeline),
            statistics.median(t.fit for t in pipeline),
        ),
    }
    print(
        f"{args.dataset}, {args.epochs} epochs, preset experiment={args.dataset}/baseline, "
        f"{os.cpu_count()} cores; median of {args.repeats} run(s) each"
    )
    print(f"  {'':<16}{'whole process s':>16}{'fit s':>10}")
    for name, timing in rows.items():
        print(f"  {name:<16}{timing.whole:>16.2f}{timing.fit:>10.2f}")
    b, p = rows["bare Keras"], rows["pipeline train"]
    print(f"  {'extra':<16}{p.whole - b.whole:>+16.2f}{p.fit - b.fit:>+10.2f}")
    print(f"whole-process ratio pipeline/bare = {ratio(p.whole, b.whole)}")
    print(f"fit-only ratio = {ratio(p.fit, b.fit)}")
    print(f"target: <= {TARGET:.2f}")

    time_dvc(args.repeats)


if __name__ == "__main__":
    main()
