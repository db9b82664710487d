"""TensorBoard logging, event-file reading, learning-curve plots and the ESS early-stop monitor.

Tags follow the seed's SB3 pipeline, so existing dashboards keep working::

    metric key      TensorBoard tag          metric key      TensorBoard tag
    ep_rew_mean     rollout/ep_rew_mean      ess_ratio       custom/ess_ratio
    ep_len_mean     rollout/ep_len_mean      batch_ess       custom/batch_ess
    policy_loss     train/policy_loss        roughness       custom/roughness
    value_loss      train/value_loss         coverage        custom/coverage
    entropy         train/entropy            o_ti_ratio      custom/o_ti_ratio
    approx_kl       train/approx_kl          fps             time/fps
    clip_fraction   train/clip_fraction      ess_lambda      train/ess_lambda
    ess_constraint  train/ess_constraint     ess_loss        train/ess_loss
    reward_scale    train/reward_scale

``ep_rew_mean``/``ep_len_mean`` are SB3's: the mean over the last 100 finished episodes.
``ess_lambda`` is the Lagrange multiplier of the ESS constraint and ``ess_constraint`` its value,
``ess_target − mean per-step ESS ratio`` (≤ 0 when the constraint holds).

A key that already contains ``/`` is used as the tag verbatim; any other unknown key is logged as
``custom/<key>``. The x axis (``step``) is environment steps summed over all parallel envs.

Only JAX process 0 writes, so multi-host runs produce one event stream. The module is host-side
Python: call it between jitted chunks of updates, never inside ``jit``.
"""

from __future__ import annotations

import math
import os
import struct
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = [
    "DEFAULT_PLOT_TAGS",
    "ESSMonitor",
    "METRIC_TAGS",
    "TensorBoardLogger",
    "metric_tag",
    "plot_learning_curves",
    "read_scalars",
]

METRIC_TAGS: dict[str, str] = {
    "ep_rew_mean": "rollout/ep_rew_mean",
    "ep_len_mean": "rollout/ep_len_mean",
    "policy_loss": "train/policy_loss",
    "value_loss": "train/value_loss",
    "entropy": "train/entropy",
    "approx_kl": "train/approx_kl",
    "clip_fraction": "train/clip_fraction",
    "ess_lambda": "train/ess_lambda",
    "ess_constraint": "train/ess_constraint",
    "ess_loss": "train/ess_loss",
    "reward_scale": "train/reward_scale",
    "ess_ratio": "custom/ess_ratio",
    "batch_ess": "custom/batch_ess",
    "roughness": "custom/roughness",
    "coverage": "custom/coverage",
    "o_ti_ratio": "custom/o_ti_ratio",
    "fps": "time/fps",
}

DEFAULT_PLOT_TAGS: tuple[str, ...] = (
    "rollout/ep_rew_mean",
    "train/policy_loss",
    "train/value_loss",
    "train/entropy",
    "custom/ess_ratio",
    "train/ess_lambda",
    "custom/roughness",
    "custom/coverage",
    "time/fps",
)

_EVENT_GLOB = "*tfevents*"


def metric_tag(key: str) -> str:
    """The TensorBoard tag of metric ``key`` (see the module docstring)."""
    if key in METRIC_TAGS:
        return METRIC_TAGS[key]
    return key if "/" in key else f"custom/{key}"


def _as_float(value: Any, key: str) -> float:
    arr = np.asarray(jax.device_get(value))
    if arr.size != 1:
        raise ValueError(f"metric {key!r} has shape {arr.shape}: only scalars can be logged")
    return float(arr.reshape(()))


