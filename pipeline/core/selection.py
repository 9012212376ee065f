"""Picks that rounding cannot flip: scores the data cannot tell apart are a tie, broken by a
rule that no rounding moves.

A score measured on n samples is known to within its standard error. Machines round a fit's
sums differently (their instruction sets, the thread count), which moves scores in the fourth
decimal, and a pick by the highest score alone then flipped between machines (MNIST's search
took another trial's CNN of half the parameters). So, as in the one-standard-error rule
(Breiman et al., Classification and Regression Trees, 1984): the candidates within one standard
error of the best score tie, and the simplest of them wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

# How a search picks its trial, and the report each task's champion: written in their outputs.
TRIAL_RULE = (
    "Trials within {tol:.4g} of the best score tie (one standard error of the score, or "
    "tuner.tie_tolerance); the tie goes to the fewest parameters, then the earliest trial"
)
CHAMPION_RULE = (
    "chosen by validation accuracy: models within {tol:.4f} of the best (one standard error on "
    "the {n} validation samples) tie, and the searched model, then the fewest parameters, wins"
)


def standard_error(accuracy: float, n: int) -> float:
    """One standard error of an accuracy measured on `n` samples, sqrt(p(1-p)/n), with p kept
    one sample away from 0 and 1: a perfect score on 20 points is no surer than 19 of 20."""
    p = min(max(accuracy, 1 / n), 1 - 1 / n)
    return math.sqrt(p * (1 - p) / n)


@dataclass
class Pick:
    chosen: int  # the index of the chosen candidate
    tied: list[int]  # the indices of the candidates tied with the best score, the chosen first
    tolerance: float


def pick(
    candidates: pd.DataFrame, score: str, direction: str, tolerance: float, order: list[str]
) -> Pick:
    """Of `candidates` (rows with a `score` column), those within `tolerance` of the best score
    (`direction` max or min) tie; the first of them by the `order` columns, ascending, wins."""
    scores = candidates[score].astype(float)
    best = scores.max() if direction == "max" else scores.min()
    within = (best - scores if direction == "max" else scores - best) <= tolerance + 1e-12
    tied = candidates[within].sort_values(order, kind="stable")
    return Pick(int(tied.index[0]), [int(i) for i in tied.index], tolerance)
