"""Checks on config values that give one actionable line instead of a traceback deep in torch."""

from collections.abc import Iterable
from typing import Any

from microtrain.errors import ConfigError


def number(value: Any, key: str, *, positive: bool = False, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}={value!r} is not a number; set it like {key}=0.1")
    if value != value:
        raise ConfigError(f"{key} is NaN; give a finite number")
    if positive and value <= 0:
        raise ConfigError(f"{key}={value} must be greater than 0")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key}={value} must be at least {minimum}")
    return float(value)


def integer(value: Any, key: str, *, minimum: int | None = None, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}={value!r} is not a whole number; set it like {key}=32")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key}={value} must be at least {minimum}")
    return value


def fraction(value: Any, key: str) -> float:
    number(value, key)
    if not 0 <= value < 1:
        raise ConfigError(f"{key}={value} must be in [0, 1); use 0 for none")
    return float(value)


def choice(value: Any, key: str, options: Iterable[str]) -> str:
    options = list(options)
    if value not in options:
        raise ConfigError(f"{key}={value!r} is not one of: {', '.join(options)}")
    return value
