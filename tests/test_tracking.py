"""What the runs record about the code they ran."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipeline import tracking


def test_git_commit_is_dirty_for_code_changes_not_for_the_pipelines_own_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "reports").mkdir()
    for name in ("train.py", "dvc.lock", "reports/README.md"):
        (tmp_path / name).write_text("first\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    monkeypatch.chdir(tmp_path)

    for name in ("dvc.lock", "reports/README.md"):
        (tmp_path / name).write_text("rewritten by dvc repro\n")
    assert not tracking.git_commit().endswith("-dirty")

    (tmp_path / "train.py").write_text("edited\n")
    assert tracking.git_commit().endswith("-dirty")
