"""Stage train: fit one model on one task's training part, every epoch recorded in MLflow.

    python -m pipeline.train experiment=mnist/baseline
    python -m pipeline.train -m dataset=circles model.optimizer.lr=0.001,0.01

Reads data/split/<task>.npz, writes models/<task>/<variant>/ (the model, its per-epoch history
and run.json, which names the MLflow run that `evaluate` completes).
"""

from __future__ import annotations

import logging

import mlflow
from omegaconf import DictConfig, OmegaConf

from pipeline import models, tracking
from pipeline.core import config
from pipeline.core.cli import stage
from pipeline.core.files import atomic_output, write_json
from pipeline.data.splits import load_split
from pipeline.tracking import tensorboard
from pipeline.tracking.logged_model import log_model

log = logging.getLogger(__name__)


@stage("config", reads=("backend", "dataset", "model", "train", "variant", "tracking", "paths"))
def main(cfg: DictConfig) -> None:
    cfg = models.with_hparams(cfg)
    settings: config.Config = config.load(cfg)
    task = settings.dataset.name
    split_file = settings.paths.read.split_file(task)
    data = load_split(split_file)
    out_dir = settings.paths.write.model_dir(task, settings.variant)

    tracking.use_experiment(task, settings.tracking.uri, settings.tracking.experiment_prefix)
    tags = {
        "task": task,
        "variant": settings.variant,
        "model_family": settings.model.family.value,
        **tracking.context_tags("train", {"split": split_file}),
    }
    every = settings.tracking.sampling()
    with tracking.run(settings.run_name, tags, system_metrics_every=every) as active:
        tracking.log_split(active.info.run_id, split_file, data)
        mlflow.log_params(config.to_flat_dict(cfg))
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        if data.label_errata_changed is not None:
            mlflow.log_param("data.label_errata_changed", data.label_errata_changed)

        # The callbacks import Keras: only for Keras models.
        keras_model = models.is_keras(settings.model)
        callbacks = [tracking.keras_callback()] if keras_model else []
        board = tensorboard.root(settings.tracking.tensorboard_dir) / task / settings.variant
        board /= active.info.run_id
        if keras_model and settings.tracking.tensorboard:
            callbacks.append(tensorboard.callback(board))
        fitted = models.fit(settings, data, callbacks)
        tensorboard.attach(board, active.info.run_id)
        if not models.is_keras(settings.model):  # no epochs: the solver's final state
            final = fitted.history.iloc[-1].to_dict()
            mlflow.log_metrics(
                {k: v for k, v in final.items() if k != "epoch"}, step=int(final["epoch"])
            )
        summary = {
            "run_id": active.info.run_id,
            "experiment_id": active.info.experiment_id,
            "param_count": models.count_params(fitted.net),
            "epochs_trained": int(fitted.history["epoch"].iloc[-1]),
            "train_seconds": round(fitted.seconds, 3),
        }
        if settings.model.build is not None:
            summary["build"] = settings.model.build  # the module evaluate imports first
        # Saved before anything else that can fail: a failed upload keeps the trained model.
        with atomic_output(out_dir) as tmp:
            tmp.mkdir()
            models.save(fitted.net, tmp)
            fitted.history.to_csv(tmp / "history.csv", index=False)
            write_json(tmp / "run.json", summary)
        mlflow.log_metrics(
            {key: summary[key] for key in ("param_count", "epochs_trained", "train_seconds")}
        )
        if settings.tracking.log_model:
            log_model(fitted.net, data, settings.model.build)
    log.info("%s: %s", out_dir, summary)


if __name__ == "__main__":
    main()
