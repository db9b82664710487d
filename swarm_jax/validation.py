"""Checks of configuration values shared by every config class (a utility: standard library only).

Each checker takes the dotted name of the field as a user writes it (``ppo.learning_rate``), the
value given, and returns the value coerced (numeric strings such as ``"3e-4"``, which PyYAML reads
from ``3e-4``, become numbers), or raises a :class:`ConfigError` whose one-line message starts with
that name, the value and what is allowed: ``ppo.learning_rate = -1: must be a number > 0``.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Mapping
from typing import Any

__all__ = ["ConfigError", "INT32_MAX", "STEPS_MAX", "X64Error", "check_bool", "check_choice",
           "check_int_list", "check_number", "fail", "require_x64", "show", "suggest"]

#: Largest value of an integer setting that JAX holds as int32 (episode step counters, update
#: counters, array sizes and scan lengths).
INT32_MAX = 2**31 - 1
#: Largest env-step count (training.total_timesteps, checkpoint_freq): env-step counters are int64
#: and grow by n_envs per step, so keep a factor-2 headroom below 2**63.
STEPS_MAX = 2**62


class ConfigError(ValueError):
    """A configuration problem. ``field`` is the dotted name of the offending entry (or ``None``)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def show(value: Any, limit: int = 80) -> str:
    """repr() for messages, shortened (and safe for huge ints, whose repr may raise)."""
    try:
        text = repr(value)
    except ValueError:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fail(path: str, value: Any, allowed: str, extra: str = "") -> ConfigError:
    """The error ``path = value: must be allowed[extra]``."""
    return ConfigError(f"{path} = {show(value)}: must be {allowed}{extra}", field=path)


def _bounds_text(gt=None, ge=None, lt=None, le=None, unit: str = "") -> str:
    unit = f" {unit}" if unit else ""
    lo = None if gt is None and ge is None else ("(" if gt is not None else "[")
    hi = None if lt is None and le is None else (")" if lt is not None else "]")
    a = gt if gt is not None else ge
    b = lt if lt is not None else le
    if lo and hi:
        return f"in {lo}{a}, {b}{hi}{unit}"
    if lo:
        return f"{'>' if gt is not None else '>='} {a}{unit}"
    if hi:
        return f"{'<' if lt is not None else '<='} {b}{unit}"
    return "finite"


def check_number(path: str, value: Any, *, integer: bool = False, gt=None, ge=None, lt=None,
                 le=None, unit: str = "", cap: int | None = INT32_MAX):
    """Coerces ``value`` to an int or a finite float and checks the bounds (numeric strings ok).

    Integers without an upper bound (``le``/``lt``) are capped at ``cap`` (default
    :data:`INT32_MAX`: values JAX stores as int32), so that ``1e30`` is one clear line rather than
    an ``OverflowError`` later.
    """
    kind = "an integer" if integer else "a number"
    allowed = f"{kind} {_bounds_text(gt, ge, lt, le, unit)}"
    if integer and le is None and lt is None and cap is not None:
        le = cap
        allowed += f" and <= {cap}"
    if isinstance(value, bool) or value is None:
        raise fail(path, value, allowed)
    raw = value
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise fail(path, raw, allowed) from None
    if not isinstance(value, numbers.Real):
        raise fail(path, raw, allowed, f" (got {type(raw).__name__})")
    if not isinstance(value, numbers.Integral) and not math.isfinite(float(value)):
        raise fail(path, raw, allowed)
    if integer:
        if isinstance(value, numbers.Integral):
            value = int(value)
        elif float(value).is_integer():
            value = int(float(value))
        else:
            raise fail(path, raw, allowed)
    else:
        try:
            value = float(value)
        except OverflowError:
            raise fail(path, raw, allowed) from None
    if ((gt is not None and not value > gt) or (ge is not None and not value >= ge)
            or (lt is not None and not value < lt) or (le is not None and not value <= le)):
        raise fail(path, raw, allowed)
    return value


def check_bool(path: str, value: Any) -> bool:
    """``value`` if it is ``True`` or ``False`` (no truthy numbers or strings)."""
    if not isinstance(value, bool):
        raise fail(path, value, "true or false")
    return value


def suggest(key: Any, allowed) -> str:
    """`` (did you mean 'x'?)`` for the closest allowed name, or ``""``."""
    if not isinstance(key, str):
        return ""
    match = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def check_choice(path: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of the strings ``choices``."""
    if not isinstance(value, str) or value not in choices:
        hint = suggest(value, choices) if isinstance(value, str) else ""
        raise ConfigError(f"{path} = {show(value)}: must be one of {', '.join(map(repr, choices))}{hint}",
                          field=path)
    return value


def check_int_list(path: str, value: Any, *, allowed: str, mins, length: int | None = None
                   ) -> tuple[int, ...]:
    """A non-empty list/tuple of integers as a tuple; ``mins(i)`` is the lower bound of entry ``i``."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
        raise fail(path, value, allowed)
    if (length is not None and len(value) != length) or len(value) == 0:
        raise fail(path, value, allowed)
    out = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (numbers.Integral, float, str)):
            raise fail(path, value, allowed)
        try:
            n = check_number(f"{path}[{i}]", v, integer=True, ge=mins(i))
        except ConfigError:
            raise fail(path, value, allowed, f" (each <= {INT32_MAX})") from None
        out.append(n)
    return tuple(out)


class X64Error(RuntimeError):
    """JAX's 64-bit mode is off where the KMC needs float64 (see :func:`require_x64`)."""


def require_x64(what: str) -> None:
    """Raise :class:`X64Error` (one line) unless JAX's 64-bit mode is on (globally or in a
    ``jax.enable_x64(True)`` scope): the KMC clock, selection and rate totals are float64, and
    with the mode off JAX would silently build them as float32. A Python check, so free under
    ``jit`` (it runs at trace time)."""
    import jax

    if not jax.config.jax_enable_x64:
        raise X64Error(f"64-bit mode is off: call swarm_jax.enable_x64() before building {what} "
                       "(the KMC clock, selection and rate totals are float64)")
