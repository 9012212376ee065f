"""Verified downloads: every file is checked against its SHA-256 before anything reads it.

A mirror folder (PIPELINE_DATA_MIRROR) stands in for the network with the same checks. Files
land in a download cache atomically, so a failed or interrupted fetch leaves no partial file.
"""

from __future__ import annotations

import http.client
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from pipeline.core.errors import DataError, OutputError
from pipeline.core.files import atomic_output, sha256_of, write_failure

TIMEOUT_S = 60


def fetch_verified(
    name: str, urls: list[str], sha256: str, dest: Path, mirror_file: Path | None = None
) -> Path:
    """`dest`, holding the file `name` with digest `sha256`, taken from the cache, the mirror or
    the first of `urls` (base URLs) that serves it intact."""
    if dest.exists() and sha256_of(dest) == sha256:
        return dest
    if mirror_file is not None:
        if not mirror_file.is_file():
            raise DataError(
                f"{name}: not found in the mirror at {mirror_file}; "
                "copy it there or unset PIPELINE_DATA_MIRROR to download it"
            )
        with atomic_output(dest) as tmp:
            shutil.copyfile(mirror_file, tmp)
            _verify(
                name,
                tmp,
                sha256,
                str(mirror_file),
                fix="replace the mirror's copy with a verified one, or unset PIPELINE_DATA_MIRROR",
            )
        return dest
    problems = []
    for base in urls:
        url = base.rstrip("/") + "/" + name
        try:
            with atomic_output(dest) as tmp:
                download(url, tmp)
                _verify(name, tmp, sha256, url, fix="")
            return dest
        except OutputError:  # the cache's disk, not the URL: no other URL does better
            raise
        except DataError as error:
            problems.append(str(error))
    raise DataError(
        f"{name}: could not be fetched ({'; '.join(problems) or 'no URLs configured'}); "
        "check the network, or set PIPELINE_DATA_MIRROR to a folder holding a verified copy"
    )


def download(url: str, dest: Path) -> None:
    """Stream `url` to `dest`; a short read, an HTTP error or no connection raise DataError."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(dest, "wb") as out:
            expected = response.headers.get("Content-Length")
            shutil.copyfileobj(response, out, length=1 << 20)
            received = out.tell()
    except urllib.error.HTTPError as error:
        raise DataError(f"{url} answered HTTP {error.code} {error.reason}") from None
    except http.client.IncompleteRead as error:
        raise DataError(
            f"{url} was truncated: received {len(error.partial)} bytes "
            f"then the connection closed ({error.expected} more expected)"
        ) from None
    except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as error:
        if write_failure(dest, error) is not None:
            raise  # where the file goes, not the network: the caller's atomic_output says so
        reason = getattr(error, "reason", error)
        raise DataError(f"{url} is unreachable ({reason})") from None
    if expected is not None and received != int(expected):
        raise DataError(f"{url} was truncated: received {received} of {expected} bytes")


def _verify(name: str, path: Path, sha256: str, origin: str, fix: str) -> None:
    actual = sha256_of(path)
    if actual != sha256:
        raise DataError(
            f"{origin} has SHA-256 {actual}, expected {sha256} for {name} "
            f"(corrupt or different file){'; ' + fix if fix else ''}"
        )
