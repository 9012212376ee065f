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
(pipeline/search/chief.py, worker.py); the search, its run and its outputs are the same.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import RunStatus
from omegaconf import DictConfig, OmegaConf

from pipeline import models, tracking
from pipeline.core import config
from pipeline.core.cli import stage
from pipeline.core.errors import ConfigError, TrainingError
from pipeline.core.files import write_json, writing
from pipeline.data.checks import require_per_class
from pipeline.data.splits import load_split
from pipeline.search import space
from pipeline.search.chief import LocalWorkers, OracleServer, serve
from pipeline.search.results import write_results
from pipeline.search.state import (
    KEPT_FOLDER,
    SEARCH_READS,
    STATE_FILE,
    can_resume,
    end_running_trial_runs,
    identity_tags,
    read_state,
    restore_outputs,
    save_outputs,
    search_identity,
    supersede,
    why_anew,
)
from pipeline.search.tuning import Setup, make_tuner, search
from pipeline.search.worker import LOOPBACK, ORACLE_IP, ORACLE_PORT, role, search_run, watch_chief

log = logging.getLogger(__name__)


@stage("config", reads=(*SEARCH_READS, "tracking", "paths"))
def main(cfg: DictConfig) -> None:
    settings: config.Config = config.load(cfg)
    params = space.parse(settings.search_space)
    if not params:
        raise ConfigError("search_space is empty; pick one, e.g. search_space=mlp")
    if not models.is_keras(settings.model):
        raise ConfigError("tune searches Keras models; model.family=sklearn_logreg has no search")
    space.check(params, cfg)
    part = role(settings.tuner.workers)
    # Bound before any work: a port in use stops the search with one line.
    server = {
        "single": lambda: None,
        "worker": lambda: None,
        "local": lambda: OracleServer(LOOPBACK, 0),
        "chief": lambda: OracleServer(os.environ[ORACLE_IP], int(os.environ[ORACLE_PORT])),
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
    if settings.tuner.cv_folds:  # the trials' folds are cut from the training and validation parts
        k = settings.tuner.cv_folds
        y = np.concatenate([data.y_train, data.y_val])
        require_per_class(y, data.class_names, k, f"{k}-fold trials (tuner.cv_folds)")
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
        LocalWorkers(workers, server.port if server else 0, folder) as local,
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
                    tuner = search(Setup(settings, cfg, params, data, folder), resume=resume)
                else:
                    tuner = make_tuner(Setup(settings, cfg, params, data, folder), resume)
                    timeout = settings.tuner.worker_timeout_s
                    serve(tuner, server, local, parent_id, timeout)
        except RuntimeError as error:  # Keras Tuner's "too many consecutive failures"
            raise TrainingError(f"the search stopped: {str(error).splitlines()[0]}") from None

        best_yaml = write_results(tuner, settings, params, data, parent_id, outputs)
        save_outputs(outputs, folder / KEPT_FOLDER)
    # Only once its run has ended FINISHED: a search killed before that resumes instead.
    write_json(folder / STATE_FILE, {**state, "finished": True})
    log.info("the search's pick:\n%s", best_yaml)


def work(
    settings: config.Config,
    cfg: DictConfig,
    params: list,
    identity: dict[str, Any],
    folder: Path,
) -> None:
    """A worker: run the chief's trials into its search run; the chief writes the outputs."""
    watch_chief()
    tracking.use_experiment(
        settings.dataset.name, settings.tracking.uri, settings.tracking.experiment_prefix
    )
    parent_id = search_run(identity_tags(identity), folder / STATE_FILE)
    data = load_split(settings.paths.read.split_file(settings.dataset.name))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        # resume: never wipe the folder, which a chief on this machine shares.
        search(Setup(settings, cfg, params, data, folder), resume=True, parent_run_id=parent_id)
    except KeyboardInterrupt:  # stopped by its chief (SIGTERM) or Ctrl-C
        tracking.end_open_runs(None, RunStatus.KILLED, "interrupted: the worker was stopped")
        raise
    except RuntimeError as error:  # Keras Tuner's "too many consecutive failures"
        raise TrainingError(f"the search stopped: {str(error).splitlines()[0]}") from None


if __name__ == "__main__":
    main()
