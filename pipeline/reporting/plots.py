"""The PNG figures, drawn with matplotlib (headless) and scikit-learn's displays."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on CI machines or inside DVC stages

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from pipeline.core.files import atomic_output


def learning_curves(histories: dict[str, pd.DataFrame], path: Path, title: str) -> None:
    """Loss and accuracy per epoch, training (solid) and validation (dashed), one colour per run."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (label, history), colour in zip(histories.items(), plt.cm.tab10.colors, strict=False):
        for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
            ax.plot(history["epoch"], history[metric], color=colour, label=f"{label} train")
            ax.plot(
                history["epoch"],
                history[f"val_{metric}"],
                "--",
                color=colour,
                label=f"{label} validation",
            )
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    _save(fig, path)


def confusion_matrix(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str], path: Path, title: str
) -> None:
    fig, ax = plt.subplots(figsize=(1.5 + 0.6 * len(class_names), 1 + 0.6 * len(class_names)))
    ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, display_labels=class_names, ax=ax, colorbar=False, cmap="Blues"
    )
    ax.set_title(title)
    _save(fig, path)


def score_by_hyperparameter(
    trials: pd.DataFrame, columns: list[str], objective: str, path: Path
) -> None:
    """One panel per searched hyperparameter: each finished trial's score against its value."""
    done = trials[trials["score"].notna()]
    columns = [c for c in columns if c in done] or ["trial_id"]
    cols = min(3, len(columns))
    rows = -(-len(columns) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, column in zip(axes.flat, columns, strict=False):
        values = done[column]
        numeric = pd.api.types.is_numeric_dtype(values) and values.nunique() > 3
        if numeric:
            ax.scatter(values, done["score"], alpha=0.7)
            if values.min() > 0 and values.max() / values.min() > 50:
                ax.set_xscale("log")
        else:  # categories (and lists, as text) side by side
            # A key searched only under a condition is empty for the other trials.
            text = values.astype(object).where(values.notna(), "n/a").map(str)
            labels = sorted(text.unique(), key=_numbers_first)
            positions = text.map({label: i for i, label in enumerate(labels)})
            ax.scatter(positions, done["score"], alpha=0.7)
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize="small")
        ax.set(xlabel=column, ylabel=objective)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(columns) :]:
        ax.axis("off")
    fig.suptitle(f"{objective} of each trial by hyperparameter")
    _save(fig, path)


def _numbers_first(label: str) -> tuple[int, float, str]:
    """Sort "32" before "128", and words after numbers."""
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def best_so_far(trials: pd.DataFrame, objective: str, direction: str, path: Path) -> None:
    """Each trial's score in the order run, and the best found up to it."""
    scores = trials["score"].astype(float)
    best = scores.cummax() if direction == "max" else scores.cummin()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(range(1, len(scores) + 1), scores, alpha=0.6, label="trial")
    ax.step(range(1, len(scores) + 1), best.ffill(), where="post", color="C1", label="best so far")
    ax.set(xlabel="trial", ylabel=objective, title=f"search progress: {objective}")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def decision_boundary(net: object, x: np.ndarray, y: np.ndarray, path: Path, title: str) -> None:
    """P(class 1) over the plane of a 2-feature data set, with the points on top."""
    from pipeline.models.nets import predict_proba

    pad = 0.5
    xs = np.linspace(x[:, 0].min() - pad, x[:, 0].max() + pad, 200)
    ys = np.linspace(x[:, 1].min() - pad, x[:, 1].max() + pad, 200)
    grid_x, grid_y = np.meshgrid(xs, ys)
    grid = np.c_[grid_x.ravel(), grid_y.ravel()].astype(np.float32)
    prob = predict_proba(net, grid)[:, 1].reshape(grid_x.shape)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    filled = ax.contourf(grid_x, grid_y, prob, levels=20, cmap="RdBu_r", alpha=0.6)
    ax.contour(grid_x, grid_y, prob, levels=[0.5], colors="black", linewidths=1)
    ax.scatter(x[:, 0], x[:, 1], c=y, cmap="RdBu_r", edgecolors="black", s=25)
    fig.colorbar(filled, ax=ax, label="P(class 1)")
    ax.set(xlabel="feature 1 (standardised)", ylabel="feature 2 (standardised)", title=title)
    _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
