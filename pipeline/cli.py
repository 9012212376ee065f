"""How a stage starts: Hydra composes `conf/`, and a user's mistake ends as one line, exit 1."""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from omegaconf import DictConfig

from pipeline import config
from pipeline.errors import PipelineError

# Stages run from the repository root (DVC starts them there), so its conf/ is the one in
# force, also in a test's temporary repository.
CONF_DIR = str(Path.cwd() / "conf")


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM (a killed DVC job, a CI time-out) unwinds like Ctrl-C, so open MLflow runs end KILLED.
    raise KeyboardInterrupt(f"signal {signum}")


def stage(config_name: str) -> Callable[[Callable[[DictConfig], None]], Callable[[], None]]:
    """Turn `run(cfg)` into a Hydra command-line entry point reading conf/<config_name>.yaml."""
    config.register()

    def decorate(run: Callable[[DictConfig], None]) -> Callable[[], None]:
        @hydra.main(config_path=CONF_DIR, config_name=config_name, version_base="1.3")
        @functools.wraps(run)
        def main(cfg: DictConfig) -> None:
            signal.signal(signal.SIGTERM, _interrupt)
            try:
                run(cfg)
            except PipelineError as error:
                print(f"error: {error}", file=sys.stderr)
                sys.exit(1)

        return main

    return decorate
