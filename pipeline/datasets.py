"""The data sets: how each source becomes arrays, and the split files every later stage reads.

A fetched source is `data/raw/<source>.npz` holding `x`, `y` (and `x_test`, `y_test` where the
source ships its own test set); a split is `data/split/<task>.npz` holding `x_train`, `y_train`,
`x_val`, `y_val`, `x_test`, `y_test`. Images stay uint8 on disk and are scaled to [0, 1] by
`load_split`, so the files stay small and every stage sees the same floats.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import CirclesSource, MnistSource, SignDigitsSource
from pipeline.download import download, fetch_verified
from pipeline.errors import DataError, OutputError, missing, remake, unreadable
from pipeline.files import atomic_output

SPLIT_ARRAYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "class_names")
RAW_ARRAYS = ("x", "y")
# Where each source sits inside a mirror folder laid out like ../shared/datasets.
MIRROR_FOLDERS = {"mnist": "mnist", "sign_digits": "sign_language_digits"}
IDX_MAGIC = {2049: 1, 2051: 3}  # labels: 1 dimension, images: 3


# ---- MNIST -------------------------------------------------------------------------------


def fetch_mnist(source: MnistSource, downloads: Path, mirror: Path | None) -> dict[str, np.ndarray]:
    arrays = {}
    for name, sha256 in source.files.items():
        mirror_file = mirror / MIRROR_FOLDERS["mnist"] / name if mirror else None
        path = fetch_verified(name, source.urls, sha256, downloads / "mnist" / name, mirror_file)
        arrays[name] = read_idx(path)
    pick = {  # file name prefix -> array name
        "train-images": "x",
        "train-labels": "y",
        "t10k-images": "x_test",
        "t10k-labels": "y_test",
    }
    out = {}
    for name, array in arrays.items():
        key = next((key for prefix, key in pick.items() if name.startswith(prefix)), None)
        if key is None:
            raise DataError(f"source.files: {name} is not one of the four MNIST files")
        out[key] = array
    if set(out) != set(pick.values()):
        raise DataError(f"source.files must list the four MNIST files, got {sorted(arrays)}")
    return out


def read_idx(path: Path) -> np.ndarray:
    """Parse a gzipped IDX file (LeCun's format: big-endian magic, dimensions, uint8 data)."""
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as error:
        raise DataError(
            f"{path}: not a valid gzip file ({error}); delete it and fetch again"
        ) from None
    magic = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else 0
    if magic not in IDX_MAGIC:
        raise DataError(f"{path}: not an IDX file (magic {magic}, expected 2049 or 2051)")
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


# ---- Sign Language Digits ----------------------------------------------------------------


def fetch_sign_digits(
    source: SignDigitsSource, downloads: Path, mirror: Path | None
) -> dict[str, np.ndarray]:
    if mirror is not None:
        files = _sign_files_from_folder(mirror / MIRROR_FOLDERS["sign_digits"] / "Dataset")
        _verify_content(files, source.content_sha256, origin=str(mirror))
    else:
        archive = downloads / "sign_digits" / "archive.zip"
        files = _sign_files_from_archive(source, archive)
        try:
            _verify_content(files, source.content_sha256, origin=source.archive_url)
        except DataError:
            archive.unlink()  # so that fetching again downloads it anew
            raise
    names = sorted(files)
    labels = np.array([int(name.split("/")[0]) for name in names], dtype=np.uint8)
    changed = 0
    if source.apply_errata:
        for name, digit in source.label_errata.items():
            if name not in files:
                raise DataError(f"source.label_errata: {name} is not a file of the data set")
            index = names.index(name)
            changed += int(labels[index] != digit)
            labels[index] = digit
    images = np.stack([grayscale(files[name], source.image_size, origin=name) for name in names])
    return {"x": images, "y": labels, "names": np.array(names), "errata_changed": np.array(changed)}


def _sign_files_from_folder(folder: Path) -> dict[str, bytes]:
    if not folder.is_dir():
        raise DataError(
            f"{folder}: no such folder; the mirror needs sign_language_digits/Dataset/<digit>/"
        )
    return {
        f"{path.parent.name}/{path.name}": path.read_bytes()
        for path in folder.glob("[0-9]/*")
        if path.is_file()
    }


def _sign_files_from_archive(source: SignDigitsSource, archive: Path) -> dict[str, bytes]:
    # GitHub builds the archive anew on request, so its bytes cannot be pinned: the download is
    # kept only if its images match content_sha256 (checked by the caller).
    if not archive.exists():
        try:
            with atomic_output(archive) as tmp:
                download(source.archive_url, tmp)
        except OutputError:
            raise
        except DataError as error:
            raise DataError(
                f"sign_digits archive: {error}; check the network, or set PIPELINE_DATA_MIRROR "
                "to a folder holding sign_language_digits/Dataset/"
            ) from None
    prefix = f"{source.archive_folder}/Dataset/"
    try:
        with zipfile.ZipFile(archive) as bundle:
            return {
                member[len(prefix) :]: bundle.read(member)
                for member in bundle.namelist()
                if member.startswith(prefix) and not member.endswith("/")
            }
    except zipfile.BadZipFile as error:
        archive.unlink()
        raise DataError(
            f"{source.archive_url}: not a valid zip ({error}); run fetch again"
        ) from None


def _verify_content(files: dict[str, bytes], expected: str, origin: str) -> None:
    """The digest the datasets README publishes: SHA-256 over `sha256sum`-style lines."""
    lines = "".join(
        f"{hashlib.sha256(data).hexdigest()}  sign_language_digits/Dataset/{name}\n"
        for name, data in sorted(files.items())
    )
    actual = hashlib.sha256(lines.encode()).hexdigest()
    if actual != expected:
        raise DataError(
            f"{origin}: the {len(files)} images have content SHA-256 {actual}, "
            f"expected {expected}; "
            "the copy is incomplete or altered; fetch it again from the pinned commit"
        )


def grayscale(data: bytes, size: int, origin: str = "image") -> np.ndarray:
    """An image file's bytes as `size` x `size` grayscale pixels (uint8): how every sign-digit
    photo is read, and how `predict` reads an image it is given."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DataError(f"{origin}: not an image file PIL can read") from None
    with image:
        # LANCZOS filters over the whole footprint, so the three 3024x3024 photos shrink
        # as cleanly as the 100x100 ones.
        small = image.convert("L").resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(small, dtype=np.uint8)


# ---- make_circles ------------------------------------------------------------------------


def make_circles(source: CirclesSource) -> dict[str, np.ndarray]:
    from sklearn.datasets import make_circles as generate

    x, y = generate(
        n_samples=source.n_samples,
        shuffle=source.shuffle,
        noise=source.noise,
        random_state=source.random_state,
        factor=source.factor,
    )
    return {"x": x.astype(np.float32), "y": y.astype(np.uint8)}


# ---- split files -------------------------------------------------------------------------


@dataclass
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    label_errata_changed: int | None = None  # labels the source's errata list corrected

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def epoch_orders(rows: int, seed: int) -> Iterator[np.ndarray]:
    """Each epoch's order of the rows: a new one per epoch, the same for the same seed."""
    rng = np.random.default_rng(seed)
    order = np.arange(rows)
    while True:
        rng.shuffle(order)
        yield order.copy()


def batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, shuffle_seed: int | None = None, epochs: int = 1
) -> dict[str, Any]:
    """What Keras' fit takes as `x` (and `steps_per_epoch`) to see `x` and `y` in batches for
    `epochs` epochs, in the orders `epoch_orders(len(x), shuffle_seed)` gives (in order without
    a seed): the same batches on every backend.

    A `keras.utils.PyDataset`, except on TensorFlow: there it costs about 0.1 s of Python an
    epoch (two thirds of a small model's fit), so TensorFlow gets every epoch's order up front
    in one tf.data pipeline."""
    import keras

    steps = -(-len(x) // batch_size)
    orders = epoch_orders(len(x), shuffle_seed) if shuffle_seed is not None else None
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if orders is None:
            data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
            return {"x": data.prefetch(tf.data.AUTOTUNE)}
        x_all, y_all = tf.constant(x), tf.constant(y)
        rows = tf.data.Dataset.from_tensor_slices(np.stack([next(orders) for _ in range(epochs)]))
        data = rows.flat_map(
            lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size)
        )
        data = data.map(lambda picked: (tf.gather(x_all, picked), tf.gather(y_all, picked)))
        # One iterator across all epochs: Keras keeps it from epoch to epoch when told
        # the steps per epoch.
        return {"x": data.prefetch(tf.data.AUTOTUNE), "steps_per_epoch": steps}

    class Batches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.order = np.arange(len(x)) if orders is None else next(orders)
            self.served = 0

        def __len__(self) -> int:
            return steps

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            self.served += 1
            rows = self.order[index * batch_size : (index + 1) * batch_size]
            return x[rows], y[rows]

        def on_epoch_end(self) -> None:
            # Keras also calls this before the first epoch, after reading one batch to build
            # the model: the order moves on only once an epoch's worth has been read.
            if orders is not None and self.served >= steps:
                self.order, self.served = next(orders), 0

    return {"x": Batches()}


