"""Which model the report registers. Reporting again keeping one registered version, the
champion, is checked on every task by tests/test_pipeline.py's end-to-end `dvc repro`."""

from __future__ import annotations

import pandas as pd

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
