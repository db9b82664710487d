"""Importance weights and effective sample sizes of the SwarmThinkers choice (docs/physics.md, SwarmThinkers).

Given ``K`` candidates drawn i.i.d. from the physical distribution ``Γ_e / Γ_tot``, physics
would pick each with probability ``1/K``; a policy picks candidate ``a`` with probability
``π_a``. The exact step weight is ``w = 1 / (K π_a)`` and a trajectory's weight is the product
of its step weights. For any observable ``A`` of a trajectory ``E_physics[A] = E_policy[W A]``.

Everything here works on natural-log probabilities ``log π`` (shape ``(..., K)``, any leading
batch axes) and stays in log-space, so sharp policies (``π_j`` down to ``1e-30`` and below) give
finite, exact answers. All functions are pure and jit/vmap-able; dtypes follow the inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp


def step_log_weight(log_probs: jnp.ndarray, action: jnp.ndarray) -> jnp.ndarray:
    """Log step weight ``log w = −log K − log π_a``.

    Args:
      log_probs: (..., K) log-probabilities of the policy over the K candidates (normalised).
      action: (...) integer index of the chosen candidate.

    Returns:
      (...) log weight; 0 for the uniform policy.
    """
    k = log_probs.shape[-1]
    log_pi_a = jnp.take_along_axis(log_probs, jnp.asarray(action)[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return -jnp.log(jnp.asarray(k, log_probs.dtype)) - log_pi_a


def ess_ratio(log_probs: jnp.ndarray) -> jnp.ndarray:
    """Per-step ESS ratio ``K² / Σ_j 1/π_j`` in [0, 1], computed as ``exp(2 log K − LSE(−log π))``.

    It equals ``(Σ_j π_j w_j)² / Σ_j π_j w_j²`` with ``w_j = 1/(K π_j)``: 1 for the uniform
    policy, smaller as the policy sharpens, 0 when some candidate has ``π_j = 0``.

    Args:
      log_probs: (..., K) normalised log-probabilities.

    Returns:
      (...) ESS ratio.
    """
    k = log_probs.shape[-1]
    log_k = jnp.log(jnp.asarray(k, log_probs.dtype))
    return jnp.exp(2.0 * log_k - logsumexp(-log_probs, axis=-1))


def ess_ratio_from_logits(logits: jnp.ndarray) -> jnp.ndarray:
    """:func:`ess_ratio` of ``softmax(logits)`` over the last axis, (..., K) -> (...)."""
    return ess_ratio(jax.nn.log_softmax(logits, axis=-1))


def trajectory_log_weight(step_log_weights: jnp.ndarray, axis: int = 0) -> jnp.ndarray:
    """Log weight of whole trajectories, ``log W = Σ_t log w_t``, summed over ``axis`` (time)."""
    return jnp.sum(step_log_weights, axis=axis)


def accumulate_log_weight(carry: jnp.ndarray, step_log_w: jnp.ndarray, done: jnp.ndarray):
    """One step of the running trajectory log-weight across auto-resetting episodes.

    Args:
      carry: (...) log weight of the current episode so far (0 at an episode start).
      step_log_w: (...) this step's log weight (:func:`step_log_weight`).
      done: (...) bool, this step ended the episode.

    Returns:
      ``(next_carry, episode_log_w)``: the episode's log weight including this step, and the
      carry for the next step (reset to 0 where ``done``). Use inside ``lax.scan`` over steps.
    """
    episode_log_w = carry + step_log_w
    return jnp.where(done, jnp.zeros_like(episode_log_w), episode_log_w), episode_log_w


def batch_ess_ratio(log_weights: jnp.ndarray) -> jnp.ndarray:
    """Batch ESS ratio ``ESS / n = (Σ W_i)² / (n Σ W_i²)`` in [1/n, 1] for log weights (n,).

    Computed as ``exp(2 LSE(log W) − log n − LSE(2 log W))``: no overflow for any log weights.
    """
    n = log_weights.shape[0]
    return jnp.exp(
        2.0 * logsumexp(log_weights) - jnp.log(jnp.asarray(n, log_weights.dtype)) - logsumexp(2.0 * log_weights)
    )


def normalized_weights(log_weights: jnp.ndarray) -> jnp.ndarray:
    """Self-normalised weights ``W_i / Σ_j W_j`` (n,) from log weights (n,), stably."""
    return jax.nn.softmax(log_weights)


def weighted_mean(values: jnp.ndarray, log_weights: jnp.ndarray):
    """Self-normalised importance estimate ``Σ W_i A_i / Σ W_i`` and its delta-method standard error.

    Args:
      values: (n,) observable A of each trajectory.
      log_weights: (n,) trajectory log weights.

    Returns:
      ``(estimate, standard_error)`` scalars; the error is ``sqrt(Σ p_i² (A_i − Â)²)`` with
      ``p_i`` the normalised weights (exact for the uniform policy: the usual ``s/sqrt(n)``
      up to the ``n/(n−1)`` factor).
    """
    p = normalized_weights(log_weights)
    est = jnp.sum(p * values)
    se = jnp.sqrt(jnp.sum(p**2 * (values - est) ** 2))
    return est, se