class TensorBoardLogger:
    """Scalar logging to a TensorBoard event file in ``logdir`` (tensorboardX).

    Args:
        logdir: directory of the event files (created on process 0).
        purge_step: when resuming from a checkpoint at this step, pass it here: TensorBoard (and
            :func:`read_scalars`) then drop the earlier events with ``step >= purge_step``,
            which a crash after the checkpoint would otherwise duplicate.
        flush_every_log: flush the event file after each :meth:`log_scalars` (default True:
            logs are rare, and a killed run keeps everything logged so far).
    """

    def __init__(self, logdir: str | Path, purge_step: int | None = None,
                 flush_every_log: bool = True):
        self.logdir = Path(logdir)
        self.flush_every_log = flush_every_log
        self._writer = None
        if jax.process_index() == 0:
            from tensorboardX import SummaryWriter

            self.logdir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(
                logdir=str(self.logdir),
                purge_step=None if purge_step is None else int(purge_step),
                flush_secs=30,
                # tensorboardX names files by the second and opens them "wb": two writers in
                # the same second (a quick restart) would overwrite each other without this.
                filename_suffix=f".{os.getpid()}.{uuid.uuid4().hex[:8]}",
            )

    @property
    def active(self) -> bool:
        """True on the process that writes (JAX process 0)."""
        return self._writer is not None

    def log_scalars(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Log every scalar of ``metrics`` (Python/numpy/JAX scalars; ``None`` skipped) at ``step``.

        Raises:
            ValueError: a metric value is not a scalar.
        """
        values = {
            metric_tag(k): _as_float(v, k) for k, v in metrics.items() if v is not None
        }  # converted on every process, so a bad metric fails everywhere alike
        if self._writer is None:
            return
        for tag, value in values.items():
            self._writer.add_scalar(tag, value, global_step=int(step))
        if self.flush_every_log:
            self._writer.flush()

    def log_text(self, tag: str, text: str, step: int = 0) -> None:
        """Log a text note (e.g. the run config as YAML) under ``tag``."""
        if self._writer is not None:
            self._writer.add_text(tag, text, global_step=int(step))
            if self.flush_every_log:
                self._writer.flush()

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# Reading event files back
# --------------------------------------------------------------------------------------------


def _records(path: Path) -> Iterable[bytes]:
    """Payloads of the TFRecord file ``path``; stops at a truncated or corrupt tail.

    Record layout: uint64 length, uint32 masked CRC32C of the length, payload, uint32 masked
    CRC32C of the payload (all little-endian).
    """
    from tensorboardX.record_writer import masked_crc32c

    data = path.read_bytes()
    pos = 0
    while pos + 12 <= len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        end = pos + 12 + length + 4
        if header_crc != masked_crc32c(header) or end > len(data):
            return  # a writer killed mid-record leaves a partial tail: ignore it
        payload = data[pos + 12 : pos + 12 + length]
        (payload_crc,) = struct.unpack("<I", data[end - 4 : end])
        if payload_crc != masked_crc32c(payload):
            return
        yield payload
        pos = end


def _scalar_value(value: Any) -> float | None:
    """The float of a ``Summary.Value``, or None if it is not a scalar summary."""
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        return float(value.simple_value)
    if kind == "tensor" and value.tensor.tensor_shape.dim == []:
        t = value.tensor
        for field in ("float_val", "double_val", "int_val", "int64_val"):
            vals = getattr(t, field)
            if len(vals) == 1:
                return float(vals[0])
    return None


def read_scalars(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files of ``logdir``: ``{tag: [(step, value), ...]}`` by step.

    Files are read in the order they were created (wall time of their first event); a ``purge_step``
    marker written by a resumed :class:`TensorBoardLogger` drops earlier events at steps
    ``>= purge_step``, as TensorBoard does. Sub-directories are not read.

    Raises:
        FileNotFoundError: ``logdir`` holds no event file.
    """
    from tensorboardX.proto.event_pb2 import Event, SessionLog

    logdir = Path(logdir)
    files = sorted(p for p in logdir.glob(_EVENT_GLOB) if p.is_file())
    if not files:
        raise FileNotFoundError(f"no TensorBoard event file in {logdir}")
    streams = []
    for path in files:
        events = []
        for payload in _records(path):
            event = Event()
            event.ParseFromString(payload)
            events.append(event)
        start = events[0].wall_time if events else math.inf
        streams.append((start, path.name, events))
    streams.sort(key=lambda s: (s[0], s[1]))  # by creation time: names alone tie within a second

    scalars: dict[str, list[tuple[int, float]]] = {}
    for _, _, events in streams:
        for event in events:
            kind = event.WhichOneof("what")
            if kind == "session_log" and event.session_log.status == SessionLog.START:
                for tag, points in scalars.items():
                    scalars[tag] = [(s, v) for s, v in points if s < event.step]
            elif kind == "summary":
                for value in event.summary.value:
                    x = _scalar_value(value)
                    if x is not None:
                        scalars.setdefault(value.tag, []).append((int(event.step), x))
    return {tag: sorted(points, key=lambda p: p[0]) for tag, points in scalars.items() if points}


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def plot_learning_curves(
    logdir_or_scalars: str | Path | Mapping[str, list[tuple[int, float]]],
    out_png: str | Path,
    tags: Iterable[str] | None = None,
    title: str | None = None,
) -> Path:
    """Plot one panel per tag (value vs environment steps) into ``out_png``; return its path.

    Args:
        logdir_or_scalars: a log directory, or the output of :func:`read_scalars`.
        out_png: the PNG file to write (parent directories are created).
        tags: tags to plot, in order; default: those of :data:`DEFAULT_PLOT_TAGS` present in the
            data, or every tag if none of them is. A requested tag without data gets a
            "no data" panel.
        title: optional figure title.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if isinstance(logdir_or_scalars, Mapping):
        scalars = dict(logdir_or_scalars)
    else:
        scalars = read_scalars(logdir_or_scalars)
    if tags is None:
        tags = [t for t in DEFAULT_PLOT_TAGS if t in scalars] or sorted(scalars)
    tags = list(tags)
    if not tags:
        raise ValueError("nothing to plot: no tags given and no scalars found")

    ncols = min(3, len(tags))
    nrows = math.ceil(len(tags) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows), layout="constrained")
    FigureCanvasAgg(fig)  # Agg, independent of pyplot's global backend
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, tag in zip(axes, tags):
        points = scalars.get(tag, [])
        ax.set_title(tag, fontsize=10)
        ax.set_xlabel("environment steps")
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, lw=1.2, marker="." if len(points) < 50 else None)
            ax.grid(alpha=0.3)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    for ax in axes[len(tags):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


# --------------------------------------------------------------------------------------------
# ESS early stop
# --------------------------------------------------------------------------------------------


class ESSMonitor:
    """Early stop when the ESS ratio stays below ``threshold`` for ``patience`` consecutive logs.

    The seed's ``ESSMonitorCallback`` as a plain object: call :meth:`update` once per log with the
    mean ESS ratio (effective sample size / number of samples, in [0, 1]). A non-finite ESS
    counts as below the threshold (a broken importance weight is no reason to go on).

    Args:
        threshold: ESS ratio below which a log counts as bad; ``None`` disables the monitor.
        patience: number of consecutive bad logs that stops training (>= 1).

    Attributes:
        below_count: current run of consecutive bad logs (store it in checkpoint metadata to
            carry it across a resume).
        reason: ``None`` until :meth:`update` first returns True, then a message for the log.
    """

    def __init__(self, threshold: float | None, patience: int = 1):
        if threshold is not None and not (0.0 <= float(threshold) <= 1.0):
            raise ValueError(f"threshold = {threshold}: must be an ESS ratio in [0, 1] or None")
        if int(patience) < 1:
            raise ValueError(f"patience = {patience}: must be >= 1")
        self.threshold = None if threshold is None else float(threshold)
        self.patience = int(patience)
        self.below_count = 0
        self.reason: str | None = None

    @property
    def enabled(self) -> bool:
        return self.threshold is not None

    def update(self, ess_ratio: Any) -> bool:
        """Record one logged ESS ratio; True when training should stop."""
        if self.threshold is None:
            return False
        value = _as_float(ess_ratio, "ess_ratio")
        if math.isfinite(value) and value >= self.threshold:
            self.below_count = 0
            return False
        self.below_count += 1
        if self.below_count >= self.patience:
            self.reason = (
                f"ESS ratio {value:.4g} below threshold {self.threshold:g} for "
                f"{self.below_count} consecutive logs (patience {self.patience}): stopping early"
            )
            return True
        return False
