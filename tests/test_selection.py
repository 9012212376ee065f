"""Picks that rounding cannot flip: ties within a tolerance, broken by a fixed rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.core import selection


def test_one_standard_error_of_an_accuracy_keeps_a_perfect_score_uncertain() -> None:
    assert selection.standard_error(0.9, 100) == pytest.approx(0.03)
    # 20 of 20 right is held no surer than 19 of 20.
    assert selection.standard_error(1.0, 20) == selection.standard_error(0.95, 20)


def trials(scores: list[float], params: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"score": scores, "params": params, "trial": range(len(scores))})


def test_scores_within_the_tolerance_tie_and_the_fewest_parameters_then_the_earliest_win() -> None:
    chosen = selection.pick(trials([0.9840, 0.9835, 0.9700], [178730, 103594, 50000]), "score",
                            "max", 0.0016, ["params", "trial"])  # fmt: skip
    assert (chosen.chosen, chosen.tied) == (1, [1, 0])
    chosen = selection.pick(trials([0.95, 0.95, 1.0], [5, 5, 9]), "score", "max", 0.05,
                            ["params", "trial"])  # fmt: skip
    assert (chosen.chosen, chosen.tied) == (0, [0, 1, 2])
    lowest = selection.pick(trials([0.30, 0.31, 0.50], [9, 5, 1]), "score", "min", 0.02,
                            ["params", "trial"])  # fmt: skip
    assert (lowest.chosen, lowest.tied) == (1, [1, 0])


def test_rounding_noise_of_another_machine_never_moves_the_pick() -> None:
    """Scores as one machine gave them, and as others might: each moved by up to 3e-4 (the
    fourth decimal, as measured between two machines). The highest score flips between them;
    the pick does not."""
    scores = np.array([0.9840, 0.9838, 0.9835, 0.9700, 0.9600])
    params = [178730, 150000, 103594, 90000, 20000]
    rng = np.random.default_rng(0)
    picks, highest = set(), set()
    for _ in range(200):
        noisy = scores + rng.uniform(-3e-4, 3e-4, len(scores))
        table = trials(list(noisy), params)
        picks.add(selection.pick(table, "score", "max", 0.0016, ["params", "trial"]).chosen)
        highest.add(int(np.argmax(noisy)))
    assert len(highest) > 1  # a pick by the highest score alone would flip
    assert picks == {2}  # within 0.0016 of the best, the fewest parameters
