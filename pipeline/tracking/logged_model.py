"""A trained model logged to MLflow: raw inputs in, class probabilities out, on any backend."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pipeline import models
from pipeline.core import backend
from pipeline.data import table_rows
from pipeline.data.splits import Split
from pipeline.tracking import served_table

# Import names whose distribution has another name: each is looked up at once, without the map
# of every installed file to its distribution (`packages_distributions`: a second to build).
DISTRIBUTIONS = {"tensorflow": ("tensorflow", "tensorflow-cpu"), "sklearn": ("scikit-learn",)}


def requirements(*imports: str) -> list[str]:
    """Pinned pip requirements of the distributions installed for these import names: Keras'
    backend module `tensorflow` comes from `tensorflow` or `tensorflow-cpu`, whichever is
    installed. Pinned here because letting MLflow infer them costs seconds of subprocess."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    pins = []
    for name in imports:
        for dist in DISTRIBUTIONS.get(name, (name,)):
            try:
                pins.append(f"{dist}=={version(dist)}")
                break
            except PackageNotFoundError:
                continue
        else:
            provided = packages_distributions().get(name, [name])
            pins += [f"{dist}=={version(dist)}" for dist in provided]
    return pins


def log_model(net: Any, data: Split, build: str | None = None) -> None:
    """Log the model with its signature, an input example and the class names: it takes raw
    inputs, as the source gives them (a table's rows with their categories as text), and
    answers with class probabilities. `build`: a custom model's function, whose module the
    model's loader imports first (it may define layers)."""
    from mlflow.models import infer_signature

    example = data.x_train[:2]
    keras_net = models.is_keras_net(net)
    # What the served model answers: Keras' outputs (one sigmoid unit for two classes).
    outputs = net.predict(example, verbose=0) if keras_net else net.predict_proba(example)
    metadata = {"class_names": data.class_names, **({"build": build} if build else {})}
    if keras_net and data.features is not None:
        _log_table_model(net, data, outputs, metadata)
        return
    common = {
        "name": "model",
        "signature": infer_signature(example, outputs),
        "input_example": example,
        "metadata": metadata,
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


def _log_table_model(net: Any, data: Split, outputs: Any, metadata: dict[str, Any]) -> None:
    """A table's Keras model behind the encoding of its raw rows (pipeline/tracking/
    served_table.py), with a signature of named columns: numbers, and categories as text."""
    import keras
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    assert data.features is not None
    example = table_rows.decode(data.x_train[:2], data.features)
    with tempfile.TemporaryDirectory() as scratch:
        model_file, features_file = Path(scratch) / "model.keras", Path(scratch) / "features.json"
        net.save(model_file)
        features_file.write_text(json.dumps(data.features))
        mlflow.pyfunc.log_model(
            name="model",
            python_model=served_table.__file__,
            artifacts={"model": str(model_file), "features": str(features_file)},
            code_paths=[table_rows.__file__],
            signature=infer_signature(example, outputs),
            input_example=example,
            metadata=metadata,
            pip_requirements=requirements(
                "keras", "pandas", *backend.MODULES[keras.backend.backend()]
            ),
        )
