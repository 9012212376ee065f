"""The schema every config in `conf/` is checked against, and the one way to load it.

Hydra merges the YAML files into these dataclasses, so an unknown key or a value of the wrong
type fails at composition; `load` then builds the dataclasses, whose `__post_init__` checks the
ranges, so every stage fails on a bad value before it does any work.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from pipeline.errors import ConfigError


class Family(Enum):
    logreg = "logreg"  # one dense layer: logistic / softmax regression as a net
    mlp = "mlp"
    cnn = "cnn"
    sklearn_logreg = "sklearn_logreg"  # scikit-learn's LogisticRegression baseline


class Activation(Enum):
    sigmoid = "sigmoid"
    tanh = "tanh"
    relu = "relu"
    leaky_relu = "leaky_relu"
    elu = "elu"


class Initializer(Enum):
    glorot_uniform = "glorot_uniform"
    glorot_normal = "glorot_normal"
    he_uniform = "he_uniform"
    he_normal = "he_normal"
    lecun_uniform = "lecun_uniform"
    lecun_normal = "lecun_normal"
    random_normal = "random_normal"
    random_uniform = "random_uniform"  # Keras' "uniform": the sign-digits tutorial's choice
    zeros = "zeros"


class Algorithm(Enum):
    hyperband = "hyperband"
    random = "random"
    bayesian = "bayesian"


class LrSchedule(Enum):
    constant = "constant"
    # Down a half cosine to nearly 0 by the last epoch: training ends settled on a minimum
    # instead of still bouncing about it at the full rate (Loshchilov & Hutter, SGDR, 2017).
    cosine = "cosine"


class Optimizer(Enum):
    sgd = "sgd"
    adam = "adam"
    rmsprop = "rmsprop"
    adagrad = "adagrad"


class Backend(Enum):
    # Keras 3's backends; conf/config.yaml takes $KERAS_BACKEND, else tensorflow.
    tensorflow = "tensorflow"
    jax = "jax"
    torch = "torch"


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


# ---- data --------------------------------------------------------------------------------


@dataclass
class MnistSource:
    name: str = "mnist"
    # Tried in order; each file is verified by its published SHA-256 wherever it comes from.
    urls: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256

    def __post_init__(self) -> None:
        for name, digest in self.files.items():
            _check(
                len(digest) == 64,
                f"source.files.{name}: '{digest}' is not a SHA-256 (64 hex digits)",
            )


@dataclass
class SignDigitsSource:
    name: str = "sign_digits"
    archive_url: str = MISSING
    archive_folder: str = MISSING  # top folder inside the repository archive
    # SHA-256 over the sorted `sha256sum` lines of every Dataset/<digit>/<file>: the archive's
    # bytes change each time GitHub builds it, the images do not.
    content_sha256: str = MISSING
    image_size: int = 64
    apply_errata: bool = True
    # "<digit>/<file>" -> the digit the photo really shows (see conf/source/sign_digits.yaml)
    label_errata: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self.image_size > 0, f"source.image_size must be > 0, got {self.image_size}")
        for key, digit in self.label_errata.items():
            _check(0 <= digit <= 9, f"source.label_errata.{key}: {digit} is not a digit 0-9")


@dataclass
class CirclesSource:
    name: str = "circles"
    n_samples: int = 100
    shuffle: bool = True
    noise: float = 0.05
    random_state: int = 100
    factor: float = 0.8

    def __post_init__(self) -> None:
        _check(self.n_samples >= 4, f"source.n_samples must be >= 4, got {self.n_samples}")
        _check(0 < self.factor < 1, f"source.factor must be in (0, 1), got {self.factor}")
        _check(self.noise >= 0, f"source.noise must be >= 0, got {self.noise}")


@dataclass(frozen=True)
class Layout:
    """Where stages meet, under one root folder (dvc.yaml names the same paths)."""

    root: Path
    # Reading only: where a path missing under `root` is taken from instead.
    fallback: Path | None = None

    def path(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        if self.fallback is not None and not path.exists():
            return self.fallback.joinpath(*parts)
        return path

    def raw_file(self, source: str) -> Path:
        return self.path("data", "raw", f"{source}.npz")

    def split_file(self, task: str) -> Path:
        return self.path("data", "split", f"{task}.npz")

    def model_dir(self, task: str, variant: str) -> Path:
        return self.path("models", task, variant)

    def search_dir(self, task: str) -> Path:
        """The tuner's state, kept so that an interrupted search resumes."""
        return self.path("models", task, "search")

    def best_hparams_file(self, task: str) -> Path:
        return self.path("models", task, "best_hparams.yaml")

    @property
    def reports(self) -> Path:
        return self.path("reports")

    def report_dir(self, task: str, variant: str) -> Path:
        """A model's test figures and metrics; variant "search" holds a search's trials. Apart
        from the report's own files, so that `report` can read them all as one folder."""
        return self.path("reports", "models", task, variant)


