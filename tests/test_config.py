"""Configs compose with Hydra's compose API, and every bad value fails before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose_config
from hydra.errors import ConfigCompositionException

from pipeline.core import config
from pipeline.core.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"
PRESETS = sorted(
    p.relative_to(CONF / "experiment").with_suffix("").as_posix()
    for p in (CONF / "experiment").rglob("*.yaml")
)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_experiment_preset_is_valid(preset: str) -> None:
    settings = config.load(compose_config(overrides=(f"experiment={preset}",)))
    assert settings.dataset.name == preset.split("/")[0]
    assert settings.train.epochs > 0


def test_mnist_baseline_is_the_tutorial_mlp() -> None:
    settings = config.load(compose_config(overrides=("experiment=mnist/baseline",)))
    assert settings.model.hidden_units == [128, 64]
    assert settings.model.activation == config.Activation.sigmoid
    assert (settings.model.optimizer.name, settings.model.optimizer.lr) == (
        config.Optimizer.sgd,
        0.01,
    )
    assert settings.train.epochs == 100


@pytest.mark.parametrize("source", ["mnist", "sign_digits", "circles"])
def test_every_source_is_valid(source: str) -> None:
    settings = config.load(compose_config("fetch", (f"source={source}",)))
    assert settings.source.name == source


def test_command_line_overrides_reach_the_config() -> None:
    settings = config.load(
        compose_config(
            overrides=("dataset=mnist", "model=cnn", "model.optimizer.lr=0.05", "train.epochs=3")
        )
    )
    assert settings.dataset.name == "mnist"
    assert settings.model.family == config.Family.cnn
    assert settings.model.optimizer.lr == 0.05
    assert settings.train.epochs == 3


def test_unknown_key_fails_at_composition() -> None:
    with pytest.raises(ConfigCompositionException, match="model.dropuot"):
        compose_config(overrides=("model.dropuot=0.5",))


def test_unknown_initializer_fails_naming_the_choices() -> None:
    with pytest.raises(ConfigCompositionException) as error:
        compose_config(overrides=("model.initializer=xavier",))
    assert "glorot_uniform" in str(error.value.__cause__)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.dropout=1.0", r"model.dropout must be in \[0, 1\), got 1.0"),
        ("model.dropout=-0.1", r"model.dropout must be in \[0, 1\), got -0.1"),
        ("train.epochs=-1", "train.epochs must be > 0, got -1"),
        ("model.optimizer.lr=0", "model.optimizer.lr must be > 0"),
        ("model.hidden_units=[64,0]", "model.hidden_units must all be > 0"),
        ("dataset.split.val_fraction=0.9", "val_fraction \\+ test_fraction must be < 1"),
        ("model.l2=-1", "model.l2 must be >= 0"),
        ("tuner.cv_folds=1", "tuner.cv_folds must be >= 2"),
        ("tuner=hyperband tuner.cv_folds=5", "tuner.cv_folds needs tuner=random or tuner=bayesian"),
        (
            "train.lr_schedule=cosine train.reduce_lr_patience=2",
            "train.lr_schedule=cosine sets the learning rate every epoch",
        ),
    ],
)
def test_out_of_range_values_fail_on_load(override: str, message: str) -> None:
    cfg = compose_config(overrides=tuple(override.split()))
    with pytest.raises(ConfigError, match=message):
        config.load(cfg)


def test_flat_params_use_dotted_keys_and_plain_values() -> None:
    flat = config.to_flat_dict(compose_config(overrides=("experiment=mnist/baseline",)))
    assert flat["model.optimizer.name"] == "sgd"
    assert flat["model.hidden_units"] == [128, 64]
    assert flat["dataset.name"] == "mnist"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.dropout=1.5", "error: model.dropout must be in [0, 1), got 1.5"),
        ("model.foo=1", "error: Could not override 'model.foo': Key 'foo' not in 'ModelConfig'"),
        ("train.epochs=-2", "error: train.epochs must be > 0, got -2"),
    ],
)
def test_command_line_reports_a_bad_value_in_one_line(
    run_stage, project: Path, override: str, expected: str
) -> None:
    result = run_stage("train", override, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == expected
    assert "Traceback" not in result.stderr
    assert not (project / "mlflow.db").exists(), "no work may start on a bad config"
