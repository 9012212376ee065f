"""Stage train: fit one model on one task's training part, every epoch recorded in MLflow.

    python -m pipeline.train experiment=mnist/baseline
    python -m pipeline.train -m dataset=circles model.optimizer.lr=0.001,0.01

Reads data/split/<task>.npz, writes models/<task>/<variant>/ (the model, its per-epoch history
and run.json, which names the MLflow run that `evaluate` completes).
"""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace
from typing import Any

import mlflow
from omegaconf import DictConfig, OmegaConf

from pipeline import backend, config, models, tracking, training
from pipeline.cli import stage
from pipeline.datasets import Split, load_split
from pipeline.files import atomic_output, write_json

log = logging.getLogger(__name__)


def requirements(*imports: str) -> list[str]:
    """Pinned pip requirements of the distributions installed for these import names: Keras'
    backend module `tensorflow` comes from `tensorflow` or `tensorflow-cpu`, whichever is
    installed. Pinned here because letting MLflow infer them costs seconds of subprocess."""
    from importlib.metadata import packages_distributions, version

    provided = packages_distributions()
    return [f"{dist}=={version(dist)}" for name in imports for dist in provided.get(name, [name])]


def log_model(net: Any, data: Split) -> None:
    """Log the model with its signature, an input example and the class names: it takes raw
    inputs, as the source gives them, and answers with class probabilities."""
    from mlflow.models import infer_signature

    example = data.x_train[:2]
    keras_net = models.is_keras_net(net)
    # What the served model answers: Keras' outputs (one sigmoid unit for two classes).
    outputs = net.predict(example, verbose=0) if keras_net else net.predict_proba(example)
    signature = infer_signature(example, outputs)
    common = {
        "name": "model",
        "signature": signature,
        "input_example": example,
        "metadata": {"class_names": data.class_names},
    }
    if keras_net:
        import keras
        import mlflow.keras
        from mlflow.models import Model

        def save_keras(path: str, **kwargs: Any) -> None:
            # mlflow.keras.save_model writes the input example before it makes the model's
            # folder, and fails (MLflow 3.17): the folder is made first here.
            os.makedirs(path, exist_ok=True)
            mlflow.keras.save_model(path=path, **kwargs)

        Model.log(
            artifact_path=None,
            flavor=SimpleNamespace(save_model=save_keras),
            flavor_name="mlflow.keras",
            model=net,
            pip_requirements=requirements("keras", *backend.MODULES[keras.backend.backend()]),
            **common,
        )
    else:
        import mlflow.sklearn

        mlflow.sklearn.log_model(
            net,
            pip_requirements=requirements("sklearn", "numpy"),
            pyfunc_predict_fn="predict_proba",  # probabilities, as a Keras model gives
            # The Pipeline's input steps (models.build_sklearn): NumPy functions, no code.
            skops_trusted_types=["functools.partial", "numpy.reshape", "numpy.multiply"],
            **common,
        )


@stage("config", reads=("backend", "dataset", "model", "train", "variant", "tracking", "paths"))
def main(cfg: DictConfig) -> None:
    cfg = training.with_hparams(cfg)
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

        # The callback imports Keras: only for Keras models.
        callbacks = [tracking.keras_callback()] if models.is_keras(settings.model) else []
        fitted = training.fit(settings, data, callbacks)
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
            log_model(fitted.net, data)
    log.info("%s: %s", out_dir, summary)


if __name__ == "__main__":
    main()