@dataclass
class PathsConfig:
    # A stage writes under `outputs`: Hydra's job folder (outputs/<date>/<time>, or
    # multirun/<sweep>/<job> in a -m sweep) unless the command asks for the pipeline's own
    # folders, as dvc.yaml's do with `hydra.run.dir=.`; a run by hand or a sweep never
    # overwrites them. It reads what earlier stages wrote from there too, else from the
    # pipeline's folders under `inputs`: runs by hand given one paths.outputs chain like the
    # pipeline's stages.
    inputs: str = "."
    outputs: str | None = None  # None: Hydra's job folder (the current folder outside Hydra)

    @property
    def read(self) -> Layout:
        return Layout(self.write.root, fallback=Path(self.inputs))

    @property
    def write(self) -> Layout:
        if self.outputs is not None:
            return Layout(Path(self.outputs))
        from hydra.core.hydra_config import HydraConfig

        job = HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else "."
        return Layout(Path(os.path.relpath(job)))


@dataclass
class FetchConfig:
    source: Any = MISSING
    # A folder laid out like ../shared/datasets; when set, files come from it, not the network.
    mirror: str | None = None
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class SplitConfig:
    val_fraction: float = 0.1
    # Ignored where the source ships its own test set (MNIST's official 10,000 images).
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("val_fraction", "test_fraction"):
            value = getattr(self, key)
            _check(0 < value < 1, f"dataset.split.{key} must be in (0, 1), got {value}")
        _check(
            self.val_fraction + self.test_fraction < 1,
            "dataset.split.val_fraction + test_fraction must be < 1, got "
            f"{self.val_fraction} + {self.test_fraction}",
        )


@dataclass
class DatasetConfig:
    name: str = MISSING  # the task: names the outputs, the MLflow experiment and the reports
    source: str = MISSING  # which fetched data set (data/raw/<source>.npz) it reads
    classes: list[int] | None = None  # keep only these labels, renumbered 0..k-1
    # Models standardise each feature (or pixel) by the training part's mean and variance, as
    # their first layer: the split keeps the data as the source gives it.
    standardize: bool = False
    split: SplitConfig = field(default_factory=SplitConfig)

    def __post_init__(self) -> None:
        if self.classes is not None:
            _check(
                len(set(self.classes)) >= 2,
                f"dataset.classes needs two or more distinct labels, got {self.classes}",
            )


# ---- model and training ------------------------------------------------------------------


@dataclass
class OptimizerConfig:
    name: Optimizer = Optimizer.adam
    lr: float = 0.001
    momentum: float = 0.0  # sgd only

    def __post_init__(self) -> None:
        _check(
            self.lr > 0 and math.isfinite(self.lr),
            f"model.optimizer.lr must be > 0, got {self.lr}",
        )
        _check(
            0 <= self.momentum < 1,
            f"model.optimizer.momentum must be in [0, 1), got {self.momentum}",
        )


@dataclass
class AugmentConfig:
    """Random changes to training images, made afresh every epoch (Keras preprocessing layers,
    active in training only). 0 or false leaves that change out."""

    shift: float = 0.0  # up to this fraction of the height and width, each way
    rotate: float = 0.0  # up to this fraction of a full turn, each way
    zoom: float = 0.0  # in or out by up to this fraction
    flip: bool = False  # mirror left-right (hands: a left hand's sign is the same digit)

    def __post_init__(self) -> None:
        for key in ("shift", "rotate", "zoom"):
            value = getattr(self, key)
            _check(0 <= value < 1, f"model.augment.{key} must be in [0, 1), got {value}")

    def __bool__(self) -> bool:
        return bool(self.shift or self.rotate or self.zoom or self.flip)


