"""The downloader and the data set fetchers, against a real HTTP server on 127.0.0.1.

Every failure must be one line a user can act on (which file, what was expected, what to do),
and must leave no partial file where the next run would find it.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tiny_data import (
    MNIST_FILES,
    idx_gz,
    sign_digits_zip,
    write_mnist_mirror,
    write_sign_digits_mirror,
)

from pipeline.core.config import Color, IdxSource, ImageFolderSource
from pipeline.core.errors import DataError
from pipeline.data.download import fetch_verified
from pipeline.data.folders import fetch_image_folder
from pipeline.data.sources import fetch_idx, read_idx

REPO = Path(__file__).resolve().parents[1]
PAYLOAD = b"verified payload\n" * 100
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
ARCHIVE_FOLDER = "Sign-Language-Digits-Dataset-0123abc"
ERRATA = {"2/IMG_5176.JPG": "3", "3/IMG_5108.JPG": "7"}
# Either way of fixing a failed fetch counts: another source, or a fresh download.
FIXES = ("PIPELINE_DATA_MIRROR", "fetch again", "fetch it again")


class Server:
    """What the loopback server answers: `files` by path, `truncated` bodies cut short, 404
    otherwise; `requests` records every path asked for."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncated: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.url = ""
        self._httpd: http.server.ThreadingHTTPServer | None = None

    def start(self) -> None:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the name http.server dispatches to)
                server.requests.append(self.path)
                if self.path in server.files:
                    self._send(server.files[self.path], len(server.files[self.path]))
                elif self.path in server.truncated:
                    body = server.truncated[self.path]
                    # Announce more than is sent, then hang up: a dropped connection.
                    self._send(body, len(body) + 1000)
                else:
                    self.send_error(404)

            def _send(self, body: bytes, length: int) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep pytest's captured output to the test's own

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        # A short poll keeps shutdown() (one poll at most) from dominating the tests' run time.
        threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


@pytest.fixture
def server() -> Iterator[Server]:
    running = Server()
    running.start()
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy from the developer's environment must not intercept the loopback server.
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.delenv("PIPELINE_DATA_MIRROR", raising=False)


