"""What TensorBoard shows of a log folder, read with TensorBoard's own ``EventAccumulator``.

The package never parses event files itself (it reads its metrics CSV); the tests use this to
check the TensorBoard side. ``purge_orphaned_data`` is on, as in TensorBoard: a ``SessionLog.START``
event written by a resumed writer (``purge_step=s``) discards the events read before it at steps
``>= s``. Files are read in name order, as TensorBoard reads them.
"""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator


def tensorboard_scalars(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of every scalar TensorBoard shows for ``logdir``."""
    acc = EventAccumulator(str(logdir), size_guidance={SCALARS: 0}, purge_orphaned_data=True)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()[SCALARS]}