@dataclass
class ModelConfig:
    family: Family = Family.mlp
    hidden_units: list[int] = field(default_factory=list)  # mlp: one dense layer each
    filters: list[int] = field(default_factory=list)  # cnn: one conv + pool block each
    kernel_size: int = 3  # cnn
    convs_per_block: int = 1  # cnn: 3x3 conv layers before each pooling
    dense_units: int = 0  # cnn: a dense layer before the output, 0 for none
    batch_norm: bool = False  # cnn: batch normalisation after each conv layer
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # images only
    squares: bool = False  # feature vectors: each feature's square joins the inputs
    activation: Activation = Activation.relu
    initializer: Initializer = Initializer.glorot_uniform
    dropout: float = 0.0
    l1: float = 0.0
    l2: float = 0.0  # sklearn_logreg: C = 1 / l2, no penalty when 0
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)

    def __post_init__(self) -> None:
        _check(0 <= self.dropout < 1, f"model.dropout must be in [0, 1), got {self.dropout}")
        _check(self.l1 >= 0, f"model.l1 must be >= 0, got {self.l1}")
        _check(self.l2 >= 0, f"model.l2 must be >= 0, got {self.l2}")
        _check(
            all(units > 0 for units in self.hidden_units),
            f"model.hidden_units must all be > 0, got {self.hidden_units}",
        )
        _check(
            all(n > 0 for n in self.filters), f"model.filters must all be > 0, got {self.filters}"
        )
        _check(
            self.family != Family.cnn or len(self.filters) > 0,
            "model.filters must list at least one conv layer for family=cnn",
        )
        _check(self.kernel_size > 0, f"model.kernel_size must be > 0, got {self.kernel_size}")
        _check(
            self.convs_per_block > 0,
            f"model.convs_per_block must be > 0, got {self.convs_per_block}",
        )
        _check(self.dense_units >= 0, f"model.dense_units must be >= 0, got {self.dense_units}")
        _check(
            not (self.squares and self.family == Family.cnn),
            "model.squares widens feature vectors; set it false for family=cnn",
        )


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    early_stopping_patience: int | None = None  # on validation loss; None trains all epochs
    # Halve the learning rate after this many epochs without a better validation loss.
    reduce_lr_patience: int | None = None
    lr_schedule: LrSchedule = LrSchedule.constant  # in search trials too
    seed: int = 0
    cv_folds: int = 5  # the crossval stage's k
    # YAML of hyperparameters (shaped like this config: model.*, train.*) merged over the
    # config before training: how `train` takes what `tune` found.
    hparams_file: str | None = None

    @property
    def reads_validation(self) -> bool:
        """Whether training itself uses the validation part (early stopping, halving the
        learning rate), not only reports on it."""
        return self.early_stopping_patience is not None or self.reduce_lr_patience is not None

    def __post_init__(self) -> None:
        _check(self.epochs > 0, f"train.epochs must be > 0, got {self.epochs}")
        _check(self.batch_size > 0, f"train.batch_size must be > 0, got {self.batch_size}")
        _check(self.cv_folds >= 2, f"train.cv_folds must be >= 2, got {self.cv_folds}")
        for key in ("early_stopping_patience", "reduce_lr_patience"):
            value = getattr(self, key)
            _check(value is None or value >= 0, f"train.{key} must be >= 0, got {value}")
        _check(
            self.lr_schedule == LrSchedule.constant or self.reduce_lr_patience is None,
            "train.lr_schedule=cosine sets the learning rate every epoch; "
            "set train.reduce_lr_patience=null",
        )


