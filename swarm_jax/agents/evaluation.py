"""Evaluation of a policy without learning: roll envs from reset and summarise the episodes.

The same acting (:func:`swarm_jax.agents.acting.choose`) and episode bookkeeping
(:mod:`swarm_jax.agents.episodes`) as the training rollout, so trained, uniform (classical KMC)
and greedy policies are measured identically on the same env keys.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from swarm_jax.agents import episodes as ep
from swarm_jax.agents.acting import choose
from swarm_jax.env.tio2_env import METRIC_KEYS, batched_step

Array = jax.Array

#: ``info`` keys averaged over the rollout and reported when the env provides them (the TiO2
#: environment's morphology keys; an env may declare others as ``metric_keys``).
DEFAULT_INFO_KEYS = METRIC_KEYS


def info_keys_present(info: dict, keys: tuple[str, ...]) -> tuple[str, ...]:
    """The entries of ``keys`` that ``info`` has."""
    return tuple(k for k in keys if k in info)


def _summarise(out: dict, policy: str, info_keys: tuple[str, ...]) -> dict:
    """Reduce the stacked ``(n_steps, n_envs)`` step records of one evaluation to scalars."""
    s = ep.finished_summary(out)
    n_ep = s["n_episodes"]
    mean = ep.safe_mean(s["ep_return_sum"], n_ep)
    counted = out["counted"].astype(jnp.float32)
    var = ep.safe_mean(jnp.sum((out["ep_return"] - mean) ** 2 * counted), n_ep - 1.0)
    res = {
        "ep_rew_mean": mean,
        "ep_rew_sem": jnp.sqrt(jnp.maximum(var, 0.0) / jnp.maximum(n_ep, 1.0)),
        "ep_len_mean": ep.safe_mean(s["ep_length_sum"], n_ep),
        "n_episodes": n_ep,
        "reward_per_step": out["reward"].mean(),
        "ess_ratio": out["ess"].mean(),
        "batch_ess": (jnp.float32(jnp.nan) if policy == "greedy"
                      else ep.batch_ess_from_sums(s["log_sum_w"], s["log_sum_w2"], n_ep)),
    }
    for k in info_keys_present(out, info_keys):
        res[k] = out[k].mean()
        res["final_" + k] = ep.safe_mean(jnp.sum(out[k] * counted), n_ep)
    return {k: jnp.asarray(v, jnp.float32) for k, v in res.items()}


@functools.lru_cache(maxsize=32)
def _make_evaluate(network, env, n_envs: int, n_steps: int, policy: str, info_keys: tuple):
    """Jitted ``(params, env_params, key) -> metrics`` for one (network, env, sizes, policy)."""
    v_reset = jax.vmap(env.reset, in_axes=(0, None))
    v_step = batched_step(env)  # vmap(env.step)'s outputs, resetting only the done envs
    k_actions = int(env.num_actions)

    def run(params, env_params, key):
        k_reset, key = jax.random.split(key)
        obs, env_state = v_reset(jax.random.split(k_reset, n_envs), env_params)

        def step(carry, _):
            obs, env_state, key, running = carry
            key, k_act, k_env = jax.random.split(key, 3)
            choice = choose(network, params, obs, k_act, policy, k_actions)
            obs, env_state, reward, terminated, truncated, info = v_step(
                jax.random.split(k_env, n_envs), env_state, choice.action, env_params)
            done = jnp.logical_or(jnp.asarray(terminated, bool), jnp.asarray(truncated, bool))
            running, record = ep.advance(running, reward, choice.step_log_weight, done)
            record.update(ess=choice.ess, reward=jnp.asarray(reward, jnp.float32),
                          **{k: jnp.asarray(info[k], jnp.float32)
                             for k in info_keys_present(info, info_keys)})
            return (obs, env_state, key, running), record

        init = (obs, env_state, key, ep.RunningEpisodes.zeros(n_envs))
        _, out = jax.lax.scan(step, init, None, length=n_steps)
        return _summarise(out, policy, info_keys)

    return jax.jit(run)


def evaluate(
    params,
    network,
    env,
    env_params,
    key: Array,
    n_envs: int,
    n_steps: int,
    policy: str = "trained",
    info_keys: tuple[str, ...] = DEFAULT_INFO_KEYS,
) -> dict[str, float]:
    """Roll ``n_envs`` envs for ``n_steps`` steps from reset under a policy; no learning.

    Args:
        params: network parameters (ignored for ``policy="uniform"``; may be None then).
        network: the actor-critic module (``PPOTrainer.network``).
        env, env_params: the gymnax environment and its parameters (None: defaults).
        key: PRNG key (same key ⇒ same env resets and env randomness across policies).
        n_envs, n_steps: batch and horizon.
        policy: ``"trained"`` samples ``π``; ``"uniform"`` picks a candidate uniformly (exactly
            classical KMC); ``"greedy"`` takes ``argmax π`` (a point mass: ESS ratio 0, and the
            importance estimator is invalid, so ``batch_ess`` is NaN).
        info_keys: ``info`` entries to report.

    Returns:
        Python floats: ``ep_rew_mean``, ``ep_len_mean`` (episodes that finished within the
        horizon; NaN if none), ``ep_rew_sem`` (standard error of ``ep_rew_mean`` over those
        episodes; NaN with fewer than two), ``n_episodes``, ``reward_per_step`` (mean env reward
        per step), ``ess_ratio`` (mean per step), ``batch_ess`` (over finished trajectories),
        and for each info key ``k`` the env provides: ``k`` (mean over all steps and envs) and
        ``final_k`` (mean over the last step of the finished episodes).
    """
    if env_params is None:
        env_params = env.default_params
    fn = _make_evaluate(network, env, int(n_envs), int(n_steps), policy, tuple(info_keys))
    out = fn(params, env_params, key)
    return {k: float(v) for k, v in out.items()}
