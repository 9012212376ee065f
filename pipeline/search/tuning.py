"""The Keras Tuner search: its tuner, whose trials are MLflow runs nested under the search's.

Each trial builds its model from the config with the trial's values, trains it on the same
batches as the final training would (or on k folds), and is scored on the validation part only.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from omegaconf import DictConfig
from sklearn.model_selection import StratifiedKFold, train_test_split

from pipeline import models, tracking
from pipeline.core import backend, config, interrupts, timings
from pipeline.core.errors import OutputError, unreadable
from pipeline.data.splits import Split
from pipeline.models.fitting import batches
from pipeline.search import space
from pipeline.search.worker import TUNER_ID, Worker, role
from pipeline.tracking import tensorboard

TUNER_FOLDER = "keras_tuner"  # in the search folder: Keras Tuner's project


def budget_subset(data: Split, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The stratified, seeded part of the training data a search trains on."""
    if fraction >= 1:
        return data.x_train, data.y_train
    x, _, y, _ = train_test_split(
        data.x_train, data.y_train, train_size=fraction, stratify=data.y_train, random_state=seed
    )
    return x, y


def trials_board(settings: config.Config, parent_run_id: str | None) -> Path | None:
    """The folder of the TensorBoard logs of the trials of search run `parent_run_id` (None:
    the active run), a folder per trial; None unless tracking.trial_tensorboard is on."""
    if not settings.tracking.trial_tensorboard:
        return None
    search_run = parent_run_id or mlflow.active_run().info.run_id
    return (
        tensorboard.root(settings.tracking.tensorboard_dir)
        / settings.dataset.name
        / (f"search/{search_run}")
    )


@dataclass(frozen=True)
class Setup:
    """What a search is run on: its config (checked, and as composed), its space, its data
    and its folder."""

    settings: config.Config
    cfg: DictConfig
    params: list
    data: Split
    folder: Path

    def unpacked(self) -> tuple[config.Config, DictConfig, list, Split, Path]:
        return self.settings, self.cfg, self.params, self.data, self.folder


def make_tuner(
    setup: Setup, resume: bool, track: bool = True, parent_run_id: str | None = None
) -> Any:
    """A Keras Tuner tuner of the configured algorithm; with `track`, its trials are MLflow
    runs nested under run `parent_run_id` (None: the active run), tagged with the worker that
    ran them."""
    import keras_tuner as kt

    settings, cfg, params, data, folder = setup.unpacked()

    # The same input scaling as the final model's, fitted on the whole training part.
    inputs = models.inputs_of(data.x_train, settings.dataset.standardize, data.features)
    backend_tags = backend.tags()
    trial_metrics_every = settings.tracking.sampling(of_trials=True)

    class FolderFailure(OutputError, kt.errors.FatalError):
        """A write failure in the search folder: it ends the search, not only the trial."""

    def trial_settings(hp: Any) -> config.Config:
        return config.load(space.apply(cfg, space.values_for(params, hp)))

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
                    with timings.computing(), interrupts.cooperative():
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

    board = trials_board(settings, parent_run_id) if track else None

    class TrialRuns:
        """Mixed into the tuner: each trial is an MLflow run nested under the search's run,
        with its TensorBoard logs attached."""

        def _configure_tensorboard_dir(self, callbacks: list, trial: Any, execution: int = 0):
            import keras

            super()._configure_tensorboard_dir(callbacks, trial, execution)
            # Keras Tuner gives each trial its own folder (and HParams) on TensorFlow only:
            # elsewhere every trial would write over one folder.
            if keras.backend.backend() != "tensorflow":
                for callback in callbacks:
                    if type(callback).__name__ == "TensorBoard":
                        callback.log_dir = self._get_tensorboard_dir(
                            callback.log_dir, trial.trial_id, execution
                        )

        def on_trial_begin(self, trial: Any) -> None:
            with interrupts.deferred():  # a trial started is a trial run started
                super().on_trial_begin(trial)
                values = space.values_for(params, trial.hyperparameters.copy())
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
                if board is not None:
                    tensorboard.attach(board / trial.trial_id, mlflow.active_run().info.run_id)
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
    part = role(tuner_cfg.workers)
    mixins = (Worker,) * (part == "worker") + (TrialRuns,) * track
    tuner_class = type(f"Tracked{base.__name__}", (*mixins, base), {}) if mixins else base
    project = folder / TUNER_FOLDER
    tuner_id = os.environ.get(TUNER_ID, "tuner0")  # as Keras Tuner names it
    # Keras Tuner reloads its oracle only from the state file of the same tuner id: a chief
    # resuming a search run by one process (or the other way round) would start afresh.
    reload_oracle = (
        resume
        and part != "worker"
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
    if resume and part != "worker":
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


def search(setup: Setup, resume: bool, track: bool = True, parent_run_id: str | None = None) -> Any:
    """Run (or resume) the search on the budgeted training data; returns the tuner. In a
    worker, run trials until the chief's oracle has none left."""
    import keras
    import keras_tuner as kt

    settings, data = setup.settings, setup.data
    tuner = make_tuner(setup, resume, track, parent_run_id)
    callbacks = [tracking.keras_callback(model_summary=False)] if track else []
    board = trials_board(settings, parent_run_id) if track else None
    if board is not None:  # Keras Tuner makes each trial's folder inside it
        callbacks.append(tensorboard.callback(board))
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
    callbacks.append(interrupts.keras_callback())  # where Ctrl-C stops a trial
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
