"""TensorBoard logging, metrics-CSV reading, learning-curve plots and the ESS early-stop monitor.

Tags follow the original project's SB3 pipeline, so existing dashboards keep working::

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

The package reads its own metrics back from the trainer's ``metrics_stageN.csv`` (same metrics,
one column per metric key, :func:`read_metrics`), never from the event files: those are for
TensorBoard itself.

Only JAX process 0 writes, so multi-host runs produce one event stream. The module is host-side
Python: call it between jitted chunks of updates, never inside ``jit``.
"""

from __future__ import annotations

import csv
import math
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = [
    "DEFAULT_PLOT_METRICS",
    "ESSMonitor",
    "METRIC_TAGS",
    "TensorBoardLogger",
    "metric_tag",
    "plot_learning_curves",
    "read_metrics",
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

#: The panels :func:`plot_learning_curves` draws by default (metrics CSV columns).
DEFAULT_PLOT_METRICS: tuple[str, ...] = (
    "ep_rew_mean",
    "policy_loss",
    "value_loss",
    "entropy",
    "ess_ratio",
    "ess_lambda",
    "roughness",
    "coverage",
    "fps",
)


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
            its ``EventAccumulator``) then drop the earlier events with ``step >= purge_step``,
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
                # the same second (a quick restart) would overwrite each other without a
                # suffix, and TensorBoard reads a folder's files in name order, so the suffix
                # starts with the creation time in ns (19 digits: names sort in time order).
                filename_suffix=f".{time.time_ns()}.{os.getpid()}.{uuid.uuid4().hex[:8]}",
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
# Reading the metrics CSV back
# --------------------------------------------------------------------------------------------


def read_metrics(csv_path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every metric of a trainer's ``metrics_stageN.csv``: ``{column: [(env_steps, value), ...]}``.

    One entry per column but ``env_steps`` (the x axis: environment steps summed over the
    parallel envs), in row order, which is step order: on resume the trainer drops the rows
    after the checkpoint, as the TensorBoard logger's ``purge_step`` does for its events. Empty
    and non-finite cells are left out (TensorBoard gets no point for them either), and a column
    with no value at all is left out.

    Raises:
        FileNotFoundError: no file at ``csv_path``.
        ValueError: the file has no ``env_steps`` column.
    """
    path = Path(csv_path)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if "env_steps" not in (reader.fieldnames or []):
            raise ValueError(f"{path}: no env_steps column (not a metrics CSV of the trainer)")
        metrics: dict[str, list[tuple[int, float]]] = {}
        for row in reader:
            step = int(float(row["env_steps"]))
            for column, text in row.items():
                value = float(text) if column != "env_steps" and text else math.nan
                if math.isfinite(value):
                    metrics.setdefault(column, []).append((step, value))
    return metrics


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def plot_learning_curves(
    csv_or_metrics: str | Path | Mapping[str, list[tuple[int, float]]],
    out_png: str | Path,
    metrics: Iterable[str] | None = None,
    title: str | None = None,
) -> Path:
    """Plot one panel per metric (value vs environment steps) into ``out_png``; return its path.

    Args:
        csv_or_metrics: a trainer's ``metrics_stageN.csv``, or the output of :func:`read_metrics`.
        out_png: the PNG file to write (parent directories are created).
        metrics: columns to plot, in order; default: those of :data:`DEFAULT_PLOT_METRICS` present
            in the data, or every column if none of them is. A requested column without data gets
            a "no data" panel.
        title: optional figure title.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if isinstance(csv_or_metrics, Mapping):
        data = dict(csv_or_metrics)
    else:
        data = read_metrics(csv_or_metrics)
    if metrics is None:
        metrics = [m for m in DEFAULT_PLOT_METRICS if m in data] or sorted(data)
    names = list(metrics)
    if not names:
        raise ValueError("nothing to plot: no metrics given and none found")

    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows), layout="constrained")
    FigureCanvasAgg(fig)  # Agg, independent of pyplot's global backend
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        points = data.get(name, [])
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("environment steps")
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, lw=1.2, marker="." if len(points) < 50 else None)
            ax.grid(alpha=0.3)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    for ax in axes[len(names):]:
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

    The original project's ``ESSMonitorCallback`` as a plain object: call :meth:`update` once per log with the
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
