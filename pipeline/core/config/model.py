"""The schema of conf/model/: a model's family, layers, regularisation and optimizer."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pipeline.core.config.base import check


class Family(Enum):
    logreg = "logreg"  # one dense layer: logistic / softmax regression as a net
    mlp = "mlp"
    cnn = "cnn"
    sklearn_logreg = "sklearn_logreg"  # scikit-learn's LogisticRegression baseline
    custom = "custom"  # a function of one's own builds it (model.build)


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


@dataclass
class OptimizerConfig:
    name: Optimizer = Optimizer.adam
    lr: float = 0.001
    momentum: float = 0.0  # sgd only

    def __post_init__(self) -> None:
        check(
            self.lr > 0 and math.isfinite(self.lr),
            f"model.optimizer.lr must be > 0, got {self.lr}",
        )
        check(
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
            check(0 <= value < 1, f"model.augment.{key} must be in [0, 1), got {value}")

    def __bool__(self) -> bool:
        return bool(self.shift or self.rotate or self.zoom or self.flip)


# "<module>:<function>", the module importable from the repository root or installed.
BUILD = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


@dataclass
class ModelConfig:
    family: Family = Family.mlp
    # family=custom: the function that builds the model, as "<module>:<function>" (e.g.
    # "src.nets:small_cnn"), called as function(params, inputs, n_classes) and returning an
    # uncompiled Keras model; the pipeline scales its inputs, compiles, trains, logs and serves it.
    build: str | None = None
    params: dict[str, Any] = field(default_factory=dict)  # family=custom: the function's own
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
        check(0 <= self.dropout < 1, f"model.dropout must be in [0, 1), got {self.dropout}")
        check(self.l1 >= 0, f"model.l1 must be >= 0, got {self.l1}")
        check(self.l2 >= 0, f"model.l2 must be >= 0, got {self.l2}")
        check(
            all(units > 0 for units in self.hidden_units),
            f"model.hidden_units must all be > 0, got {self.hidden_units}",
        )
        check(
            all(n > 0 for n in self.filters), f"model.filters must all be > 0, got {self.filters}"
        )
        check(
            self.family != Family.cnn or len(self.filters) > 0,
            "model.filters must list at least one conv layer for family=cnn",
        )
        check(self.kernel_size > 0, f"model.kernel_size must be > 0, got {self.kernel_size}")
        check(
            self.convs_per_block > 0,
            f"model.convs_per_block must be > 0, got {self.convs_per_block}",
        )
        check(self.dense_units >= 0, f"model.dense_units must be >= 0, got {self.dense_units}")
        check(
            not (self.squares and self.family == Family.cnn),
            "model.squares widens feature vectors; set it false for family=cnn",
        )
        custom = self.family == Family.custom
        check(
            custom == (self.build is not None),
            "model.build names the function of family=custom, and only of it"
            if self.build is not None
            else "model.family=custom needs model.build: <module>:<function>",
        )
        check(
            self.build is None or BUILD.fullmatch(self.build) is not None,
            f"model.build must be <module>:<function> (e.g. src.nets:small_cnn), got {self.build}",
        )
