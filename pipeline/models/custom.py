"""A model of one's own: `model.family: custom`, built by the function `model.build` names.

    # src/nets.py (any module importable from the repository root, or an installed package)
    def small_cnn(params: dict, inputs: InputSpec, n_classes: int) -> keras.Model:
        x = keras.Input(inputs.shape)
        ...
        return keras.Model(x, keras.layers.Dense(n_classes, activation="softmax")(...))

The function gets `model.params` (free-form, searchable as `model.params.<key>`), what its model
receives (`InputSpec`: inputs already scaled, images as (rows, cols, channels)) and the number
of classes, and returns an uncompiled Keras model ending in the class probabilities: a softmax
over `n_classes` units (or one sigmoid unit for two classes). The pipeline puts its own input
scaling in front, then compiles, trains, logs and serves it as any other model.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.config import ModelConfig
from pipeline.core.errors import ConfigError

SIGNATURE = "function(params, inputs, n_classes) -> keras.Model"


@dataclass(frozen=True)
class InputSpec:
    """What a custom model receives: the shape of one input after the pipeline's scaling, and
    whether it is an image (rows, cols, channels) rather than a vector of features (a table's
    categories one-hot encoded)."""

    shape: tuple[int, ...]
    images: bool


def _importable_from_the_repository() -> None:
    # Stages run from the repository root; `python -m` puts it on the path, other callers
    # (tests, notebooks) may not.
    root = str(Path.cwd())
    if root not in sys.path:
        sys.path.insert(0, root)


def build_function(build: str) -> Callable[..., Any]:
    """The function `build` ("<module>:<function>") names; one line if it cannot be found."""
    module_name, _, name = build.partition(":")
    _importable_from_the_repository()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ConfigError(
            f"model.build: no module {error.name} (for {build}, looked for from the "
            f"repository root {Path.cwd()} and among the installed packages); check the name"
        ) from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ConfigError(
            f"model.build: {module_name} has no function {name}; define "
            f"{name}(params, inputs, n_classes) there, or fix the name"
        )
    return function


def source_file(build: str) -> Path | None:
    """The file holding the module of `build`, found without running it: what DVC and a
    search's identity track of a custom model. None for a module without one (built in)."""
    _importable_from_the_repository()
    try:
        spec = importlib.util.find_spec(build.partition(":")[0])
    except ModuleNotFoundError:  # a parent package that does not exist
        spec = None
    if spec is None:
        build_function(build)  # no such module: its one line
    return Path(spec.origin) if spec is not None and spec.origin and spec.has_location else None


def import_module_of(build: str | None) -> None:
    """Import a custom model's module (its `model.build`, None for the built-in families)
    before its saved model is loaded: it may define (and register with Keras) layers of its
    own."""
    if build is not None:
        build_function(build)


def custom_outputs(model: ModelConfig, x: Any, n_classes: int) -> Any:
    """The outputs of the custom model of `model` applied to the scaled inputs `x`."""
    import keras

    assert model.build is not None  # the schema asks family=custom for a build
    spec = InputSpec(tuple(int(n) for n in x.shape[1:]), images=len(x.shape) == 4)
    net = build_function(model.build)(dict(model.params), spec, n_classes)
    if not isinstance(net, keras.Model):
        raise ConfigError(
            f"model.build: {model.build} returned {type(net).__name__}, not a keras.Model; "
            f"it is called as {SIGNATURE}"
        )
    outputs = net(x)
    units = outputs.shape[-1]
    if len(outputs.shape) != 2 or units not in (n_classes, 1 if n_classes == 2 else n_classes):
        raise ConfigError(
            f"model.build: {model.build}'s model outputs shape {tuple(outputs.shape[1:])}; "
            f"it must end in {n_classes} class probabilities (a softmax"
            + (", or one sigmoid unit for two classes)" if n_classes == 2 else ")")
        )
    return outputs
