"""The PNG figures, drawn with matplotlib (headless) and scikit-learn's displays."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on CI machines or inside DVC stages

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from pipeline.files import atomic_output  # noqa: E402


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


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
