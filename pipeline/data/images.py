"""Image files as pixels: how `fetch` reads a photo, and `predict` an image it is given."""

from __future__ import annotations

import io

import numpy as np

from pipeline.core.errors import DataError


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
