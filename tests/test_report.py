"""Which model the report registers."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from conftest import mlflow_client

from pipeline.report import best_run


def runs(val_accuracy: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame(
        {"variant": list(val_accuracy), "metrics.final_val_accuracy": list(val_accuracy.values())}
    )


def test_the_best_validation_accuracy_is_registered() -> None:
    assert best_run(runs({"baseline": 0.97, "tuned": 0.95}))["variant"] == "baseline"
    assert (
        best_run(runs({"baseline": 0.90, "sklearn": 0.93, "tuned": 0.92}))["variant"] == "sklearn"
    )


def test_a_tie_goes_to_the_searched_model() -> None:
    assert best_run(runs({"baseline": 0.95, "tuned": 0.95}))["variant"] == "tuned"
    assert best_run(runs({"tuned": 0.95, "baseline": 0.95}))["variant"] == "tuned"


def test_reporting_twice_keeps_one_registered_version_the_champion(
    run_stage, circles_split: Path, project: Path
) -> None:
    run_stage("train", "experiment=circles/baseline", "train.epochs=2", "tracking.log_model=true")
    run_stage("evaluate", "experiment=circles/baseline")
    for _ in range(2):
        run_stage("report", "tasks=[circles]")

    client = mlflow_client(project)
    (version,) = client.search_model_versions("name = 'circles'")
    run_id = json.loads((project / "models/circles/baseline/run.json").read_text())["run_id"]
    assert version.run_id == run_id
    assert client.get_model_version_by_alias("circles", "champion").version == version.version
    report = (project / "reports/README.md").read_text()
    assert "models:/circles@champion" in report
    assert "best validation accuracy" in report and "a tie goes to the searched model" in report
