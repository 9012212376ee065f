"""The sources: how each data set becomes arrays, verified, from the network or a mirror.

A fetched source is `data/raw/<source>.npz` holding `x`, `y` (and `x_test`, `y_test` where the
source ships its own test set).
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import zipfile
from pathlib import Path

import numpy as np

from pipeline.core.config import CirclesSource, MnistSource, SignDigitsSource
from pipeline.core.errors import DataError, OutputError
from pipeline.core.files import atomic_output
from pipeline.data.download import download, fetch_verified
from pipeline.data.images import grayscale

# Where each source sits inside a mirror folder laid out like ../shared/datasets.
MIRROR_FOLDERS = {"mnist": "mnist", "sign_digits": "sign_language_digits"}


IDX_MAGIC = {2049: 1, 2051: 3}  # labels: 1 dimension, images: 3


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
