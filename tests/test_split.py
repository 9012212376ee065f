"""split_parts and keep_classes: the functions that decide which sample lands where.

Samples are their own ids (x = arange(n)), so a test can follow every sample into its part.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.core.config import SplitConfig
from pipeline.core.errors import DataError
from pipeline.split import keep_classes, split_parts

PARTS = ("train", "val", "test")


def imbalanced_labels(seed: int = 0) -> np.ndarray:
    """500 labels in 4 classes of very different sizes, shuffled."""
    counts = {0: 300, 1: 120, 2: 60, 3: 20}
    labels = np.concatenate([np.full(count, label) for label, count in counts.items()])
    return np.random.default_rng(seed).permutation(labels).astype(np.uint8)


def ids_and_labels(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    y = imbalanced_labels(seed)
    return np.arange(len(y)), y


def part_ids(parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {part: parts[f"x_{part}"] for part in PARTS}


def test_parts_are_disjoint_and_complete() -> None:
    x, y = ids_and_labels()

    parts = split_parts(x, y, SplitConfig(val_fraction=0.1, test_fraction=0.2, seed=0))

    ids = part_ids(parts)
    everything = np.concatenate(list(ids.values()))
    assert len(everything) == len(x)
    assert len(np.unique(everything)) == len(x)
    np.testing.assert_array_equal(np.sort(everything), x)


def test_labels_travel_with_their_samples() -> None:
    x, y = ids_and_labels()

    parts = split_parts(x, y, SplitConfig(seed=3))

    for part in PARTS:
        np.testing.assert_array_equal(parts[f"y_{part}"], y[parts[f"x_{part}"]])


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize(("val_fraction", "test_fraction"), [(0.1, 0.2), (0.15, 0.3), (0.2, 0.1)])
def test_parts_are_stratified(seed: int, val_fraction: float, test_fraction: float) -> None:
    x, y = ids_and_labels()
    whole = np.bincount(y) / len(y)

    parts = split_parts(x, y, SplitConfig(val_fraction, test_fraction, seed))

    for part in PARTS:
        labels = parts[f"y_{part}"]
        counts = np.bincount(labels, minlength=len(whole))
        # Whole samples cannot match a proportion exactly; one off is the best possible.
        np.testing.assert_array_less(np.abs(counts - whole * len(labels)), 1 + 1e-9)


@pytest.mark.parametrize(("val_fraction", "test_fraction"), [(0.1, 0.2), (0.15, 0.3), (0.2, 0.1)])
def test_part_sizes_follow_the_fractions(val_fraction: float, test_fraction: float) -> None:
    x, y = ids_and_labels()
    n = len(x)

    parts = split_parts(x, y, SplitConfig(val_fraction, test_fraction, seed=0))

    assert abs(len(parts["x_test"]) - test_fraction * n) <= 1
    # val_fraction is a fraction of the whole, not of what the test part leaves.
    assert abs(len(parts["x_val"]) - val_fraction * n) <= 1
    assert abs(len(parts["x_train"]) - (1 - val_fraction - test_fraction) * n) <= 1


def test_same_seed_same_parts_other_seed_other_parts() -> None:
    x, y = ids_and_labels()

    first = split_parts(x, y, SplitConfig(seed=5))
    again = split_parts(x, y, SplitConfig(seed=5))
    other = split_parts(x, y, SplitConfig(seed=6))

    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    for part in PARTS:
        assert not np.array_equal(np.sort(first[f"x_{part}"]), np.sort(other[f"x_{part}"])), part


def test_a_given_test_set_is_kept_and_val_comes_from_the_rest() -> None:
    x, y = ids_and_labels()
    x_test = np.arange(1000, 1040)
    y_test = np.tile(np.arange(4, dtype=np.uint8), 10)

    parts = split_parts(x, y, SplitConfig(val_fraction=0.1, test_fraction=0.2), (x_test, y_test))

    np.testing.assert_array_equal(parts["x_test"], x_test)
    np.testing.assert_array_equal(parts["y_test"], y_test)
    train_and_val = np.concatenate([parts["x_train"], parts["x_val"]])
    np.testing.assert_array_equal(np.sort(train_and_val), x)
    # test_fraction does not apply: val is val_fraction of the data given, the rest is train.
    assert abs(len(parts["x_val"]) - 0.1 * len(x)) <= 1
    whole = np.bincount(y) / len(y)
    counts = np.bincount(parts["y_val"], minlength=4)
    np.testing.assert_array_less(np.abs(counts - whole * len(parts["y_val"])), 1 + 1e-9)


def test_keep_classes_relabels_in_the_order_given() -> None:
    x = np.arange(10)
    y = np.array([0, 1, 2, 3, 1, 2, 3, 0, 2, 3], dtype=np.uint8)

    kept_x, kept_y = keep_classes(x, y, [3, 1])

    np.testing.assert_array_equal(kept_x, [1, 3, 4, 6, 9])
    np.testing.assert_array_equal(kept_y, [1, 0, 1, 0, 0])
    assert kept_y.dtype == np.uint8


def test_keep_classes_keeps_images_whole() -> None:
    x = np.arange(6 * 2 * 2).reshape(6, 2, 2)
    y = np.array([5, 7, 5, 9, 7, 5])

    kept_x, kept_y = keep_classes(x, y, [5, 7])

    np.testing.assert_array_equal(kept_x, x[[0, 1, 2, 4, 5]])
    np.testing.assert_array_equal(kept_y, [0, 1, 0, 1, 0])


def test_keep_classes_rejects_a_label_not_in_the_data() -> None:
    y = np.array([0, 1, 2, 0, 1], dtype=np.uint8)

    with pytest.raises(DataError, match=r"\[7\]"):
        keep_classes(np.arange(5), y, [0, 7])


def test_without_copies_the_parts_are_sklearns_stratified_split() -> None:
    # What keeps the built-in tasks' split files byte-identical to those before copies were
    # looked for: the same two train_test_split calls, in the same order.
    from sklearn.model_selection import train_test_split

    x, y = ids_and_labels()
    split = SplitConfig(val_fraction=0.15, test_fraction=0.15, seed=4)

    parts = split_parts(x, y, split)

    rest, x_test, y_rest, _ = train_test_split(x, y, test_size=0.15, stratify=y, random_state=4)
    x_train, x_val = train_test_split(rest, test_size=0.15 / 0.85, stratify=y_rest, random_state=4)
    for part, expected in (("train", x_train), ("val", x_val), ("test", x_test)):
        np.testing.assert_array_equal(parts[f"x_{part}"], expected)


def test_copies_of_a_sample_land_in_its_part() -> None:
    x, y = ids_and_labels()
    x = x.copy()
    # Ten groups of exact copies: samples 10k, 10k+1 and 10k+2 are all sample 10k.
    for k in range(10):
        x[10 * k + 1] = x[10 * k + 2] = x[10 * k]
        y[10 * k + 1] = y[10 * k + 2] = y[10 * k]

    parts = split_parts(x, y, SplitConfig(val_fraction=0.2, test_fraction=0.2, seed=0))

    assert sum(len(parts[f"x_{part}"]) for part in PARTS) == len(x)
    for k in range(10):
        holding = [part for part in PARTS if np.isin(10 * k, parts[f"x_{part}"])]
        assert len(holding) == 1
        assert np.sum(parts[f"x_{holding[0]}"] == 10 * k) == 3


def test_a_given_part_loses_its_copies_of_training_samples() -> None:
    x, y = ids_and_labels()
    x_val, y_val = np.array([3, 1001, 1002]), np.array([y[3], 1, 2], np.uint8)
    x_test, y_test = np.array([1001, 7, 1003]), np.array([1, y[7], 3], np.uint8)

    parts = split_parts(x, y, SplitConfig(), (x_test, y_test), (x_val, y_val))

    np.testing.assert_array_equal(parts["x_train"], x)
    np.testing.assert_array_equal(parts["x_val"], [1001, 1002])
    np.testing.assert_array_equal(parts["x_test"], [1003])


def test_a_class_too_small_for_the_split_is_one_line_naming_it(project: Path) -> None:
    from conftest import stage_in

    y = np.array([0] * 20 + [1] * 20 + [2] * 3, np.uint8)
    raw = project / "data" / "raw"
    raw.mkdir(parents=True)
    np.savez(raw / "mine.npz", x=np.arange(len(y), dtype=np.float32)[:, None], y=y,
             class_names=np.array(["ant", "bee", "wasp"]))  # fmt: skip
    (project / "conf" / "dataset" / "mine.yaml").write_text(
        "name: mine\nsource: mine\nsplit: {val_fraction: 0.2, test_fraction: 0.2}\n"
    )

    result = stage_in(project, "split", "dataset=mine", check=False)

    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: class wasp has 3 samples; cutting val 0.2 and test 0.2 of it (dataset.split) "
        "needs at least 5 per class: add samples of wasp, or leave it out with dataset.classes"
    )
    assert not (project / "data" / "split").exists()
