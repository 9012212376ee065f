"""Model options and the callbacks every Keras fit uses, in-process on tiny arrays."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest

from pipeline import models, tracking
from pipeline.config import AugmentConfig, Family, ModelConfig
from pipeline.errors import ConfigError, TrainingError


def layer_kinds(net) -> list[str]:
    return [type(layer).__name__ for layer in net.layers]


def test_a_cnn_takes_batch_norm_and_augmentation_that_acts_in_training_only() -> None:
    changes = AugmentConfig(shift=0.1, rotate=0.05, zoom=0.1, flip=True)
    spec = ModelConfig(family=Family.cnn, filters=[4], batch_norm=True, augment=changes)
    net = models.build_keras(spec, (8, 8, 1), 3)

    kinds = layer_kinds(net)
    for kind in ("RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation"):
        assert kind in kinds
    assert "BatchNormalization" in kinds
    images = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
    np.testing.assert_allclose(net(images, training=False), net(images, training=False))
    plain = models.build_keras(ModelConfig(family=Family.cnn, filters=[4]), (8, 8, 1), 3)
    assert not {"BatchNormalization", "RandomFlip"} & set(layer_kinds(plain))


def test_augmenting_feature_vectors_is_refused_naming_the_key() -> None:
    spec = ModelConfig(hidden_units=[4], augment=AugmentConfig(shift=0.1))
    with pytest.raises(ConfigError, match="model.augment"):
        models.build_keras(spec, (2,), 2)


def test_squares_join_the_features_they_are_made_from() -> None:
    import keras

    net = models.build_keras(ModelConfig(hidden_units=[4], squares=True), (2,), 2)
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
    net = models.build_keras(ModelConfig(hidden_units=[4]), (2,), 2)
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
