"""Stage tune: a Keras Tuner search over conf/search_space/, every trial a nested MLflow run.

    python -m pipeline.tune experiment=mnist/tuned
    python -m pipeline.tune experiment=circles/tuned tuner=random tuner.max_trials=20

Reads data/split/<task>.npz (training and validation parts only: the objective is measured on
validation; the test part stays unseen until `evaluate`). Writes models/<task>/best_hparams.yaml,
which `train` reads for the tuned model, and reports/<task>/search/ (all trials as CSV, plots).
models/<task>/search/ keeps the tuner's state: a search killed part way resumes from it,
without redoing finished trials. A search is known by its identity (the config it reads, the
data, the code of its models); another identity starts a new search and MLflow run, while a
finished search run again writes its kept outputs anew, searching nothing. A state that cannot
be read (cut short by a full disk, or not written by this stage) starts a new search too, as no
state does (`read_state`).

With tuner.workers=N, N processes run the trials, served by an oracle in this one
(pipeline/distributed.py); the search, its run and its outputs are the same.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import yaml
from mlflow.entities import RunStatus
from omegaconf import DictConfig, OmegaConf
from sklearn.model_selection import StratifiedKFold, train_test_split

from pipeline import (
    backend,
    config,
    datasets,
    distributed,
    interrupts,
    models,
    plots,
    search_space,
    selection,
    tracking,
)
from pipeline.cli import stage
from pipeline.datasets import Split, batches, load_split
from pipeline.errors import DAMAGED, ConfigError, OutputError, TrainingError, unreadable
from pipeline.files import atomic_output, sealed, sha256_of, write_json, write_text, writing

log = logging.getLogger(__name__)

# The config a search reads, all of which is part of its identity. Of `train`, only what every
# trial trains with: not the final training's epochs, stopping or hyperparameters file.
SEARCH_READS = (
    "backend", "dataset", "model", "tuner", "search_space",
    "train.batch_size", "train.lr_schedule",
)  # fmt: skip
STATE_FILE = "state.json"  # in the search folder: the search's identity, MLflow run, progress
KEPT_FOLDER = "outputs"  # in the search folder: copies of a finished search's outputs
TUNER_FOLDER = "keras_tuner"  # in the search folder: Keras Tuner's project
UNREADABLE = "unreadable"  # read_state's key for why a state could not be read


def budget_subset(data: Split, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The stratified, seeded part of the training data a search trains on."""
    if fraction >= 1:
        return data.x_train, data.y_train
    x, _, y, _ = train_test_split(
        data.x_train, data.y_train, train_size=fraction, stratify=data.y_train, random_state=seed
    )
    return x, y


