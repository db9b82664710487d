"""Silencing the echoes of a failed orbax write (orbax's ERROR records, asyncio's orphaned
task records, ``Event loop is closed`` from TensorStore's threads): installed only when a
command-line tool asks (:func:`quiet_orbax_write_failures`), never on import."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["quiet_orbax_failures", "quiet_orbax_write_failures"]


class _OrbaxErrorLogFilter(logging.Filter):
    """Drops orbax's own ERROR log records (a failed write logs its traceback from each of its
    threads, ~20 of them): every orbax error reaches the caller of this module as one exception
    (:class:`CheckpointWriteError` / :class:`CheckpointError`), which is what users see."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR
                    and "orbax" in Path(record.pathname).parts)


class _OrbaxOrphanTaskFilter(logging.Filter):
    """Drops asyncio's "... exception was never retrieved" records of orbax's own write tasks
    (the other writes in flight when one failed; logged when they are garbage-collected, often at
    exit). The failure itself reaches the caller as one exception."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001
            return True
        return not ("exception was never retrieved" in text and "orbax" in text)


def _drop_loop_closed(previous):
    """An ``unraisablehook`` that drops ``RuntimeError('Event loop is closed')`` and passes
    everything else to ``previous``. After a failed write orbax closes its asyncio loop while
    TensorStore still completes the other writes in flight; each completion then fails with that
    error as an *unraisable* exception (dozens of tracebacks on stderr)."""

    def hook(unraisable):
        err = unraisable.exc_value
        if isinstance(err, RuntimeError) and str(err) == "Event loop is closed":
            return
        previous(unraisable)

    hook.swarm_jax_orbax_filter = True
    return hook


def quiet_orbax_write_failures() -> Callable[[], None]:
    """Silences the echoes of a failed orbax write, process-wide, and returns the function that
    undoes it. Idempotent; nothing is installed on import.

    A failed write reaches the caller of this module as one exception
    (:class:`CheckpointWriteError` / :class:`CheckpointError`), but orbax also logs its traceback
    from each of its threads (~20), asyncio logs "exception was never retrieved" for the other
    writes in flight (when they are garbage-collected, often at exit), and TensorStore raises
    unraisable "Event loop is closed" errors. This drops those records and only those: orbax's
    own ERROR records on the ``absl`` logger, asyncio's orphan-task records of orbax tasks, and
    the "Event loop is closed" unraisables. The command-line tools (``train.py``,
    ``swarm-simulate``, ``python -m swarm_jax.bench``) call it first thing, since they own their
    process; a library user may call it, or use :func:`quiet_orbax_failures` as a scope.
    """
    filters = ((logging.getLogger("absl"), _OrbaxErrorLogFilter),
               (logging.getLogger("asyncio"), _OrbaxOrphanTaskFilter))
    added = []
    for logger, kind in filters:
        if not any(isinstance(f, kind) for f in logger.filters):
            added.append((logger, kind()))
            logger.addFilter(added[-1][1])
    hook = None
    if not getattr(sys.unraisablehook, "swarm_jax_orbax_filter", False):
        previous = sys.unraisablehook
        hook = sys.unraisablehook = _drop_loop_closed(previous)

    def undo() -> None:
        for logger, f in added:
            logger.removeFilter(f)
        if hook is not None and sys.unraisablehook is hook:
            sys.unraisablehook = previous

    return undo


@contextlib.contextmanager
def quiet_orbax_failures():
    """:func:`quiet_orbax_write_failures` for the duration of a ``with`` block."""
    undo = quiet_orbax_write_failures()
    try:
        yield
    finally:
        undo()
