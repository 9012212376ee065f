"""Stage evaluate: score one trained model on its task's test part, the first time it is read.

    python -m pipeline.evaluate experiment=mnist/baseline

Reads models/<task>/<variant>/ and data/split/<task>.npz; writes reports/<task>/<variant>/:
metrics.json (DVC metrics), confusion.csv and learning_curve.csv (DVC plots), and figures/
(classification report, PNGs). All of it also goes to the train stage's MLflow run.
"""

from __future__ import annotations

import json
import logging

import mlflow
import numpy as np
import pandas as pd
from omegaconf import DictConfig
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    log_loss,
    precision_recall_fscore_support,
)

from pipeline import models, tracking
from pipeline.core import config
from pipeline.core.cli import stage
from pipeline.core.files import atomic_output, write_json
from pipeline.data.splits import load_split
from pipeline.reporting import plots

log = logging.getLogger(__name__)


def test_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """The headline numbers, under the same keys in metrics.json and in MLflow."""
    y_pred = probs.argmax(axis=1)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, average="macro", zero_division=0
    )
    return {
        "test_accuracy": float(accuracy_score(y_true, y_pred)),
        "test_loss": float(log_loss(y_true, probs, labels=np.arange(probs.shape[1]))),
        "test_precision_macro": float(precision),
        "test_recall_macro": float(recall),
        "test_f1_macro": float(f1),
    }


@stage("config", reads=("backend", "dataset", "variant", "tracking", "paths"))
def main(cfg: DictConfig) -> None:
    settings: config.Config = config.load(cfg)
    task, variant = settings.dataset.name, settings.variant
    model_dir = settings.paths.read.model_dir(task, variant)
    trained = models.read_run(model_dir)
    tracking.use_experiment(task, settings.tracking.uri, settings.tracking.experiment_prefix)
    tracking.require_run(trained["run_id"], model_dir / models.RUN_FILE)
    split_file = settings.paths.read.split_file(task)
    data = load_split(split_file)
    # A custom model's layers, before it is read: its module as train recorded it, so that
    # evaluate reads no model config (the module file is a dep of its own).
    models.import_module_of(trained.get("build"))
    net = models.load(model_dir)

    # The validation score of the model as saved (early stopping may have restored an earlier
    # epoch than the last one logged): what the report picks the model to register by.
    val_accuracy = models.accuracy(net, data.x_val, data.y_val)
    probs = models.predict_proba(net, data.x_test)
    y_pred = probs.argmax(axis=1)
    metrics = test_metrics(data.y_test, probs)
    report = classification_report(data.y_test, y_pred, target_names=data.class_names, digits=4)
    names = np.array(data.class_names)
    confusion = pd.DataFrame({"actual": names[data.y_test], "predicted": names[y_pred]})
    history = models.read_history(
        model_dir / models.HISTORY_FILE,
        models.stage_of("train", task, variant),
        trained.get("epochs_trained"),
    )

    out = settings.paths.write.report_dir(task, variant)
    title = f"{settings.run_name}: test accuracy {metrics['test_accuracy']:.4f}"
    with atomic_output(out / "figures") as figures:
        figures.mkdir()
        (figures / "classification_report.txt").write_text(report)
        plots.learning_curves(
            {variant: history}, figures / "learning_curves.png", settings.run_name
        )
        plots.confusion_matrix(
            data.y_test, y_pred, data.class_names, figures / "confusion_matrix.png", title
        )
        # Added to the train run by id, not reopened: its status and end time stay train's,
        # and an evaluate that fails or is killed here leaves it as train left it. The tag
        # comes last, with the metrics, so that it is never there without them.
        run_id = trained["run_id"]
        with tracking.store_errors():  # an artifact the store refuses is the store's failure
            mlflow.MlflowClient().log_artifacts(run_id, str(figures), "evaluation")
        tracking.log_split(run_id, split_file, data, parts=("test",))
        tracking.add_to_run(
            run_id, {**metrics, "final_val_accuracy": val_accuracy}, {"evaluated": "true"}
        )
        with atomic_output(out / "confusion.csv") as tmp:
            confusion.to_csv(tmp, index=False)
        with atomic_output(out / "learning_curve.csv") as tmp:
            history.to_csv(tmp, index=False)
        write_json(out / "metrics.json", {**metrics, "n_test": len(data.y_test)})
    log.info("%s\n%s", json.dumps(metrics, indent=2), report)


if __name__ == "__main__":
    main()