def make_tuner(
    settings: config.Config,
    cfg: DictConfig,
    params: list,
    data: Split,
    folder: Path,
    resume: bool,
    track: bool = True,
    parent_run_id: str | None = None,
) -> Any:
    """A Keras Tuner tuner of the configured algorithm; with `track`, its trials are MLflow
    runs nested under run `parent_run_id` (None: the active run), tagged with the worker that
    ran them."""
    import keras_tuner as kt

    # The same input scaling as the final model's, fitted on the whole training part.
    inputs = models.inputs_of(data.x_train, settings.dataset.standardize)
    backend_tags = backend.tags()
    trial_metrics_every = settings.tracking.sampling(of_trials=True)

    class FolderFailure(OutputError, kt.errors.FatalError):
        """A write failure in the search folder: it ends the search, not only the trial."""

    def trial_settings(hp: Any) -> config.Config:
        return config.load(search_space.apply(cfg, search_space.values_for(params, hp)))

    class SearchModel(kt.HyperModel):
        def build(self, hp: Any) -> Any:
            trial = trial_settings(hp)
            backend.seed(settings.tuner.seed)  # every trial starts alike
            net = models.build_keras(trial.model, inputs, data.n_classes)
            # How Keras Tuner saves the trial's checkpoints: a full disk is then one line.
            net.save_weights = functools.partial(models.save_weights, net)
            return net

        def fit(
            self, hp: Any, model: Any, x: Any, y: Any, validation_data: Any = None, **kwargs: Any
        ) -> Any:
            trial = trial_settings(hp)
            batch_size, seed = trial.train.batch_size, settings.tuner.seed
            schedule = models.learning_rate_schedule(
                trial.train.lr_schedule, trial.model.optimizer.lr, kwargs["epochs"]
            )
            kwargs["callbacks"] = schedule + kwargs["callbacks"]

            def fit_on(net: Any, fit_x: Any, fit_y: Any, held_out: tuple) -> Any:
                epochs = kwargs["epochs"] - kwargs.get("initial_epoch", 0)
                try:
                    return net.fit(
                        **batches(fit_x, fit_y, batch_size, seed, epochs),
                        validation_data=batches(*held_out, batch_size)["x"],
                        shuffle=False,  # batches() shuffles
                        **kwargs,
                    )
                except OutputError as error:  # a checkpoint that could not be written
                    # Keras Tuner would take it for a bad trial and go on to the next, which a
                    # full or read-only folder fails alike.
                    raise FolderFailure(str(error)) from error

            if validation_data is not None:
                histories = [fit_on(model, x, y, validation_data)]
            else:  # k-fold: a model per fold, each built alike; Keras Tuner scores their mean
                folds = StratifiedKFold(settings.tuner.cv_folds, shuffle=True, random_state=seed)
                histories = [
                    fit_on(model if i == 0 else self.build(hp), x[part], y[part], (x[out], y[out]))
                    for i, (part, out) in enumerate(folds.split(x, y))
                ]
            if settings.tuner.early_stopping_patience is None:
                # Scored as the final model is kept, after its last epoch. Keras Tuner would
                # take the best epoch, picked on the very data that scores it: on small data
                # that flatters whatever overfits.
                return [{key: values[-1] for key, values in h.history.items()} for h in histories]
            return histories

    class TrialRuns:
        """Mixed into the tuner: each trial is an MLflow run nested under the search's run."""

        def on_trial_begin(self, trial: Any) -> None:
            with interrupts.deferred():  # a trial started is a trial run started
                super().on_trial_begin(trial)
                values = search_space.values_for(params, trial.hyperparameters.copy())
                hyperband = {
                    f"trial.{key.split('/')[1]}": value
                    for key, value in trial.hyperparameters.values.items()
                    if key.startswith("tuner/")
                }
                mlflow.start_run(
                    run_name=f"{settings.dataset.name}/trial-{trial.trial_id}",
                    nested=True,
                    parent_run_id=parent_run_id,
                    tags={
                        "task": settings.dataset.name,
                        "stage": "tune_trial",
                        "trial_id": trial.trial_id,
                        "worker": self.tuner_id,
                        **backend_tags,
                        **tracking.owner_tags(),
                    },
                    log_system_metrics=tracking.system_metrics(trial_metrics_every),
                )
                mlflow.log_params({**values, **hyperband})

        def on_trial_end(self, trial: Any) -> None:
            # Scored by the oracle and its run ended, or neither: a resumed search runs again
            # exactly the trials whose runs did not finish.
            with interrupts.deferred():
                super().on_trial_end(trial)  # the oracle scores the trial here
                # A worker's oracle is the chief's: only its copy of the trial is scored.
                scored = self.oracle.get_trial(trial.trial_id)
                if scored.status == "COMPLETED" and scored.score is not None:
                    scores = {"score": scored.score}
                    if settings.tuner.early_stopping_patience is not None:  # else the last epoch
                        scores["best_step"] = scored.best_step
                    mlflow.log_metrics(scores)
                    mlflow.end_run()
                else:
                    reason = (trial.message or "trial failed").strip().splitlines()[-1]
                    mlflow.set_tag("failure_reason", reason[:5000])
                    mlflow.end_run("FAILED")

    tuner_cfg = settings.tuner
    algorithms = {
        config.Algorithm.hyperband: (
            kt.Hyperband,
            {
                "max_epochs": tuner_cfg.max_epochs,
                "factor": tuner_cfg.factor,
                "hyperband_iterations": tuner_cfg.hyperband_iterations,
            },
        ),
        config.Algorithm.random: (kt.RandomSearch, {"max_trials": tuner_cfg.max_trials}),
        config.Algorithm.bayesian: (kt.BayesianOptimization, {"max_trials": tuner_cfg.max_trials}),
    }
    base, options = algorithms[tuner_cfg.algorithm]
    role = distributed.role(tuner_cfg.workers)
    mixins = (distributed.Worker,) * (role == "worker") + (TrialRuns,) * track
    tuner_class = type(f"Tracked{base.__name__}", (*mixins, base), {}) if mixins else base
    project = folder / TUNER_FOLDER
    tuner_id = os.environ.get(distributed.TUNER_ID, "tuner0")  # as Keras Tuner names it
    # Keras Tuner reloads its oracle only from the state file of the same tuner id: a chief
    # resuming a search run by one process (or the other way round) would start afresh.
    reload_oracle = (
        resume
        and role != "worker"
        and (project / "oracle.json").exists()
        and not (project / f"{tuner_id}.json").exists()
    )
    try:
        tuner = tuner_class(
            hypermodel=SearchModel(),
            objective=kt.Objective(tuner_cfg.objective, direction=tuner_cfg.direction),
            seed=tuner_cfg.seed,
            directory=str(folder),
            project_name=TUNER_FOLDER,
            overwrite=not resume,
            **options,
        )
        if reload_oracle:
            tuner.oracle.reload()
    # JSON that parses (`unreadable_tuner_file` let it through) but is not Keras Tuner's state:
    # not written by this stage, so it is left for the user to look at.
    except (KeyError, ValueError, TypeError, RuntimeError):
        if not resume:
            raise
        fix = f"delete {folder} to start the search anew"
        raise unreadable(project, "the state of a Keras Tuner search", fix) from None
    if resume and role != "worker":
        # Keras Tuner saves a trial's end before it takes the trial off its list of running
        # ones, so a search stopped right after a trial ended reloaded that trial as cut short
        # and ran it again.
        oracle = tuner.oracle
        oracle._retry_queue = [
            trial_id
            for trial_id in oracle._retry_queue
            if oracle.trials[trial_id].status not in ("COMPLETED", "FAILED")
        ]
    return tuner


