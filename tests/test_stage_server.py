"""The tests' warm stage starts (tests/stage_server.py) behave as fresh ones."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import stage_server
from conftest import all_runs, mlflow_client, stage_in

from pipeline.core import backend


def test_a_warm_stage_runs_exits_and_tags_its_run_as_a_fresh_one(
    project: Path, circles_split: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same history and machine tags (its thread count and determinism, which the stage
    sets after the server imported Keras, before TensorFlow starts), the same exit status and
    one-line error."""
    history, refused = {}, {}
    for start in ("warm", "fresh"):
        monkeypatch.setenv(stage_server.FRESH, "1" if start == "fresh" else "0")
        where = (f"paths.outputs={start}", "threads=1", "train.epochs=2")
        stage_in(project, "train", "experiment=circles/baseline", *where)
        history[start] = pd.read_csv(project / start / "models/circles/baseline/history.csv")
        refused[start] = stage_in(
            project, "train", "experiment=circles/baseline", *where, "threads=0", check=False
        )

    pd.testing.assert_frame_equal(history["warm"], history["fresh"], check_exact=True)
    warm, fresh = sorted(
        (r for r in all_runs(mlflow_client(project)) if r.data.tags.get("stage") == "train"),
        key=lambda r: r.info.start_time,
    )
    machine = {tag: fresh.data.tags[tag] for tag in backend.MACHINE_TAGS}
    assert {tag: warm.data.tags[tag] for tag in backend.MACHINE_TAGS} == machine
    assert machine["threads"] == "1"
    assert refused["warm"].returncode == refused["fresh"].returncode == 1
    assert refused["warm"].stderr == refused["fresh"].stderr
    assert len(refused["warm"].stderr.strip().splitlines()) == 1
