"""Atomic writes: an output appears whole or not at all, never half-written by a failed stage.

A write that fails for want of space or permission (a full disk, a read-only mount) stops the
stage with one line naming the output and the fix (`write_failure`), not a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import os
import re
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import OutputError

# The write errors that the place written to causes, not the code: what a user fixes there.
NO_SPACE = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}
OUTPUTS_ELSEWHERE = "set paths.outputs to another folder"
SEAL = "# sha256 of the lines below: "


def write_failure(
    path: str | Path, error: OSError, elsewhere: str = OUTPUTS_ELSEWHERE
) -> OutputError | None:
    """The one line for `error`, raised while writing `path`: what is wrong with the place and
    what to do (free space, or `elsewhere`: write somewhere else); None if the error is not one
    of the place (a bug, a network error), to be raised as it is."""
    if error.errno not in {*NO_SPACE, *NOT_WRITABLE}:
        return None
    mount = mount_of(path)
    if error.errno in NO_SPACE:
        return OutputError(
            f"{path}: {NO_SPACE[error.errno]}; free some space on {mount} or {elsewhere}"
        )
    if os.statvfs(mount).f_flag & os.ST_RDONLY:
        return OutputError(
            f"{path}: the folder is read-only ({mount} is mounted read-only); {elsewhere}"
        )
    folder = next(p for p in Path(os.path.abspath(path)).parents if p.exists())
    return OutputError(f"{path}: permission denied in {folder}; make it writable or {elsewhere}")


@contextmanager
def writing(
    path: str | Path, *within: str | Path, elsewhere: str = OUTPUTS_ELSEWHERE
) -> Iterator[None]:
    """Turn a write failure of the block under `path` (or the paths `within`, or a parent
    folder of `path` still to be made) into its one line (`write_failure`) naming `path`. An
    OSError about a file elsewhere (an MLflow artifact the block logs) is left to the code that
    knows that place."""
    places = [path, *within, *_missing_parents(Path(path))]
    try:
        yield
    except OSError as error:
        target = error.filename2 or error.filename
        if target is not None and not any(_inside(target, place) for place in places):
            raise
        failure = write_failure(path, error, elsewhere)
        if failure is None:
            raise
        raise failure from error


def _missing_parents(path: Path) -> list[Path]:
    """The parent folders of `path` that are not there, the deepest first."""
    return list(itertools.takewhile(lambda folder: not folder.exists(), path.parents))


def _inside(path: str | Path, folder: str | Path) -> bool:
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))


def mount_of(path: str | Path) -> Path:
    """The mount point holding `path` (what `df` names), whether or not `path` exists yet."""
    path = Path(os.path.realpath(path))
    with contextlib.suppress(OSError):
        # The mount table, not os.path.ismount: a folder bind-mounted onto itself (how a
        # read-only view of it is made) is on the same device as its parent.
        table = Path("/proc/self/mountinfo").read_text().splitlines()
        points = [
            Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4]))
            for line in table
        ]
        holding = [point for point in points if path.is_relative_to(point)]
        if holding:
            return max(holding, key=lambda point: len(point.parts))
    while not os.path.ismount(path):
        path = path.parent
    return path


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` (file or folder); it becomes `path` if the block succeeds.
    If it fails, neither the temporary path nor the parent folders made for it stay (those
    still empty: another output may have landed in them meanwhile); a failure for want of space
    or permission, in the block too, is an OutputError naming `path` (`write_failure`)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    made = _missing_parents(path)
    try:
        with writing(path, tmp):
            path.parent.mkdir(parents=True, exist_ok=True)
            _remove(tmp)
            yield tmp
            if tmp.is_dir():
                _remove(path)  # os.replace cannot swap a folder onto a non-empty one
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        for folder in made:  # the deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_npz(path: str | Path, **arrays: Any) -> None:
    """Like np.savez, but with fixed zip timestamps: the same arrays give the same bytes, so a
    data file's checksum is its version."""
    with atomic_output(path) as tmp, zipfile.ZipFile(tmp, "w") as bundle:
        for name, array in arrays.items():
            member = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with bundle.open(member, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.asanyarray(array), allow_pickle=False)


def sealed(text: str) -> str:
    """`text` after a comment line holding its SHA-256, so that a reader can tell whether it
    has all of it (`seal_holds`): a text file cut short often still parses."""
    return f"{SEAL}{hashlib.sha256(text.encode()).hexdigest()}\n{text}"


def seal_holds(text: str) -> bool | None:
    """Whether the lines after `sealed`'s comment line are the ones it was written with; None
    for text without one (written by hand, or before files were sealed)."""
    _, found, rest = text.partition(SEAL)
    if not found:
        return None
    digest, _, body = rest.partition("\n")
    return hashlib.sha256(body.encode()).hexdigest() == digest


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def all_or_none(*paths: str | Path, restore: tuple[str | Path, ...] = ()) -> Iterator[None]:
    """Outputs written together (each with `atomic_output`): if the block fails, all of
    `paths` are removed (with the folders made for them), so that none is left beside
    another's older or newer version, and the files `restore` (edited in the block, not made by
    it) get back what they held."""
    held = {Path(path): Path(path).read_bytes() for path in restore}
    made = sorted(
        {folder for path in paths for folder in _missing_parents(Path(path))}, reverse=True
    )
    try:
        yield
    except BaseException:
        for path in paths:
            _remove(Path(path))
        for folder in made:  # the deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        for path, content in held.items():
            with atomic_output(path) as tmp:
                tmp.write_bytes(content)
        raise
