"""The team server (`./dev.sh team-server`): a real PostgreSQL from the pinned wheel, a real
`mlflow server` on it serving artifacts, the stages logging to it with a project prefix; and the
one-line errors when the server or the database is not there."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from conftest import ROOT, stage_env, wait_until_answering
from mlflow import MlflowClient
from test_distributed import DISTRIBUTED

from pipeline.tracking import postgres
from pipeline.tracking.team_server import free_port

START_TIMEOUT_S = 120
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true"}  # nothing here may leave loopback


@dataclass
class TeamServer:
    uri: str
    data: Path
    log: Path


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.tracking.team_server", *args]


def _refused(*args: str) -> subprocess.CompletedProcess:
    """The team server started with `args` on a free port, expected to stop at once."""
    return subprocess.run(
        _command(*args, "--port", str(free_port())),
        cwd=ROOT,
        env={**stage_env(), **NO_TELEMETRY},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def team(tmp_path: Path) -> Iterator[TeamServer]:
    """The documented command, as a user starts it, on free loopback ports."""
    # As root, PostgreSQL runs as `nobody`, which cannot pass through pytest's 0700 tmp_path.
    data = Path(tempfile.mkdtemp(prefix="team-server-")) / "data"
    data.parent.chmod(0o711)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = tmp_path / "team-server.log"
    env = {**stage_env(), **NO_TELEMETRY}
    with log.open("w") as out:
        process = subprocess.Popen(
            # One worker: four would each import MLflow, seconds of CPU on a 2-core runner.
            _command("--data", str(data), "--port", str(port), "--workers", "1"),
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_answering(process, uri + "/health", log, START_TIMEOUT_S)
        yield TeamServer(uri, data, log)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()[-4000:]
        # PostgreSQL removes its lock file only on a clean shutdown: nothing is left running.
        assert not (data / "postgres" / "postmaster.pid").exists(), log.read_text()[-4000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(data.parent, ignore_errors=True)


def _as_admin(team: TeamServer, *args: str) -> str:
    """`./dev.sh team-server <args>` against `team`, as its admin; its one line of output."""
    result = subprocess.run(
        _command(*args, "--uri", team.uri, "--data", str(team.data)),
        cwd=ROOT,
        env={**stage_env(), **NO_TELEMETRY},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.strip().splitlines()
    return line


def _new_user(team: TeamServer, name: str) -> dict[str, str]:
    """A user made with the documented command: the credentials it prints."""
    line = _as_admin(team, "user", name)
    return dict(word.split("=", 1) for word in line.split() if word.startswith("MLFLOW_"))


@pytest.mark.slow
def test_stages_log_to_the_postgresql_team_server_under_the_project_prefix(
    team: TeamServer, run_stage, circles_split: Path, project: Path, monkeypatch
) -> None:
    server = {"MLFLOW_TRACKING_URI": team.uri, **NO_TELEMETRY}
    alice, bob = _new_user(team, "alice"), _new_user(team, "bob")
    assert _as_admin(team, "grant", "alice", "--experiment", "acme-circles") == (
        "user alice may now EDIT experiment acme-circles"
    )
    prefix = "tracking.experiment_prefix=acme-"
    train = ("train", "experiment=circles/baseline", "train.epochs=2", prefix)

    # Without a user, with a wrong password, and as a user who may only read: one line each,
    # before any work.
    refused = {
        "no user": {},
        "wrong password": {**alice, "MLFLOW_TRACKING_PASSWORD": "guess"},
        "no permission": bob,
    }
    lines = {}
    for case, credentials in refused.items():
        result = run_stage(*train, check=False, **server, **credentials)
        assert result.returncode == 1, (case, result.stderr[-2000:])
        (lines[case],) = result.stderr.strip().splitlines()
    assert lines["no user"] == (
        f"error: MLflow tracking server {team.uri} asks for a user; set MLFLOW_TRACKING_USERNAME "
        "and MLFLOW_TRACKING_PASSWORD (its admin makes one with ./dev.sh team-server user <name>)"
    )
    assert lines["wrong password"] == (
        f"error: MLflow tracking server {team.uri} refused user 'alice': wrong password or no "
        "such user; check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    )
    assert lines["no permission"] == (
        f"error: MLflow tracking server {team.uri} refused user 'bob' on experiment "
        "'acme-circles': permission denied; ask its admin to grant it "
        "(./dev.sh team-server grant bob ...)"
    )
    assert not (project / "models/circles/baseline").exists()

    # The permitted user's runs land; this test reads as the admin.
    env = {**server, **alice}
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv(
        "MLFLOW_TRACKING_PASSWORD", (team.data / "admin-password").read_text().strip()
    )
    run_stage(*train, **env)
    run_stage("evaluate", "experiment=circles/baseline", prefix, **env)
    run_stage("report", "tasks=[circles]", prefix, **env)
    assert not (project / "mlflow.db").exists(), "the stages ignored MLFLOW_TRACKING_URI"
    assert not (project / "mlartifacts").exists(), "artifacts were written locally, not proxied"

    client = MlflowClient(tracking_uri=team.uri)
    names = {e.name for e in client.search_experiments()}
    assert "acme-circles" in names and "circles" not in names
    experiment = client.get_experiment_by_name("acme-circles")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "circles/baseline" and run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "2"
    assert run.data.params["tracking.experiment_prefix"] == "acme-"
    assert 0 <= run.data.metrics["test_accuracy"] <= 1
    for key in ("loss", "val_accuracy"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1]

    # Artifacts go through the server into its own folder, not to the stage's disk.
    assert urllib.parse.urlparse(run.info.artifact_uri).scheme == "mlflow-artifacts"
    listed = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "evaluation"} <= listed
    config_yaml = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(project)))
    assert "epochs: 2" in config_yaml.read_text()
    stored = list((team.data / "artifacts").rglob("confusion_matrix.png"))
    assert len(stored) == 1 and stored[0].read_bytes().startswith(b"\x89PNG")

    # The report registered the champion under the prefixed name too.
    champion = client.get_model_version_by_alias("acme-circles", "champion")
    assert champion.run_id == run.info.run_id

    # And it all lives in PostgreSQL, not in some SQLite file beside it.
    password = (team.data / "db-password").read_text().strip()
    port = _postgres_port(team.log)
    with psycopg.connect(
        f"postgresql://postgres:{password}@127.0.0.1:{port}/mlflow", connect_timeout=5
    ) as db:
        (runs,) = db.execute("SELECT count(*) FROM runs").fetchone()
        (steps,) = db.execute(
            "SELECT count(*) FROM metrics WHERE key = 'loss' AND run_uuid = %s",
            (run.info.run_id,),
        ).fetchone()
    assert (runs, steps) == (1, 2)  # the refused stages logged nothing

    # A search on two workers against the same server: every trial once, nested under it.
    run_stage("tune", *DISTRIBUTED, prefix, **env)
    (search,) = client.search_runs([experiment.experiment_id], "tags.stage = 'tune'")
    trials = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{search.info.run_id}'"
    )
    assert search.info.status == "FINISHED" and search.data.metrics["trials"] == 4
    assert sorted(r.data.tags["trial_id"] for r in trials) == ["0", "1", "2", "3"]
    assert {r.data.tags["worker"] for r in trials} == {"tuner0", "tuner1"}
    assert {r.info.status for r in trials} == {"FINISHED"}


def _postgres_port(log: Path) -> int:
    """From the team server's ready line: `(PostgreSQL on 127.0.0.1:<port>; ...)`."""
    for line in log.read_text().splitlines():
        if line.startswith("team server ready:"):
            return int(line.split("PostgreSQL on 127.0.0.1:")[1].split(";")[0])
    pytest.fail(f"no ready line in the team server's output:\n{log.read_text()[-4000:]}")


