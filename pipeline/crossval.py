"""Stage crossval: k-fold accuracy of a trained model's configuration, for the small data sets
where one test split of a few dozen samples says little.

    python -m pipeline.crossval experiment=circles/tuned

Refits the configuration k times (stratified folds over all of the task's samples) and writes
reports/<task>/<variant>/crossval.json. Each fold is trained the way the final model was: where
training reads a validation part (early stopping, halving the learning rate), on its training
folds less a validation slice of the same share as the task's validation part, early stopping
on that slice; otherwise on all of its training folds. The held-out fold is seen only when it
is scored. The hyperparameters were chosen without the test part; this only measures how well
the chosen configuration does, as the tutorials' `cross_val_score` did.
"""

from __future__ import annotations

import logging

import numpy as np
from omegaconf import DictConfig
from sklearn.model_selection import StratifiedKFold, train_test_split

from pipeline import models, tracking
from pipeline.core import config
from pipeline.core.cli import stage
from pipeline.core.files import write_json
from pipeline.data.checks import require_per_class
from pipeline.data.splits import Split, load_split

log = logging.getLogger(__name__)


def fold_accuracies(settings: config.Config, data: Split) -> list[float]:
    x = np.concatenate([data.x_train, data.x_val, data.x_test])
    y = np.concatenate([data.y_train, data.y_val, data.y_test])
    seed, k = settings.train.seed, settings.train.cv_folds
    require_per_class(y, data.class_names, k, f"{k}-fold cross-validation (train.cv_folds)")
    folds = StratifiedKFold(k, shuffle=True, random_state=seed)
    val_share = len(data.y_val) / (len(data.y_train) + len(data.y_val))
    accuracies = []
    for train, held_out in folds.split(x, y):
        if settings.train.reads_validation:
            fit_part, val_part = train_test_split(
                train, test_size=val_share, stratify=y[train], random_state=seed
            )
        else:  # nothing to stop early on: the fold's whole training part is for fitting
            fit_part, val_part = train, train[:0]
        fold = Split(
            x[fit_part], y[fit_part], x[val_part], y[val_part],
            x[held_out], y[held_out], data.class_names,
        )  # fmt: skip
        fitted = models.fit(settings, fold, [])
        accuracies.append(models.accuracy(fitted.net, x[held_out], y[held_out]))
    return accuracies


@stage("config", reads=("backend", "dataset", "model", "train", "variant", "tracking", "paths"))
def main(cfg: DictConfig) -> None:
    settings: config.Config = config.load(models.with_hparams(cfg))
    task, variant = settings.dataset.name, settings.variant
    model_dir = settings.paths.read.model_dir(task, variant)
    trained = models.read_run(model_dir)
    tracking.use_experiment(task, settings.tracking.uri, settings.tracking.experiment_prefix)
    tracking.require_run(trained["run_id"], model_dir / models.RUN_FILE)
    data = load_split(settings.paths.read.split_file(task))
    accuracies = fold_accuracies(settings, data)
    result = {
        "cv_accuracy_mean": float(np.mean(accuracies)),
        "cv_accuracy_std": float(np.std(accuracies)),
        "cv_folds": len(accuracies),
    }
    # Added to the train run by id, not reopened: its status and end time stay train's.
    tracking.add_to_run(
        trained["run_id"],
        {k: v for k, v in result.items() if k != "cv_folds"},
        {"crossvalidated": "true"},
    )
    write_json(
        settings.paths.write.report_dir(task, variant) / "crossval.json",
        {**result, "cv_accuracies": accuracies},
    )
    log.info(
        "%s: %d-fold accuracy %.4f +- %.4f",
        settings.run_name,
        len(accuracies),
        result["cv_accuracy_mean"],
        result["cv_accuracy_std"],
    )


if __name__ == "__main__":
    main()
