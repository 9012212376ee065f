"""Which model the report registers. Reporting again keeping one registered version, the
champion, is checked on every task by tests/test_pipeline.py's end-to-end `dvc repro`."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.reporting.champion import best_run


def runs(val_accuracy: dict[str, float], params: dict[str, int] | None = None) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "variant": list(val_accuracy),
            "metrics.final_val_accuracy": list(val_accuracy.values()),
            "metrics.param_count": [(params or {}).get(v, 100) for v in val_accuracy],
        }
    )


def champion(val_accuracy: dict[str, float], n_val: int, **params: int) -> str:
    return best_run(runs(val_accuracy, params), n_val)[0]["variant"]


def test_a_validation_accuracy_better_by_more_than_its_standard_error_is_registered() -> None:
    # 1,000 validation samples: one standard error of 0.97 is 0.0054.
    assert champion({"baseline": 0.97, "tuned": 0.95}, 1000) == "baseline"
    assert champion({"baseline": 0.90, "sklearn": 0.93, "tuned": 0.92}, 1000) == "sklearn"


def test_accuracies_the_validation_part_cannot_tell_apart_tie_and_the_searched_model_wins() -> None:
    assert champion({"baseline": 0.95, "tuned": 0.95}, 20) == "tuned"
    assert champion({"tuned": 0.95, "baseline": 0.95}, 20) == "tuned"
    # MNIST's validation part (6,000): 0.9840 and 0.9832 are 0.5 standard errors apart.
    assert champion({"baseline": 0.9840, "tuned": 0.9832}, 6000) == "tuned"
    # Without the searched model among them, the fewest parameters win.
    assert champion({"baseline": 0.951, "sklearn": 0.950}, 20, baseline=105, sklearn=3) == "sklearn"


def test_the_tolerance_is_one_standard_error_of_the_best() -> None:
    _, tolerance = best_run(runs({"baseline": 0.9, "tuned": 0.8}), 100)
    assert tolerance == pytest.approx((0.9 * 0.1 / 100) ** 0.5)
