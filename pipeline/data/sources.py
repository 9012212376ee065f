"""The sources: each kind of data made into arrays, verified, from the network, a mirror folder
or a local path, and the checks every kind passes (`fetch`).

A fetched source is `data/raw/<source>.npz` holding `x`, `y` and `class_names` (and `x_val`,
`y_val`, `x_test`, `y_test` where the source gives those parts, `names` where its samples have
names), with its data summary beside it (data/raw/<source>.json).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.config import (
    IdxSource,
    ImageFolderSource,
    SklearnSource,
    TableSource,
)
from pipeline.core.errors import ConfigError, DataError
from pipeline.data.checks import (
    Fetched,
    class_counts,
    content_keys,
    duplicates_summary,
    require_classes,
)
from pipeline.data.download import fetch_verified
from pipeline.data.folders import fetch_image_folder
from pipeline.data.tables import fetch_table

IDX_MAGIC = {2049: 1, 2051: 3}  # labels: 1 dimension, images: 3
PARTS = (("x", "y"), ("x_val", "y_val"), ("x_test", "y_test"))


def fetch(source: Any, downloads: Path, mirror: Path | None) -> Fetched:
    """The source's arrays and data summary: its classes counted, its exact copies found; a
    data set of one class, or with a class of no samples, stops here."""
    kinds = {
        ImageFolderSource: fetch_image_folder,
        TableSource: fetch_table,
        IdxSource: fetch_idx,
        SklearnSource: generate,
    }
    fetched = kinds[type(source)](source, downloads, mirror)
    arrays = fetched.arrays
    class_names = [str(name) for name in arrays["class_names"]]
    parts = [(x, y) for x, y in PARTS if x in arrays]
    y_all = np.concatenate([arrays[y] for _, y in parts])
    require_classes(y_all, class_names, f"source {source.name}")
    keys = np.concatenate([content_keys(arrays[x]) for x, _ in parts])
    part_names = {x: x.removeprefix("x_") if x != "x" else "train" for x, _ in parts}
    if "names" in arrays:
        names = [str(name) for name in arrays["names"]]
    else:  # "train 1", "test 5": a sample by its part and its place in it
        names = [f"{part_names[x]} {i + 1}" for x, _ in parts for i in range(len(arrays[x]))]
    fetched.summary = {
        "source": source.name,
        "kind": source.kind.value,
        "samples": len(y_all),
        "classes": class_counts(y_all, class_names),
        "shape": list(arrays["x"].shape[1:]),
        "duplicates": duplicates_summary(keys, y_all, names, class_names),
        **fetched.summary,
    }
    if len(parts) > 1:  # the parts the source gives
        fetched.summary["parts"] = {part_names[x]: len(arrays[x]) for x, _ in parts}
    return fetched


def fetch_idx(source: IdxSource, downloads: Path, mirror: Path | None) -> Fetched:
    """The IDX files of MNIST and its kin (Fashion-MNIST, KMNIST, EMNIST): images or labels by
    each file's magic number, the training or test part by its name."""
    parts: dict[tuple[str, int], np.ndarray] = {}
    for name, sha256 in source.files.items():
        mirror_file = mirror / source.mirror_folder / name if mirror else None
        path = fetch_verified(
            name, source.urls, sha256, downloads / source.name / name, mirror_file
        )
        array = read_idx(path)
        part = "test" if "t10k" in name or "test" in name else "train" if "train" in name else None
        if part is None:
            raise ConfigError(
                f"source.files: {name} names neither a train nor a test part (t10k or test)"
            )
        if source.transpose and array.ndim == 3:
            array = np.ascontiguousarray(array.transpose(0, 2, 1))
        parts[part, array.ndim] = array
    if sorted(parts) != [("test", 1), ("test", 3), ("train", 1), ("train", 3)]:
        raise ConfigError(
            "source.files must list four IDX files: the train and test images and labels, got "
            f"{sorted(source.files)}"
        )
    labels = np.unique(np.concatenate([parts["train", 1], parts["test", 1]]))
    y_train, y_test, class_names = _relabelled(parts["train", 1], parts["test", 1], labels, source)
    arrays = {
        "x": parts["train", 3],
        "y": y_train,
        "x_test": parts["test", 3],
        "y_test": y_test,
        "class_names": np.array(class_names),
    }
    return Fetched(arrays)


def _relabelled(
    y_train: np.ndarray, y_test: np.ndarray, labels: np.ndarray, source: IdxSource
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Labels as 0..k-1 in the order of their values (EMNIST's letters start at 1)."""
    names = source.class_names or [str(label) for label in labels.tolist()]
    if len(names) != len(labels):
        raise ConfigError(
            f"source.class_names names {len(names)} classes, the labels hold {len(labels)}"
        )
    if np.array_equal(labels, np.arange(len(labels))):
        return y_train, y_test, names
    lookup = np.zeros(int(labels.max()) + 1, np.int64)
    lookup[labels] = np.arange(len(labels))
    return lookup[y_train].astype(np.uint8), lookup[y_test].astype(np.uint8), names


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file, gzipped or not (LeCun's format: big-endian magic, dimensions, uint8
    data)."""
    raw = path.read_bytes()
    if path.suffix == ".gz" or raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise DataError(
                f"{path}: not a valid gzip file ({error}); delete it and fetch again"
            ) from None
    magic = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else 0
    if magic not in IDX_MAGIC:
        raise DataError(
            f"{path}: not an IDX file (magic {magic}, expected 2049 or 2051); delete it and "
            "fetch again"
        )
    offset = 4 + 4 * IDX_MAGIC[magic]  # magic, then one 32-bit size per dimension
    if len(raw) < offset:
        raise DataError(
            f"{path}: IDX header cut short ({len(raw)} bytes); delete it and fetch again"
        )
    shape = struct.unpack(f">{IDX_MAGIC[magic]}I", raw[4:offset])
    if len(raw) - offset != int(np.prod(shape)):
        raise DataError(
            f"{path}: holds {len(raw) - offset} bytes of data, shape {shape} needs "
            f"{int(np.prod(shape))}; delete it and fetch again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def generate(source: SklearnSource, downloads: Path, mirror: Path | None) -> Fetched:
    """A data set of `sklearn.datasets.<generator>(**params)`: points and their classes."""
    import sklearn.datasets

    function = getattr(sklearn.datasets, source.generator, None)
    if not callable(function):
        raise ConfigError(
            f"source.generator: sklearn.datasets has no {source.generator}; pick one of "
            f"{', '.join(name for name in dir(sklearn.datasets) if name.startswith('make_'))}"
        )
    try:
        made = function(**source.params)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"source.params: {source.generator}: {error}") from None
    x, y = (made[0], made[1]) if isinstance(made, tuple) and len(made) >= 2 else (None, None)
    discrete = y is not None and np.asarray(y).ndim == 1 and np.all(np.mod(y, 1) == 0)
    if x is None or np.asarray(x).ndim != 2 or not discrete:
        raise ConfigError(
            f"source.generator: {source.generator} does not make (points, classes); pick a "
            "classification generator (make_circles, make_moons, make_blobs, make_classification)"
        )
    labels, y = np.unique(y, return_inverse=True)
    return Fetched(
        {
            "x": np.asarray(x).astype(np.float32),
            "y": y.astype(np.uint8),
            "class_names": np.array([str(int(label)) for label in labels]),
        }
    )
