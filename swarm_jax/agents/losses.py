"""The pieces of the PPO objective: GAE, the learning reward, the loss and the ESS multiplier.

* :func:`compute_gae`: advantages with truncation bootstrapping.
* :class:`RewardNormState` and :func:`learning_reward`: what PPO learns from — the env reward,
  reshaped (potential form of a level reward), minus the original project's ESS reward term, scaled by the
  running return scale; with the KL objective, :func:`kl_reward` is added before the scaling.
* :func:`ppo_loss`: clipped surrogate + value loss − entropy bonus + the ESS constraint's
  augmented-Lagrangian term; :func:`dual_ascent`: the multiplier's update.

See ``docs/physics.md`` ("Learning: the ESS constraint") for the derivations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from swarm_jax.agents.networks import entropy_from_log_probs, log_probs_from_logits, select_log_prob
from swarm_jax.agents.ppo_config import LEVEL_KEYS, PPOConfig
from swarm_jax.swarm.weights import ess_ratio

Array = jax.Array

def compute_gae(
    rewards: Array,
    values: Array,
    next_values: Array,
    terminated: Array,
    dones: Array,
    gamma: float,
    gae_lambda: float,
) -> tuple[Array, Array]:
    """Generalised advantage estimation with truncation bootstrapping (time-major).

    Args:
        rewards: ``(T, ...)`` rewards ``r_t``.
        values: ``(T, ...)`` ``V(s_t)``.
        next_values: ``(T, ...)`` ``V(s'_t)`` of the *pre-reset* next observation (for a
            truncated step, the value of ``info["final_observation"]``).
        terminated: ``(T, ...)`` bool, true termination at step t (no bootstrap).
        dones: ``(T, ...)`` bool, ``terminated | truncated`` (the advantage chain is cut).
        gamma, gae_lambda: discount and GAE λ.

    Returns:
        ``(advantages, returns)``, both ``(T, ...)``, ``returns = advantages + values``.
    """
    not_term = 1.0 - terminated.astype(values.dtype)
    not_done = 1.0 - dones.astype(values.dtype)
    deltas = rewards + gamma * next_values * not_term - values

    def body(adv_next, x):
        delta, nd = x
        adv = delta + gamma * gae_lambda * nd * adv_next
        return adv, adv

    _, advantages = jax.lax.scan(
        body, jnp.zeros_like(values[0]), (deltas, not_done), reverse=True
    )
    return advantages, advantages + values


@struct.dataclass
class RewardNormState:
    """Running scale of the learning reward (PureJaxRL ``NormalizeVecReward``).

    Each env accumulates its discounted learning return ``G ← γ G + r`` (restarted at 0 after an
    episode's last step); the variance of
    ``G`` over all envs and steps so far (Chan et al.'s parallel update) sets the scale, and the
    reward PPO learns from is ``r / sqrt(var + 1e-8)`` (no mean shift: the optimum is unchanged).

    Attributes:
        returns: ``(n_envs,)`` float32 running discounted return of each env.
        mean, var: ``()`` float32 running mean and variance of those returns.
        count: ``()`` float32 number of samples behind them (starts at 1e-4, as PureJaxRL).
    """

    returns: Array
    mean: Array
    var: Array
    count: Array

    @classmethod
    def create(cls, n_envs: int) -> "RewardNormState":
        return cls(returns=jnp.zeros((n_envs,), jnp.float32), mean=jnp.zeros((), jnp.float32),
                   var=jnp.ones((), jnp.float32), count=jnp.full((), 1e-4, jnp.float32))

    def update(self, reward: Array, done: Array, gamma: float) -> "RewardNormState":
        """Fold one step of ``(n_envs,)`` rewards in (``done``: this step ended the episode)."""
        returns = self.returns * gamma + reward
        b_mean, b_var, b_count = returns.mean(), returns.var(), jnp.float32(returns.shape[0])
        delta = b_mean - self.mean
        tot = self.count + b_count
        mean = self.mean + delta * b_count / tot
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / tot
        return RewardNormState(returns=jnp.where(done, 0.0, returns), mean=mean, var=m2 / tot,
                               count=tot)

    @property
    def scale(self) -> Array:
        """The divisor of the learning reward, ``sqrt(var + 1e-8)``."""
        return jnp.sqrt(self.var + 1e-8)



def learning_reward(cfg: PPOConfig, env_reward: Array, info: dict, terminated: Array, ess: Array,
                    w_ess, ess_target, shaping: bool) -> tuple[Array, Array]:
    """The reward PPO learns from, before normalisation, and the original project's ESS term.

    ``r_learn = r_env [+ (γ L(s') (1 − terminated) − L(s)) / (1 − γ)] − w_ess·max(0, target − ESS)``
    with the bracket only when ``shaping`` (``L`` from ``info[LEVEL_KEYS]``; ``terminated`` the
    true terminations, after which ``L(s')`` counts as 0).

    Returns:
        ``(r_learn, penalty)``, both ``(n_envs,)`` float32.
    """
    penalty = jnp.asarray(w_ess, jnp.float32) * jnp.maximum(
        0.0, jnp.asarray(ess_target, jnp.float32) - ess)
    reward = jnp.asarray(env_reward, jnp.float32)
    if shaping:
        level = jnp.where(terminated, 0.0, jnp.asarray(info[LEVEL_KEYS[0]], jnp.float32))
        level_before = jnp.asarray(info[LEVEL_KEYS[1]], jnp.float32)
        reward = reward + (cfg.gamma * level - level_before) / (1.0 - cfg.gamma)
    return reward - penalty, penalty


def kl_reward(cfg: PPOConfig, step_log_weight: Array) -> Array:
    """The KL objective's per-step reward term ``β·log w_t = −β·log(K·π(a_t|s_t))`` (float32).

    ``step_log_weight`` is the rollout's :attr:`~swarm_jax.agents.acting.Choice.step_log_weight`
    (computed once, at collection, with the parameters that acted; a fixed reward thereafter).
    Its expectation under π is ``−β·KL(π(·|s)‖uniform)`` at each state, and its sum over an
    episode is ``−β·log(q/p)`` of the trajectory (``swarm_jax.agents.ppo``, "KL objective").
    """
    return jnp.float32(cfg.kl_coef) * jnp.asarray(step_log_weight, jnp.float32)


def ess_constraint_term(log_probs: Array, ess_lambda: Array, ess_target, penalty_coef: float):
    """``λ·c + ρ/2·max(0, c)²`` with ``c = target − mean ESS(π)`` over the batch of ``log_probs``
    ``(B, K)``; λ is treated as a constant (its own update is :func:`dual_ascent`)."""
    violation = ess_target - ess_ratio(log_probs).mean()
    return (jax.lax.stop_gradient(ess_lambda) * violation
            + 0.5 * penalty_coef * jnp.maximum(violation, 0.0) ** 2)


def dual_ascent(cfg: PPOConfig, ess_lambda: Array, rollout_ess: Array, ess_target) -> Array:
    """``λ ← max(0, λ + lr·(target − mean rollout ESS))`` (unchanged without the constraint)."""
    if not cfg.ess_constraint:
        return ess_lambda
    step = cfg.ess_lambda_lr * (jnp.asarray(ess_target, jnp.float32) - rollout_ess)
    return jnp.maximum(0.0, ess_lambda + step).astype(jnp.float32)


def ppo_loss(cfg: PPOConfig, network, params, mb, advantages: Array, returns: Array,
             ess_lambda: Array, ess_target) -> tuple[Array, dict]:
    """PPO's minibatch loss and its diagnostics.

    ``loss = −clipped surrogate + vf_coef · value loss − ent_coef · entropy [+ ESS term]``; the
    value loss is the mean squared error (optionally clipped, as SB3's ``clip_range_vf``);
    ``approx_kl`` is SB3's ``mean((r − 1) − log r)``.

    Args:
        cfg: hyper-parameters; network, params: the actor-critic and its parameters.
        mb: a minibatch of ``Transition`` (``obs``, ``action``, ``log_prob``, ``value``).
        advantages, returns: ``(B,)`` GAE advantages and value targets.
        ess_lambda: the current multiplier; ess_target: the constraint's target.
    """
    logits, value = network.apply(params, mb.obs)
    log_probs = log_probs_from_logits(logits)
    entropy = entropy_from_log_probs(log_probs).mean()
    log_ratio = select_log_prob(log_probs, mb.action) - mb.log_prob
    ratio = jnp.exp(log_ratio)
    adv = advantages
    if cfg.normalize_advantage:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    clipped = jnp.clip(ratio, 1.0 - cfg.clip_range, 1.0 + cfg.clip_range)
    policy_loss = -jnp.minimum(ratio * adv, clipped * adv).mean()
    v_pred = value
    if cfg.clip_range_vf is not None:
        v_pred = mb.value + jnp.clip(value - mb.value, -cfg.clip_range_vf, cfg.clip_range_vf)
    value_loss = jnp.mean((returns - v_pred) ** 2)
    ess_term = ess_constraint_term(log_probs, ess_lambda, ess_target, cfg.ess_penalty_coef)
    loss = policy_loss - cfg.ent_coef * entropy + cfg.vf_coef * value_loss
    if cfg.ess_constraint:
        loss = loss + ess_term
    return loss, {
        "loss": loss,
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": entropy,
        "approx_kl": jnp.mean((ratio - 1.0) - log_ratio),
        "clip_fraction": jnp.mean((jnp.abs(ratio - 1.0) > cfg.clip_range).astype(jnp.float32)),
        "ess_loss": ess_term,
    }