def search(
    settings: config.Config,
    cfg: DictConfig,
    params: list,
    data: Split,
    folder: Path,
    resume: bool,
    track: bool = True,
    parent_run_id: str | None = None,
) -> Any:
    """Run (or resume) the search on the budgeted training data; returns the tuner. In a
    worker, run trials until the chief's oracle has none left."""
    import keras
    import keras_tuner as kt

    tuner = make_tuner(settings, cfg, params, data, folder, resume, track, parent_run_id)
    callbacks = [tracking.keras_callback(model_summary=False)] if track else []
    if settings.tuner.early_stopping_patience is not None:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=settings.tuner.objective,
                mode=settings.tuner.direction,
                patience=settings.tuner.early_stopping_patience,
            )
        )
    # A diverged trial ends FAILED; Keras' TerminateOnNaN alone would let it be scored.
    callbacks.append(models.nan_guard(kt.errors.FailedTrialError))
    x, y = budget_subset(data, settings.tuner.train_fraction, settings.tuner.seed)
    validation = (data.x_val, data.y_val)
    if settings.tuner.cv_folds:  # SearchModel.fit cuts the folds from both parts together
        x, y = np.concatenate([x, data.x_val]), np.concatenate([y, data.y_val])
        validation = None
    tuner.search(
        x,
        y,
        validation_data=validation,
        epochs=settings.tuner.max_epochs,
        callbacks=callbacks,
        verbose=2,
    )
    return tuner


def trials_table(tuner: Any, params: list, parent_run_id: str) -> pd.DataFrame:
    """One row per trial: id, status, score, its model's parameter count, its MLflow run and
    its config values."""
    children = mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        order_by=["start_time ASC"],
    )
    run_ids = dict(zip(children.get("tags.trial_id", []), children.get("run_id", []), strict=False))
    rows = []
    for trial_id in sorted(tuner.oracle.trials):
        trial = tuner.oracle.trials[trial_id]
        values = search_space.values_for(params, trial.hyperparameters.copy())
        rows.append(
            {
                "trial_id": trial_id,
                "status": trial.status,
                "score": trial.score,
                # What a tie is broken by; counted on the model as built, untrained.
                "param_count": (
                    tuner.hypermodel.build(trial.hyperparameters.copy()).count_params()
                    if trial.status == "COMPLETED"
                    else None
                ),
                "mlflow_run_id": run_ids.get(trial_id),
                **{k: str(v) if isinstance(v, list) else v for k, v in values.items()},
            }
        )
    return pd.DataFrame(rows)