def closed_port() -> int:
    """A loopback port with nothing listening (the OS just handed it out and it was closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def assert_nothing_left(folder: Path) -> None:
    leftovers = sorted(p.name for p in folder.rglob("*")) if folder.exists() else []
    assert leftovers == [], f"partial files left behind in {folder}: {leftovers}"


def assert_actionable(error: pytest.ExceptionInfo[DataError], *mentions: str) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    for mention in mentions:
        assert mention in message, message
    assert any(fix in message for fix in FIXES), f"no fix suggested: {message}"
    return message


# ---- fetch_verified ------------------------------------------------------------------------


def test_fetch_verified_downloads_then_serves_from_cache_offline(
    server: Server, tmp_path: Path
) -> None:
    server.files["/data/payload.bin"] = PAYLOAD
    dest = tmp_path / "cache" / "payload.bin"

    got = fetch_verified("payload.bin", [server.url + "/data/"], PAYLOAD_SHA, dest)

    assert got == dest
    assert dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in dest.parent.iterdir()) == ["payload.bin"]
    server.stop()
    assert fetch_verified("payload.bin", [server.url + "/data/"], PAYLOAD_SHA, dest) == dest
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == ["/data/payload.bin"]


def test_fetch_verified_replaces_a_corrupt_cached_copy(server: Server, tmp_path: Path) -> None:
    server.files["/payload.bin"] = PAYLOAD
    dest = tmp_path / "cache" / "payload.bin"
    dest.parent.mkdir()
    dest.write_bytes(b"left over from an older, different file")

    fetch_verified("payload.bin", [server.url], PAYLOAD_SHA, dest)

    assert dest.read_bytes() == PAYLOAD


def test_wrong_checksum_is_refused(server: Server, tmp_path: Path) -> None:
    server.files["/payload.bin"] = PAYLOAD + b"tampered"
    dest = tmp_path / "cache" / "payload.bin"

    with pytest.raises(DataError) as error:
        fetch_verified("payload.bin", [server.url], PAYLOAD_SHA, dest)

    assert_actionable(error, "payload.bin", PAYLOAD_SHA)
    assert_nothing_left(dest.parent)


def test_truncated_download_is_refused(server: Server, tmp_path: Path) -> None:
    server.truncated["/payload.bin"] = PAYLOAD[:500]
    dest = tmp_path / "cache" / "payload.bin"

    with pytest.raises(DataError) as error:
        fetch_verified("payload.bin", [server.url], PAYLOAD_SHA, dest)

    message = assert_actionable(error, "payload.bin", "truncated", "1500")
    assert "500" in message
    assert_nothing_left(dest.parent)


def test_http_404_is_refused(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "cache" / "payload.bin"

    with pytest.raises(DataError) as error:
        fetch_verified("payload.bin", [server.url], PAYLOAD_SHA, dest)

    assert_actionable(error, "payload.bin", f"{server.url}/payload.bin", "404")
    assert_nothing_left(dest.parent)


def test_unreachable_host_without_mirror_is_refused(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/"
    dest = tmp_path / "cache" / "payload.bin"

    with pytest.raises(DataError) as error:
        fetch_verified("payload.bin", [url], PAYLOAD_SHA, dest)

    assert_actionable(error, "payload.bin", "unreachable", "PIPELINE_DATA_MIRROR")
    assert_nothing_left(dest.parent)


def test_no_urls_and_no_mirror_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError) as error:
        fetch_verified("payload.bin", [], PAYLOAD_SHA, tmp_path / "cache" / "payload.bin")

    assert_actionable(error, "payload.bin", "no URLs")


def test_urls_are_tried_in_order_until_one_serves_the_file(server: Server, tmp_path: Path) -> None:
    server.files["/second/payload.bin"] = PAYLOAD
    dest = tmp_path / "cache" / "payload.bin"

    fetch_verified(
        "payload.bin", [server.url + "/first", server.url + "/second"], PAYLOAD_SHA, dest
    )

    assert dest.read_bytes() == PAYLOAD
    assert server.requests == ["/first/payload.bin", "/second/payload.bin"]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["payload.bin"]


def test_mirror_file_is_verified_and_used_without_network(tmp_path: Path) -> None:
    mirror_file = tmp_path / "mirror" / "payload.bin"
    mirror_file.parent.mkdir()
    mirror_file.write_bytes(PAYLOAD)
    dest = tmp_path / "cache" / "payload.bin"
    # A URL that would fail shows the mirror is taken instead of the network.
    unreachable = [f"http://127.0.0.1:{closed_port()}/"]

    assert fetch_verified("payload.bin", unreachable, PAYLOAD_SHA, dest, mirror_file) == dest

    assert dest.read_bytes() == PAYLOAD
    assert mirror_file.read_bytes() == PAYLOAD


def test_mirror_file_with_wrong_bytes_is_refused(tmp_path: Path) -> None:
    mirror_file = tmp_path / "mirror" / "payload.bin"
    mirror_file.parent.mkdir()
    mirror_file.write_bytes(PAYLOAD[:-1])
    dest = tmp_path / "cache" / "payload.bin"

    with pytest.raises(DataError) as error:
        fetch_verified("payload.bin", [], PAYLOAD_SHA, dest, mirror_file)

    assert_nothing_left(dest.parent)
    assert_actionable(error, "payload.bin", PAYLOAD_SHA, str(mirror_file))


def test_mirror_lacking_the_file_is_refused(tmp_path: Path) -> None:
    mirror_file = tmp_path / "mirror" / "payload.bin"
    mirror_file.parent.mkdir()
    dest = tmp_path / "cache" / "payload.bin"

    with pytest.raises(DataError) as error:
        fetch_verified("payload.bin", [], PAYLOAD_SHA, dest, mirror_file)

    assert_actionable(error, str(mirror_file))
    assert_nothing_left(dest.parent)


# ---- MNIST ---------------------------------------------------------------------------------


def expected_mnist(mirror: Path) -> dict[str, np.ndarray]:
    """The arrays the tiny mirror's files hold, decoded independently of read_idx."""
    arrays = {}
    for name, key in zip(MNIST_FILES, ("x", "y", "x_test", "y_test"), strict=True):
        raw = gzip.decompress((mirror / "mnist" / name).read_bytes())
        ndim = 3 if "images" in name else 1
        shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
        arrays[key] = np.frombuffer(raw[4 + 4 * ndim :], dtype=np.uint8).reshape(shape)
    return arrays


