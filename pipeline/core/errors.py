"""Errors a user can fix: stages print them as one line and exit 1, without a traceback."""

from __future__ import annotations

from pathlib import Path

DAMAGED = "truncated or written by something else"  # why a file is not what a stage wrote


class PipelineError(Exception):
    """Something outside the code is wrong (input, config, data); the message says the fix."""


class ConfigError(PipelineError):
    """A config value is out of range or inconsistent."""


class DataError(PipelineError):
    """A data file is missing, corrupt or does not match its checksum."""


class OutputError(DataError):
    """An output cannot be written where it goes: no space left, or no permission."""


class TrainingError(PipelineError):
    """Training diverged (NaN loss) or could not run."""


def remake(stage: str) -> str:
    """The fix for a damaged output of dvc.yaml's `stage` (e.g. "split@mnist")."""
    return f"run `dvc repro {stage}` to make it again"


def missing(path: str | Path, stage: str) -> DataError:
    """A file that dvc.yaml's `stage` makes is not there."""
    return DataError(f"{path}: no such file; run `dvc repro {stage}` to make it")


def unreadable(path: str | Path, what: str, fix: str) -> DataError:
    """File `path` is there but is not `what` (e.g. "a split file") as this pipeline writes it:
    cut short (a full disk, a killed copy) or put there by something else."""
    return DataError(f"{path}: not {what} ({DAMAGED}); {fix}")
