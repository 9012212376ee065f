"""Where a repro's time goes: each stage process's start-up (imports, Hydra, until its work
begins), its work, and the model compute inside that (fits and predictions), written as one JSON
line to the file PIPELINE_TIMINGS names (benchmarks/repro_time.py sets it); nothing when unset.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

TIMINGS = "PIPELINE_TIMINGS"
_compute = [0.0]  # seconds of model compute in this process so far


@contextmanager
def computing() -> Iterator[None]:
    """Count the block's time as model compute: a fit, or predictions."""
    start = time.perf_counter()
    try:
        yield
    finally:
        _compute[0] += time.perf_counter() - start


def stage_done(stage: str, overrides: list[str], work_started: float) -> None:
    """Append this stage process's line: its start-up from the process's start to
    `work_started` (time.time()), its work from then to now, its model compute."""
    path = os.environ.get(TIMINGS)
    if not path:
        return
    import psutil

    now = time.time()
    line = {
        "stage": stage,
        "overrides": overrides,
        "pid": os.getpid(),
        "started": psutil.Process().create_time(),
        "startup_s": work_started - psutil.Process().create_time(),
        "work_s": now - work_started,
        "compute_s": _compute[0],
    }
    # One short write to a file opened for appending: lines of processes running side by side
    # (a search's workers) do not interleave.
    with open(path, "a") as out:
        out.write(json.dumps(line) + "\n")
