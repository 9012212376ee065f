"""Real Keras Tuner searches on make_circles: nested MLflow runs, NaN trials, resume, repeat,
and a search's identity (config, data, code): what starts a new search and what does not."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import (
    all_runs,
    copy_project,
    mlflow_client,
    stage_env,
    stage_in,
    tensorboard_scalars,
)

TINY_SEARCH = (
    "experiment=circles/tuned",
    "tuner.workers=1",  # the preset runs 2: these tests are of a search in one process
    "tuner=random",
    "tuner.max_trials=3",
    "tuner.max_epochs=2",
    "tuner.cv_folds=null",  # the preset cross-validates; most tests score on the validation part
    "search_space.model.family=mlp",  # so that every trial has hidden layers to compare
)


REPORTS = "reports/models/circles/search"


def searches(project: Path) -> list[tuple[object, list]]:
    """Every search run, oldest first, with its trial runs in trial order."""
    runs = all_runs(mlflow_client(project))
    parents = sorted(
        (r for r in runs if r.info.run_name == "circles/search"), key=lambda r: r.info.start_time
    )
    return [
        (
            parent,
            sorted(
                (r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
                key=lambda r: int(r.data.tags["trial_id"]),
            ),
        )
        for parent in parents
    ]


def runs_by_stage(project: Path) -> tuple[object, list]:
    (search,) = searches(project)
    return search


def best_values(project: Path) -> dict:
    return yaml.safe_load((project / "models/circles/best_hparams.yaml").read_text())


def search_outputs(project: Path) -> dict[str, bytes]:
    """What a search writes besides its state: the best hyperparameters, trials, figures."""
    files = [
        project / "models/circles/best_hparams.yaml",
        project / REPORTS / "trials.csv",
        *sorted((project / REPORTS / "figures").iterdir()),
    ]
    return {str(path.relative_to(project)): path.read_bytes() for path in files}


def run_and_kill(project: Path, overrides: tuple[str, ...], kill: signal.Signals) -> None:
    """Start a search and interrupt it inside its second trial."""
    search = subprocess.Popen(
        [sys.executable, "-m", "pipeline.tune", *overrides, "hydra.run.dir=."],
        cwd=project,
        env=stage_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # A test run started in the background of a non-interactive shell inherits SIGINT
        # ignored, and Python then installs no Ctrl-C handler: the search would never see it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # Keras Tuner saves a trial's best weights after each epoch that improves on the last, so
    # after its first: this file says the second trial is under way with most epochs ahead,
    # however slow the machine. (MLflow's view lags: epoch metrics are written in batches.)
    first_epoch = project / "models/circles/search/keras_tuner/trial_1/checkpoint.weights.h5"
    deadline = time.monotonic() + 300
    while not first_epoch.exists() and search.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert search.poll() is None, "the search ended before it could be interrupted"
    search.send_signal(kill)
    search.wait(timeout=180)  # a loaded 2-core machine is slow to wind a search down


# Trials long enough (no early stopping) that a kill after the second one's first epoch lands
# inside it; one fit a trial, not the preset's five folds, which made each trial 300 epochs.
SLOW_SEARCH = (
    *TINY_SEARCH[:4],
    "tuner.cv_folds=null",
    "tuner.max_epochs=50",
    "tuner.early_stopping_patience=null",
)


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory: pytest.TempPathFactory, circles_data: Path) -> Path:
    """A project where TINY_SEARCH ran to its end, set up once for the tests that read it or
    run it again expecting it to stay the one finished search."""
    project = copy_project(tmp_path_factory.mktemp("finished-search") / "project")
    shutil.copytree(circles_data, project / "data")
    stage_in(project, "tune", *TINY_SEARCH, "tracking.trial_tensorboard=true")
    return project


def test_each_trial_writes_tensorboard_logs_with_its_hyperparameters(finished_search: Path) -> None:
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.plugins.hparams import plugin_data_pb2

    parent, trials = runs_by_stage(finished_search)
    client = mlflow_client(finished_search)
    board = finished_search / "tensorboard/circles/search" / parent.info.run_id
    for trial in trials:
        folder = board / trial.data.tags["trial_id"] / "execution0"
        assert len(tensorboard_scalars(folder / "validation")["epoch_accuracy"]) == 2
        # Keras Tuner's HParams: the trial's values, which TensorBoard's HParams view lists.
        events = ea.EventAccumulator(str(folder))
        events.Reload()
        content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
        lr = float(trial.data.params["model.optimizer.lr"])
        assert hparams["model.optimizer.lr"].number_value == pytest.approx(lr)
        attached = {a.path for a in client.list_artifacts(trial.info.run_id, "tensorboard")}
        assert attached == {"tensorboard/execution0"}


def test_a_search_logs_one_run_per_trial_under_its_parent_and_train_uses_the_best(
    finished_search: Path,
) -> None:
    project = finished_search
    client = mlflow_client(project)
    parent, trials = runs_by_stage(project)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["tuner.algorithm"] == "random"
    assert "val_accuracy" in parent.data.params["tuner.objective"]
    assert parent.data.metrics["trials"] == 3
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"trials.csv", "best_hparams.yaml", "search_space.yaml", "figures"} <= artifacts

    assert [r.info.run_name for r in trials] == [f"circles/trial-{i}" for i in range(3)]
    # What the scores depend on, on the search's run and each trial's, as on a train run's
    # (tests/test_train.py checks their values).
    machine = ("cpu", "cpu.isa", "cpu.cores", "threads", "deterministic", "keras.backend")
    versions = ("keras.version", "keras.backend.version", "keras_tuner.version", "mlflow.version")
    for run in (parent, *trials):
        assert {*machine, *versions} <= set(run.data.tags), run.info.run_name
        assert run.data.tags["deterministic"] == "true"
    for trial in trials:
        assert trial.info.status == "FINISHED"
        assert {"model.hidden_units", "model.optimizer.lr", "train.batch_size"} <= set(
            trial.data.params
        )
        assert "score" in trial.data.metrics
        steps = [m.step for m in client.get_metric_history(trial.info.run_id, "val_accuracy")]
        assert steps == [0, 1]

    # The pick: of the trials within one standard error of the best score (20 validation
    # points), the one with the fewest parameters, then the earliest.
    table = pd.read_csv(project / REPORTS / "trials.csv", dtype={"trial_id": str})
    assert list(table["status"]) == ["COMPLETED"] * 3
    tolerance = parent.data.metrics["tie_tolerance"]
    best_score = table["score"].max()
    p = min(best_score, 19 / 20)  # a perfect score is held to be one point short
    assert tolerance == pytest.approx((p * (1 - p) / 20) ** 0.5)
    tied = table[table["score"] >= best_score - tolerance]
    assert list(table["tied"]) == list(table.index.isin(tied.index))
    picked = tied.sort_values(["param_count", "trial_id"], kind="stable").iloc[0]
    assert list(table["picked"]) == list(table["trial_id"] == picked["trial_id"])
    assert parent.data.tags["best_trial_id"] == picked["trial_id"]
    best = best_values(project)
    best_trial = trials[int(picked["trial_id"])]
    assert str(best["model"]["hidden_units"]) == best_trial.data.params["model.hidden_units"]
    assert parent.data.metrics["best_val_accuracy"] == best_trial.data.metrics["score"]
    assert (
        f"trial {picked['trial_id']}, val_accuracy"
        in (project / "models/circles/best_hparams.yaml").read_text()
    )
    assert (project / REPORTS / "figures/score_by_hyperparameter.png").exists()

    stage_in(
        project, "train", "experiment=circles/tuned", "train.epochs=2", "tracking.log_model=false"
    )
    trained = [r for r in all_runs(client) if r.info.run_name == "circles/tuned"]
    assert trained[0].data.params["model.hidden_units"] == str(best["model"]["hidden_units"])
    assert float(trained[0].data.params["model.optimizer.lr"]) == best["model"]["optimizer"]["lr"]


def test_a_cross_validated_trial_scores_the_mean_of_its_folds_last_epochs(
    run_stage, circles_split: Path, project: Path
) -> None:
    run_stage("tune", *TINY_SEARCH[:5], "tuner.max_trials=2", "tuner.cv_folds=3")

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
    run_stage("tune", *TINY_SEARCH[:6], "search_space=diverging")

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


@pytest.mark.slow
@pytest.mark.parametrize("kill", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "Ctrl-C"])
def test_an_interrupted_search_resumes_without_redoing_finished_trials(
    run_stage, circles_split: Path, project: Path, kill: signal.Signals
) -> None:
    run_and_kill(project, SLOW_SEARCH, kill)
    _, trials = runs_by_stage(project)
    assert [r.info.status for r in trials] == [
        "FINISHED",
        "KILLED" if kill == signal.SIGINT else "RUNNING",
    ]

    run_stage("tune", *SLOW_SEARCH)
    parent, trials = runs_by_stage(project)
    assert parent.info.status == "FINISHED"
    finished = [r.data.tags["trial_id"] for r in trials if r.info.status == "FINISHED"]
    assert sorted(finished) == ["0", "1", "2"]  # each finished trial exactly once
    assert [r.info.status for r in trials if r.info.status != "FINISHED"] == ["KILLED"]


def test_a_finished_search_run_again_searches_nothing_and_leaves_its_run_alone(
    finished_search: Path,
) -> None:
    project = finished_search
    parent, trials = runs_by_stage(project)
    written = search_outputs(project)

    again = stage_in(project, "tune", *TINY_SEARCH)
    assert f"already finished (MLflow run {parent.info.run_id})" in again.stdout
    rerun, rerun_trials = runs_by_stage(project)  # still the one search run
    assert (rerun.info.status, rerun.info.end_time) == ("FINISHED", parent.info.end_time)
    assert (rerun.data.params, rerun.data.tags) == (parent.data.params, parent.data.tags)
    assert [r.info.run_id for r in rerun_trials] == [r.info.run_id for r in trials]
    assert search_outputs(project) == written


def test_a_forced_rerun_of_a_finished_search_writes_its_outputs_again(
    finished_search: Path,
) -> None:
    project = finished_search
    parent, trials = runs_by_stage(project)
    written = search_outputs(project)
    # What `dvc repro -f` does: it deletes the outputs, but keeps the persisted search folder.
    (project / "models/circles/best_hparams.yaml").unlink()
    (project / REPORTS / "trials.csv").unlink()
    shutil.rmtree(project / REPORTS / "figures")

    stage_in(project, "tune", *TINY_SEARCH)
    assert search_outputs(project) == written
    rerun, rerun_trials = runs_by_stage(project)
    assert (rerun.info.status, rerun.info.end_time) == ("FINISHED", parent.info.end_time)
    assert len(rerun_trials) == len(trials)


def test_a_code_change_starts_a_new_search_and_the_old_one_stays_finished(
    run_stage, circles_split: Path, project: Path
) -> None:
    run_stage("tune", *TINY_SEARCH)
    ((old, _),) = searches(project)
    with open(project / "pipeline/models/nets.py", "a") as models:
        models.write("# an edit to the code that builds the models\n")

    result = run_stage("tune", *TINY_SEARCH)
    assert "code (pipeline/models/nets.py) changed" in result.stdout
    (kept, _), (new, trials) = searches(project)
    assert (kept.info.status, kept.info.end_time) == ("FINISHED", old.info.end_time)
    assert new.info.status == "FINISHED"
    assert [r.info.status for r in trials] == ["FINISHED"] * 3
    assert new.data.tags["search_identity"] != old.data.tags["search_identity"]
    assert new.data.tags["search_identity.code"] != old.data.tags["search_identity.code"]
    assert new.data.tags["search_identity.config"] == old.data.tags["search_identity.config"]
    assert (
        f"search run {new.info.run_id}"
        in (project / "models/circles/best_hparams.yaml").read_text()
    )


@pytest.mark.slow
def test_a_changed_search_ends_the_unfinished_one_it_replaces_killed(
    run_stage, circles_split: Path, project: Path
) -> None:
    run_and_kill(project, SLOW_SEARCH, signal.SIGKILL)  # leaves its runs RUNNING

    run_stage("tune", *TINY_SEARCH, "search_space.model.dropout.max=0.2")
    (old, old_trials), (new, trials) = searches(project)
    assert old.info.status == "KILLED"
    assert [r.info.status for r in old_trials] == ["FINISHED", "KILLED"]
    # The new search's stage found the killed process gone and ended its runs first.
    for run in (old, old_trials[1]):
        assert run.data.tags["failure_reason"].startswith("its process (pid ")
    assert new.info.status == "FINISHED"
    assert [r.info.status for r in trials] == ["FINISHED"] * 3


def test_the_score_plot_takes_keys_searched_only_under_a_condition(tmp_path: Path) -> None:
    from pipeline.reporting import plots

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

    from pipeline.search import space

    params = space.parse({"model": {"batch_norm": {"choice": [True, False]}}})
    values = space.values_for(params, kt.HyperParameters())
    assert values["model.batch_norm"] is True  # not 1, which would also compare equal


def test_every_layers_units_are_in_the_space_before_a_trial_reaches_them() -> None:
    import keras_tuner as kt

    from pipeline.search import space

    params = space.parse(
        {"model": {"hidden_units": {"layers": [1, 3], "units": [16, 64], "step": 16}}}
    )
    hp = kt.HyperParameters()
    # One layer at first, yet the oracle is told of all three layers' units: declared only once
    # a trial reached them, the draws after that trial varied between processes.
    assert space.values_for(params, hp) == {"model.hidden_units": [16]}
    assert {p.name for p in hp.space} >= {f"model.hidden_units.{i}" for i in range(3)}
    hp.values["model.hidden_units.layers"] = 2
    hp.ensure_active_values()  # as the oracle does for a trial
    assert len(space.values_for(params, hp)["model.hidden_units"]) == 2


def test_a_search_stopped_after_its_last_trial_resumes_without_running_it_again(
    run_stage, circles_split: Path, project: Path
) -> None:
    """Keras Tuner saves a trial's end before it takes the trial off its running list: a chief
    killed after its last trial (drawing its figures) reloaded that trial as cut short and ran
    it a second time (seen in benchmarks/stress_interrupts.py)."""
    run_stage("tune", *TINY_SEARCH)
    folder = project / "models/circles/search"
    # The search's folder as such a kill leaves it: its last trial saved ended, and still
    # listed as running; the search not finished.
    oracle_file = folder / "keras_tuner/oracle.json"
    oracle = json.loads(oracle_file.read_text())
    oracle_file.write_text(json.dumps({**oracle, "ongoing_trials": {"tuner0": "2"}}))
    state = json.loads((folder / "state.json").read_text())
    (folder / "state.json").write_text(json.dumps({**state, "finished": False}))

    again = run_stage("tune", *TINY_SEARCH)
    assert "resuming the search" in again.stdout
    _, trials = runs_by_stage(project)
    assert [(r.data.tags["trial_id"], r.info.status) for r in trials] == [
        ("0", "FINISHED"),
        ("1", "FINISHED"),
        ("2", "FINISHED"),
    ]