def y_scoring(settings: config.Config, data: Split) -> np.ndarray:
    """The labels each trial's score is measured on: the validation part, or with k folds
    every sample of the training budget and validation part, each held out once."""
    if settings.tuner.cv_folds:
        _, y = budget_subset(data, settings.tuner.train_fraction, settings.tuner.seed)
        return np.concatenate([y, data.y_val])
    return data.y_val


def choose(trials: pd.DataFrame, settings: config.Config, scored_by: int) -> selection.Pick:
    """The trial the search picks (selection.TRIAL_RULE): of its scored trials, those within the tie
    tolerance of the best score tie, and the fewest parameters, then the earliest trial, win.
    The tolerance is tuner.tie_tolerance, else one standard error of an accuracy measured on
    `scored_by` samples (none for other objectives)."""
    scored = trials[(trials["status"] == "COMPLETED") & trials["score"].notna()]
    if scored.empty:
        raise TrainingError(
            "no trial finished; see the FAILED trial runs' failure_reason in MLflow"
        )
    tuner_cfg = settings.tuner
    tolerance = tuner_cfg.tie_tolerance
    if tolerance is None:
        best = scored["score"].max() if tuner_cfg.direction == "max" else scored["score"].min()
        accuracy = tuner_cfg.objective.endswith("accuracy")
        tolerance = selection.standard_error(best, scored_by) if accuracy else 0.0
    ordered = scored.assign(trial_number=scored["trial_id"].astype(int))
    return selection.pick(
        ordered, "score", tuner_cfg.direction, tolerance, ["param_count", "trial_number"]
    )


def search_code() -> list[Path]:
    """The source files of the code that builds, trains and scores a search's models (plots
    and MLflow logging only describe them)."""
    modules = [
        models,
        search_space,
        selection,
        datasets,
        config,
        sys.modules.get("pipeline.training"),
    ]
    return [Path(__file__), *(Path(m.__file__) for m in modules if m is not None)]


def search_identity(cfg: DictConfig, split_file: Path) -> dict[str, Any]:
    """What decides a search's trials and their scores: the config it reads, the data and the
    code, each as sha256 (the code per file, so that a log can say which one changed), and
    `digest`, of them all. A search folder or MLflow run of another identity is another search."""
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)

    def value_at(key: str) -> Any:
        node = resolved
        for part in key.split("."):
            node = node[part]
        return node

    searched = {key: value_at(key) for key in SEARCH_READS}
    for how in ("workers", "worker_timeout_s"):  # how trials are run changes none of them
        searched["tuner"].pop(how, None)
    parts: dict[str, Any] = {
        "config": hashlib.sha256(json.dumps(searched, sort_keys=True).encode()).hexdigest(),
        "data": sha256_of(split_file),
        "code": {path.name: sha256_of(path) for path in search_code()},
    }
    parts["digest"] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return parts


def code_digest(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity["code"], sort_keys=True).encode()).hexdigest()


def identity_tags(identity: dict[str, Any]) -> dict[str, str]:
    """A search run's identity tags: what its workers compare theirs with."""
    return {
        "search_identity": identity["digest"],
        "search_identity.config": identity["config"],
        "search_identity.data": identity["data"],
        "search_identity.code": code_digest(identity),
    }


def why_anew(state: dict[str, Any], identity: dict[str, Any], folder: Path) -> str:
    """Why the search in a folder's state is not carried on, in words for the log and MLflow."""
    if UNREADABLE in state:
        return state[UNREADABLE]
    old = state.get("identity", {})
    if not old:
        return "its state records no identity"
    if old["digest"] == identity["digest"]:
        if state.get("finished"):
            return "the finished search's kept outputs are missing"
        broken = unreadable_tuner_file(folder)
        if broken is not None:
            return f"its tuner state {broken} is unreadable ({DAMAGED})"
        return "the interrupted search left no tuner state to resume"
    changes = [part for part in ("config", "data") if old.get(part) != identity[part]]
    old_code, code = old.get("code", {}), identity["code"]
    files = sorted(name for name in {*old_code, *code} if old_code.get(name) != code.get(name))
    if files:
        changes.append(f"code ({', '.join(files)})")
    return f"its {', '.join(changes)} changed"


