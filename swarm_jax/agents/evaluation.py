"""Evaluation of a policy without learning: roll envs from reset and summarise the episodes.

The same acting (:func:`swarm_jax.agents.acting.choose`) and episode bookkeeping
(:mod:`swarm_jax.agents.episodes`) as the training rollout, so trained, uniform (classical KMC)
and greedy policies are measured identically on the same env keys.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

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
                      else ep.batch_ess_ratio_from_sums(s["log_sum_w"], s["log_sum_w2"], n_ep)),
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

    Returns:
        Python floats: ``ep_rew_mean``, ``ep_len_mean`` (episodes that finished within the
        horizon; NaN if none), ``ep_rew_sem`` (standard error of ``ep_rew_mean`` over those
        episodes; NaN with fewer than two), ``n_episodes``, ``reward_per_step`` (mean env reward
        per step), ``ess_ratio`` (mean per step), ``batch_ess`` (over finished trajectories),
        and for each key ``k`` of :data:`DEFAULT_INFO_KEYS` the env provides: ``k`` (mean over all
        steps and envs) and ``final_k`` (mean over the last step of the finished episodes).
    """
    if env_params is None:
        env_params = env.default_params
    fn = _make_evaluate(network, env, int(n_envs), int(n_steps), policy, DEFAULT_INFO_KEYS)
    out = fn(params, env_params, key)
    return {k: float(v) for k, v in out.items()}


# ------------------------------------------------------------------ one whole episode per env

#: ``info`` values recorded at the last step of each env's first episode by
#: :func:`evaluate_episodes` (film observables, the physical clock in s, atom counts).
EPISODE_INFO_KEYS = ("roughness", "mean_height", "o_ti_ratio", "coverage", "time", "n_ti", "n_o")
#: Event kinds counted per episode (``info["event_kind"]`` 0..4: deposit Ti, deposit O, hop,
#: desorb, react; −1, nothing happened, is not counted).
N_EVENT_KINDS = 5
#: ``end`` code of an episode cut by the env's step cap ``max_steps_in_episode`` (the env's own
#: ``termination_reason`` codes are ≥ 1 for every other end).
END_STEP_CAP = -1


def _episode_values(info: dict, reward: Array, truncated: Array, running: dict) -> dict:
    """The per-env values to record for an episode that ends at this step (float64 / int)."""
    reason = jnp.asarray(info["termination_reason"], jnp.int32)
    values = {k: jnp.asarray(info[k], jnp.float64) for k in EPISODE_INFO_KEYS}
    values.update(running, final_reward=jnp.asarray(reward, jnp.float64),
                  end=jnp.where((reason == 0) & jnp.asarray(truncated, bool), END_STEP_CAP, reason))
    return values


