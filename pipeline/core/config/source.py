"""The schema of conf/source/: a source is a kind of data (its `kind`) and that kind's options.

The Python knows kinds only; a data set is a file in conf/source/ naming its kind:

    image_folder  one subfolder per class (or train/, val/, test/ of them), local or an archive
    table         a CSV or Parquet file: a label column, numeric and categorical features
    idx           the IDX files of MNIST, Fashion-MNIST, KMNIST or EMNIST
    sklearn       a sklearn.datasets.make_* generator and its parameters

`source_of` turns the composed `source` section into its kind's dataclass, so an unknown key or
a bad value stops `fetch` with one line before it reads anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

from omegaconf import MISSING, OmegaConf

from pipeline.core.config.base import check
from pipeline.core.errors import ConfigError

SHA256 = re.compile(r"[0-9a-f]{64}")


class Kind(Enum):
    image_folder = "image_folder"
    table = "table"
    idx = "idx"
    sklearn = "sklearn"


class Color(Enum):
    grayscale = "grayscale"  # one channel: (size, size) per image
    rgb = "rgb"  # three: (size, size, 3)


class OnBadFile(Enum):
    error = "error"  # every unreadable, empty or unsupported file named in one error
    skip = "skip"  # dropped, and counted in the data summary


class Missing(Enum):
    error = "error"  # a missing value stops fetch, naming the column and the count
    drop = "drop"  # rows with a missing value are left out
    fill = "fill"  # the column's median (numbers) or most frequent value (categories)


class FeatureType(Enum):
    number = "number"
    category = "category"  # text or codes, one-hot encoded inside the model


def _check_sha256(key: str, digest: str | None) -> None:
    check(
        digest is None or SHA256.fullmatch(digest) is not None,
        f"source.{key}: '{digest}' is not a SHA-256 (64 lowercase hex digits)",
    )


@dataclass
class SourceBase:
    name: str = MISSING  # writes data/raw/<name>.npz: the file's own name in conf/source/
    kind: Kind = MISSING


@dataclass
class Mirrored(SourceBase):
    # The folder holding this source in PIPELINE_DATA_MIRROR (the source's name if null).
    mirror: str | None = None

    @property
    def mirror_folder(self) -> str:
        return self.mirror or self.name


@dataclass
class Located(Mirrored):
    """Where a kind's files come from: a local path, or a URL verified by its checksum."""

    path: str | None = None  # a local folder or file (relative to the repository root)
    url: str | None = None  # a file, or an archive (.zip, .tar.gz, .tgz), to download
    sha256: str | None = None  # of the downloaded file
    # SHA-256 over `sha256sum` lines of the files read (`<digest>  <mirror>/<path>`, sorted):
    # for archives whose own bytes change each time they are built (GitHub's).
    content_sha256: str | None = None

    def __post_init__(self) -> None:
        check(
            (self.path is None) != (self.url is None),
            f"source {self.name}: give exactly one of source.path (a local folder or file) "
            "or source.url (with source.sha256)",
        )
        check(
            self.url is None or self.sha256 is not None or self.content_sha256 is not None,
            f"source.url {self.url}: give its source.sha256 (or source.content_sha256), so "
            "that what is downloaded can be verified",
        )
        _check_sha256("sha256", self.sha256)
        _check_sha256("content_sha256", self.content_sha256)


@dataclass
class ImageFolderSource(Located):
    kind: Kind = Kind.image_folder
    # The folder, inside `path` or the archive's top folder, holding the class folders (or
    # train/, val/ and test/); null: the top itself.
    folder: str | None = None
    image_size: int = 64  # every image is resized to image_size x image_size
    color: Color = Color.rgb
    # The classes in label order; null: the class folders' names, sorted.
    class_names: list[str] | None = None
    apply_errata: bool = True
    # "<class>/<file>" (as under `folder`) -> the class the image really shows.
    label_errata: dict[str, str] = field(default_factory=dict)
    on_bad_file: OnBadFile = OnBadFile.error

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.image_size > 0, f"source.image_size must be > 0, got {self.image_size}")
        if self.class_names is not None:
            check(
                len(set(self.class_names)) == len(self.class_names) >= 2,
                f"source.class_names must name two or more distinct classes, got "
                f"{self.class_names}",
            )


@dataclass
class TableSource(Located):
    kind: Kind = Kind.table
    label: str = MISSING  # the column holding each row's class (text or integers)
    # The feature columns and their types, as Ludwig's input features: {column: number or
    # category}; null: every column but the label, text as categories and numbers as numbers.
    features: dict[str, FeatureType] | None = None
    missing: Missing = Missing.error
    class_names: list[str] | None = None  # the label's values in label order; null: sorted

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            self.features is None or self.label not in self.features,
            f"source.features: {self.label} is the label column, not a feature",
        )
        check(
            self.features is None or len(self.features) > 0,
            "source.features must name one column or more (or be null for all but the label)",
        )


@dataclass
class IdxSource(Mirrored):
    kind: Kind = Kind.idx
    # Tried in order; each file is verified by its SHA-256 wherever it comes from.
    urls: list[str] = field(default_factory=list)
    # File name -> SHA-256. Images or labels by the file's own magic number, the training or
    # the test part by its name ("train", "test" or "t10k").
    files: dict[str, str] = field(default_factory=dict)
    transpose: bool = False  # EMNIST stores each image column by column
    class_names: list[str] | None = None  # the labels' names in label order; null: the labels

    def __post_init__(self) -> None:
        for name, digest in self.files.items():
            _check_sha256(f"files.{name}", digest)


@dataclass
class SklearnSource(SourceBase):
    kind: Kind = Kind.sklearn
    generator: str = MISSING  # a function of sklearn.datasets: make_circles, make_moons, ...
    params: dict[str, Any] = field(default_factory=dict)  # its keyword arguments

    def __post_init__(self) -> None:
        check(
            self.generator.startswith("make_"),
            f"source.generator must be a sklearn.datasets.make_* function, got {self.generator}",
        )


KINDS: dict[Kind, type] = {
    Kind.image_folder: ImageFolderSource,
    Kind.table: TableSource,
    Kind.idx: IdxSource,
    Kind.sklearn: SklearnSource,
}


def source_of(section: Any) -> Any:
    """The `source` section (a dict, as composed) as its kind's checked dataclass."""
    if not isinstance(section, dict):
        return section  # already built
    kinds = ", ".join(kind.value for kind in Kind)
    try:
        kind = Kind(section.get("kind"))
    except ValueError:
        raise ConfigError(
            f"source.kind must be one of {kinds}, got {section.get('kind')!r}"
        ) from None
    schema = KINDS[kind]
    known = {f.name for f in fields(schema)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError(
            f"source.{unknown[0]} is not an option of kind {kind.value}; its options: "
            f"{', '.join(sorted(known))}"
        )
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), section))
    except ConfigError:
        raise
    except Exception as error:  # OmegaConf's type errors, or __post_init__'s wrapped
        cause = error.__cause__ or error.__context__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(f"source: {str(error).splitlines()[0]}") from None