@pytest.mark.slow
def test_a_stage_fails_at_once_with_one_line_when_the_tracking_server_is_down(
    run_stage, circles_split: Path
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    result = run_stage(
        "train",
        "experiment=circles/baseline",
        "train.epochs=2",
        check=False,
        MLFLOW_TRACKING_URI=closed,
        # Left to MLflow, this many retries would take minutes: the stage must not get there.
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="7",
        **NO_TELEMETRY,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: MLflow tracking server {closed} is unreachable (connection refused); start it "
        "(./dev.sh team-server) or set MLFLOW_TRACKING_URI / tracking.uri to a running one"
    ]


@pytest.mark.parametrize("option", ["--backend-store-uri", "--auth-database-uri"])
def test_the_team_server_stops_with_one_line_when_a_database_is_unreachable(
    option: str, tmp_path: Path
) -> None:
    """The runs' database, or the users' (the runs then in a SQLite file): the line names the
    option to fix."""
    unreachable = f"postgresql+psycopg://mlflow:s3cret@127.0.0.1:{free_port()}/mlflow"
    given = [option, unreachable]
    if option == "--auth-database-uri":
        given += ["--backend-store-uri", f"sqlite:///{tmp_path / 'runs.db'}"]
    result = _refused(*given)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot reach the database {postgres.masked(unreachable)}: ")
    assert "connection refused" in line.lower() and line.endswith(f"fix {option}")
    assert "s3cret" not in line


def test_the_team_server_has_users_on_any_address_but_loopback() -> None:
    result = _refused("--host", "0.0.0.0", "--no-auth")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "./dev.sh team-server: error: --no-auth on --host 0.0.0.0 would let anyone who reaches "
        "it read, change or delete every experiment and model; keep the users, or serve on "
        "127.0.0.1"
    )


def test_a_bad_prefix_is_one_line_naming_it(run_stage) -> None:
    result = run_stage(
        "train", "experiment=circles/baseline", "tracking.experiment_prefix=acme/", check=False
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: tracking.experiment_prefix may hold only letters, digits, '.', '_' and '-', "
        "got 'acme/'"
    ]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands PostgreSQL to another user")
def test_as_root_a_data_folder_that_nobody_can_reach_is_one_line(tmp_path: Path) -> None:
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    result = _refused("--data", str(hidden / "data"))
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: --data {hidden / 'data'}: PostgreSQL runs as user nobody")
    assert f"and {hidden} (mode drwx------) does not let it through" in line