def read_arrays(path: Path, names: Iterable[str], what: str, stage: str) -> dict[str, np.ndarray]:
    """Every array of data file `path` (a .npz holding at least `names`). A file that is
    missing, cut short or not such a file stops the stage with one line naming `what` it should
    be and the `dvc repro` stage that makes it again."""
    if not path.exists():
        raise missing(path, stage)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    # np.load opens a .npy (or a pickle) as one array, which has no `with`: AttributeError.
    except (zipfile.BadZipFile, ValueError, KeyError, EOFError, AttributeError):
        raise unreadable(path, what, remake(stage)) from None
    if not set(names) <= set(arrays):
        raise unreadable(path, what, remake(stage))
    return arrays


def load_raw(path: str | Path, source: str) -> dict[str, np.ndarray]:
    """The arrays `fetch` wrote for `source` (`x`, `y`, and what else the source gives)."""
    return read_arrays(Path(path), RAW_ARRAYS, "a raw data file", f"fetch@{source}")


def load_split(path: str | Path) -> Split:
    path = Path(path)
    arrays = read_arrays(path, SPLIT_ARRAYS, "a split file", f"split@{path.stem}")
    for key in ("x_train", "x_val", "x_test"):
        # As the source gives them (pixels 0-255, raw points): models scale their own inputs.
        arrays[key] = arrays[key].astype(np.float32)
    return Split(
        **{
            key: arrays[key] for key in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
        },
        class_names=[str(name) for name in arrays["class_names"]],
        label_errata_changed=(
            int(arrays["label_errata_changed"]) if "label_errata_changed" in arrays else None
        ),
    )
