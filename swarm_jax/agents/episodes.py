"""Episode bookkeeping shared by training rollouts and evaluation (PureJaxRL's ``LogWrapper`` job).

Per environment, a running episode carries its undiscounted env return, its length, the log of
its importance weight ``log W = Σ_t log w_t`` (``swarm_jax.swarm.weights.step_log_weight``) and
whether it began before the run did (a staggered first episode, not counted). :func:`advance`
folds one step in and says which episodes finished; :class:`EpisodeWindow` keeps the last
finished ones (``ep_rew_mean``, SB3's meaning); :func:`masked_log_sums` and
:func:`batch_ess_ratio_from_sums` give the batch ESS over finished trajectories in mergeable pieces.
All pure and jit/vmap-able; arrays are float32 except where stated.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array

#: Finished episodes kept for ``ep_rew_mean`` / ``ep_len_mean`` (SB3's ``stats_window_size``).
EPISODE_WINDOW = 100


def safe_mean(total: Array, count: Array) -> Array:
    """``total / count``, NaN when ``count <= 0``."""
    return jnp.where(count > 0, total / jnp.maximum(count, 1.0), jnp.nan)


def masked_log_sums(log_w: Array, mask: Array) -> tuple[Array, Array, Array]:
    """Mergeable batch-ESS statistics: ``(log Σ W, log Σ W², n)`` over entries where ``mask``."""
    lw = jnp.where(mask, log_w, -jnp.inf)
    return (
        jax.nn.logsumexp(lw),
        jax.nn.logsumexp(2.0 * lw),
        jnp.sum(mask.astype(jnp.float32)),
    )


def batch_ess_ratio_from_sums(log_sum_w: Array, log_sum_w2: Array, n: Array) -> Array:
    """``(Σ W)² / (n Σ W²)`` from log-sums; NaN when ``n == 0``. Equals ``weights.batch_ess_ratio``."""
    n = jnp.asarray(n, jnp.result_type(log_sum_w))
    val = jnp.exp(2.0 * log_sum_w - jnp.log(jnp.maximum(n, 1.0)) - log_sum_w2)
    return jnp.where(n > 0, val, jnp.nan)


@struct.dataclass
class RunningEpisodes:
    """The running episode of each of ``n`` environments (all ``(n,)``).

    Attributes:
        ret: float32 undiscounted env return so far.
        length: int32 steps so far.
        log_weight: float32 trajectory log importance weight so far.
        partial: bool, the episode began before the run (not counted when it finishes).
    """

    ret: Array
    length: Array
    log_weight: Array
    partial: Array

    @classmethod
    def zeros(cls, n: int, partial: Array | None = None) -> "RunningEpisodes":
        return cls(ret=jnp.zeros((n,), jnp.float32), length=jnp.zeros((n,), jnp.int32),
                   log_weight=jnp.zeros((n,), jnp.float32),
                   partial=jnp.zeros((n,), bool) if partial is None else partial)


def advance(episodes: RunningEpisodes, reward: Array, step_log_weight: Array,
            done: Array) -> tuple[RunningEpisodes, dict]:
    """Fold one step of ``(n,)`` env rewards, step log-weights and done flags in.

    Returns:
        ``(episodes, record)``: the running episodes after the step (restarted where ``done``)
        and a dict of ``(n,)`` arrays describing the step's episodes *including* it: ``done``,
        ``counted`` (done and not partial), ``ep_return``, ``ep_length``, ``traj_log_weight``.
    """
    ret = episodes.ret + jnp.asarray(reward, jnp.float32)
    length = episodes.length + 1
    log_w = episodes.log_weight + jnp.asarray(step_log_weight, jnp.float32)
    record = {"done": done, "counted": done & ~episodes.partial, "ep_return": ret,
              "ep_length": length, "traj_log_weight": log_w}
    restarted = RunningEpisodes(
        ret=jnp.where(done, 0.0, ret), length=jnp.where(done, 0, length),
        log_weight=jnp.where(done, 0.0, log_w), partial=episodes.partial & ~done,
    )
    return restarted, record


def finished_summary(records: dict) -> dict:
    """Episode statistics of the ``counted`` entries of stacked step records (any shape):
    ``n_episodes``, ``ep_return_sum``, ``ep_length_sum``, the batch-ESS log-sums ``log_sum_w``,
    ``log_sum_w2``, and the float64 sums ``log_w_sum``, ``log_w_sq_sum`` of the trajectory
    log-weights and of their squares (for :func:`log_weight_moments`)."""
    counted = records["counted"]
    c = counted.astype(jnp.float32)
    lsw, lsw2, n = masked_log_sums(records["traj_log_weight"], counted)
    log_w = jnp.where(counted, records["traj_log_weight"], 0.0).astype(jnp.float64)
    return {
        "n_episodes": n,
        "ep_return_sum": jnp.sum(records["ep_return"] * c),
        "ep_length_sum": jnp.sum(records["ep_length"].astype(jnp.float32) * c),
        "log_sum_w": lsw,
        "log_sum_w2": lsw2,
        "log_w_sum": jnp.sum(log_w),
        "log_w_sq_sum": jnp.sum(log_w**2),
    }


def log_weight_moments(log_w_sum: Array, log_w_sq_sum: Array, n: Array) -> tuple[Array, Array]:
    """Mean and (population) variance of trajectory log-weights from their sums over ``n``
    trajectories (float64 in, float64 out); NaN when ``n == 0``."""
    n = jnp.asarray(n, jnp.float64)
    mean = safe_mean(log_w_sum, n)
    return mean, jnp.maximum(safe_mean(log_w_sq_sum, n) - mean**2, 0.0)


@struct.dataclass
class EpisodeWindow:
    """The most recent finished episodes over all environments (SB3's ``ep_info_buffer``).

    Each environment keeps its own last ``size`` finished episodes in a ring, each with a global
    *stamp* ``first_stamp + t·n_envs + n`` (unique, increasing with time: step t, then env n); the
    window is the ``size`` highest stamps over all environments, selected by a stamp threshold
    that :meth:`threshold` finds by bisection on counts. Everything is elementwise along the env
    axis or a reduction, so with the environments sharded over devices no per-env data crosses
    devices (only sums do).

    Attributes:
        returns: ``(n_envs, size)`` float32 undiscounted env returns.
        lengths: ``(n_envs, size)`` float32 episode lengths (env steps).
        stamps: ``(n_envs, size)`` int64 stamps; −1 marks an empty slot.
        count: ``(n_envs,)`` int64 episodes pushed so far (the ring's write position).
    """

    returns: Array
    lengths: Array
    stamps: Array
    count: Array

    @classmethod
    def empty(cls, n_envs: int, size: int = EPISODE_WINDOW) -> "EpisodeWindow":
        return cls(returns=jnp.zeros((n_envs, size), jnp.float32),
                   lengths=jnp.zeros((n_envs, size), jnp.float32),
                   stamps=jnp.full((n_envs, size), -1, jnp.int64),
                   count=jnp.zeros((n_envs,), jnp.int64))

    @property
    def size(self) -> int:
        return int(self.stamps.shape[-1])

    def push(self, returns: Array, lengths: Array, finished: Array, first_stamp: Array) -> "EpisodeWindow":
        """Add the entries of time-major ``(T, n_envs)`` arrays where ``finished``; each env keeps
        its ``size`` most recent. ``first_stamp``: int64 stamp of entry ``(0, 0)``."""
        t_len, n_envs = finished.shape
        size = self.size
        fin = finished.T  # (n_envs, T)
        rank = jnp.cumsum(fin, axis=1, dtype=jnp.int64) - 1  # order within the env's new episodes
        n_new = rank[:, -1:] + 1
        keep = fin & (rank >= n_new - size)  # at most `size` per env: no two share a slot
        slot = (self.count[:, None] + rank) % size
        writes = keep[..., None] & (slot[..., None] == jnp.arange(size))  # (n_envs, T, size)
        written = writes.any(axis=1)
        stamp = (jnp.asarray(first_stamp, jnp.int64)
                 + jnp.arange(t_len, dtype=jnp.int64)[None, :] * n_envs
                 + jnp.arange(n_envs, dtype=jnp.int64)[:, None])  # (n_envs, T)

        def put(old, new):  # new: (n_envs, T); one write per slot at most, so the sum is exact
            value = jnp.sum(jnp.where(writes, new[..., None].astype(old.dtype), 0), axis=1)
            return jnp.where(written, value, old)

        return EpisodeWindow(returns=put(self.returns, returns.T), lengths=put(self.lengths, lengths.T),
                             stamps=put(self.stamps, stamp), count=self.count + n_new[:, 0])

    def threshold(self) -> Array:
        """The smallest stamp τ with at most ``size`` stamps ≥ τ (bisection over counts)."""
        size = self.size

        def body(_, lo_hi):
            lo, hi = lo_hi
            mid = lo + (hi - lo) // 2
            fits = jnp.sum(self.stamps >= mid) <= size
            return jnp.where(fits, lo, mid + 1), jnp.where(fits, mid, hi)

        hi = jnp.maximum(jnp.max(self.stamps), 0) + 1
        lo, _ = jax.lax.fori_loop(0, 64, body, (jnp.zeros((), jnp.int64), hi.astype(jnp.int64)))
        return jnp.maximum(lo, 0)

    def means(self, *values: Array) -> tuple[Array, ...]:
        """Means of each of ``values`` (``returns``, ``lengths``) over the window, with one
        threshold search for all; NaN while the window is empty."""
        selected = self.stamps >= self.threshold()
        n = jnp.sum(selected).astype(jnp.float32)
        return tuple(safe_mean(jnp.sum(jnp.where(selected, v, 0.0)), n) for v in values)

    def mean(self, values: Array) -> Array:
        """Mean of ``values`` (``returns`` or ``lengths``) over the window; NaN while empty."""
        return self.means(values)[0]