def assert_same_arrays(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(got) == {*expected, "class_names"}
    assert got["class_names"].tolist() == [str(digit) for digit in range(10)]
    for key, array in expected.items():
        assert got[key].dtype == np.uint8, key
        np.testing.assert_array_equal(got[key], array, err_msg=key)


def test_fetch_mnist_from_server(server: Server, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    digests = write_mnist_mirror(mirror, n_train=30, n_test=20)
    for name in digests:
        server.files[f"/mnist/{name}"] = (mirror / "mnist" / name).read_bytes()
    source = IdxSource(name="mnist", urls=[server.url + "/mnist/"], files=digests)

    arrays = fetch_idx(source, tmp_path / "downloads", mirror=None).arrays

    assert arrays["x"].shape == (30, 28, 28)
    assert arrays["x_test"].shape == (20, 28, 28)
    assert sorted(set(arrays["y"].tolist())) == list(range(10))
    assert_same_arrays(arrays, expected_mnist(mirror))
    assert sorted(p.name for p in (tmp_path / "downloads" / "mnist").iterdir()) == sorted(digests)


def test_fetch_mnist_from_mirror_folder(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    digests = write_mnist_mirror(mirror, n_train=30, n_test=20)
    source = IdxSource(name="mnist", urls=[f"http://127.0.0.1:{closed_port()}/"], files=digests)

    arrays = fetch_idx(source, tmp_path / "downloads", mirror=mirror).arrays

    # tiny_data writes mirror/mnist/: the folder the pipeline must look in, as in shared/datasets.
    assert source.mirror_folder == "mnist"
    assert arrays["x"].shape == (30, 28, 28)
    assert_same_arrays(arrays, expected_mnist(mirror))


def test_idx_round_trip() -> None:
    # tiny_data writes what read_idx reads, the premise of every MNIST test.
    images = np.arange(2 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(2, 28, 28)
    raw = gzip.decompress(idx_gz(images))
    assert struct.unpack(">IIII", raw[:16]) == (2051, 2, 28, 28)
    assert struct.unpack(">II", gzip.decompress(idx_gz(np.zeros(5, np.uint8)))[:8]) == (2049, 5)


def test_read_idx_rejects_a_non_gzip_file(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"<html>rate limited</html>")

    with pytest.raises(DataError) as error:
        read_idx(path)

    assert_actionable(error, str(path), "gzip")


def test_read_idx_rejects_a_truncated_payload(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    whole = gzip.decompress(idx_gz(np.zeros((3, 28, 28), np.uint8)))
    path.write_bytes(gzip.compress(whole[:-100]))

    with pytest.raises(DataError) as error:
        read_idx(path)

    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)


def test_read_idx_rejects_a_truncated_gzip_stream(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(idx_gz(np.zeros((3, 28, 28), np.uint8))[:-20])

    with pytest.raises(DataError) as error:
        read_idx(path)

    assert_actionable(error, str(path))


def test_read_idx_rejects_a_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(struct.pack(">II", 2051, 1)))

    with pytest.raises(DataError):
        read_idx(path)


# ---- Sign Language Digits -----------------------------------------------------------------


def sign_source(url: str, digest: str, **overrides: object) -> ImageFolderSource:
    """conf/source/sign_digits.yaml's settings, for the tiny copy at `url`."""
    settings: dict[str, object] = {
        "name": "sign_digits",
        "url": url,
        "content_sha256": digest,
        "mirror": "sign_language_digits",
        "folder": "Dataset",
        "image_size": 16,
        "color": Color.grayscale,
        "label_errata": dict(ERRATA),
    }
    return ImageFolderSource(**{**settings, **overrides})


def fetch_sign_digits(
    source: ImageFolderSource, downloads: Path, mirror: Path | None
) -> dict[str, np.ndarray]:
    return fetch_image_folder(source, downloads, mirror).arrays


@pytest.fixture
def sign_mirror(tmp_path: Path) -> tuple[Path, str]:
    mirror = tmp_path / "mirror"
    return mirror, write_sign_digits_mirror(mirror, per_class=3)


def assert_sign_arrays(arrays: dict[str, np.ndarray], errata_applied: bool) -> None:
    names = arrays["names"].tolist()
    assert len(names) == 30
    assert arrays["x"].shape == (30, 16, 16)
    assert arrays["x"].dtype == np.uint8
    folders = np.array([int(name.split("/")[0]) for name in names])
    changed = np.flatnonzero(arrays["y"] != folders)
    if errata_applied:
        assert int(arrays["errata_changed"]) == 2
        assert sorted(names[i] for i in changed) == sorted(ERRATA)
        for name, digit in ERRATA.items():
            assert arrays["y"][names.index(name)] == int(digit)
    else:
        assert int(arrays["errata_changed"]) == 0
        assert changed.size == 0


def test_fetch_sign_digits_from_server(
    server: Server, sign_mirror: tuple[Path, str], tmp_path: Path
) -> None:
    mirror, digest = sign_mirror
    server.files["/archive.zip"] = sign_digits_zip(mirror, ARCHIVE_FOLDER)
    downloads = tmp_path / "downloads"

    arrays = fetch_sign_digits(sign_source(server.url + "/archive.zip", digest), downloads, None)

    assert_sign_arrays(arrays, errata_applied=True)
    assert (downloads / "sign_digits" / "archive.zip").read_bytes() == server.files["/archive.zip"]
    assert arrays["class_names"].tolist() == [str(digit) for digit in range(10)]


def test_fetch_sign_digits_without_errata(
    server: Server, sign_mirror: tuple[Path, str], tmp_path: Path
) -> None:
    mirror, digest = sign_mirror
    server.files["/archive.zip"] = sign_digits_zip(mirror, ARCHIVE_FOLDER)
    source = sign_source(server.url + "/archive.zip", digest, apply_errata=False)

    arrays = fetch_sign_digits(source, tmp_path / "downloads", None)

    assert_sign_arrays(arrays, errata_applied=False)


def test_fetch_sign_digits_from_mirror_folder(
    sign_mirror: tuple[Path, str], tmp_path: Path
) -> None:
    mirror, digest = sign_mirror
    source = sign_source(f"http://127.0.0.1:{closed_port()}/archive.zip", digest)

    arrays = fetch_sign_digits(source, tmp_path / "downloads", mirror)

    assert_sign_arrays(arrays, errata_applied=True)


def test_fetch_sign_digits_rejects_a_wrong_content_digest(
    server: Server, sign_mirror: tuple[Path, str], tmp_path: Path
) -> None:
    mirror, digest = sign_mirror
    server.files["/archive.zip"] = sign_digits_zip(mirror, ARCHIVE_FOLDER)
    wrong = hashlib.sha256(b"another commit").hexdigest()

    with pytest.raises(DataError) as error:
        fetch_sign_digits(sign_source(server.url + "/archive.zip", wrong), tmp_path / "dl", None)
    assert_actionable(error, wrong, "/archive.zip")

    with pytest.raises(DataError) as error:
        fetch_sign_digits(sign_source("unused", wrong), tmp_path / "dl", mirror)
    assert_actionable(error, wrong, str(mirror))


def test_fetch_sign_digits_does_not_keep_an_archive_that_failed_its_check(
    server: Server, sign_mirror: tuple[Path, str], tmp_path: Path
) -> None:
    mirror, digest = sign_mirror
    good = sign_digits_zip(mirror, ARCHIVE_FOLDER)
    (mirror / "sign_language_digits" / "Dataset" / "0" / "IMG_1000.JPG").write_bytes(b"altered")
    server.files["/archive.zip"] = sign_digits_zip(mirror, ARCHIVE_FOLDER)
    source = sign_source(server.url + "/archive.zip", digest)
    downloads = tmp_path / "downloads"

    with pytest.raises(DataError):
        fetch_sign_digits(source, downloads, None)
    assert_nothing_left(downloads / "sign_digits")

    # The server now has the intact archive: the suggested "fetch it again" must work.
    server.files["/archive.zip"] = good
    assert_sign_arrays(fetch_sign_digits(source, downloads, None), errata_applied=True)


def test_fetch_sign_digits_truncated_archive_leaves_nothing(
    server: Server, sign_mirror: tuple[Path, str], tmp_path: Path
) -> None:
    mirror, digest = sign_mirror
    server.truncated["/archive.zip"] = sign_digits_zip(mirror, ARCHIVE_FOLDER)[:1000]
    downloads = tmp_path / "downloads"

    with pytest.raises(DataError) as error:
        fetch_sign_digits(sign_source(server.url + "/archive.zip", digest), downloads, None)

    assert "truncated" in str(error.value)
    assert "\n" not in str(error.value)
    assert_nothing_left(downloads / "sign_digits")


def test_fetch_sign_digits_failed_download_suggests_a_fix(
    server: Server, sign_mirror: tuple[Path, str], tmp_path: Path
) -> None:
    _, digest = sign_mirror
    downloads = tmp_path / "downloads"

    with pytest.raises(DataError) as error:
        fetch_sign_digits(sign_source(server.url + "/archive.zip", digest), downloads, None)

    assert_actionable(error, "/archive.zip", "404")
    assert_nothing_left(downloads / "sign_digits")


# ---- the command line ----------------------------------------------------------------------


def run_fetch(
    cwd: Path, *overrides: str, mirror: Path | None = None
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PIPELINE_DATA_MIRROR"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", no_proxy="*")
    if mirror is not None:
        env["PIPELINE_DATA_MIRROR"] = str(mirror)
    return subprocess.run(
        [sys.executable, "-m", "pipeline.fetch", "source=mnist", "hydra.run.dir=.", *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_fetch_command_line(tmp_path: Path) -> None:
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    mirror = tmp_path / "mirror"
    digests = write_mnist_mirror(mirror, n_train=30, n_test=20)
    raw = tmp_path / "data" / "raw" / "mnist.npz"

    failed = run_fetch(tmp_path, f"source.urls=[http://127.0.0.1:{closed_port()}/]")

    assert failed.returncode == 1, failed.stderr
    assert "Traceback" not in failed.stderr
    last = [line for line in failed.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: "), failed.stderr
    assert "PIPELINE_DATA_MIRROR" in last
    assert any(name in last for name in MNIST_FILES), last
    assert not raw.exists()

    # Hydra splits dotted keys (file names) into nested ones, so the checksums go in as one dict.
    files = ",".join(f"{name}:{digest}" for name, digest in digests.items())
    done = run_fetch(tmp_path, f"source.files={{{files}}}", mirror=mirror)

    assert done.returncode == 0, done.stderr
    with np.load(raw) as saved:
        assert_same_arrays({key: saved[key] for key in saved.files}, expected_mnist(mirror))
