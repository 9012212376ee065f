"""Where a run came from: the code's commit, the data's digests, the DVC experiment and sweep."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core import backend
from pipeline.core.files import sha256_of

if TYPE_CHECKING:
    pass


def context_tags(stage: str, data_files: dict[str, Path]) -> dict[str, str]:
    """Where a run came from: code version, data versions, DVC experiment, Hydra sweep, and
    Keras' backend and device."""
    tags = {"stage": stage, "git_commit": git_commit(), **backend.tags()}
    for name, path in data_files.items():
        tags[f"data.{name}.sha256"] = sha256_of(path)
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    tags.update(hydra_sweep_tags())
    return tags


def hydra_sweep_tags() -> dict[str, str]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN:
        return {}
    # The sweep folder's name (its start time) is what every job of one sweep shares.
    return {"hydra_sweep_id": Path(hydra.sweep.dir).name, "hydra_job_num": str(hydra.job.num)}


def git_commit() -> str:
    """The commit the run's code came from, with "-dirty" when the tracked files the run used
    differ from it; "unknown" outside git.

    The commit is DVC_EXP_BASELINE_REV under `dvc exp run` (the experiment's baseline), else
    HEAD. The files compared are those of the working copy the stage runs in: for `--temp` and
    `--queue`, DVC's copy under .dvc/tmp/exps/ (a git repository checked out at the baseline,
    with the experiment's changes and `-S` params applied on top), not the workspace it came
    from, which may have changed since. The pipeline's own tracked outputs (dvc.lock, reports/)
    do not count: `dvc repro` rewrites them before the last stage runs, which would mark every
    repro of a clean checkout dirty.
    """
    import tempfile

    paths = ("--", ".", ":(exclude)dvc.lock", ":(exclude)reports")
    try:
        commit = _git("rev-parse", "--verify", os.environ.get("DVC_EXP_BASELINE_REV") or "HEAD")
        # Working tree and index against the commit, whether or not HEAD is that commit.
        dirty = _git("diff", "--name-only", commit, *paths)
        if not dirty:
            # Again by content, through an index of the commit's own: DVC's queue applies `-S`
            # to a copy whose index already holds the edited file's size and time, so git's
            # own index took `lr: 0.01` -> `lr: 0.02` for no change at all.
            with tempfile.TemporaryDirectory() as scratch:
                fresh = {"GIT_INDEX_FILE": str(Path(scratch) / "index")}
                _git("read-tree", commit, env=fresh)
                dirty = _git("diff", "--name-only", *paths, env=fresh)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def _git(*args: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(
        ["git", *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path.cwd(),
        env={**os.environ, **(env or {})},
    ).stdout.strip()
