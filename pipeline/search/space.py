"""The search space: specs written in the config's own shape, turned into Keras Tuner
hyperparameters and back into config values.

A space (conf/search_space/*.yaml) mirrors the config it searches. Each leaf is one of:

    lr: {min: 1.0e-4, max: 1.0e-2, log: true}        # a float range (log scale)
    dropout: {min: 0.0, max: 0.5, step: 0.1}         # a float range with a step
    batch_size: {choice: [32, 64, 128]}              # a choice
    hidden_units: {layers: [1, 3], units: [32, 512], step: 32}  # a list of ints: length, values
    filters: {..., when: {model.family: [cnn]}}      # searched only when another key has a value
    activation: relu                                 # a fixed value: the space narrowed to one

The Keras Tuner hyperparameter of a leaf is named by its config path ("model.optimizer.lr"),
so trials, MLflow params and best_hparams.yaml all use the config's own keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.core import config
from pipeline.core.errors import ConfigError

SPEC_KEYS = {"choice", "min", "max", "step", "log", "layers", "units", "when"}
_ABSENT = object()


@dataclass(frozen=True)
class Param:
    path: str  # the config key it sets
    spec: dict[str, Any] = field(default_factory=dict)  # empty for a fixed value
    fixed: Any = None

    @property
    def condition(self) -> tuple[str, list[Any]] | None:
        when = self.spec.get("when")
        return next(iter(when.items())) if when else None

    def declare(self, hp: Any) -> Any:
        """Register this parameter with `hp` and return its value for the current trial."""
        spec = self.spec
        if not spec:
            # Scalars are registered (a `when` may depend on them); Keras Tuner has no list type.
            return self.fixed if isinstance(self.fixed, list) else hp.Fixed(self.path, self.fixed)
        if "choice" in spec:
            value = hp.Choice(self.path, spec["choice"])
            # Keras Tuner keeps booleans as 0 and 1; the config and MLflow want them back.
            if value is not None and all(isinstance(c, bool) for c in spec["choice"]):
                return bool(value)
            return value
        if "min" in spec and spec["min"] == spec["max"]:  # a range narrowed to one value
            return hp.Fixed(self.path, spec["min"])
        if "layers" in spec:
            count = hp.Int(f"{self.path}.layers", *spec["layers"])
            if count is None:  # inside a condition that does not hold
                return None
            (low, high), most = spec["units"], spec["layers"][1]
            # Every layer's units are declared on every build, each active while the count
            # reaches it, so that Keras Tuner has them all before its first draw; declared only
            # once a trial reached them, the draws after that trial varied between processes.
            units = []
            for i in range(most):
                with hp.conditional_scope(f"{self.path}.layers", list(range(i + 1, most + 1))):
                    units.append(hp.Int(f"{self.path}.{i}", low, high, step=spec.get("step") or 1))
            return units[:count]
        if all(isinstance(spec[key], int) for key in ("min", "max")) and not spec.get("log"):
            return hp.Int(self.path, spec["min"], spec["max"], step=spec.get("step") or 1)
        sampling = "log" if spec.get("log") else "linear"
        return hp.Float(
            self.path, spec["min"], spec["max"], step=spec.get("step"), sampling=sampling
        )


def parse(space: Any) -> list[Param]:
    """The leaves of a space (a nested dict), conditions after what they depend on."""
    if space is None:
        return []
    if isinstance(space, DictConfig):
        space = OmegaConf.to_container(space, resolve=True)
    params: list[Param] = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if _is_spec(value):
                params.append(Param(path, spec=_checked_spec(path, value)))
            elif isinstance(value, dict) and value:
                walk(value, f"{path}.")
            else:
                params.append(Param(path, fixed=value))

    walk(space, "")
    return sorted(params, key=lambda param: param.condition is not None)


def _is_spec(value: Any) -> bool:
    """Whether a node is one parameter's spec rather than a group of parameters: a spec's values
    are numbers and lists (a `when`'s aside), so a node of dicts only is a group even where its
    keys are spec words, as a custom model's `model.params.units: {choice: [...]}` is."""
    if not (isinstance(value, dict) and value and set(value) <= SPEC_KEYS):
        return False
    return not all(isinstance(item, dict) for item in value.values())


def _checked_spec(path: str, spec: dict[str, Any]) -> dict[str, Any]:
    where = f"search_space.{path}"
    kinds = [k for k in ("choice", "layers", "min") if k in spec]
    if len(kinds) != 1:
        raise ConfigError(
            f"{where}: give exactly one of choice, min/max or layers/units, got {sorted(spec)}"
        )
    if "choice" in spec and not (isinstance(spec["choice"], list) and spec["choice"]):
        raise ConfigError(f"{where}.choice must be a non-empty list, got {spec['choice']}")
    if "min" in spec:
        if "max" not in spec or spec["min"] > spec["max"]:
            raise ConfigError(
                f"{where}: needs min <= max, got {spec.get('min')}..{spec.get('max')}"
            )
        if spec.get("log") and spec["min"] <= 0:
            raise ConfigError(f"{where}: a log range needs min > 0, got {spec['min']}")
    if "layers" in spec:
        for key in ("layers", "units"):
            pair = spec.get(key)
            if not (isinstance(pair, list) and len(pair) == 2 and 0 < pair[0] <= pair[1]):
                raise ConfigError(f"{where}.{key} must be [low, high] with 0 < low <= high")
    if "when" in spec and not (isinstance(spec["when"], dict) and len(spec["when"]) == 1):
        raise ConfigError(
            f"{where}.when must name one key and its values, e.g. {{model.family: [cnn]}}"
        )
    return spec


def values_for(params: list[Param], hp: Any) -> dict[str, Any]:
    """The config values of one trial: {config path: value}, inactive conditions left out."""
    values: dict[str, Any] = {}
    for param in params:
        condition = param.condition
        if condition is None:
            values[param.path] = _tidy(param.declare(hp))
        else:
            parent, allowed = condition
            with hp.conditional_scope(parent, allowed):
                value = param.declare(hp)
            if values.get(parent) in allowed:
                values[param.path] = _tidy(value)
    return values


def _tidy(value: Any) -> Any:
    # Stepped float ranges add up to 0.30000000000000004; ten digits are plenty.
    return float(f"{value:.10g}") if isinstance(value, float) else value


def apply(cfg: DictConfig, values: dict[str, Any]) -> DictConfig:
    """A copy of `cfg` with `values` set at their config paths."""
    cfg = cfg.copy()
    for path, value in values.items():
        OmegaConf.update(cfg, path, value, merge=False)
    return cfg


def check(params: list[Param], cfg: DictConfig) -> None:
    """Fail before any training on a key the config lacks or a value it would refuse."""
    paths = {param.path for param in params}
    for param in params:
        where = f"search_space.{param.path}"
        if OmegaConf.select(cfg, param.path, default=_ABSENT) is _ABSENT:
            raise ConfigError(f"{where}: the config has no key {param.path}")
        condition = param.condition
        if condition is not None and condition[0] not in paths:
            raise ConfigError(f"{where}.when: {condition[0]} is not searched")
    # Each value is tried with every other key at its first value, so that keys that go together
    # (family=cnn and its filters) are checked together.
    first = cfg
    for param in params:
        first = _refused_as_config_error(param, _corner_values(param)[0], first, load=False)
    for param in params:
        for value in _corner_values(param):
            _refused_as_config_error(param, value, first, load=True)


def _refused_as_config_error(param: Param, value: Any, cfg: DictConfig, load: bool) -> DictConfig:
    try:
        changed = apply(cfg, {param.path: value})
        if load:
            config.load(changed)
        return changed
    except Exception as error:
        reason = str(error).splitlines()[0]
        raise ConfigError(
            f"search_space.{param.path}: value {value!r} is refused: {reason}"
        ) from None


def _corner_values(param: Param) -> list[Any]:
    spec = param.spec
    if not spec:
        return [param.fixed]
    if "choice" in spec:
        return list(spec["choice"])
    if "layers" in spec:
        return [[spec["units"][0]] * spec["layers"][0], [spec["units"][1]] * spec["layers"][1]]
    return [spec["min"], spec["max"]]


def nested(values: dict[str, Any]) -> dict[str, Any]:
    """{"model.optimizer.lr": 0.01} -> {"model": {"optimizer": {"lr": 0.01}}}"""
    tree: dict[str, Any] = {}
    for path, value in values.items():
        *parents, leaf = path.split(".")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree
