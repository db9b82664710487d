"""What the command lines (``train.py``, ``python -m swarm_jax.simulate``, ``python -m
swarm_jax.analyze``) share: an argparse parser that reports a bad flag as one exception (so the
command prints one line and exits 2, with no usage dump and no SystemExit from inside ``main``)
an integer-count argument type that also takes ``1e5`` and ``100_000``, and the handling of
SIGINT/SIGTERM outside a graceful stop (:class:`Interrupted`: one line and exit ``128 + signal``
instead of a traceback).

A utility beside the layers: it imports nothing from the package.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys

__all__ = ["Interrupted", "OneLineParser", "count", "exit_code", "exit_on_uncaught_interrupt",
           "ignore_interrupts",
           "install_interrupt_handlers", "signal_name"]


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


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM where a command line has no graceful stop of its own (start-up,
    compilation, a checkpoint or the final write): it unwinds to ``main``, which prints one line
    and returns :func:`exit_code`. ``signum`` is the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def install_interrupt_handlers() -> None:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread (a graceful stop such as
    ``GracefulInterrupt`` replaces them for its block and restores them afterwards)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_interrupted)


def ignore_interrupts() -> None:
    """While a command reports an interruption: further signals change nothing (no traceback
    from a second Ctrl-C in the middle of the last line)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def exit_code(err: BaseException) -> int:
    """128 + the signal number of an interruption: 130 for SIGINT (also a plain
    ``KeyboardInterrupt``), 143 for SIGTERM."""
    return 128 + int(getattr(err, "signum", signal.SIGINT))


def signal_name(err: BaseException) -> str:
    return signal.Signals(int(getattr(err, "signum", signal.SIGINT))).name


def exit_on_uncaught_interrupt(prog: str) -> None:
    """For a ``__main__`` module: an :class:`Interrupted` / ``KeyboardInterrupt`` that reaches
    the top level (a signal while the module's own imports run, before ``main`` catches them)
    prints one line and exits ``128 + signal`` instead of a traceback. Other exceptions keep
    Python's report."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt):
            print(f"{prog}: interrupted by {signal_name(value)} while starting; nothing was "
                  "written", file=sys.stderr, flush=True)
            os._exit(exit_code(value))
        previous(kind, value, tb)

    sys.excepthook = hook
