"""Stage split: one task's stratified train / validation / test parts, with a seeded RNG.

    python -m pipeline.split dataset=mnist|circles|sign_digits|sign_digits_01|<your task>

Reads data/raw/<source>.npz, writes data/split/<task>.npz and its data summary,
data/split/<task>.json. Parts the source gives (MNIST's test images, train/val/test folders) are
kept; the others are cut, stratified. Exact copies of one sample always land in one part: a copy
of a training sample in a given validation or test part is left out of it. Standardisation,
where configured, is fitted on the training part only; the test part is set aside here and read
again only by `evaluate`.
"""

from __future__ import annotations

import logging

import numpy as np
from omegaconf import DictConfig
from sklearn.model_selection import train_test_split

from pipeline.core import config
from pipeline.core.cli import stage
from pipeline.core.errors import DataError
from pipeline.core.files import all_or_none, save_npz
from pipeline.data.checks import (
    class_counts,
    content_keys,
    per_class_need,
    read_summary,
    require_per_class,
    summary_file,
    write_summary,
)
from pipeline.data.splits import load_raw

log = logging.getLogger(__name__)

Pair = tuple[np.ndarray, np.ndarray]


def _cut(rows: np.ndarray, y: np.ndarray, size: float, seed: int) -> tuple[np.ndarray, ...]:
    """`rows` (indices into `y`) as a stratified remainder and a part of `size` (a fraction)."""
    try:
        return tuple(train_test_split(rows, test_size=size, stratify=y[rows], random_state=seed))
    except ValueError as error:  # a part too small to hold every class
        raise DataError(
            f"dataset.split: cannot split {len(rows)} samples ({error}); "
            "raise val_fraction/test_fraction or use more data"
        ) from None


def copy_groups(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first sample of each group of exact copies (all samples, where there are none), in
    order, and for every sample the position of its group's first one among them."""
    _, first, group = np.unique(content_keys(x), return_index=True, return_inverse=True)
    order = np.argsort(first)
    position = np.empty(len(first), np.int64)
    position[order] = np.arange(len(first))
    return first[order], position[group.ravel()]


def split_parts(
    x: np.ndarray,
    y: np.ndarray,
    split: config.SplitConfig,
    test: Pair | None = None,
    val: Pair | None = None,
) -> dict[str, np.ndarray]:
    """Stratified parts of (x, y). `test`, `val`: parts that come with the source and are kept,
    less any copy of a sample before them (training, then validation); otherwise `test_fraction`
    of the data becomes the test part and `val_fraction` (always a fraction of the whole) the
    validation part. A group of exact copies is split as one sample: all of it in one part."""
    leaders, group = copy_groups(x)
    rows, parts = np.arange(len(leaders)), {}
    if test is None:
        rows, parts["test"] = _cut(rows, y[leaders], split.test_fraction, split.seed)
    if val is None:
        share = (
            split.val_fraction / (1 - split.test_fraction) if test is None else split.val_fraction
        )
        rows, parts["val"] = _cut(rows, y[leaders], share, split.seed)
    parts["train"] = rows
    out = {}
    for part, chosen in parts.items():
        # Its groups' first samples in the order cut, then their copies in the data's order.
        copies = np.flatnonzero(np.isin(group, chosen))
        samples = np.concatenate([leaders[chosen], np.setdiff1d(copies, leaders[chosen])])
        out[f"x_{part}"], out[f"y_{part}"] = x[samples], y[samples]
    seen = set(content_keys(out["x_train"]))
    for part, given in (("val", val), ("test", test)):
        if given is not None:
            keys = content_keys(given[0])
            fresh = np.array([key not in seen for key in keys], dtype=bool)
            out[f"x_{part}"], out[f"y_{part}"] = given[0][fresh], given[1][fresh]
            seen |= set(keys)
    return {key: out[key] for key in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}


def keep_classes(x: np.ndarray, y: np.ndarray, classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Only the samples of `classes`, relabelled 0..k-1 in the order given."""
    missing = sorted(set(classes) - set(np.unique(y).tolist()))
    if missing:
        raise DataError(f"dataset.classes: labels {missing} do not occur in the data")
    keep = np.isin(y, classes)
    relabel = {label: index for index, label in enumerate(classes)}
    return x[keep], np.array([relabel[label] for label in y[keep]], dtype=np.uint8)


def class_indices(wanted: list[str], class_names: list[str]) -> list[int]:
    """dataset.classes (class names) as the source's labels."""
    unknown = [name for name in wanted if name not in class_names]
    if unknown:
        raise DataError(
            f"dataset.classes: {unknown[0]} is not a class of the source (its classes: "
            f"{', '.join(class_names)})"
        )
    return [class_names.index(name) for name in wanted]


@stage("config", reads=("dataset", "paths"))
def main(cfg: DictConfig) -> None:
    settings: config.Config = config.load(cfg)
    dataset = settings.dataset
    raw_file = settings.paths.read.raw_file(dataset.source)
    arrays = load_raw(raw_file, dataset.source)
    source_summary = read_summary(raw_file, f"fetch@{dataset.source}")
    class_names = (
        [str(name) for name in arrays["class_names"]]
        if "class_names" in arrays
        else [str(label) for label in np.unique(arrays["y"]).tolist()]
    )
    given = {
        part: (arrays[f"x_{part}"], arrays[f"y_{part}"])
        for part in ("val", "test")
        if f"x_{part}" in arrays
    }
    x, y = arrays["x"], arrays["y"]
    if dataset.classes:
        kept = class_indices(dataset.classes, class_names)
        x, y = keep_classes(x, y, kept)
        given = {part: keep_classes(*pair, kept) for part, pair in given.items()}
        class_names = [class_names[index] for index in kept]
    fractions = {"val": dataset.split.val_fraction, "test": dataset.split.test_fraction}
    cut = [part for part in fractions if part not in given]
    if cut:
        why = f"cutting {' and '.join(f'{p} {fractions[p]}' for p in cut)} of it (dataset.split)"
        require_per_class(y, class_names, per_class_need([fractions[p] for p in cut]), why)
    parts = split_parts(x, y, dataset.split, given.get("test"), given.get("val"))

    extra = {"label_errata_changed": arrays["errata_changed"]} if "errata_changed" in arrays else {}
    if "features" in arrays:  # a table's columns: what its rows are, and how to encode them
        extra["features"] = arrays["features"]
    out = settings.paths.write.split_file(dataset.name)
    summary = {
        "task": dataset.name,
        "parts": {
            part: class_counts(parts[f"y_{part}"], class_names) for part in ("train", "val", "test")
        },
        "copies_left_out": {
            part: len(pair[1]) - len(parts[f"y_{part}"]) for part, pair in given.items()
        },
        "source": source_summary,
    }
    with all_or_none(out, summary_file(out)):
        save_npz(out, **parts, class_names=np.array(class_names), **extra)
        write_summary(out, summary)
    log.info(
        "%s: train %d, validation %d, test %d",
        out,
        len(parts["y_train"]),
        len(parts["y_val"]),
        len(parts["y_test"]),
    )


if __name__ == "__main__":
    main()
