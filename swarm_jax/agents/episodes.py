"""Episode bookkeeping shared by training rollouts and evaluation (PureJaxRL's ``LogWrapper`` job).

Per environment, a running episode carries its undiscounted env return, its length, the log of
its importance weight ``log W = Σ_t log w_t`` (``swarm_jax.swarm.weights.step_log_weight``) and
whether it began before the run did (a staggered first episode, not counted). :func:`advance`
folds one step in and says which episodes finished; :class:`EpisodeWindow` keeps the last
finished ones (``ep_rew_mean``, SB3's meaning); :func:`masked_log_sums` and
:func:`batch_ess_from_sums` give the batch ESS over finished trajectories in mergeable pieces.
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


def batch_ess_from_sums(log_sum_w: Array, log_sum_w2: Array, n: Array) -> Array:
    """``(Σ W)² / (n Σ W²)`` from log-sums; NaN when ``n == 0``. Equals ``weights.batch_ess``."""
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
    ``n_episodes``, ``ep_return_sum``, ``ep_return_sq_sum``, ``ep_length_sum`` and the batch-ESS
    log-sums ``log_sum_w``, ``log_sum_w2``."""
    counted = records["counted"]
    c = counted.astype(jnp.float32)
    lsw, lsw2, n = masked_log_sums(records["traj_log_weight"], counted)
    return {
        "n_episodes": n,
        "ep_return_sum": jnp.sum(records["ep_return"] * c),
        "ep_return_sq_sum": jnp.sum(records["ep_return"] ** 2 * c),
        "ep_length_sum": jnp.sum(records["ep_length"].astype(jnp.float32) * c),
        "log_sum_w": lsw,
        "log_sum_w2": lsw2,
    }


@struct.dataclass
class EpisodeWindow:
    """The most recent finished episodes, oldest first (a fixed-size window, SB3's ``ep_info_buffer``).

    Attributes:
        returns: ``(EPISODE_WINDOW,)`` float32 undiscounted env returns.
        lengths: ``(EPISODE_WINDOW,)`` float32 episode lengths (env steps).
        valid: ``(EPISODE_WINDOW,)`` bool, the slot holds an episode (fewer have finished so far).
    """

    returns: Array
    lengths: Array
    valid: Array

    @classmethod
    def empty(cls, size: int = EPISODE_WINDOW) -> "EpisodeWindow":
        return cls(returns=jnp.zeros((size,), jnp.float32), lengths=jnp.zeros((size,), jnp.float32),
                   valid=jnp.zeros((size,), bool))

    def push(self, returns: Array, lengths: Array, finished: Array) -> "EpisodeWindow":
        """Append the entries of ``(T, N)`` arrays where ``finished``, in time-major order (step t,
        then env n), dropping the oldest beyond the window. Static shapes: one ``top_k``."""
        size = self.valid.shape[0]
        new_prio = jnp.where(finished.reshape(-1),
                             size + jnp.arange(finished.size, dtype=jnp.int32), -1)
        old_prio = jnp.where(self.valid, jnp.arange(size, dtype=jnp.int32), -1)
        prio = jnp.concatenate([old_prio, new_prio])
        _, idx = jax.lax.top_k(prio, size)  # newest first
        idx = idx[::-1]  # oldest first

        def pick(old, new):
            return jnp.concatenate([old, new.reshape(-1).astype(old.dtype)])[idx]

        return EpisodeWindow(returns=pick(self.returns, returns), lengths=pick(self.lengths, lengths),
                             valid=prio[idx] >= 0)

    def mean(self, values: Array) -> Array:
        """Mean of ``values`` over the valid slots; NaN while none is."""
        n = self.valid.sum().astype(jnp.float32)
        return safe_mean(jnp.sum(jnp.where(self.valid, values, 0.0)), n)
