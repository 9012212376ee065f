"""The schema every config in `conf/` is checked against, and the one way to load it.

Hydra merges the YAML files into these dataclasses, so an unknown key or a value of the wrong
type fails at composition; `load` then builds the dataclasses, whose `__post_init__` checks the
ranges, so every stage fails on a bad value before it does any work. One module per group of
`conf/` holds its part of the schema; this one the whole (`Config`) and what the stages share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from pipeline.core.config.base import check
from pipeline.core.config.dataset import (
    DatasetConfig,
    SplitConfig,
)
from pipeline.core.config.model import (
    Activation,
    AugmentConfig,
    Family,
    Initializer,
    LrSchedule,
    ModelConfig,
    Optimizer,
    OptimizerConfig,
)
from pipeline.core.config.paths import (
    Layout,
    PathsConfig,
)
from pipeline.core.config.source import (
    Color,
    FeatureType,
    IdxSource,
    ImageFolderSource,
    Kind,
    Missing,
    OnBadFile,
    SklearnSource,
    TableSource,
    source_of,
)
from pipeline.core.config.tracking import (
    TrackingConfig,
)
from pipeline.core.config.train import (
    TrainConfig,
)
from pipeline.core.config.tuner import (
    Algorithm,
    TunerConfig,
)
from pipeline.core.errors import ConfigError


class Backend(Enum):
    # Keras 3's backends; conf/config.yaml takes $KERAS_BACKEND, else tensorflow.
    tensorflow = "tensorflow"
    jax = "jax"
    torch = "torch"


@dataclass
class FetchConfig:
    # One of the kinds' schemas (pipeline/core/config/source.py), chosen by its `kind`.
    source: Any = MISSING
    # A folder laid out like ../shared/datasets; when set, files come from it, not the network.
    mirror: str | None = None
    paths: PathsConfig = field(default_factory=PathsConfig)

    def __post_init__(self) -> None:
        self.source = source_of(self.source)


@dataclass
class Config:
    backend: Backend = Backend.tensorflow  # Keras' backend (pipeline/core/backend.py)
    # The backend's deterministic algorithms: the same figures to the last digit on one machine
    # and thread count (benchmarks/README.md: what it costs).
    deterministic: bool = True
    threads: int | None = None  # intra-op threads; None: the backend's default, one per core
    dataset: DatasetConfig = MISSING
    model: ModelConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    tuner: TunerConfig = field(default_factory=TunerConfig)
    # What `tune` searches, shaped like this config (see conf/search_space/ and
    # pipeline/search/space.py); None for runs without a search.
    search_space: Any = None
    paths: PathsConfig = field(default_factory=PathsConfig)
    variant: str = "baseline"  # this model's name within its task: baseline, tuned, ...

    @property
    def run_name(self) -> str:
        return f"{self.dataset.name}/{self.variant}"

    def __post_init__(self) -> None:
        check(
            self.threads is None or self.threads >= 1,
            f"threads must be >= 1 (or null for one per core), got {self.threads}",
        )


@dataclass
class ReportConfig:
    tasks: list[str] | None = None  # None: every task of conf/tasks.yaml
    register_models: bool = True  # each task's best model into the MLflow model registry
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


TASKS_FILE = Path("conf") / "tasks.yaml"
DVC_FILE = Path("dvc.yaml")


def pipeline_tasks() -> list[str]:
    """The tasks of conf/tasks.yaml, the list dvc.yaml's stages run (stages start at the root)."""
    import yaml

    return list(yaml.safe_load(TASKS_FILE.read_text())["tasks"])


def register() -> None:
    """Make the schemas known to Hydra under the names that `conf/` refers to."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    store.store(name="fetch_schema", node=FetchConfig)
    store.store(name="report_schema", node=ReportConfig)


def load(cfg: DictConfig) -> Any:
    """The composed config as checked dataclasses; a bad value raises ConfigError."""
    try:
        return OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except Exception as error:  # OmegaConf wraps __post_init__ errors in its own
        cause = error.__cause__ or error.__context__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(str(error).splitlines()[0]) from None


def to_flat_dict(cfg: DictConfig) -> dict[str, Any]:
    """`{"model.optimizer.lr": 0.01, ...}`: how the config goes to MLflow as params."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix.rstrip(".")] = node

    walk(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "")
    return flat


__all__ = [
    "Activation",
    "Algorithm",
    "AugmentConfig",
    "Backend",
    "Color",
    "Config",
    "DatasetConfig",
    "Family",
    "FeatureType",
    "FetchConfig",
    "IdxSource",
    "ImageFolderSource",
    "Initializer",
    "Kind",
    "Layout",
    "LrSchedule",
    "Missing",
    "ModelConfig",
    "OnBadFile",
    "Optimizer",
    "OptimizerConfig",
    "PathsConfig",
    "ReportConfig",
    "SklearnSource",
    "SplitConfig",
    "TableSource",
    "TASKS_FILE",
    "DVC_FILE",
    "TrackingConfig",
    "TrainConfig",
    "TunerConfig",
    "check",
    "load",
    "pipeline_tasks",
    "register",
    "source_of",
    "to_flat_dict",
]
