"""Image files as pixels: how `fetch` reads a folder of them, and `predict` an image it is given.

Every file is decoded (a file that lists but does not decode is a bad file, named), on
every core: one process per core, each reading, decoding and resizing its files and sending back
only the resized pixels, so that memory holds the output and little else.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.config import Color
from pipeline.core.errors import DataError

# What Pillow reads of the formats Keras' image_dataset_from_directory and Hugging Face's
# imagefolder take.
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".webp")
# Below this many files, starting processes costs more than decoding in this one.
PARALLEL_FROM = 256


@dataclass(frozen=True)
class ImageFile:
    """What the data summary says of one decoded file."""

    sha256: str  # of the file's bytes
    format: str  # JPEG, PNG, ...
    mode: str  # as stored: L, RGB, RGBA, P, ...
    width: int
    height: int


def decode(data: bytes, size: int, color: Color, origin: str = "image") -> np.ndarray:
    """An image file's bytes resized to `size` x `size` pixels (uint8) in `color`."""
    return _decode(data, size, color, origin)[0]


def _decode(data: bytes, size: int, color: Color, origin: str) -> tuple[np.ndarray, ImageFile]:
    """`decode`, and what the file is; a file that is empty, not an image or cut short raises
    DataError naming `origin` and why."""
    from PIL import Image

    if not data:
        raise DataError(f"{origin}: empty file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            found = ImageFile(
                hashlib.sha256(data).hexdigest(),
                image.format or "?",
                image.mode,
                image.width,
                image.height,
            )
            # A JPEG at least 4x `size` a side decodes at 1/2, 1/4 or 1/8 of its size, still
            # twice `size` or more, for LANCZOS to finish (libjpeg's scaled decoding, as
            # Pillow's thumbnail uses it, with its reducing gap): a camera's photo decodes
            # several times faster. Smaller ones decode as before (a draft at full scale moves
            # a few pixels by one), and each in its own mode (a colour JPEG decoded as grey has
            # other pixels than one converted).
            if min(image.width, image.height) >= 4 * size:
                image.draft(image.mode, (2 * size, 2 * size))
            # LANCZOS filters over the whole footprint, so a 3024x3024 photo shrinks as cleanly
            # as a 100x100 one. The first frame of an animated GIF or WebP.
            mode = "L" if color == Color.grayscale else "RGB"
            small = image.convert(mode).resize((size, size), Image.Resampling.LANCZOS)
    # What Pillow raises for bytes it cannot decode: unknown formats, cut-short data, bombs.
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise DataError(f"{origin}: not an image Pillow can decode ({error})") from None
    return np.asarray(small, dtype=np.uint8), found


def _read_chunk(
    paths: list[str], size: int, color: Color
) -> tuple[np.ndarray, list[ImageFile | str]]:
    """The files' pixels (those that decode, in order) and, for each file, what it is or why it
    cannot be read: a bad file's reason."""
    pixels, found = [], []
    for path in paths:
        if not path.lower().endswith(IMAGE_SUFFIXES):
            suffix = Path(path).suffix or "no suffix"
            found.append(f"unsupported type ({suffix}; images are {', '.join(IMAGE_SUFFIXES)})")
            continue
        try:
            image, info = _decode(Path(path).read_bytes(), size, color, origin="")
        except DataError as error:
            found.append(str(error).removeprefix(": "))
            continue
        except OSError as error:
            found.append(f"unreadable ({error.strerror or error})")
            continue
        pixels.append(image)
        found.append(info)
    shape = (size, size) if color == Color.grayscale else (size, size, 3)
    return np.stack(pixels) if pixels else np.zeros((0, *shape), np.uint8), found


def workers() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def read_images(
    paths: list[Path], size: int, color: Color
) -> tuple[np.ndarray, list[ImageFile | str]]:
    """Every file of `paths` decoded, on every core: the pixels of those that decode, in order,
    and for each file what it is or why it is bad. Only the resized pixels are kept."""
    names = [str(path) for path in paths]
    cores = workers()
    if len(names) < PARALLEL_FROM or cores == 1:
        return _read_chunk(names, size, color)
    # Files go in chunks: one file per task would make inter-process traffic the cost.
    step = max(1, min(64, len(names) // (cores * 8)))
    chunks = [names[i : i + step] for i in range(0, len(names), step)]
    shape = (size, size) if color == Color.grayscale else (size, size, 3)
    out = np.empty((len(names), *shape), np.uint8)
    found: list[ImageFile | str] = []
    filled = 0
    # A fork server: workers start from a small process that holds only this module, not
    # from the stage's (forking a process that may hold threads can deadlock).
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    with ProcessPoolExecutor(cores, mp_context=context) as pool:
        for pixels, infos in pool.map(
            _read_chunk, chunks, [size] * len(chunks), [color] * len(chunks)
        ):
            out[filled : filled + len(pixels)] = pixels
            filled += len(pixels)
            found += infos
    return out[:filled], found
