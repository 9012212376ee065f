"""Model options and the callbacks every Keras fit uses, in-process on tiny arrays."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest

from pipeline import models, tracking
from pipeline.core.config import AugmentConfig, Family, ModelConfig
from pipeline.core.errors import ConfigError, TrainingError


def layer_kinds(net) -> list[str]:
    return [type(layer).__name__ for layer in net.layers]


def test_a_cnn_takes_batch_norm_and_augmentation_that_acts_in_training_only() -> None:
    changes = AugmentConfig(shift=0.1, rotate=0.05, zoom=0.1, flip=True)
    spec = ModelConfig(family=Family.cnn, filters=[4], batch_norm=True, augment=changes)
    net = models.build_keras(spec, models.Inputs((8, 8)), 3)

    kinds = layer_kinds(net)
    for kind in ("RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation"):
        assert kind in kinds
    assert "BatchNormalization" in kinds
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(net(images, training=False), net(images, training=False))
    plain = models.build_keras(
        ModelConfig(family=Family.cnn, filters=[4]), models.Inputs((8, 8)), 3
    )
    assert not {"BatchNormalization", "RandomFlip"} & set(layer_kinds(plain))


def test_augmenting_feature_vectors_is_refused_naming_the_key() -> None:
    spec = ModelConfig(hidden_units=[4], augment=AugmentConfig(shift=0.1))
    with pytest.raises(ConfigError, match="model.augment"):
        models.build_keras(spec, models.Inputs((2,)), 2)


def test_squares_join_the_features_they_are_made_from() -> None:
    import keras

    net = models.build_keras(ModelConfig(hidden_units=[4], squares=True), models.Inputs((2,)), 2)
    (widened,) = [layer for layer in net.layers if type(layer).__name__ == "Concatenate"]
    features = np.array([[2.0, -3.0]], dtype=np.float32)
    inputs_seen = keras.Model(net.inputs[0], widened.output)
    np.testing.assert_allclose(inputs_seen(features), [[2.0, -3.0, 4.0, 9.0]])


def test_epoch_metrics_are_written_at_the_end_even_when_the_loss_turns_nan(
    tmp_path: Path,
) -> None:
    import keras

    class PoisonSecondEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if epoch == 1:
                logs["loss"] = float("nan")

    x = np.random.default_rng(0).random((16, 2), dtype=np.float32)
    y = (x[:, 0] > 0.5).astype("int64")
    net = models.build_keras(ModelConfig(hidden_units=[4]), models.Inputs((2,)), 2)
    tracking.use_experiment("nan", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run() as run:
        callbacks = [
            PoisonSecondEpoch(),
            tracking.keras_callback(),
            models.nan_guard(TrainingError),
        ]
        with pytest.raises(TrainingError, match="loss became NaN at epoch 2"):
            net.fit(x, y, validation_data=(x, y), epochs=5, callbacks=callbacks, verbose=0)

    losses = mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == [0, 1]  # stopped at the NaN, nothing lost in the buffer
    assert np.isnan(losses[1].value)


def first_scaled(net, x: np.ndarray) -> np.ndarray:
    """What the model's layers after its input scaling see of `x`."""
    import keras

    kinds = layer_kinds(net)
    scaling = next(i for i, kind in enumerate(kinds) if kind in ("Normalization", "Rescaling"))
    return np.asarray(keras.Model(net.inputs[0], net.layers[scaling].output)(x))


def test_a_model_standardises_raw_inputs_by_the_training_parts_statistics() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(5.0, 3.0, size=(200, 2)).astype(np.float32)
    train[:, 1] = 7.0  # a constant feature stays finite, as it is
    later = rng.normal(50.0, 3.0, size=(20, 2)).astype(np.float32)
    spec = models.inputs_of(train, standardize=True)
    net = models.build_keras(ModelConfig(hidden_units=[4]), spec, 2)

    std = train.std(axis=0)
    std[std == 0] = 1
    np.testing.assert_allclose(
        first_scaled(net, later), (later - train.mean(axis=0)) / std, rtol=1e-4, atol=1e-4
    )
    # Fitted on training data only: data from elsewhere is not centred on 0.
    assert first_scaled(net, later)[:, 0].mean() > 10


def test_a_model_takes_images_as_pixels_0_to_255() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (3, 8, 8)).astype(np.float32)
    net = models.build_keras(ModelConfig(hidden_units=[4]), models.Inputs((8, 8)), 3)
    np.testing.assert_allclose(first_scaled(net, pixels), pixels / 255, rtol=1e-6)
    sklearn_net = models.build_sklearn(
        ModelConfig(family=Family.sklearn_logreg), models.Inputs((8, 8)), 50, 0
    )
    sklearn_net.fit(pixels, [0, 1, 2])
    np.testing.assert_allclose(sklearn_net[:-1].transform(pixels), pixels.reshape(3, -1) / 255)
