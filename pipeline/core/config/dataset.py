"""The schema of conf/dataset/: a task, the source it is cut from and its split."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from pipeline.core.config.base import check


@dataclass
class SplitConfig:
    val_fraction: float = 0.1
    # Ignored where the source ships its own test set (MNIST's official 10,000 images).
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("val_fraction", "test_fraction"):
            value = getattr(self, key)
            check(0 < value < 1, f"dataset.split.{key} must be in (0, 1), got {value}")
        check(
            self.val_fraction + self.test_fraction < 1,
            "dataset.split.val_fraction + test_fraction must be < 1, got "
            f"{self.val_fraction} + {self.test_fraction}",
        )


@dataclass
class DatasetConfig:
    name: str = MISSING  # the task: names the outputs, the MLflow experiment and the reports
    source: str = MISSING  # which fetched data set (data/raw/<source>.npz) it reads
    classes: list[str] | None = None  # keep only these classes (by name), in this order
    # Models standardise each feature (or pixel) by the training part's mean and variance, as
    # their first layer: the split keeps the data as the source gives it.
    standardize: bool = False
    split: SplitConfig = field(default_factory=SplitConfig)

    def __post_init__(self) -> None:
        if self.classes is not None:
            check(
                len(set(self.classes)) >= 2,
                f"dataset.classes needs two or more distinct classes, got {self.classes}",
            )
