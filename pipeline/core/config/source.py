"""The schema of conf/source/: where a data set comes from and how it is verified."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from pipeline.core.config.base import check


@dataclass
class MnistSource:
    name: str = "mnist"
    # Tried in order; each file is verified by its published SHA-256 wherever it comes from.
    urls: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256

    def __post_init__(self) -> None:
        for name, digest in self.files.items():
            check(
                len(digest) == 64,
                f"source.files.{name}: '{digest}' is not a SHA-256 (64 hex digits)",
            )


@dataclass
class SignDigitsSource:
    name: str = "sign_digits"
    archive_url: str = MISSING
    archive_folder: str = MISSING  # top folder inside the repository archive
    # SHA-256 over the sorted `sha256sum` lines of every Dataset/<digit>/<file>: the archive's
    # bytes change each time GitHub builds it, the images do not.
    content_sha256: str = MISSING
    image_size: int = 64
    apply_errata: bool = True
    # "<digit>/<file>" -> the digit the photo really shows (see conf/source/sign_digits.yaml)
    label_errata: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check(self.image_size > 0, f"source.image_size must be > 0, got {self.image_size}")
        for key, digit in self.label_errata.items():
            check(0 <= digit <= 9, f"source.label_errata.{key}: {digit} is not a digit 0-9")


@dataclass
class CirclesSource:
    name: str = "circles"
    n_samples: int = 100
    shuffle: bool = True
    noise: float = 0.05
    random_state: int = 100
    factor: float = 0.8

    def __post_init__(self) -> None:
        check(self.n_samples >= 4, f"source.n_samples must be >= 4, got {self.n_samples}")
        check(0 < self.factor < 1, f"source.factor must be in (0, 1), got {self.factor}")
        check(self.noise >= 0, f"source.noise must be >= 0, got {self.noise}")
