"""What a finished search found: its trials, the one it picks (selection's rule), its outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import yaml

from pipeline import tracking
from pipeline.core import config, selection
from pipeline.core.errors import TrainingError
from pipeline.core.files import atomic_output, sealed, write_json, write_text
from pipeline.data.splits import Split
from pipeline.reporting import plots
from pipeline.search import space
from pipeline.search.tuning import budget_subset


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
        values = space.values_for(params, trial.hyperparameters.copy())
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


def write_results(
    tuner: Any,
    settings: config.Config,
    params: list,
    data: Split,
    parent_id: str,
    outputs: dict[str, Path],
) -> str:
    """Write what the finished search found to `outputs` (best_hparams.yaml, trials.csv,
    pick.json, figures) and to its MLflow run `parent_id`, the active run; returns
    best_hparams.yaml's text."""
    trials = trials_table(tuner, params, parent_id)
    objective = settings.tuner.objective
    chosen = choose(trials, settings, scored_by=len(y_scoring(settings, data)))
    best = trials.loc[chosen.chosen]
    trials["tied"] = trials.index.isin(chosen.tied)
    trials["picked"] = trials.index == chosen.chosen
    best_values = space.values_for(
        params, tuner.oracle.trials[best["trial_id"]].hyperparameters.copy()
    )
    tied_ids = [str(trials.loc[i, "trial_id"]) for i in chosen.tied]
    mlflow.log_metrics(
        {
            f"best_{objective}": best["score"],
            "trials": len(trials),
            "tie_tolerance": chosen.tolerance,
        }
    )
    mlflow.log_params({f"best.{k}": v for k, v in best_values.items()})
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
    best_yaml = header + sealed(yaml.safe_dump(space.nested(best_values), sort_keys=True))
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
        plots.best_so_far(trials, objective, settings.tuner.direction, figures / "best_so_far.png")
        with atomic_output(outputs["trials.csv"]) as tmp:
            trials.to_csv(tmp, index=False)
        with tracking.store_errors():  # an artifact the store refuses is the store's failure
            mlflow.log_artifact(str(outputs["trials.csv"]))
            mlflow.log_artifacts(str(figures), "figures")
            mlflow.log_text(best_yaml, "best_hparams.yaml")
            mlflow.log_dict(pick, "pick.json")
        write_json(outputs["pick.json"], pick)
        write_text(outputs["best_hparams.yaml"], best_yaml)
    return best_yaml
