"""A trained model logged to MLflow: raw inputs in, class probabilities out, on any backend."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

from pipeline import models
from pipeline.core import backend
from pipeline.data.splits import Split


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
