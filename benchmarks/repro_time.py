"""Where a repro's time goes: each stage's wall time, split into start-up and work, and the
repro's wall time over the sum of its model compute.

    ./dev.sh python benchmarks/repro_time.py [dvc repro arguments, e.g. --force]

Runs `dvc repro` in the repository with PIPELINE_TIMINGS set, so that every stage process
(pipeline/core/timings.py) appends one line: its start-up (from the process's start to its work:
imports, Hydra, the config), its work, and the model compute inside that (Keras' and
scikit-learn's fits and predictions). A search's workers are processes of their own, with lines
of their own. Prints one row per stage process and the totals; the ratio's target is at most
1.15 (the repro's wall time against the compute it exists for). DVC's own time is the repro's
wall time less its stages'.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import ROOT, quiet_env

TARGET = 1.15
DVC = str(Path(sys.executable).parent / "dvc")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="repro_time_") as tmp:
        timings = Path(tmp) / "timings.jsonl"
        env = quiet_env(PIPELINE_TIMINGS=str(timings))
        start = time.perf_counter()
        result = subprocess.run([DVC, "repro", *sys.argv[1:]], cwd=ROOT, env=env)
        wall = time.perf_counter() - start
        if result.returncode != 0:
            sys.exit(f"error: dvc repro failed (exit {result.returncode}); see its output above")
        lines = (
            [json.loads(line) for line in timings.read_text().splitlines()]
            if timings.exists()
            else []
        )
    if not lines:
        sys.exit("dvc repro ran no stage: nothing to time (pass --force to run them all)")
    first = min(line["started"] for line in lines)
    print(f"\n{'stage':<44}{'start s':>9}{'start-up s':>12}{'work s':>9}{'compute s':>11}")
    for line in sorted(lines, key=lambda line: line["started"]):
        what = f"{line['stage']} {' '.join(o for o in line['overrides'] if '=' in o)}"[:43]
        print(
            f"{what:<44}{line['started'] - first:>9.1f}{line['startup_s']:>12.1f}"
            f"{line['work_s']:>9.1f}{line['compute_s']:>11.1f}"
        )
    startup = sum(line["startup_s"] for line in lines)
    work = sum(line["work_s"] for line in lines)
    compute = sum(line["compute_s"] for line in lines)
    print(
        f"\n{len(lines)} stage processes; repro wall {wall:.0f} s; their start-up {startup:.0f} s, "
        f"work {work:.0f} s, model compute {compute:.0f} s (processes side by side count each)"
    )
    print(f"repro wall / model compute: {wall / compute:.2f} (target <= {TARGET:.2f})")


if __name__ == "__main__":
    main()
