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


CUSTOM = """
import keras


@keras.saving.register_keras_serializable(package="mine")
class Doubling(keras.layers.Layer):
    def call(self, x):
        return 2 * x


def small(params, inputs, n_classes):
    x = keras.Input(inputs.shape)
    h = keras.layers.Flatten()(Doubling()(x)) if inputs.images else x
    h = keras.layers.Dense(params["units"], activation="relu")(h)
    return keras.Model(x, keras.layers.Dense(n_classes, activation="softmax")(h))


def not_a_model(params, inputs, n_classes):
    return "a model"


def wrong_outputs(params, inputs, n_classes):
    x = keras.Input(inputs.shape)
    return keras.Model(x, keras.layers.Dense(n_classes + 1, activation="softmax")(x))
"""


@pytest.fixture
def own_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module of one's own, src/mine_nets.py, in a repository root (the current folder)."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "mine_nets.py").write_text(CUSTOM)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "src.mine_nets"


def test_a_custom_model_is_given_scaled_inputs_and_is_compiled_saved_and_loaded(
    own_module: str, tmp_path: Path
) -> None:
    model = ModelConfig(family=Family.custom, build=f"{own_module}:small", params={"units": 5})
    pixels = np.random.default_rng(0).integers(0, 256, (6, 8, 8)).astype(np.float32)

    net = models.build_keras(model, models.Inputs((8, 8)), 3)

    assert net.optimizer is not None and net.loss == "sparse_categorical_crossentropy"
    # The pipeline's scaling comes first, and the function's model sees (rows, cols, channels).
    np.testing.assert_allclose(first_scaled(net, pixels), pixels / 255, rtol=1e-6)
    assert tuple(net.layers[-1].inputs[0].shape[1:]) == (8, 8, 1)  # the function's model
    assert models.source_file(model.build) == tmp_path / "src" / "mine_nets.py"
    net.fit(pixels, np.array([0, 1, 2, 0, 1, 2]), epochs=1, verbose=0)
    models.save(net, tmp_path)
    np.testing.assert_allclose(models.load(tmp_path).predict(pixels, verbose=0),
                               net.predict(pixels, verbose=0), rtol=1e-6)  # fmt: skip


@pytest.mark.parametrize(
    ("build", "mentions"),
    [
        ("src.nowhere:small", ("no module src.nowhere", "repository root")),
        ("src.mine_nets:absent", ("src.mine_nets has no function absent",)),
        ("src.mine_nets:not_a_model", ("returned str, not a keras.Model",)),
        ("src.mine_nets:wrong_outputs", ("outputs shape (5,)", "4 class probabilities")),
    ],
    ids=["no module", "no function", "not a model", "wrong outputs"],
)
def test_a_custom_model_that_cannot_be_built_is_one_line(
    own_module: str, build: str, mentions: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigError) as error:
        models.build_keras(ModelConfig(family=Family.custom, build=build), models.Inputs((4,)), 4)

    assert "\n" not in str(error.value)
    for mention in mentions:
        assert mention in str(error.value)


def test_custom_needs_its_build_and_only_custom_takes_one() -> None:
    with pytest.raises(ConfigError, match="model.family=custom needs model.build"):
        ModelConfig(family=Family.custom)
    with pytest.raises(ConfigError, match="only of it"):
        ModelConfig(family=Family.mlp, build="src.nets:small")
    with pytest.raises(ConfigError, match="<module>:<function>"):
        ModelConfig(family=Family.custom, build="src/nets.py")


def test_a_search_varies_a_custom_models_params_even_named_as_spec_words() -> None:
    from pipeline.search import space

    (param,) = space.parse({"model": {"params": {"units": {"choice": [4, 8]}}}})

    assert param.path == "model.params.units" and param.spec == {"choice": [4, 8]}


def test_a_table_model_one_hot_encodes_its_category_columns_and_standardises_the_rest() -> None:
    features = [
        {"name": "size", "type": "number"},
        {"name": "colour", "type": "category", "categories": ["blue", "green", "red"]},
    ]
    x = np.array([[1.0, 2.0], [3.0, 0.0], [5.0, 1.0]], np.float32)
    spec = models.inputs_of(x, standardize=True, features=features)
    net = models.build_keras(ModelConfig(hidden_units=[4]), spec, 2)
    import keras

    (encoding,) = [layer for layer in net.layers if type(layer).__name__ == "OneHotColumns"]
    seen = np.asarray(keras.Model(net.inputs[0], encoding.output)(x))

    np.testing.assert_allclose(seen[:, 0], (x[:, 0] - 3) / x[:, 0].std(), rtol=1e-5)
    np.testing.assert_array_equal(seen[:, 1:], [[0, 0, 1], [1, 0, 0], [0, 1, 0]])
    with pytest.raises(ConfigError, match="sklearn_logreg takes numbers only"):
        models.build_sklearn(ModelConfig(family=Family.sklearn_logreg), spec, 10, 0)
