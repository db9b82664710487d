"""What the command lines (``train.py``, ``python -m swarm_jax.simulate``, ``python -m
swarm_jax.analyze``) share: an argparse parser that reports a bad flag as one exception (so the
command prints one line and exits 2, with no usage dump and no SystemExit from inside ``main``)
and an integer-count argument type that also takes ``1e5`` and ``100_000``.

A utility beside the layers: it imports nothing from the package.
"""

from __future__ import annotations

import argparse
import math

__all__ = ["OneLineParser", "count"]


class OneLineParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors raise ``error_class(message)`` (set it in a
    subclass) instead of printing the usage block and exiting."""

    error_class: type[Exception] = ValueError

    def error(self, message):
        raise self.error_class(message)


def count(text: str) -> int:
    """An integer count: ``100000``, ``1e5`` or ``100_000``; anything fractional or non-finite is
    an ``argparse.ArgumentTypeError`` (argparse turns it into one ``invalid ...`` line)."""
    cleaned = text.strip().replace("_", "")
    try:
        return int(cleaned)
    except ValueError:
        pass
    try:
        value = float(cleaned)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
    if not (math.isfinite(value) and value.is_integer()):
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}")
    return int(value)
