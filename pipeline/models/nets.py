"""Models built from `ModelConfig`: the one place that turns config into Keras or scikit-learn."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core import timings
from pipeline.core.config import AugmentConfig, Family, ModelConfig, Optimizer
from pipeline.core.errors import ConfigError
from pipeline.data.table_rows import category_sizes, one_hot_columns
from pipeline.models.custom import custom_outputs

if TYPE_CHECKING:
    pass


def is_keras(model: ModelConfig) -> bool:
    """Whether `model` is a Keras model (all families but scikit-learn's)."""
    return model.family != Family.sklearn_logreg


def is_keras_net(net: Any) -> bool:
    return not hasattr(net, "predict_proba")


PIXEL_MAX = 255.0


@dataclass
class Inputs:
    """What a model takes, as the source gives it, and the scaling it does itself: saved and
    registered models then take raw inputs (MNIST's 28x28 pixels 0-255, raw (x, y) points)."""

    # One input: (rows, cols) of a grayscale image, (rows, cols, 3) of a colour one, or
    # (features,).
    shape: tuple[int, ...]
    # dataset.standardize: the training part's mean and variance of each feature or pixel.
    # Without it, images are scaled from 0-255 to 0-1 and feature vectors taken as they are.
    mean: np.ndarray | None = None
    variance: np.ndarray | None = None
    # A table's: per feature, its number of categories (0 for a number). The model one-hot
    # encodes each category column (its values are the categories' indices).
    categories: list[int] | None = None

    @property
    def images(self) -> bool:
        return len(self.shape) >= 2


def inputs_of(
    x_train: np.ndarray, standardize: bool, features: list[dict[str, Any]] | None = None
) -> Inputs:
    """The model inputs for training data `x_train` (a table's of `features`), standardised by
    its statistics if asked; a table's category columns are left to the one-hot encoding."""
    shape = tuple(x_train.shape[1:])
    categories = category_sizes(features) if features else None
    if not standardize:
        return Inputs(shape, categories=categories)
    mean, variance = x_train.mean(axis=0), x_train.var(axis=0)
    variance[variance == 0] = 1.0  # a constant feature is left as it is, not divided by 0
    if categories:
        coded = np.array(categories) > 0
        mean[coded], variance[coded] = 0.0, 1.0
    return Inputs(shape, mean, variance, categories)


def build_keras(model: ModelConfig, spec: Inputs, n_classes: int) -> Any:
    """A compiled Keras model on raw inputs. Two classes get one sigmoid unit, more a softmax
    (a custom model ends as its function makes it: model.build)."""
    import keras
    from keras import layers

    regularizer = (
        keras.regularizers.L1L2(l1=model.l1, l2=model.l2) if model.l1 or model.l2 else None
    )
    weights = {
        "kernel_initializer": model.initializer.value,
        "kernel_regularizer": regularizer,
    }
    activation = model.activation.value

    inputs = keras.Input(shape=spec.shape)
    x = inputs
    if spec.mean is not None:  # a mean and variance per feature or pixel
        axes = tuple(range(1, len(spec.shape) + 1))
        x = layers.Normalization(axis=axes, mean=spec.mean, variance=spec.variance)(x)
    elif spec.images:
        # Pixels to [0, 1] by dividing, as the split files' float pixels were made: a Rescaling
        # layer multiplies by a rounded 1/255, and that last-bit difference alone took the
        # sign-digits baseline from 0.8871 to 0.8742 test accuracy (same seed, same data).
        x = layers.Normalization(axis=None, mean=0.0, variance=PIXEL_MAX**2)(x)
    if spec.categories and any(spec.categories):
        x = one_hot_columns()(spec.categories)(x)
    if len(spec.shape) == 2:  # grayscale: one channel
        x = layers.Reshape((*spec.shape, 1))(x)
    x = augment(x, model.augment) if model.augment else x
    if model.family == Family.custom:
        outputs = custom_outputs(model, x, n_classes)
        return _compiled(keras.Model(inputs, outputs, name="custom"), model, outputs.shape[-1] == 1)
    if model.family == Family.cnn:
        if not spec.images:
            raise ConfigError(
                f"model.family=cnn needs images, but the data has shape {spec.shape}; "
                "use model=mlp for feature vectors"
            )
        for filters in model.filters:
            for _ in range(model.convs_per_block):
                # With batch norm, the activation comes after it, and its shift is the bias.
                x = layers.Conv2D(
                    filters,
                    model.kernel_size,
                    padding="same",
                    activation=None if model.batch_norm else activation,
                    use_bias=not model.batch_norm,
                    **weights,
                )(x)
                if model.batch_norm:
                    x = layers.Activation(activation)(layers.BatchNormalization()(x))
            x = layers.MaxPooling2D()(x)
        x = layers.Flatten()(x)
        hidden = [model.dense_units] if model.dense_units else []
    else:
        if spec.images:
            x = layers.Flatten()(x)
        if model.squares:
            # A feature cross (x², y²): a ring in (x, y) is a straight line in the squares.
            x = layers.Concatenate()([x, layers.Multiply()([x, x])])
        hidden = model.hidden_units if model.family == Family.mlp else []
    if model.family == Family.cnn and model.dropout:
        x = layers.Dropout(model.dropout)(x)
    for units in hidden:
        x = layers.Dense(units, activation=activation, **weights)(x)
        if model.dropout:
            x = layers.Dropout(model.dropout)(x)
    binary = n_classes == 2
    outputs = layers.Dense(
        1 if binary else n_classes, activation="sigmoid" if binary else "softmax", **weights
    )(x)
    return _compiled(keras.Model(inputs, outputs, name=model.family.value), model, binary)


def _compiled(net: Any, model: ModelConfig, binary: bool) -> Any:
    """`net` compiled with the configured optimizer, for one sigmoid unit (`binary`) or a
    softmax."""
    net.compile(
        optimizer=build_optimizer(model),
        loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return net


def augment(images: Any, changes: AugmentConfig) -> Any:
    """`images` passed through Keras' random image layers, which act in training only."""
    from keras import layers

    if len(images.shape) != 4:
        raise ConfigError(
            f"model.augment changes images, but the data has shape {tuple(images.shape[1:])}; "
            "leave model.augment at its defaults for feature vectors"
        )
    x = images
    if changes.flip:
        x = layers.RandomFlip("horizontal")(x)
    if changes.rotate:
        x = layers.RandomRotation(changes.rotate, fill_mode="nearest")(x)
    if changes.zoom:
        x = layers.RandomZoom(changes.zoom, fill_mode="nearest")(x)
    if changes.shift:
        x = layers.RandomTranslation(changes.shift, changes.shift, fill_mode="nearest")(x)
    return x


def build_optimizer(model: ModelConfig) -> Any:
    import keras

    lr = model.optimizer.lr
    match model.optimizer.name:
        case Optimizer.sgd:
            return keras.optimizers.SGD(learning_rate=lr, momentum=model.optimizer.momentum)
        case Optimizer.adam:
            return keras.optimizers.Adam(learning_rate=lr)
        case Optimizer.rmsprop:
            return keras.optimizers.RMSprop(learning_rate=lr)
        case Optimizer.adagrad:
            return keras.optimizers.Adagrad(learning_rate=lr)


def build_sklearn(model: ModelConfig, spec: Inputs, max_iter: int, seed: int) -> Any:
    """scikit-learn's LogisticRegression behind the same input scaling as a Keras model's, in
    one Pipeline (built from NumPy functions, so the saved model needs no code of this
    project)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    if spec.categories and any(spec.categories):
        raise ConfigError(
            "model.family=sklearn_logreg takes numbers only, and the table has category "
            "columns; use model=logreg or mlp, which one-hot encode them"
        )
    steps: list[Any] = [
        FunctionTransformer(functools.partial(np.reshape, shape=(-1, math.prod(spec.shape))))
    ]
    if spec.mean is not None:
        steps.append(StandardScaler())
    elif spec.images:
        steps.append(FunctionTransformer(functools.partial(np.multiply, 1 / PIXEL_MAX)))
    if model.l2 > 0:
        classifier = LogisticRegression(C=1.0 / model.l2, max_iter=max_iter, random_state=seed)
    else:
        classifier = LogisticRegression(penalty=None, max_iter=max_iter, random_state=seed)
    return make_pipeline(*steps, classifier)


def predict_proba(net: Any, x: np.ndarray) -> np.ndarray:
    """Class probabilities, shape (n, n_classes), whatever kind of model `net` is."""
    keras_net = is_keras_net(net)
    with timings.computing():
        probs = net.predict(x, verbose=0, batch_size=1024) if keras_net else net.predict_proba(x)
    if keras_net and probs.shape[1] == 1:  # one sigmoid unit: P(class 1)
        return np.hstack([1 - probs, probs])
    return probs


def accuracy(net: Any, x: np.ndarray, y: np.ndarray) -> float:
    """The share of `x` whose most probable class is `y`."""
    return float(np.mean(predict_proba(net, x).argmax(axis=1) == y))


def count_params(net: Any) -> int:
    if is_keras_net(net):
        return int(net.count_params())
    classifier = net[-1]  # the Pipeline's last step; the scaling steps learn nothing
    return int(classifier.coef_.size + classifier.intercept_.size)
