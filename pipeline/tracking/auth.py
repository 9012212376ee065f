"""Users on the team server: MLflow's own authentication app (`mlflow server --app-name
basic-auth`), set up by `./dev.sh team-server`, and the commands that add users and grant them
an experiment or a registered model:

    ./dev.sh team-server user alice                        # prints alice's new password
    ./dev.sh team-server grant alice --experiment acme-mnist [--permission EDIT]
    ./dev.sh team-server grant alice --model acme-mnist --permission MANAGE

The first start makes the user `admin` with a generated password kept in <data>/admin-password
(mode 600, like the database's); the commands act as that admin (or as the user that
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD name). Every other user reads every
experiment (MLflow's default permission, READ) and writes only those they created or were
granted. Stages authenticate with MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.core.errors import PipelineError

ADMIN = "admin"


ADMIN_PASSWORD_FILE = "admin-password"
AUTH_CACHE_TTL_S = 60  # how long the server trusts a credential it has checked


PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS")


USERNAME, PASSWORD = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"


class AuthError(PipelineError):
    """A credential the server refused, or a user or resource that is not there."""


def kept_secret(path: Path) -> str:
    """The secret in file `path`, generated (and kept, mode 600) on first use."""
    if path.exists():
        return path.read_text().strip()
    secret = secrets.token_urlsafe(24)
    path.touch(mode=0o600)
    path.write_text(secret + "\n")
    return secret


def server_env(data: Path, database_uri: str) -> dict[str, str]:
    """The environment that makes `mlflow server --app-name basic-auth` keep its users in
    `database_uri`, with the admin of <data>/admin-password made on first start."""
    config = data / "auth.ini"
    config.touch(mode=0o600)  # it holds the database's password
    config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {database_uri.replace('%', '%%')}\n"
        f"admin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # MLflow's own cache of good credentials: without it every request (a stage makes
        # hundreds) checks the password's hash, tens of milliseconds of the server's CPU by
        # design, and a stage against the server took several times as long. A deleted user
        # or changed password may go on working for up to this long on other workers.
        f"auth_cache_ttl_seconds = {AUTH_CACHE_TTL_S}\n"
    )
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        # Read only when the user store is new: afterwards the password is the admin's to change.
        "MLFLOW_AUTH_ADMIN_PASSWORD": kept_secret(data / ADMIN_PASSWORD_FILE),
        # Signs the login forms (CSRF); the same across restarts and workers.
        "MLFLOW_FLASK_SERVER_SECRET_KEY": kept_secret(data / "flask-secret-key"),
    }


def check_credentials(uri: str, timeout: float) -> None:
    """Stop with one line naming server `uri` and the user if it refuses this process's
    credentials. A server without users answers 404 here, and is fine."""
    import requests

    user = os.environ.get(USERNAME)
    password = os.environ.get(PASSWORD, "")
    if not user and os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return  # a token MLflow sends itself, for servers behind another login
    response = requests.get(
        uri.rstrip("/") + "/api/2.0/mlflow/users/current",
        auth=(user, password) if user else None,
        timeout=timeout,
    )
    if response.status_code != 401:
        return
    if not user:
        raise AuthError(
            f"MLflow tracking server {uri} asks for a user; set {USERNAME} and {PASSWORD} "
            "(its admin makes one with ./dev.sh team-server user <name>)"
        )
    raise AuthError(
        f"MLflow tracking server {uri} refused user {user!r}: wrong password or no such user; "
        f"check {USERNAME} and {PASSWORD}"
    )


def refusal(uri: str, what: str) -> AuthError:
    """The line for a request the server refused as forbidden to this user, on `what`."""
    user = os.environ.get(USERNAME, "")
    return AuthError(
        f"MLflow tracking server {uri} refused user {user!r} on {what}: permission denied; "
        f"ask its admin to grant it (./dev.sh team-server grant {user} ...)"
    )


def is_forbidden(error: BaseException) -> bool:
    """Whether `error` is MLflow's client reporting an HTTP 403 from the server."""
    import mlflow

    return isinstance(error, mlflow.exceptions.MlflowException) and (
        error.get_http_status_code() == 403 or "error code 403" in str(error)
    )


def parse(argv: Sequence[str]) -> argparse.Namespace:
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--uri", default="http://127.0.0.1:5000", help="the team server")
    where.add_argument(
        "--data",
        type=Path,
        default=Path(".team-server"),
        help="the server's data folder, whose admin-password the command uses",
    )
    parser = argparse.ArgumentParser(
        prog="./dev.sh team-server",
        description="Users of the team server: add one, or grant one an experiment or model.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("user", parents=[where], help="add a user; prints its password")
    add.add_argument("name")
    grant = commands.add_parser(
        "grant", parents=[where], help="grant a user an experiment or a registered model"
    )
    grant.add_argument("name")
    target = grant.add_mutually_exclusive_group(required=True)
    target.add_argument("--experiment", help="an experiment's name (made if new)")
    target.add_argument("--model", help="a registered model's name")
    grant.add_argument("--permission", choices=PERMISSIONS, default="EDIT")
    return parser.parse_args(argv)


def run(options: argparse.Namespace) -> str:
    """Carry out `options` as the admin; returns the line to print."""
    import mlflow
    from mlflow.server.auth.client import AuthServiceClient

    if not os.environ.get(USERNAME):
        password_file = options.data / ADMIN_PASSWORD_FILE
        if not password_file.exists():
            raise AuthError(
                f"{password_file}: missing; give the server's --data, or set {USERNAME} and "
                f"{PASSWORD} to an admin's"
            )
        os.environ[USERNAME], os.environ[PASSWORD] = ADMIN, password_file.read_text().strip()
    check_credentials(options.uri, timeout=10)
    users = AuthServiceClient(options.uri)
    try:
        if options.command == "user":
            password = secrets.token_urlsafe(16)
            users.create_user(options.name, password)
            return (
                f"user {options.name} added; give them {USERNAME}={options.name} "
                f"{PASSWORD}={password}"
            )
        users.get_user(options.name)  # one line for a name that is not there
        if options.experiment:
            from pipeline.tracking.store import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

            client = mlflow.MlflowClient(options.uri)
            experiment = client.get_experiment_by_name(options.experiment)
            kind, resource = "experiment", options.experiment
            resource_id = (
                experiment.experiment_id
                if experiment
                else client.create_experiment(
                    options.experiment, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
                )
            )
        else:
            kind, resource = "registered_model", options.model
            mlflow.MlflowClient(options.uri).get_registered_model(options.model)
            resource_id = options.model
        users.grant_user_permission(options.name, kind, resource_id, options.permission)
    except mlflow.exceptions.MlflowException as error:
        first = str(error).strip().splitlines()[0]
        raise AuthError(f"{options.uri}: {first}") from None
    return f"user {options.name} may now {options.permission} {kind} {resource}"


def main(argv: Sequence[str]) -> None:
    options = parse(argv)
    try:
        print(run(options))
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
