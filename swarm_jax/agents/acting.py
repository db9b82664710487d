"""Choosing among the K candidates: the trained policy, classical KMC (uniform) or greedy.

One function, :func:`choose`, is used by the training rollout, by evaluation and by the staggered
warm-up. A trained policy samples through :func:`swarm_jax.swarm.decision.choose_candidate`, the
decision production runs use too, and every policy's log-probability, per-step ESS ratio and
importance log-weight come from :func:`swarm_jax.swarm.decision.decision_of` (``docs/physics.md``,
SwarmThinkers).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from swarm_jax.swarm.decision import choose_candidate, decision_of

Array = jax.Array

#: What :func:`choose` can act with.
POLICIES = ("trained", "uniform", "greedy")


@struct.dataclass
class Choice:
    """A batch of choices (leading axes ``(...)``; ``K`` candidates).

    Attributes:
        action: int32 index of the chosen candidate.
        log_prob: float32 ``log π_action``.
        ess: float32 per-step ESS ratio ``K² / Σ_j 1/π_j`` of the distribution.
        step_log_weight: float32 ``log w = −log K − log π_action`` (0 for the uniform policy).
        value: float32 critic value of the observation (0 for ``uniform``).
    """

    action: Array
    log_prob: Array
    ess: Array
    step_log_weight: Array
    value: Array


def choose(network, params, obs, key: Array, policy: str = "trained",
           num_actions: int | None = None) -> Choice:
    """Pick one candidate per observation.

    Args:
        network: the actor-critic (``apply(params, obs) -> (logits, value)``); unused for
            ``"uniform"``.
        params: its parameters (may be None for ``"uniform"``).
        obs: batched observation ``{"candidates": (B, K, D), "global": (B, G)}``.
        key: PRNG key.
        policy: ``"trained"`` samples π; ``"uniform"`` picks uniformly (exactly classical KMC);
            ``"greedy"`` takes ``argmax π`` (a point mass: ESS 0, log-weights infinite).
        num_actions: K (read from the observation if omitted).

    Returns:
        A :class:`Choice` with leading axis B.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    k = int(num_actions if num_actions is not None else obs["candidates"].shape[-2])
    batch = obs["candidates"].shape[:-2]
    if policy == "trained":
        logits, value = network.apply(params, obs)
        decision = choose_candidate(logits, key)
    elif policy == "uniform":
        log_probs = jnp.full(batch + (k,), -math.log(k), jnp.float32)
        decision = decision_of(log_probs, jax.random.randint(key, batch, 0, k, dtype=jnp.int32))
        value = jnp.zeros(batch, jnp.float32)
    else:
        logits, value = network.apply(params, obs)
        action = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        log_probs = jnp.where(jnp.arange(logits.shape[-1]) == action[..., None], 0.0,
                              -jnp.inf).astype(jnp.float32)
        decision = decision_of(log_probs, action)
    return Choice(
        action=decision.action,
        log_prob=decision.log_prob,
        ess=decision.ess.astype(jnp.float32),
        step_log_weight=decision.step_log_weight.astype(jnp.float32),
        value=jnp.asarray(value, jnp.float32),
    )