def read_state(folder: Path) -> dict[str, Any]:
    """The state of the search in `folder`: {} if there is none.

    One that cannot be read (cut short, or not a state this stage wrote) is taken for none, so
    the search starts anew, as a user deleting the folder would have it do: the folder serves
    only to resume its search, and no search can be resumed from a state that cannot be read.
    The state is {UNREADABLE: why} then, for the log. The same goes for Keras Tuner's own
    files there (`unreadable_tuner_file`), which it writes in place: a full disk cuts them short.
    """
    state_file = folder / STATE_FILE
    if not state_file.exists():
        return {}
    try:
        state = json.loads(state_file.read_text())
    except ValueError:  # not JSON, or not text
        state = None
    if (
        not isinstance(state, dict)
        or not isinstance(state.get("identity"), dict)
        or not isinstance(state["identity"].get("digest"), str)
        or not isinstance(state.get("parent_run_id"), str)
    ):
        return {UNREADABLE: f"{state_file} is unreadable ({DAMAGED})"}
    return state


def unreadable_tuner_file(folder: Path) -> Path | None:
    """The first of Keras Tuner's state files in search folder `folder` that is not JSON."""
    for path in sorted((folder / TUNER_FOLDER).rglob("*.json")):
        try:
            json.loads(path.read_text())
        except ValueError:
            return path
    return None


def can_resume(state: dict[str, Any], identity: dict[str, Any], folder: Path) -> bool:
    """Whether the folder holds an unfinished search of this identity that Keras Tuner can
    reload (it may have been killed before its first trial was saved)."""
    return (
        state.get("identity", {}).get("digest") == identity["digest"]
        and not state.get("finished")
        and (folder / TUNER_FOLDER / "oracle.json").exists()
        and unreadable_tuner_file(folder) is None
    )


def save_outputs(outputs: dict[str, Path], kept: Path) -> None:
    """Keep copies of a finished search's outputs in its folder, to write them again on a rerun
    (`dvc repro -f` deletes them but keeps the folder) without searching or touching its run."""
    with atomic_output(kept) as tmp:
        tmp.mkdir()
        for name, path in outputs.items():
            copy = shutil.copytree if path.is_dir() else shutil.copyfile
            copy(path, tmp / name)


def restore_outputs(kept: Path, outputs: dict[str, Path]) -> bool:
    """Write the kept outputs of a finished search again; False if some are missing."""
    if not all((kept / name).exists() for name in outputs):
        return False
    for name, path in outputs.items():
        with atomic_output(path) as tmp:
            copy = shutil.copytree if (kept / name).is_dir() else shutil.copyfile
            copy(kept / name, tmp)
    return True


def end_running_trial_runs(parent_run_id: str, reason: str) -> None:
    """Trial runs left RUNNING by a killed search (SIGKILL runs no handler) end as KILLED."""
    client = mlflow.MlflowClient()
    stale = mlflow.search_runs(
        filter_string=(
            f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'"
        )
    )
    for run_id in stale.get("run_id", []):
        client.set_tag(run_id, "failure_reason", reason)
        client.set_terminated(run_id, "KILLED")


def supersede(old_run_id: str, new_run_id: str, why: str) -> None:
    """End what an earlier search left RUNNING: its state is wiped, so nothing will ever finish
    it. Finished, failed or killed runs keep their status."""
    reason = f"superseded by a new search (run {new_run_id}): {why}"
    client = mlflow.MlflowClient()
    try:
        old = client.get_run(old_run_id)
    except mlflow.exceptions.MlflowException:  # a search tracked in another store
        return
    end_running_trial_runs(old_run_id, reason)
    if old.info.status == "RUNNING":
        client.set_tag(old_run_id, "failure_reason", reason)
        client.set_terminated(old_run_id, "KILLED")


