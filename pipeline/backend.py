"""Keras' backend (TensorFlow, JAX or PyTorch) and the device it computes on.

Keras reads `KERAS_BACKEND` once, when it is first imported: `use` sets it from the config's
`backend` key before any stage imports Keras.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

from pipeline.errors import ConfigError

# The modules each backend needs at run time, so also in a logged model's requirements.
MODULES = {"tensorflow": ("tensorflow",), "jax": ("jax", "jaxlib"), "torch": ("torch",)}


def use(name: Any) -> str:
    """Make `name` (a `config.Backend` or its value) Keras' backend for this process."""
    name = getattr(name, "value", name)
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != name:
            raise ConfigError(
                f"backend={name}: Keras was already imported with backend "
                f"{keras.backend.backend()} in this process; set KERAS_BACKEND={name} instead"
            )
        return name
    missing = [module for module in MODULES[name] if importlib.util.find_spec(module) is None]
    if missing:
        raise ConfigError(
            f"backend={name}: {', '.join(missing)} is not installed; "
            f"`KERAS_BACKEND={name} ./dev.sh` installs it (requirements-{name}.lock)"
        )
    os.environ["KERAS_BACKEND"] = name
    return name


def device() -> str:
    """What Keras computes on: "CPU", or the first GPU's name."""
    import keras

    name = keras.backend.backend()
    if name == "jax":
        import jax

        first = jax.devices()[0]
        return "CPU" if first.platform == "cpu" else first.device_kind
    if name == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)


def tags() -> dict[str, str]:
    """Which backend, at which version, on which device: tags of every run that trains."""
    import keras

    name = keras.backend.backend()
    module = importlib.import_module(MODULES[name][0])
    return {
        "keras.version": keras.version(),
        "keras.backend": name,
        "keras.backend.version": str(module.__version__),
        "device": device(),
    }