@functools.lru_cache(maxsize=32)
def _make_episodes(network, env, n_envs: int):
    """Jitted ``(params, env_params, key, uniform) -> per-env records`` of each env's first
    episode; ``uniform`` (a traced bool) picks the policy, so both share one compilation."""
    v_reset = jax.vmap(env.reset, in_axes=(0, None))
    v_step = batched_step(env)
    k_actions = int(env.num_actions)
    zeros = jnp.zeros((n_envs,), jnp.float64)
    fresh = {"log_weight": zeros, "ess_sum": zeros, "ep_return": zeros,
             "length": jnp.zeros((n_envs,), jnp.int64),
             "kinds": jnp.zeros((n_envs, N_EVENT_KINDS), jnp.int64)}

    def act(params, obs, key, uniform):
        trained = choose(network, params, obs, key, "trained", k_actions)
        classical = choose(network, params, obs, key, "uniform", k_actions)
        pick = jax.tree.map(lambda u, t: jnp.where(uniform, u, t), classical, trained)
        # classical KMC: every step weight is exactly 1
        return pick.replace(step_log_weight=jnp.where(uniform, 0.0, trained.step_log_weight))

    def run(params, env_params, key, uniform):
        k_reset, key = jax.random.split(key)
        obs, env_state = v_reset(jax.random.split(k_reset, n_envs), env_params)
        blank = {k: zeros for k in EPISODE_INFO_KEYS}
        blank.update(fresh, final_reward=zeros, end=jnp.zeros((n_envs,), jnp.int32))

        def body(carry):
            obs, env_state, key, running, record, finished = carry
            key, k_act, k_env = jax.random.split(key, 3)
            choice = act(params, obs, k_act, uniform)
            obs, env_state, reward, terminated, truncated, info = v_step(
                jax.random.split(k_env, n_envs), env_state, choice.action, env_params)
            done = jnp.logical_or(jnp.asarray(terminated, bool), jnp.asarray(truncated, bool))
            kind = jnp.asarray(info["event_kind"], jnp.int32)
            running = {"log_weight": running["log_weight"] + choice.step_log_weight.astype(jnp.float64),
                       "ess_sum": running["ess_sum"] + choice.ess.astype(jnp.float64),
                       "ep_return": running["ep_return"] + jnp.asarray(reward, jnp.float64),
                       "length": running["length"] + 1,
                       "kinds": running["kinds"] + (kind[:, None] == jnp.arange(N_EVENT_KINDS))}
            first = done & ~finished
            values = _episode_values(info, reward, truncated, running)
            record = jax.tree.map(
                lambda old, new: jnp.where(first.reshape(first.shape + (1,) * (old.ndim - 1)),
                                           new.astype(old.dtype), old), record, values)
            running = jax.tree.map(
                lambda r, z: jnp.where(done.reshape(done.shape + (1,) * (r.ndim - 1)), z, r),
                running, fresh)
            return obs, env_state, key, running, record, finished | done

        init = (obs, env_state, key, fresh, blank, jnp.zeros((n_envs,), bool))
        out = jax.lax.while_loop(lambda c: ~jnp.all(c[-1]), body, init)
        return out[4]

    return jax.jit(run)


def evaluate_episodes(params, network, env, env_params, key: Array, n_envs: int,
                      policy: str = "trained") -> dict:
    """Run ``n_envs`` envs from reset until each has finished one episode; no learning.

    The loop runs as long as the longest episode (the env's ``max_steps_in_episode`` bounds it);
    an env that finishes early restarts and its later episodes are ignored, so every env
    contributes exactly one whole episode. With ``env_params.episode_ml`` θ > 0 an episode ends
    at θ ML deposited (``end`` = END_THICKNESS, 3), unless the ceiling (1) or the step cap
    (:data:`END_STEP_CAP`) ends it first.

    Args:
        params, network: the actor-critic and its parameters (both policies evaluate the
            network: they share one compilation; the uniform policy ignores its output).
        env, env_params: the gymnax environment and its parameters (None: defaults).
        key: PRNG key (same key ⇒ same env keys for every policy).
        n_envs: episodes to run, one per env.
        policy: ``"trained"`` or ``"uniform"`` (exactly classical KMC: every log-weight is 0).

    Returns:
        NumPy arrays of shape ``(n_envs,)`` (``kinds``: ``(n_envs, N_EVENT_KINDS)``):
        ``log_weight`` (float64 trajectory ``log W = Σ log w_t``), ``ess_sum`` (sum of the
        per-step ESS ratios), ``ep_return`` (undiscounted env return), ``final_reward`` (the
        env reward of the last step), ``length`` (events), ``kinds`` (events per kind), ``end``
        (int: the env's ``termination_reason``, or :data:`END_STEP_CAP`), and the
        :data:`EPISODE_INFO_KEYS` at the episode's last step (``time`` in s).
    """
    if policy not in ("trained", "uniform"):
        raise ValueError(f"policy must be 'trained' or 'uniform' (weights of a greedy policy "
                         f"are infinite), got {policy!r}")
    if env_params is None:
        env_params = env.default_params
    fn = _make_episodes(network, env, int(n_envs))
    return jax.tree.map(np.asarray, fn(params, env_params, key, jnp.asarray(policy == "uniform")))
