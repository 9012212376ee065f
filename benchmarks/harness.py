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