@dataclass
class TunerConfig:
    algorithm: Algorithm = Algorithm.hyperband
    objective: str = "val_accuracy"  # a Keras log key, measured on the validation part
    direction: str = "max"
    max_trials: int = 10  # random and bayesian; Hyperband sizes itself from max_epochs/factor
    max_epochs: int = 10  # hyperband: epochs of its longest trials; others: epochs per trial
    factor: int = 3  # hyperband
    hyperband_iterations: int = 1
    early_stopping_patience: int | None = 3  # inside each trial, on the objective
    # The search's budget: this fraction of the training part (stratified, seeded). The final
    # `train` always uses all of it.
    train_fraction: float = 1.0
    # k: score each trial by k-fold cross-validation over the training and validation parts
    # together, for data sets so small that one validation part ranks trials by luck. None:
    # score on the validation part. The test part is never used.
    cv_folds: int | None = None
    seed: int = 1
    # Trials whose scores differ by less than this tie, and the fewest parameters win
    # (pipeline/selection.py). None: one standard error of the best accuracy on the samples
    # that score the trials; 0 for other objectives.
    tie_tolerance: float | None = None
    # Processes running trials at once, each with its own trial, served by one Keras Tuner
    # oracle in this process (pipeline/distributed.py); 1: trials run here, one after another.
    # Not part of a search's identity: the same trials get the same scores either way.
    workers: int = 1
    # A worker on another machine silent this long mid-trial (no heartbeat) is taken for dead:
    # its trial run ends KILLED and its trial goes to another worker.
    worker_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        # Keras Tuner takes a seed of 0 for "no seed" and draws a random one.
        _check(self.seed >= 1, f"tuner.seed must be >= 1, got {self.seed}")
        _check(
            self.direction in ("min", "max"),
            f"tuner.direction must be min or max, got {self.direction}",
        )
        _check(self.max_trials > 0, f"tuner.max_trials must be > 0, got {self.max_trials}")
        _check(self.max_epochs > 0, f"tuner.max_epochs must be > 0, got {self.max_epochs}")
        _check(self.workers >= 1, f"tuner.workers must be >= 1, got {self.workers}")
        _check(
            self.tie_tolerance is None or self.tie_tolerance >= 0,
            f"tuner.tie_tolerance must be >= 0 (or null for one standard error), got "
            f"{self.tie_tolerance}",
        )
        _check(
            self.worker_timeout_s >= 10,  # several heartbeats (pipeline/distributed.py)
            f"tuner.worker_timeout_s must be >= 10, got {self.worker_timeout_s}",
        )
        _check(self.factor >= 2, f"tuner.factor must be >= 2, got {self.factor}")
        _check(
            0 < self.train_fraction <= 1,
            f"tuner.train_fraction must be in (0, 1], got {self.train_fraction}",
        )
        _check(
            self.cv_folds is None or self.cv_folds >= 2,
            f"tuner.cv_folds must be >= 2 (or null for the validation part), got {self.cv_folds}",
        )
        # Hyperband carries one model on from an earlier trial's checkpoint, not k of them.
        _check(
            self.cv_folds is None or self.algorithm != Algorithm.hyperband,
            "tuner.cv_folds needs tuner=random or tuner=bayesian, not hyperband",
        )


@dataclass
class TrackingConfig:
    # None: $MLFLOW_TRACKING_URI, else SQLite at the repository root (see pipeline.tracking).
    uri: str | None = None
    log_model: bool = True
    # Put before every MLflow experiment and registered-model name (tracking.experiment_name),
    # so that projects sharing one server keep apart: "acme-" gives "acme-mnist".
    experiment_prefix: str = ""
    # MLflow system metrics (CPU, memory; GPU where pynvml finds one), sampled every
    # `system_metrics_interval` seconds: on train runs, and on each search trial's run.
    system_metrics: bool = True
    trial_system_metrics: bool = False
    system_metrics_interval: float = 2.0

    def sampling(self, of_trials: bool = False) -> float | None:
        """How often runs (trial runs with `of_trials`) sample system metrics; None: not."""
        wanted = self.trial_system_metrics if of_trials else self.system_metrics
        return self.system_metrics_interval if wanted else None

    def __post_init__(self) -> None:
        # Characters every store and the model registry accept in names and in models:/ URIs.
        _check(
            re.fullmatch(r"[A-Za-z0-9._-]*", self.experiment_prefix) is not None,
            "tracking.experiment_prefix may hold only letters, digits, '.', '_' and '-', got "
            f"{self.experiment_prefix!r}",
        )
        _check(
            self.system_metrics_interval > 0,
            "tracking.system_metrics_interval must be > 0 seconds, got "
            f"{self.system_metrics_interval}",
        )


@dataclass
class Config:
    backend: Backend = Backend.tensorflow  # Keras' backend (pipeline.backend)
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
    # pipeline/search_space.py); None for runs without a search.
    search_space: Any = None
    paths: PathsConfig = field(default_factory=PathsConfig)
    variant: str = "baseline"  # this model's name within its task: baseline, tuned, ...

    @property
    def run_name(self) -> str:
        return f"{self.dataset.name}/{self.variant}"

    def __post_init__(self) -> None:
        _check(
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
    store.store(group="source", name="mnist_schema", node=MnistSource)
    store.store(group="source", name="sign_digits_schema", node=SignDigitsSource)
    store.store(group="source", name="circles_schema", node=CirclesSource)


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
