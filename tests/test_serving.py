"""The registered champion on raw inputs: `pipeline.predict` and `mlflow models serve`."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import mlflow_client, stage_env, wait_until_answering
from test_mlflow_server import _opener, _stop, free_port

pytestmark = pytest.mark.slow

MLFLOW = Path(sys.executable).parent / "mlflow"


def predict(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.predict", *args],
        cwd=project,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_champion_predicts_raw_points_by_command_and_over_http(
    run_stage, circles_split: Path, project: Path, tmp_path: Path
) -> None:
    run_stage("train", "experiment=circles/baseline", "train.epochs=20")
    run_stage("evaluate", "experiment=circles/baseline")
    run_stage("report", "tasks=[circles]")
    champion = mlflow_client(project).get_model_version_by_alias("circles", "champion")
    assert champion.tags["variant"] == "baseline"

    # Raw points, as make_circles gives them: the model standardises them itself.
    from sklearn.datasets import make_circles

    points, _ = make_circles(n_samples=8, noise=0.05, factor=0.8, random_state=3)
    points_file = tmp_path / "points.csv"
    points_file.write_text("x,y\n" + "".join(f"{a},{b}\n" for a, b in points))
    answered = predict(project, "task=circles", str(points_file))
    assert answered.returncode == 0, answered.stderr[-3000:]
    rows = [line.split("\t") for line in answered.stdout.strip().splitlines()]
    assert [name for name, _, _ in rows] == [f"{points_file}:{i}" for i in range(1, 9)]
    labels = [int(label) for _, label, _ in rows]
    assert all(0.5 <= float(prob) <= 1 for _, _, prob in rows)

    # Bad input: one line naming it.
    (tmp_path / "three.csv").write_text("1,2,3\n")
    (tmp_path / "text.png").write_text("not an image\n")
    for args, message in (
        ((str(tmp_path / "missing.csv"),), "missing.csv: no such file"),
        ((str(tmp_path / "three.csv"),), "inputs of shape (3,), the model takes (2,)"),
        ((str(tmp_path / "text.png"),), "the model takes points of 2 values, not images"),
    ):
        failed = predict(project, "task=circles", *args)
        assert failed.returncode == 1
        last = failed.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and message in last, last

    # The same model served over HTTP answers the same.
    port = free_port()
    log = tmp_path / "serve.log"
    env = stage_env(MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}")
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(MLFLOW), "models", "serve", "-m", "models:/circles@champion",
             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
            cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        uri = f"http://127.0.0.1:{port}"
        wait_until_answering(server, uri + "/ping", log, timeout=120)
        request = urllib.request.Request(
            uri + "/invocations",
            data=json.dumps({"inputs": points.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with _opener.open(request, timeout=60) as response:
            served = np.asarray(json.loads(response.read())["predictions"]).ravel()
    finally:
        _stop(server)
    assert [int(p > 0.5) for p in served] == labels
