"""Tiny stand-ins for the real data sets, laid out like ../shared/datasets.

Tests fetch, split and train on these in seconds, offline. The images are easy to learn (a
bar whose position is the label), so a test can also expect a model to beat chance on them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# conf/source/sign_digits.yaml's label errata name these two files, so every tiny copy has them.
ERRATA_FILES = ("2/IMG_5176.JPG", "3/IMG_5108.JPG")
SIGN_IMAGE_SIZE = 20
# Fixed zip timestamps: the same mirror gives the same archive bytes.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def idx_gz(array: np.ndarray) -> bytes:
    """`array` as a gzipped IDX file: magic 2051 for (n, rows, cols) images, 2049 for labels."""
    if array.dtype != np.uint8 or array.ndim not in (1, 3):
        raise ValueError(
            f"IDX files hold uint8 (n,) or (n, rows, cols), got {array.dtype} {array.shape}"
        )
    magic = 2049 if array.ndim == 1 else 2051
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    # mtime=0: the same array gives the same bytes, hence the same SHA-256.
    return gzip.compress(header + np.ascontiguousarray(array).tobytes(), mtime=0)


def _mnist_part(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if n < 10:
        raise ValueError(f"need at least 10 images to hold all 10 labels, got {n}")
    labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
    for index, label in enumerate(labels):
        row = 3 + 2 * int(label)
        images[index, row : row + 2, 4:24] = 255
    return images, labels


def write_mnist_mirror(
    mirror: Path, n_train: int = 200, n_test: int = 100, seed: int = 0
) -> dict[str, str]:
    """The four MNIST files under mirror/mnist/; returns {file name: sha256}."""
    rng = np.random.default_rng(seed)
    x_train, y_train = _mnist_part(n_train, rng)
    x_test, y_test = _mnist_part(n_test, rng)
    folder = mirror / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name, array in zip(MNIST_FILES, (x_train, y_train, x_test, y_test), strict=True):
        data = idx_gz(array)
        (folder / name).write_bytes(data)
        digests[name] = hashlib.sha256(data).hexdigest()
    return digests


def _sign_names(digit: int, per_class: int) -> list[str]:
    names = [f"IMG_{1000 + 100 * digit + index}.JPG" for index in range(per_class)]
    for errata_file in ERRATA_FILES:
        folder, name = errata_file.split("/")
        if int(folder) == digit:
            names[0] = name
    return names


def _sign_image(digit: int, rng: np.random.Generator) -> bytes:
    from PIL import Image

    pixels = rng.integers(40, 90, size=(SIGN_IMAGE_SIZE, SIGN_IMAGE_SIZE, 3), dtype=np.uint8)
    column = 1 + digit * (SIGN_IMAGE_SIZE - 3) // 9
    pixels[:, column : column + 2] = (230, 190, 160)  # a bright, skin-toned vertical bar
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def sign_digits_digest(dataset: Path) -> str:
    """The content SHA-256 of a Dataset/ folder, as ../shared/datasets/README.md defines it."""
    files = sorted(
        (f"{path.parent.name}/{path.name}", path)
        for path in dataset.glob("[0-9]/*")
        if path.is_file()
    )
    lines = "".join(
        f"{hashlib.sha256(path.read_bytes()).hexdigest()}  sign_language_digits/Dataset/{key}\n"
        for key, path in files
    )
    return hashlib.sha256(lines.encode()).hexdigest()


def write_sign_digits_mirror(mirror: Path, per_class: int = 6, seed: int = 0) -> str:
    """Small RGB JPEGs under mirror/sign_language_digits/Dataset/<digit>/; returns the content
    digest to use as SignDigitsSource.content_sha256."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    rng = np.random.default_rng(seed)
    dataset = mirror / "sign_language_digits" / "Dataset"
    for digit in range(10):
        folder = dataset / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        for name in _sign_names(digit, per_class):
            (folder / name).write_bytes(_sign_image(digit, rng))
    return sign_digits_digest(dataset)


def sign_digits_zip(mirror: Path, archive_folder: str) -> bytes:
    """The mirror's images as GitHub's repository archive lays them out, folder entries included."""
    dataset = mirror / "sign_language_digits" / "Dataset"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:

        def add(name: str, data: bytes = b"") -> None:
            bundle.writestr(zipfile.ZipInfo(f"{archive_folder}/{name}", date_time=_ZIP_DATE), data)

        add("")
        add("README.md", b"# Sign Language Digits Dataset (tiny test copy)\n")
        add("Dataset/")
        for folder in sorted(path for path in dataset.iterdir() if path.is_dir()):
            add(f"Dataset/{folder.name}/")
            for path in sorted(folder.iterdir()):
                add(f"Dataset/{folder.name}/{path.name}", path.read_bytes())
    return buffer.getvalue()


def _photo(label: int, size: tuple[int, int], rgb: bool, rng: np.random.Generator) -> Any:
    """A picture whose class is easy to learn: a bright vertical bar at a place set by `label`."""
    from PIL import Image

    width, height = size
    pixels = rng.integers(20, 70, size=(height, width, 3), dtype=np.uint8)
    left = (1 + 3 * label) * width // 12
    pixels[:, left : left + max(2, width // 8)] = (240, 220, 200)
    image = Image.fromarray(pixels)
    return image if rgb else image.convert("L")


def write_image_folder(
    root: Path,
    classes: tuple[str, ...] = ("cat", "dog", "fox"),
    per_class: int = 12,
    parts: tuple[str, ...] = (),
    seed: int = 0,
) -> list[Path]:
    """A folder of one's own photos: one subfolder per class (under each of `parts`, e.g.
    train/ val/ test/, if given), JPEG and PNG files of mixed sizes, grayscale but for one RGB
    image, a nested folder, and hidden files and folders that must be skipped. Returns the
    image files written."""
    rng = np.random.default_rng(seed)
    written = []
    for part_index, part in enumerate(parts or ("",)):
        count = per_class if part in ("", "train") else max(2, per_class // 3)
        for label, name in enumerate(classes):
            folder = root / part / name
            for index in range(count):
                size = ((24, 24), (40, 30), (31, 57))[index % 3]
                rgb = part_index == label == index == 0  # one RGB image among grayscale ones
                suffix = ".png" if index % 2 else ".jpg"
                nested = folder / "more" if index == count - 1 else folder
                path = nested / f"{name}_{part or 'all'}_{index:03d}{suffix}"
                path.parent.mkdir(parents=True, exist_ok=True)
                _photo(label, size, rgb, rng).save(path, quality=95)
                written.append(path)
            (folder / ".DS_Store").write_bytes(b"\0\1 not an image")
    (root / ".cache").mkdir(parents=True, exist_ok=True)
    (root / ".cache" / "thumb.jpg").write_bytes(b"hidden folders are skipped")
    return written


def write_table(path: Path, seed: int = 0, rows: int = 120) -> None:
    """scikit-learn's iris as a CSV of one's own: the species as text (the label), and a
    categorical column of text (the colour of the flower's pot) that helps predict it."""
    from sklearn.datasets import load_iris

    iris = load_iris()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(iris.target))[:rows]
    pots = np.array(["red", "green", "blue"])
    lines = ["sepal_length,sepal_width,petal_length,petal_width,pot,species"]
    for i in order:
        label = int(iris.target[i])
        pot = pots[label] if rng.random() < 0.8 else pots[rng.integers(3)]
        values = ",".join(f"{v:.1f}" for v in iris.data[i])
        lines.append(f"{values},{pot},{iris.target_names[label]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
