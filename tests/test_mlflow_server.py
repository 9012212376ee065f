"""The stages against a real `mlflow server` over HTTP, checked through its REST API.

The other tests use a local SQLite store, where artifacts are plain files; a team server proxies
artifacts over HTTP (mlflow-artifacts:/ URIs), which is where path and upload mistakes show.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until_answering

pytestmark = pytest.mark.slow

MLFLOW = Path(sys.executable).parent / "mlflow"
START_TIMEOUT_S = 60
ARTIFACTS_ROUTE = "/api/2.0/mlflow-artifacts/artifacts"
# pytest's PYTEST_CURRENT_TEST already silences MLflow's telemetry; said outright, as nothing
# here may leave loopback.
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true"}

# A proxy set in the caller's environment must not see loopback requests.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Server:
    uri: str
    artifacts: Path  # where the server keeps proxied artifacts on disk


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rest(base: str, method: str, path: str, body: dict[str, Any] | None = None) -> dict:
    """One REST call, its JSON answer as a dict; an HTTP error fails with the server's reason."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        base + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with _opener.open(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        pytest.fail(f"{method} {path}: HTTP {error.code}: {error.read().decode()[:2000]}")


def download(base: str, path: str) -> bytes:
    with _opener.open(base + path, timeout=30) as response:
        return response.read()


def artifacts_path(artifact_uri: str, *parts: str) -> str:
    """The proxy route serving a file under an mlflow-artifacts:/ URI."""
    parsed = urllib.parse.urlparse(artifact_uri)
    assert parsed.scheme == "mlflow-artifacts", f"artifacts are not proxied: {artifact_uri}"
    return "/".join([ARTIFACTS_ROUTE + "/" + parsed.path.strip("/"), *parts])


def _stop(process: subprocess.Popen) -> None:
    # The server forwards SIGTERM to its uvicorn child; the group kill is for a hung shutdown.
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[Server]:
    """A fresh server per test, so each test can count the runs in its store."""
    folder = tmp_path / "server"
    folder.mkdir()
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = folder / "server.log"
    command = [
        str(MLFLOW),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{folder / 'server.db'}",
        "--artifacts-destination",
        str(folder / "artifacts"),
        "--workers",
        "1",
        # The default already admits localhost; naming the exact Host header keeps the test
        # working if that default narrows.
        "--allowed-hosts",
        f"127.0.0.1:{port},localhost:{port}",
    ]
    # The job runner starts half a dozen huey consumers: seconds of CPU on a 2-core runner,
    # for a feature (server-side jobs) no stage uses.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **NO_TELEMETRY}
    env.pop("MLFLOW_TRACKING_URI", None)
    with log.open("w") as log_file:
        process = subprocess.Popen(
            command,
            cwd=folder,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_answering(process, uri + "/health", log, START_TIMEOUT_S)
        yield Server(uri, folder / "artifacts")
    finally:
        _stop(process)


def test_train_and_evaluate_log_one_complete_run_to_a_tracking_server(
    mlflow_server: Server, run_stage, circles_split: Path, project: Path
) -> None:
    base = mlflow_server.uri
    env = {"MLFLOW_TRACKING_URI": base, **NO_TELEMETRY}
    run_stage("train", "experiment=circles/baseline", "train.epochs=3", **env)
    run_stage("evaluate", "experiment=circles/baseline", **env)
    search = (
        "experiment=circles/tuned",
        "tuner=random",
        "tuner.max_trials=2",
        "tuner.max_epochs=2",
        "tuner.cv_folds=2",
        "tuner.workers=1",  # workers against a server: tests/test_team_server.py
    )
    run_stage("tune", *search, **env)

    assert not (project / "mlflow.db").exists(), "the stages ignored MLFLOW_TRACKING_URI"
    assert not (project / "mlartifacts").exists(), "artifacts were written locally, not proxied"

    experiment = rest(
        base, "GET", "/api/2.0/mlflow/experiments/get-by-name?experiment_name=circles"
    )["experiment"]
    runs = rest(
        base,
        "POST",
        "/api/2.0/mlflow/runs/search",
        {"experiment_ids": [experiment["experiment_id"]], "max_results": 100},
    ).get("runs", [])
    by_name = {r["info"]["run_name"]: r for r in runs}
    assert set(by_name) == {
        "circles/baseline",
        "circles/search",
        "circles/trial-0",
        "circles/trial-1",
    }
    run = by_name["circles/baseline"]
    info = run["info"]
    summary = json.loads((project / "models/circles/baseline/run.json").read_text())
    assert info["run_id"] == summary["run_id"]
    assert info["status"] == "FINISHED"

    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert params["model.hidden_units"] == "[8, 8]"
    assert params["train.epochs"] == "3"
    assert 0 <= metrics["test_accuracy"] <= 1
    assert tags["task"] == "circles" and tags["variant"] == "baseline"

    history = rest(
        base,
        "GET",
        f"/api/2.0/mlflow/metrics/get-history?run_id={info['run_id']}&metric_key=loss",
    )["metrics"]
    assert sorted(m["step"] for m in history) == [0, 1, 2]

    run_id = info["run_id"]
    listed = rest(base, "GET", f"/api/2.0/mlflow/artifacts/list?run_id={run_id}")
    assert {"config.yaml", "evaluation"} <= {f["path"] for f in listed["files"]}
    evaluation = rest(
        base, "GET", f"/api/2.0/mlflow/artifacts/list?run_id={run_id}&path=evaluation"
    )
    assert "evaluation/confusion_matrix.png" in {f["path"] for f in evaluation["files"]}

    artifact_uri = info["artifact_uri"]
    config_yaml = download(base, artifacts_path(artifact_uri, "config.yaml")).decode()
    assert "hidden_units" in config_yaml and "epochs: 3" in config_yaml
    png = download(base, artifacts_path(artifact_uri, "evaluation", "confusion_matrix.png"))
    assert png.startswith(b"\x89PNG")
    # The proxy wrote them under the server's own --artifacts-destination.
    on_disk = mlflow_server.artifacts / urllib.parse.urlparse(artifact_uri).path.strip("/")
    assert (on_disk / "config.yaml").read_text() == config_yaml

    # The search's trials are nested under its run, each with its params and per-epoch metrics.
    search_run = by_name["circles/search"]["info"]
    assert search_run["status"] == "FINISHED"
    for name in ("circles/trial-0", "circles/trial-1"):
        trial = by_name[name]
        trial_tags = {t["key"]: t["value"] for t in trial["data"]["tags"]}
        assert trial_tags["mlflow.parentRunId"] == search_run["run_id"]
        assert trial["info"]["status"] == "FINISHED"
        assert "model.optimizer.lr" in {p["key"] for p in trial["data"]["params"]}
        steps = rest(
            base,
            "GET",
            f"/api/2.0/mlflow/metrics/get-history?run_id={trial['info']['run_id']}"
            "&metric_key=val_accuracy",
        )["metrics"]
        # Two folds of two epochs each, numbered on across the folds.
        assert sorted(m["step"] for m in steps) == [0, 1, 2, 3]
    trials_csv = download(base, artifacts_path(search_run["artifact_uri"], "trials.csv")).decode()
    assert trials_csv.startswith("trial_id,status,score")
