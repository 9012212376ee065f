"""Real training runs on make_circles, recorded in a real MLflow store."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import shutil
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from conftest import (
    all_runs,
    copy_project,
    mlflow_client,
    stage_in,
    tensorboard_scalars,
    tensorboard_serving,
)
from mlflow.entities import RunInfo


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, circles_data: Path) -> tuple[Path, RunInfo]:
    """A project where circles' baseline was trained and then evaluated, and its run's info
    as training left it: set up once for the tests that only add to it or read it."""
    project = copy_project(tmp_path_factory.mktemp("evaluated") / "project")
    shutil.copytree(circles_data, project / "data")
    timings = str(project / "timings.jsonl")  # benchmarks/repro_time.py's record of each stage
    stage_in(
        project,
        "train",
        "experiment=circles/baseline",
        "train.epochs=3",
        "tracking.system_metrics_interval=0.5",
        PIPELINE_TIMINGS=timings,
    )
    run_id = json.loads((project / "models/circles/baseline/run.json").read_text())["run_id"]
    trained = mlflow_client(project).get_run(run_id).info
    stage_in(project, "evaluate", "experiment=circles/baseline", PIPELINE_TIMINGS=timings)
    return project, trained


def test_train_and_evaluate_record_one_complete_mlflow_run(
    evaluated: tuple[Path, RunInfo],
) -> None:
    project, _ = evaluated
    summary = json.loads((project / "models/circles/baseline/run.json").read_text())
    client = mlflow_client(project)
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "circles/baseline"
    assert run.data.params["model.hidden_units"] == "[8, 8]"
    assert run.data.params["model.optimizer.name"] == "adam"
    assert run.data.params["train.epochs"] == "3"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [0, 1, 2]
    assert 0 <= run.data.metrics["test_accuracy"] <= 1
    tags = run.data.tags
    assert tags["task"] == "circles" and tags["variant"] == "baseline"
    assert len(tags["data.split.sha256"]) == 64
    assert tags["git_commit"]
    assert tags["keras.backend"] == "tensorflow" and tags["device"] == "CPU"
    (tensorflow,) = importlib.metadata.packages_distributions()["tensorflow"]
    assert tags["keras.backend.version"] == importlib.metadata.version(tensorflow)
    # What else its figures depend on: the machine, the thread count, determinism, libraries.
    cpuinfo = Path("/proc/cpuinfo").read_text()
    assert tags["cpu"] in cpuinfo
    assert tags["cpu.isa"] and set(tags["cpu.isa"].split(",")) <= set(cpuinfo.split())
    assert tags["cpu.cores"] == str(len(os.sched_getaffinity(0)))
    assert tags["threads"] == f"default ({tags['cpu.cores']})"
    assert tags["deterministic"] == "true"
    for library in ("keras-tuner", "mlflow", "numpy"):
        assert tags[f"{library.replace('-', '_')}.version"] == importlib.metadata.version(library)
    # MLflow's system metrics, sampled every half second while the run was open.
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(
        run.data.metrics
    )
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "evaluation"} <= artifacts
    evaluation = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/confusion_matrix.png" in evaluation
    assert len(client.search_logged_models([run.info.experiment_id])) == 1

    metrics = json.loads((project / "reports/models/circles/baseline/metrics.json").read_text())
    assert metrics["test_accuracy"] == run.data.metrics["test_accuracy"]
    assert set(metrics) >= {
        "test_accuracy",
        "test_loss",
        "test_precision_macro",
        "test_recall_macro",
        "test_f1_macro",
    }


def test_a_train_run_writes_tensorboard_logs_attached_to_it_that_tensorboard_serves(
    evaluated: tuple[Path, RunInfo], tmp_path: Path
) -> None:
    project, trained = evaluated
    board = project / "tensorboard/circles/baseline" / trained.run_id
    train = tensorboard_scalars(board / "train")
    validation = tensorboard_scalars(board / "validation")
    assert {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"} <= set(train)
    assert {"epoch_loss", "epoch_accuracy"} <= set(validation)
    for values in [*train.values(), *validation.values()]:
        assert len(values) == 3  # one per epoch
    assert train["epoch_learning_rate"] == pytest.approx([0.01] * 3)
    attached = mlflow_client(project).list_artifacts(trained.run_id, "tensorboard")
    assert {a.path for a in attached} == {"tensorboard/train", "tensorboard/validation"}

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
    with (
        tensorboard_serving(project / "tensorboard", tmp_path / "tensorboard.log") as url,
        opener.open(url + "/data/plugin/scalars/tags", timeout=30) as answer,
    ):
        runs = json.load(answer)
    assert "epoch_loss" in runs[f"circles/baseline/{trained.run_id}/train"]


def test_same_seed_gives_the_same_model(run_stage, circles_split: Path, project: Path) -> None:
    train = ("experiment=circles/baseline", "train.epochs=3", "tracking.log_model=false")
    run_stage("train", *train)
    written = {path: path.read_bytes() for path in (project / "models/circles/baseline").iterdir()}
    # Again by hand: into a job folder of its own, the pipeline's outputs left as they were.
    run_stage("train", *train, by_hand=True)
    (job,) = project.glob("outputs/*/*/models/circles/baseline")
    assert {path: path.read_bytes() for path in written} == written
    baseline = project / "models/circles/baseline"
    assert (job / "history.csv").read_text() == (baseline / "history.csv").read_text()


def test_the_cosine_schedule_lowers_the_learning_rate_every_epoch(
    run_stage, circles_split: Path, project: Path
) -> None:
    run_stage(
        "train",
        "experiment=circles/baseline",
        "train.epochs=4",
        "train.lr_schedule=cosine",
        "model.optimizer.lr=0.02",
        "tracking.log_model=false",
    )
    history = pd.read_csv(project / "models/circles/baseline/history.csv")
    expected = [0.02 * (1 + math.cos(math.pi * epoch / 4)) / 2 for epoch in range(4)]
    assert list(history["learning_rate"]) == pytest.approx(expected, rel=1e-6)


def test_a_nan_loss_fails_the_run_with_the_reason(
    run_stage, circles_split: Path, project: Path
) -> None:
    result = run_stage(
        "train",
        "experiment=circles/baseline",
        "model.activation=relu",
        "model.optimizer.name=sgd",
        "model.optimizer.lr=1e30",
        "train.epochs=5",
        check=False,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: loss became NaN at epoch") and "model.optimizer.lr" in last
    (run,) = all_runs(mlflow_client(project))
    assert run.info.status == "FAILED"
    assert "NaN" in run.data.tags["failure_reason"]
    assert not (project / "models/circles/baseline").exists(), "a failed run leaves no model behind"


@pytest.mark.slow
def test_hydra_multirun_gives_one_run_per_job_grouped_by_sweep(
    run_stage, circles_split: Path, project: Path
) -> None:
    result = run_stage(
        "train",
        "-m",
        "dataset=circles",
        "model.optimizer.lr=0.001,0.01",
        "train.epochs=2",
        "tracking.log_model=false",
    )
    assert "#1 : dataset=circles model.optimizer.lr=0.01" in result.stdout + result.stderr
    runs = all_runs(mlflow_client(project))
    assert len(runs) == 2
    assert {r.data.params["model.optimizer.lr"] for r in runs} == {"0.001", "0.01"}
    assert len({r.data.tags["hydra_sweep_id"] for r in runs}) == 1
    assert {r.data.tags["hydra_job_num"] for r in runs} == {"0", "1"}
    assert all(r.info.status == "FINISHED" for r in runs)
    # Each job writes under its own folder, not over the pipeline's outputs.
    assert len(list(project.glob("multirun/*/[01]/models/circles/baseline/run.json"))) == 2
    assert not (project / "models").exists()


def test_evaluate_and_crossval_add_to_the_train_run_without_reopening_it(
    evaluated: tuple[Path, RunInfo],
) -> None:
    project, trained = evaluated
    stage_in(
        project, "crossval", "experiment=circles/baseline", "train.epochs=2", "train.cv_folds=2"
    )
    client = mlflow_client(project)
    run_id = trained.run_id
    circles_split = project / "data/split/circles.npz"

    run = client.get_run(run_id)
    assert (run.info.status, run.info.end_time) == ("FINISHED", trained.end_time)
    assert {"test_accuracy", "final_val_accuracy", "cv_accuracy_mean"} <= set(run.data.metrics)
    assert run.data.tags["evaluated"] == run.data.tags["crossvalidated"] == "true"
    assert "failure_reason" not in run.data.tags
    evaluation = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert "evaluation/confusion_matrix.png" in evaluation

    # The split as dataset inputs: train's two parts, evaluate's test part.
    inputs = {
        next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset
        for i in run.inputs.dataset_inputs
    }
    assert {c: d.name for c, d in inputs.items()} == {
        "training": "circles-train",
        "validation": "circles-val",
        "test": "circles-test",
    }
    assert len({d.digest for d in inputs.values()}) == 3
    assert all(str(circles_split.resolve()) in d.source for d in inputs.values())
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_evaluating_a_model_whose_run_is_not_in_the_store_fails_in_one_line(
    run_stage, project: Path
) -> None:
    run_file = project / "models/circles/baseline/run.json"
    run_file.parent.mkdir(parents=True)
    run_file.write_text(json.dumps({"run_id": "0" * 32}))
    result = run_stage("evaluate", "experiment=circles/baseline", check=False)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and f"MLflow run {'0' * 32} is not in the store" in last


def test_each_stage_process_records_its_start_up_work_and_model_compute(
    evaluated: tuple[Path, RunInfo],
) -> None:
    project, _ = evaluated
    lines = [json.loads(line) for line in (project / "timings.jsonl").read_text().splitlines()]
    assert [line["stage"] for line in lines] == ["train", "evaluate"]
    assert "experiment=circles/baseline" in lines[0]["overrides"]
    for line in lines:
        # Imports and Hydra come before the work; the fit or the predictions are inside it.
        # No floor on the start-up: a stage forked by the warm stage server has its imports
        # done, and a fast machine starts it in a few tenths of a second.
        assert 0 < line["startup_s"] and 0 < line["compute_s"] < line["work_s"], line
