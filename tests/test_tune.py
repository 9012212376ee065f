"""Real Keras Tuner searches on make_circles: nested MLflow runs, NaN trials, resume, repeat."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import all_runs, mlflow_client, stage_env

TINY_SEARCH = (
    "experiment=circles/tuned",
    "tuner=random",
    "tuner.max_trials=3",
    "tuner.max_epochs=2",
    "tuner.cv_folds=null",  # the preset cross-validates; most tests score on the validation part
    "search_space.model.family=mlp",  # so that every trial has hidden layers to compare
)


def runs_by_stage(project: Path) -> tuple[object, list]:
    runs = all_runs(mlflow_client(project))
    (parent,) = [r for r in runs if r.info.run_name == "circles/search"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, sorted(trials, key=lambda r: r.data.tags["trial_id"])


def best_values(project: Path) -> dict:
    return yaml.safe_load((project / "models/circles/best_hparams.yaml").read_text())


def test_a_search_logs_one_run_per_trial_under_its_parent_and_train_uses_the_best(
    run_stage, circles_split: Path, project: Path
) -> None:
    run_stage("tune", *TINY_SEARCH)

    client = mlflow_client(project)
    parent, trials = runs_by_stage(project)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["tuner.algorithm"] == "random"
    assert "val_accuracy" in parent.data.params["tuner.objective"]
    assert parent.data.metrics["trials"] == 3
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"trials.csv", "best_hparams.yaml", "search_space.yaml", "figures"} <= artifacts

    assert [r.info.run_name for r in trials] == [f"circles/trial-{i}" for i in range(3)]
    for trial in trials:
        assert trial.info.status == "FINISHED"
        assert {"model.hidden_units", "model.optimizer.lr", "train.batch_size"} <= set(
            trial.data.params
        )
        assert "score" in trial.data.metrics
        steps = [m.step for m in client.get_metric_history(trial.info.run_id, "val_accuracy")]
        assert steps == [0, 1]

    best = best_values(project)
    best_trial = max(trials, key=lambda r: r.data.metrics["score"])
    assert str(best["model"]["hidden_units"]) == best_trial.data.params["model.hidden_units"]
    assert parent.data.metrics["best_val_accuracy"] == best_trial.data.metrics["score"]
    table = pd.read_csv(project / "reports/circles/search/trials.csv")
    assert list(table["status"]) == ["COMPLETED"] * 3
    assert (project / "reports/circles/search/figures/score_by_hyperparameter.png").exists()

    run_stage("train", "experiment=circles/tuned", "train.epochs=2", "tracking.log_model=false")
    trained = [r for r in all_runs(client) if r.info.run_name == "circles/tuned"]
    assert trained[0].data.params["model.hidden_units"] == str(best["model"]["hidden_units"])
    assert float(trained[0].data.params["model.optimizer.lr"]) == best["model"]["optimizer"]["lr"]


def test_a_cross_validated_trial_scores_the_mean_of_its_folds_last_epochs(
    run_stage, circles_split: Path, project: Path
) -> None:
    run_stage("tune", *TINY_SEARCH[:4], "tuner.max_trials=2", "tuner.cv_folds=3")

    client = mlflow_client(project)
    _, trials = runs_by_stage(project)
    assert len(trials) == 2
    for trial in trials:
        history = client.get_metric_history(trial.info.run_id, "val_accuracy")
        # Three folds of two epochs each, numbered on; no early stopping, so each fold counts
        # with its last epoch.
        assert [m.step for m in history] == [0, 1, 2, 3, 4, 5]
        last_epochs = [m.value for m in history if m.step % 2 == 1]
        assert trial.data.metrics["score"] == pytest.approx(sum(last_epochs) / 3)
        assert "best_step" not in trial.data.metrics


def test_a_trial_with_a_nan_loss_fails_and_the_search_goes_on(
    run_stage, circles_split: Path, project: Path
) -> None:
    (project / "conf/search_space/diverging.yaml").write_text(
        "model:\n  hidden_units: [16]\n  activation: relu\n"
        "  optimizer: {name: sgd, lr: {choice: [1.0e+30, 0.01]}}\n"
    )
    run_stage("tune", *TINY_SEARCH[:5], "search_space=diverging")

    _, trials = runs_by_stage(project)
    status = {r.data.params["model.optimizer.lr"]: r.info.status for r in trials}
    assert status == {"1e+30": "FAILED", "0.01": "FINISHED"}
    failed = next(r for r in trials if r.info.status == "FAILED")
    assert "NaN" in failed.data.tags["failure_reason"]
    assert best_values(project)["model"]["optimizer"]["lr"] == 0.01


def test_a_bad_search_space_fails_before_any_work(
    run_stage, circles_split: Path, project: Path
) -> None:
    result = run_stage(
        "tune", *TINY_SEARCH, "+search_space.model.dropuot={choice:[0.1]}", check=False
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: search_space.model.dropuot: the config has no key model.dropuot"
    )
    result = run_stage("tune", *TINY_SEARCH, "search_space.model.dropout.max=1.5", check=False)
    assert "search_space.model.dropout: value 1.5 is refused" in result.stderr
    assert not (project / "mlflow.db").exists()


def test_same_seed_same_trials_and_same_best(run_stage, circles_split: Path, project: Path) -> None:
    outcomes = []
    for _ in range(2):
        run_stage("tune", *TINY_SEARCH, "tuner.seed=7")
        table = pd.read_csv(project / "reports/circles/search/trials.csv").drop(
            columns="mlflow_run_id"
        )
        outcomes.append((table, best_values(project)))
        # Another fingerprint next time would start anew anyway; this makes the repeat explicit.
        (project / "models/circles/search/state.json").unlink()
    pd.testing.assert_frame_equal(outcomes[0][0], outcomes[1][0])
    assert outcomes[0][1] == outcomes[1][1]


@pytest.mark.slow
@pytest.mark.parametrize("kill", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "Ctrl-C"])
def test_an_interrupted_search_resumes_without_redoing_finished_trials(
    run_stage, circles_split: Path, project: Path, kill: signal.Signals
) -> None:
    # Long trials (no early stopping) so that the kill lands inside the second one.
    slow = (*TINY_SEARCH[:3], "tuner.max_epochs=60", "tuner.early_stopping_patience=null")
    search = subprocess.Popen(
        [sys.executable, "-m", "pipeline.tune", *slow],
        cwd=project,
        env=stage_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    second_trial = project / "models/circles/search/keras_tuner/trial_1"
    deadline = time.monotonic() + 300
    while not second_trial.exists() and search.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert search.poll() is None, "the search ended before it could be interrupted"
    time.sleep(1)
    search.send_signal(kill)
    search.wait(timeout=60)

    _, trials = runs_by_stage(project)
    assert [r.info.status for r in trials] == [
        "FINISHED",
        "KILLED" if kill == signal.SIGINT else "RUNNING",
    ]

    run_stage("tune", *slow)
    parent, trials = runs_by_stage(project)
    assert parent.info.status == "FINISHED"
    finished = [r.data.tags["trial_id"] for r in trials if r.info.status == "FINISHED"]
    assert sorted(finished) == ["0", "1", "2"]  # each finished trial exactly once
    assert [r.info.status for r in trials if r.info.status != "FINISHED"] == ["KILLED"]


def test_the_score_plot_takes_keys_searched_only_under_a_condition(tmp_path: Path) -> None:
    from pipeline import plots

    trials = pd.DataFrame(
        {
            "score": [0.9, 0.8, None],
            "model.family": ["cnn", "mlp", "cnn"],
            "model.filters": ["[16, 32]", None, "[32, 32]"],
            "model.optimizer.lr": [0.001, 0.003, 0.0005],
        }
    )
    out = tmp_path / "scores.png"
    plots.score_by_hyperparameter(trials, list(trials.columns[1:]), "val_accuracy", out)
    assert out.stat().st_size > 0


def test_a_boolean_choice_comes_back_as_a_boolean() -> None:
    import keras_tuner as kt

    from pipeline import search_space

    params = search_space.parse({"model": {"batch_norm": {"choice": [True, False]}}})
    values = search_space.values_for(params, kt.HyperParameters())
    assert values["model.batch_norm"] is True  # not 1, which would also compare equal


def test_every_layers_units_are_in_the_space_before_a_trial_reaches_them() -> None:
    import keras_tuner as kt

    from pipeline import search_space

    params = search_space.parse(
        {"model": {"hidden_units": {"layers": [1, 3], "units": [16, 64], "step": 16}}}
    )
    hp = kt.HyperParameters()
    # One layer at first, yet the oracle is told of all three layers' units: declared only once
    # a trial reached them, the draws after that trial varied between processes.
    assert search_space.values_for(params, hp) == {"model.hidden_units": [16]}
    assert {p.name for p in hp.space} >= {f"model.hidden_units.{i}" for i in range(3)}
    hp.values["model.hidden_units.layers"] = 2
    hp.ensure_active_values()  # as the oracle does for a trial
    assert len(search_space.values_for(params, hp)["model.hidden_units"]) == 2