@stage("config", reads=(*SEARCH_READS, "tracking", "paths"))
def main(cfg: DictConfig) -> None:
    settings: config.Config = config.load(cfg)
    params = search_space.parse(settings.search_space)
    if not params:
        raise ConfigError("search_space is empty; pick one, e.g. search_space=mlp")
    if not models.is_keras(settings.model):
        raise ConfigError("tune searches Keras models; model.family=sklearn_logreg has no search")
    search_space.check(params, cfg)
    part = distributed.role(settings.tuner.workers)
    # Bound before any work: a port in use stops the search with one line.
    server = {
        "single": lambda: None,
        "worker": lambda: None,
        "local": lambda: distributed.OracleServer(distributed.LOOPBACK, 0),
        "chief": lambda: distributed.OracleServer(
            os.environ[distributed.ORACLE_IP], int(os.environ[distributed.ORACLE_PORT])
        ),
    }[part]()

    task = settings.dataset.name
    split_file = settings.paths.read.split_file(task)
    folder = settings.paths.write.search_dir(task)
    reports = settings.paths.write.report_dir(task, "search")
    outputs = {
        "best_hparams.yaml": settings.paths.write.best_hparams_file(task),
        "trials.csv": reports / "trials.csv",
        "pick.json": reports / "pick.json",
        "figures": reports / "figures",
    }
    identity = search_identity(cfg, split_file)
    if part == "worker":
        work(settings, cfg, params, identity, folder)
        return
    state = read_state(folder)
    same_search = state.get("identity", {}).get("digest") == identity["digest"]
    if same_search and state.get("finished") and restore_outputs(folder / KEPT_FOLDER, outputs):
        # Its MLflow run stays as it ended: rerunning it would only repeat the same trials.
        log.info(
            "the search is already finished (MLflow run %s); its outputs are written again",
            state["parent_run_id"],
        )
        return

    resume = can_resume(state, identity, folder)
    previous_run = state.get("parent_run_id")
    if not resume:
        why = why_anew(state, identity, folder)
        if previous_run:
            log.info("starting a new search: %s since search run %s", why, previous_run)
        elif state:
            log.warning("starting a new search: %s", why)
        # Made again with its state (or its workers' logs), which leaves no empty folder
        # behind if it cannot be written.
        shutil.rmtree(folder, ignore_errors=True)

    data = load_split(split_file)
    tracking.use_experiment(task, settings.tracking.uri, settings.tracking.experiment_prefix)
    tags = {
        "task": task,
        "variant": "search",
        **identity_tags(identity),
        **tracking.context_tags("tune", {"split": split_file}),
    }
    # Started now, their imports overlap the chief's own set-up; they wait for the oracle.
    workers = settings.tuner.workers if part == "local" else 0
    with (
        distributed.LocalWorkers(workers, server.port if server else 0, folder) as local,
        tracking.run(f"{task}/search", tags, run_id=previous_run if resume else None) as parent,
    ):
        parent_id = parent.info.run_id
        if resume:
            log.info("resuming the search of run %s from %s", parent_id, folder)
            end_running_trial_runs(parent_id, "interrupted: the search was killed")
        else:
            if previous_run:
                supersede(previous_run, parent_id, why)
            state = {"identity": identity, "parent_run_id": parent_id, "finished": False}
            write_json(folder / STATE_FILE, state)
            mlflow.log_params(
                {
                    k: v
                    for k, v in config.to_flat_dict(cfg).items()
                    if not k.startswith("search_space.")
                }
            )
            mlflow.log_text(OmegaConf.to_yaml(cfg.search_space), "search_space.yaml")
            tracking.log_split(parent_id, split_file, data)

        try:
            with writing(folder):  # Keras Tuner writes its trials' state there as they go
                if server is None:
                    tuner = search(settings, cfg, params, data, folder, resume=resume)
                else:
                    tuner = make_tuner(settings, cfg, params, data, folder, resume)
                    timeout = settings.tuner.worker_timeout_s
                    distributed.serve(tuner, server, local, parent_id, timeout)
        except RuntimeError as error:  # Keras Tuner's "too many consecutive failures"
            raise TrainingError(f"the search stopped: {str(error).splitlines()[0]}") from None

        trials = trials_table(tuner, params, parent_id)
        objective = settings.tuner.objective
        chosen = choose(trials, settings, scored_by=len(y_scoring(settings, data)))
        best = trials.loc[chosen.chosen]
        trials["tied"] = trials.index.isin(chosen.tied)
        trials["picked"] = trials.index == chosen.chosen
        best_values = search_space.values_for(
            params, tuner.oracle.trials[best["trial_id"]].hyperparameters.copy()
        )
        mlflow.log_metrics(
            {
                f"best_{objective}": best["score"],
                "trials": len(trials),
                "tie_tolerance": chosen.tolerance,
            }
        )
        mlflow.log_params({f"best.{k}": v for k, v in best_values.items()})
        tied_ids = [str(trials.loc[i, "trial_id"]) for i in chosen.tied]
        mlflow.set_tags({"best_trial_id": best["trial_id"], "tied_trials": ",".join(tied_ids)})

        scored_on = (
            f"mean of {settings.tuner.cv_folds} folds over train+validation"
            if settings.tuner.cv_folds
            else "on the validation part"
        )
        rule = selection.TRIAL_RULE.format(tol=chosen.tolerance)
        header = (
            f"# Picked of {len(trials)} trials ({settings.tuner.algorithm.value}): trial "
            f"{best['trial_id']}, {objective} {best['score']:.4f} {scored_on}, "
            f"{int(best['param_count']):,} parameters.\n# {rule}"
            f": trials {', '.join(tied_ids)}.\n# MLflow: search run {parent_id}. Written by "
            "`tune`; read by `train` (train.hparams_file).\n"
        )
        # Sealed: YAML cut short at a line end still parses, to fewer values (with_hparams).
        best_yaml = header + sealed(
            yaml.safe_dump(search_space.nested(best_values), sort_keys=True)
        )
        pick = {
            "trial_id": str(best["trial_id"]),
            "score": float(best["score"]),
            "param_count": int(best["param_count"]),
            "tied": tied_ids,
            "tie_tolerance": chosen.tolerance,
            "rule": rule,
            "trials": len(trials),
        }
        with atomic_output(outputs["figures"]) as figures:
            figures.mkdir()
            hp_columns = [p.path for p in params if p.spec]
            plots.score_by_hyperparameter(
                trials, hp_columns, objective, figures / "score_by_hyperparameter.png"
            )
            plots.best_so_far(
                trials, objective, settings.tuner.direction, figures / "best_so_far.png"
            )
            with atomic_output(outputs["trials.csv"]) as tmp:
                trials.to_csv(tmp, index=False)
            with tracking.store_errors():  # an artifact the store refuses is the store's failure
                mlflow.log_artifact(str(outputs["trials.csv"]))
                mlflow.log_artifacts(str(figures), "figures")
                mlflow.log_text(best_yaml, "best_hparams.yaml")
                mlflow.log_dict(pick, "pick.json")
            write_json(outputs["pick.json"], pick)
            write_text(outputs["best_hparams.yaml"], best_yaml)
        save_outputs(outputs, folder / KEPT_FOLDER)
    # Only once its run has ended FINISHED: a search killed before that resumes instead.
    write_json(folder / STATE_FILE, {**state, "finished": True})
    log.info("picked trial %s:\n%s", best["trial_id"], best_yaml)


def work(
    settings: config.Config,
    cfg: DictConfig,
    params: list,
    identity: dict[str, Any],
    folder: Path,
) -> None:
    """A worker: run the chief's trials into its search run; the chief writes the outputs."""
    distributed.watch_chief()
    tracking.use_experiment(
        settings.dataset.name, settings.tracking.uri, settings.tracking.experiment_prefix
    )
    parent_id = distributed.search_run(identity_tags(identity), folder / STATE_FILE)
    data = load_split(settings.paths.read.split_file(settings.dataset.name))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        # resume: never wipe the folder, which a chief on this machine shares.
        search(settings, cfg, params, data, folder, resume=True, parent_run_id=parent_id)
    except KeyboardInterrupt:  # stopped by its chief (SIGTERM) or Ctrl-C
        tracking.end_open_runs(None, RunStatus.KILLED, "interrupted: the worker was stopped")
        raise
    except RuntimeError as error:  # Keras Tuner's "too many consecutive failures"
        raise TrainingError(f"the search stopped: {str(error).splitlines()[0]}") from None


if __name__ == "__main__":
    main()
