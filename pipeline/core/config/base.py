"""What every part of the schema shares: the check that turns a bad value into one line."""

from __future__ import annotations

from pipeline.core.errors import ConfigError


def check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
