"""Keras' backends: the same data on each, models that move between them, honest requirements."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, mlflow_client, stage_env

from pipeline.core.backend import MODULES as BACKEND_MODULES

# Backends this environment has: tensorflow always; the tests' set-up installs JAX.
BACKENDS = [
    name
    for name, modules in BACKEND_MODULES.items()
    if all(importlib.util.find_spec(module) is not None for module in modules)
]

# Trains a zero-initialised linear model with plain SGD on pipeline.models.fitting.batches for each
# seed given and prints {seed: its weights}: they depend on the batches' order, and nothing else
# differs between backends. (All seeds in one process: a backend's start costs seconds.)
FIT_ON_BATCHES = """
import json, sys, keras, numpy as np
from pipeline.models.fitting import batches
x = np.linspace(-1, 1, 50, dtype=np.float32).reshape(25, 2)
y = (x @ np.array([2.0, -1.0], np.float32) + 0.5 * np.sin(7 * x[:, 0])).astype(np.float32)
weights = {}
for seed in map(int, sys.argv[1:]):
    net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, kernel_initializer="zeros")])
    net.compile(keras.optimizers.SGD(0.3), "mse")
    net.fit(**batches(x, y, 4, shuffle_seed=seed, epochs=3), epochs=3, shuffle=False, verbose=0)
    weights[seed] = [w.ravel().tolist() for w in net.get_weights()]
print(json.dumps(weights))
"""

# Loads a saved model and prints its class probabilities for the split's test part.
PREDICT_SAVED = """
import json, sys, keras
from pipeline.data.splits import load_split
net = keras.saving.load_model(sys.argv[1])
print(json.dumps(net.predict(load_split(sys.argv[2]).x_test, verbose=0).tolist()))
"""


def on_backend(backend: str, *command: str, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [sys.executable, *command],
        cwd=cwd,
        env=stage_env(KERAS_BACKEND=backend),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_every_backend_trains_on_the_same_batches_for_a_seed() -> None:
    assert {"tensorflow", "jax"} <= set(BACKENDS)
    weights = {
        (backend, int(seed)): np.concatenate(fitted)
        for backend in BACKENDS
        for seed, fitted in json.loads(on_backend(backend, "-c", FIT_ON_BATCHES, "7", "8")).items()
    }
    for backend in BACKENDS:
        np.testing.assert_allclose(weights[backend, 7], weights["tensorflow", 7], rtol=1e-5)
    # The order matters to the weights: another seed, other batches, other weights.
    assert not np.allclose(weights["tensorflow", 7], weights["tensorflow", 8], rtol=1e-3)


def test_a_model_trained_on_one_backend_predicts_the_same_on_another(
    run_stage, circles_split: Path, project: Path
) -> None:
    run_stage("train", "experiment=circles/baseline", "train.epochs=3", KERAS_BACKEND="jax")
    run = mlflow_client(project).get_run(
        json.loads((project / "models/circles/baseline/run.json").read_text())["run_id"]
    )
    assert run.data.tags["keras.backend"] == "jax"
    assert run.data.tags["keras.backend.version"] == importlib.metadata.version("jax")
    assert run.data.tags["device"] == "CPU"

    saved = str(project / "models/circles/baseline/model.keras")
    probabilities = {
        backend: np.array(
            json.loads(on_backend(backend, "-c", PREDICT_SAVED, saved, str(circles_split)))
        )
        for backend in BACKENDS
    }
    for backend in BACKENDS:
        np.testing.assert_allclose(probabilities[backend], probabilities["jax"], atol=1e-5)
        assert ((probabilities[backend] > 0.5) == (probabilities["jax"] > 0.5)).all()


def test_a_backend_not_installed_or_unknown_is_one_line(run_stage, circles_split: Path) -> None:
    unknown = run_stage("train", "experiment=circles/baseline", "backend=mxnet", check=False)
    assert unknown.returncode == 1
    (line,) = unknown.stderr.strip().splitlines()
    assert "mxnet" in line and "tensorflow" in line and "jax" in line

    from_env = run_stage("train", "experiment=circles/baseline", check=False, KERAS_BACKEND="cntk")
    assert from_env.returncode == 1 and "cntk" in from_env.stderr.strip().splitlines()[-1]


def test_logged_model_requirements_name_the_installed_backend_distribution(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With `tensorflow` installed rather than `tensorflow-cpu` (a GPU machine), the logged
    model must ask for `tensorflow`: naming a distribution that is not installed made `train`
    fail after the fit."""
    from pipeline.core import backend
    from pipeline.tracking.logged_model import requirements

    installed = {"keras": "3.15.1", "tensorflow": "2.21.0", "jax": "0.10.2", "jaxlib": "0.10.2"}
    monkeypatch.setattr(
        importlib.metadata, "packages_distributions", lambda: {n: [n] for n in installed}
    )
    monkeypatch.setattr(importlib.metadata, "version", installed.__getitem__)
    assert requirements("keras", *backend.MODULES["tensorflow"]) == [
        "keras==3.15.1",
        "tensorflow==2.21.0",
    ]
    assert requirements("keras", *backend.MODULES["jax"]) == [
        "keras==3.15.1",
        "jax==0.10.2",
        "jaxlib==0.10.2",
    ]
    # This environment's own: each named distribution is installed, at its installed version.
    monkeypatch.undo()
    for requirement in requirements("keras", *backend.MODULES["tensorflow"]):
        name, version = requirement.split("==")
        assert importlib.metadata.version(name) == version


def test_no_stage_imports_keras_before_its_backend_is_set() -> None:
    """Keras takes its backend when first imported: a module that imports it at import time
    would make every stage importing it run on the default backend whatever the config's
    `backend` says."""
    modules = sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in (ROOT / "pipeline").rglob("*.py")
    )
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "    assert 'keras' not in sys.modules, name\n"
        "print('none')\n"
    )
    on_backend("jax", "-c", script)
