"""The SwarmThinkers decision: choose one of K candidates from a policy's logits.

One function, :func:`choose_candidate`, turns the logits a policy gives the K candidates into
the chosen index, its log-probability, the step's importance log-weight ``−log(K π_a)`` and the
per-step ESS ratio (docs/physics.md, SwarmThinkers). Training (the PPO rollout through
:func:`swarm_jax.agents.acting.choose`) and production (:func:`swarm_jax.swarm.policy.candidates_step`,
which the production runner and the sampling benchmark step through) both choose through it, so
a checkpoint's actor picks candidates the same way in both.

The draw is Gumbel-max on the float32 log-probabilities ``log_softmax(logits)``; the returned
log-probability, log-weight and ESS are computed in ``dtype``: float32 for the PPO loss, float64
where long trajectories accumulate log-weights (for uniform logits the log-weight is exactly 0
in either).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from swarm_jax.swarm.weights import ess_ratio, step_log_weight

__all__ = ["Decision", "decision_of", "choose_candidate"]


@struct.dataclass
class Decision:
    """A choice among K candidates (any leading batch axes ``(...)``).

    Attributes:
      action: (...) int32 index of the chosen candidate.
      log_prob: (...) ``log π_action``.
      step_log_weight: (...) ``log w = −log K − log π_action`` (0 for the uniform policy).
      ess: (...) per-step ESS ratio ``K² / Σ_j 1/π_j`` of the distribution, in [0, 1].
    """

    action: jax.Array
    log_prob: jax.Array
    step_log_weight: jax.Array
    ess: jax.Array


def decision_of(log_probs: jax.Array, action: jax.Array) -> Decision:
    """The :class:`Decision` of choosing ``action`` (...) under the normalised ``log_probs`` (..., K)
    (all fields in the dtype of ``log_probs``, the action as int32)."""
    action = jnp.asarray(action).astype(jnp.int32)
    return Decision(
        action=action,
        log_prob=jnp.take_along_axis(log_probs, action[..., None], axis=-1)[..., 0],
        step_log_weight=step_log_weight(log_probs, action),
        ess=ess_ratio(log_probs),
    )


def choose_candidate(logits: jax.Array, key: jax.Array, dtype=jnp.float32) -> Decision:
    """Samples one candidate per row from ``softmax(logits)``.

    Args:
      logits: (..., K) scores of the candidates (cast to float32).
      key: PRNG key (one key for the whole batch).
      dtype: float dtype of the returned log-probability, log-weight and ESS (static).

    Returns:
      A :class:`Decision` with leading axes ``(...)``.
    """
    logits = jnp.asarray(logits).astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    action = jax.random.categorical(key, log_probs)
    if jnp.dtype(dtype) != jnp.float32:
        log_probs = jax.nn.log_softmax(logits.astype(dtype), axis=-1)
    return decision_of(log_probs, action)
