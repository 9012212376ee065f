"""What the benchmarks share: where they run, a quiet environment, timed subprocesses, ratios."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TARGET = 1.05


# The untimed set-up run before anything is timed: the imports both sides need, read once from
# disk so that whichever runs first does not pay for a cold file cache; and the throwaway MLflow
# store with its experiment, created up front as the repository's mlflow.db already is.
SETUP_SCRIPT = """
import sys, importlib
from mlflow import MlflowClient

uri, experiment, artifacts, *modules = sys.argv[1:]
for module in modules:
    importlib.import_module(module)
client = MlflowClient(tracking_uri=uri)
if client.get_experiment_by_name(experiment) is None:
    client.create_experiment(experiment, artifact_location=artifacts)
"""


def quiet_env(**extra: str) -> dict[str, str]:
    """The caller's environment without a DVC experiment name, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "DVC_EXP_NAME"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", **extra)
    # MLflow 3 otherwise phones its telemetry endpoint from every process that imports it (and
    # waits on those threads at exit): network a benchmark must not use, and time that belongs
    # to the environment, not to the pipeline.
    env.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1")
    return env


def run(label: str, command: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Run from the repository root; wall seconds and stdout. A failure ends the benchmark."""
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(
            f"error: {label} failed (exit {result.returncode}):\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        )
    return seconds, result.stdout


def ratio(measured: float, bare: float) -> str:
    return f"{measured / bare:.2f}" if bare > 0 else "n/a"


def scratch_store(scratch: Path, experiment: str, warm_up: tuple[str, ...], env: dict) -> str:
    """Untimed: import `warm_up` once and make a throwaway SQLite store in `scratch` holding
    `experiment`, with its artifacts there too. Returns the store's URI."""
    uri = f"sqlite:///{scratch / 'mlflow.db'}"
    artifacts = (scratch / "mlartifacts").as_uri()
    run(
        "set-up (imports, MLflow store)",
        [PYTHON, "-c", SETUP_SCRIPT, uri, experiment, artifacts, *warm_up],
        env,
    )
    return uri
