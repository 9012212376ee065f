"""Where a folder or table source's files are: a local path, or a download verified by its
checksum (an archive is unpacked), or the mirror folder (PIPELINE_DATA_MIRROR) standing in for
the network with the same checks.

Downloads and unpacked archives land in data/downloads/<source>/ whole or not at all, and one
that fails its check is deleted, so that fetching again downloads it anew.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from pipeline.core.config.source import Located
from pipeline.core.errors import DataError, OutputError
from pipeline.core.files import atomic_output
from pipeline.data.download import download, fetch_verified

ARCHIVES = (".zip", ".tar.gz", ".tgz", ".tar")
MIRROR_FIX = "or set PIPELINE_DATA_MIRROR to a folder holding a verified copy"


@dataclass
class Origin:
    """A source's files, found and (where a checksum covers them as a whole) verified."""

    top: Path  # the local folder or file the source reads
    where: str  # for messages: the path, URL or mirror folder they came from
    # What to delete if the files' content fails its check (a download, never the user's).
    downloaded: list[Path] = field(default_factory=list)


def locate(source: Located, downloads: Path, mirror: Path | None) -> Origin:
    """The folder or file `source` reads: its local path, else the mirror's copy, else its URL
    downloaded (and unpacked, for an archive) into `downloads`/<source>/."""
    if source.path is not None:
        top = Path(source.path).expanduser()
        if not top.exists():
            raise DataError(
                f"source.path: {top} does not exist; give the folder or file of your data "
                f"in conf/source/{source.name}.yaml"
            )
        return Origin(top, str(top))
    assert source.url is not None  # the schema asks for one of path and url
    name = Path(urlparse(source.url).path).name or "download"
    cache = downloads / source.name
    if mirror is not None:
        copy = mirror / source.mirror_folder
        if source.sha256 is not None and (copy / name).is_file():  # the download itself
            return _unpacked(
                source, fetch_verified(name, [], source.sha256, cache / name, copy / name)
            )
        if not copy.exists():
            raise DataError(
                f"{copy}: not in the mirror; copy {source.url} (or what it unpacks to) there, "
                "or unset PIPELINE_DATA_MIRROR to download it"
            )
        if source.content_sha256 is None:
            raise DataError(
                f"{copy}: an unpacked copy, which source.sha256 (of the archive) cannot verify; "
                f"put {name} itself there, or give source.content_sha256"
            )
        return Origin(copy, str(copy))
    if source.sha256 is not None:
        path = fetch_verified(name, [source.url.rsplit("/", 1)[0]], source.sha256, cache / name)
        return _unpacked(source, path)
    # Only the content is pinned (content_sha256): the download is kept until it fails that.
    path = cache / name
    if not path.exists():
        try:
            with atomic_output(path) as tmp:
                download(source.url, tmp)
        except OutputError:
            raise
        except DataError as error:
            raise DataError(
                f"source {source.name}: {error}; check the network, {MIRROR_FIX}"
            ) from None
    return _unpacked(source, path)


def _unpacked(source: Located, path: Path) -> Origin:
    """`path`, or the archive unpacked beside it (its one top folder, where it has one)."""
    if not path.name.lower().endswith(ARCHIVES):
        return Origin(path, source.url or str(path), [path])
    folder = path.with_name(path.name + ".d")
    if not folder.exists():
        try:
            with atomic_output(folder) as tmp:
                _unpack(path, tmp)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as error:
            if isinstance(error, OutputError):
                raise
            path.unlink(missing_ok=True)
            raise DataError(
                f"{source.url}: not a valid archive ({error}); fetch again to download it anew"
            ) from None
    entries = [entry for entry in folder.iterdir() if not entry.name.startswith(".")]
    top = entries[0] if len(entries) == 1 and entries[0].is_dir() else folder
    return Origin(top, source.url or str(path), [path, folder])


def _unpack(archive: Path, into: Path) -> None:
    into.mkdir()
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.namelist():
                # A member named ../x or /x would land outside the folder (zip slip).
                if not (into / member).resolve().is_relative_to(into.resolve()):
                    raise zipfile.BadZipFile(f"member {member} points outside the archive")
            bundle.extractall(into)
    else:
        with tarfile.open(archive) as bundle:
            bundle.extractall(into, filter="data")  # refuses links and paths leaving `into`


def verify_content(origin: Origin, digests: Iterable[tuple[str, str]], expected: str) -> None:
    """Check `expected` (source.content_sha256) against the files read: (path, SHA-256) each,
    the path as `sha256sum` run from the mirror's root names it. A mismatch deletes what was
    downloaded, so that the next fetch downloads it anew."""
    lines = "".join(f"{digest}  {path}\n" for path, digest in sorted(digests))
    actual = hashlib.sha256(lines.encode()).hexdigest()
    if actual != expected:
        for path in origin.downloaded:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise DataError(
            f"{origin.where}: the {lines.count(chr(10))} files have content SHA-256 {actual}, "
            f"expected {expected}; the copy is incomplete or altered; fetch it again"
        )
