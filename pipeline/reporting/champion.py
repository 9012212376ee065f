"""Each task's champion: the model the report registers in MLflow's model registry."""

from __future__ import annotations

import mlflow
import pandas as pd

from pipeline import tracking
from pipeline.core import selection

CHAMPION = "champion"  # the registry alias of each task's chosen model


def best_run(runs: pd.DataFrame, n_val: int) -> tuple[pd.Series, float]:
    """The task's champion and the tie tolerance it was chosen with (selection.CHAMPION_RULE).

    Small validation parts tie often (circles: 20 points, both models 0.95), and the searched
    model's configuration was chosen on more evidence (every trial, k folds where set).
    """
    scored = runs.assign(
        not_searched=runs["variant"] != "tuned",
        params=runs.get("metrics.param_count", 0),
    )
    best = scored["metrics.final_val_accuracy"].max()
    tolerance = selection.standard_error(best, n_val)
    order = ["not_searched", "params", "variant"]
    chosen = selection.pick(scored, "metrics.final_val_accuracy", "max", tolerance, order)
    return runs.loc[chosen.chosen], tolerance


@tracking.store_errors()
def register_best(name: str, best: pd.Series, tolerance: float, n_val: int) -> str:
    """Register `best` (`best_run`'s pick, chosen within `tolerance` on `n_val` validation
    samples) in the model registry as model `name` (the task's experiment's name) with the
    alias `champion`; returns a line for the report.

    A run registered before keeps its version: the report reruns whenever any of its inputs
    change, and a new version each time would number the same model many times over.
    """
    rule = selection.CHAMPION_RULE.format(tol=tolerance, n=n_val)
    client = mlflow.MlflowClient()
    registered = client.search_model_versions(f"name = '{name}' and run_id = '{best['run_id']}'")
    if registered:
        version = max(registered, key=lambda v: int(v.version))
    else:
        version = mlflow.register_model(
            f"runs:/{best['run_id']}/model",
            name=name,
            tags={
                "variant": best["variant"],
                "test_accuracy": f"{best['metrics.test_accuracy']:.6f}",
                "val_accuracy": f"{best['metrics.final_val_accuracy']:.6f}",
            },
        )
    client.set_registered_model_alias(name, CHAMPION, version.version)
    return (
        f"Registered in MLflow as model `{name}` version {version.version}, alias `{CHAMPION}`: "
        f"the {best['variant']} model (validation accuracy "
        f"{best['metrics.final_val_accuracy']:.4f}), {rule}; "
        f"load it with `mlflow.pyfunc.load_model('models:/{name}@{CHAMPION}')`."
    )
