"""Stage split: one task's stratified train / validation / test parts, with a seeded RNG.

    python -m pipeline.split dataset=mnist|circles|sign_digits|sign_digits_01

Reads data/raw/<source>.npz, writes data/split/<task>.npz. Standardisation, where configured,
is fitted on the training part only; the test part is set aside here and read again only by
`evaluate`.
"""

from __future__ import annotations

import logging

import numpy as np
from omegaconf import DictConfig
from sklearn.model_selection import train_test_split

from pipeline.core import config
from pipeline.core.cli import stage
from pipeline.core.errors import DataError
from pipeline.core.files import save_npz
from pipeline.data.splits import load_raw

log = logging.getLogger(__name__)


def split_parts(
    x: np.ndarray,
    y: np.ndarray,
    split: config.SplitConfig,
    test: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Stratified parts of (x, y). `test`: a test set that comes with the source and is kept;
    otherwise `test_fraction` of the data becomes the test part. `val_fraction` is always a
    fraction of the whole."""
    try:
        if test is None:
            x, x_test, y, y_test = train_test_split(
                x, y, test_size=split.test_fraction, stratify=y, random_state=split.seed
            )
            val_size = split.val_fraction / (1 - split.test_fraction)
        else:
            x_test, y_test = test
            val_size = split.val_fraction
        x_train, x_val, y_train, y_val = train_test_split(
            x, y, test_size=val_size, stratify=y, random_state=split.seed
        )
    except ValueError as error:  # a part too small to hold every class
        raise DataError(
            f"dataset.split: cannot split {len(y)} samples ({error}); "
            "raise val_fraction/test_fraction or use more data"
        ) from None
    return {
        "x_train": x_train,
        "y_train": y_train,
        "x_val": x_val,
        "y_val": y_val,
        "x_test": x_test,
        "y_test": y_test,
    }


def keep_classes(x: np.ndarray, y: np.ndarray, classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Only the samples of `classes`, relabelled 0..k-1 in the order given."""
    missing = sorted(set(classes) - set(np.unique(y).tolist()))
    if missing:
        raise DataError(f"dataset.classes: labels {missing} do not occur in the data")
    keep = np.isin(y, classes)
    relabel = {label: index for index, label in enumerate(classes)}
    return x[keep], np.array([relabel[label] for label in y[keep]], dtype=np.uint8)


@stage("config", reads=("dataset", "paths"))
def main(cfg: DictConfig) -> None:
    settings: config.Config = config.load(cfg)
    dataset = settings.dataset
    raw_file = settings.paths.read.raw_file(dataset.source)
    arrays = load_raw(raw_file, dataset.source)

    x, y = arrays["x"], arrays["y"]
    test = (arrays["x_test"], arrays["y_test"]) if "x_test" in arrays else None
    classes = dataset.classes or sorted(np.unique(y).tolist())
    if dataset.classes:
        x, y = keep_classes(x, y, dataset.classes)
    parts = split_parts(x, y, dataset.split, test)

    extra = {"label_errata_changed": arrays["errata_changed"]} if "errata_changed" in arrays else {}
    out = settings.paths.write.split_file(dataset.name)
    save_npz(out, **parts, class_names=np.array([str(c) for c in classes]), **extra)
    log.info(
        "%s: train %d, validation %d, test %d",
        out,
        len(parts["y_train"]),
        len(parts["y_val"]),
        len(parts["y_test"]),
    )


if __name__ == "__main__":
    main()
