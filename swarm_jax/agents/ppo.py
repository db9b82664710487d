"""PPO for the SwarmThinkers policy, in the PureJaxRL shape, with the gaps closed.

One *update* (all inside one jitted function):

1. **Rollout**: ``lax.scan`` over ``n_steps`` of a ``vmap``-ed ``env.step`` on ``n_envs``
   environments (gymnax auto-reset). The actor's distribution at each step gives the action
   (sampled), its log-probability, the per-step ESS ratio and the step importance log-weight.
2. **GAE**: a reverse ``lax.scan``. Unlike PureJaxRL's single ``done`` flag, *truncated* episodes
   are bootstrapped with the value of the true last observation ``info["final_observation"]``
   and only *terminated* ones are cut:
   ``δ_t = r_t + γ V(s'_t) (1 − terminated_t) − V(s_t)``,
   ``A_t = δ_t + γ λ (1 − done_t) A_{t+1}``, ``done = terminated ∨ truncated``,
   where ``s'_t`` is the pre-reset next observation. Returns ``R_t = A_t + V(s_t)``.
3. **Optimisation**: ``n_epochs`` × ``n_minibatches`` nested ``lax.scan``: shuffle, clipped
   surrogate, value loss (optionally clipped, as SB3's ``clip_range_vf``), entropy bonus,
   ``optax.chain(clip_by_global_norm, adam(eps))`` with optional linear LR annealing.

**Minibatches** (:func:`shuffle_into_minibatches`). Each epoch shuffles the ``n_steps`` transitions of
every environment independently, lays the rollout out env-major (flat index ``i = e·n_steps + t'``,
``t'`` the shuffled position) and puts ``i`` into minibatch ``i mod n_minibatches``: every
transition is used once per epoch, minibatch membership is random, and each minibatch draws an
(almost) equal share from every environment. The layout does not depend on how the environments
are spread over devices, which is what makes a sharded run equal a single-device one.

**Multi-device** (``make_train(..., mesh=...)`` or ``n_devices=``). The same program is jitted
with its inputs laid out on a 1-D ``"data"`` mesh (:mod:`swarm_jax.distributed`): env states,
observations and per-env counters are split over the devices along the env axis; parameters,
optimiser state, PRNG key and global counters are replicated. Each device steps its own
environments; the minibatch of the layout above is itself split evenly over the devices (when
``batch_size`` is a multiple of the device count) without moving transitions between devices,
and since the loss is a mean over the global minibatch XLA inserts the all-reduce of the
gradients (and of the advantage statistics). Random numbers do not depend on the layout
(``jax_threefry_partitionable``), so for the same config and seed a sharded run gives the
parameters of the single-device run up to floating-point summation order.

**Learning reward.** The reward PPO optimises is the environment's reward plus the ESS term of the
seed project's reward (``RewardConfig.w_ess``), which needs the policy and so is added here:
``r_learn = r_env − w_ess · max(0, ess_target − ESS_ratio_t)``, with ``ESS_ratio_t = K² / Σ_j 1/π_j``
the ESS ratio of the actor's distribution over the K candidates at that step (docs/physics.md, SwarmThinkers;
``swarm_jax.swarm.weights.ess_ratio``), computed with the rollout's parameters and treated as
data (no gradient flows through it). ``w_ess`` and ``ess_target`` come from the env's
``RewardConfig`` (``env_params.reward``; 0.3 and 0.5 by default) unless :class:`PPOConfig` sets
them. ``ep_rew_mean`` and the evaluation metrics report the env reward alone.

**Chunks.** :meth:`PPOTrainer.train_chunk` runs ``n_updates`` updates in one jitted ``lax.scan``
and returns *reduced* metrics (no per-step or per-update history leaves the device), so a long
run is a host loop of chunks with logging/checkpointing between them. It compiles once per chunk
size and, for a given key, ``k`` chunks of ``n`` updates give the same parameters as one chunk of
``k·n`` (the LR schedule reads the optimiser's own step count).

**Importance weights.** Each env carries the log of its trajectory weight
``log W = Σ_t log w_t``, ``log w_t = −log K − log π_{a_t}`` (``weights.step_log_weight``), reset at
every episode end. The chunk metric ``batch_ess`` is ``(Σ W_i)² / (n Σ W_i²)`` over the
trajectories that *finished* during the chunk (complete episodes: the honest fidelity figure
of docs/physics.md, SwarmThinkers); if none finished, it falls back to the running (partial) trajectories at the
end of the chunk. ``batch_ess_running`` is always the latter; ``n_episodes`` says which applies.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training.train_state import TrainState
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from swarm_jax import distributed as _dist

from swarm_jax.agents.networks import (
    NetworkConfig,
    entropy_from_log_probs,
    log_probs_from_logits,
    make_network,
    select_log_prob,
)
from swarm_jax.swarm.weights import batch_ess, ess_ratio, step_log_weight

Array = jax.Array

#: ``info`` keys averaged over the rollout and reported when the env provides them.
DEFAULT_INFO_KEYS = ("roughness", "coverage", "o_ti_ratio", "mean_height")

EVAL_POLICIES = ("trained", "uniform", "greedy")
REWARD_SHAPINGS = ("potential", "none")

#: ``info`` keys of a level reward's level after and before the step, ``L(s')`` and ``L(s)``, that
#: ``reward_shaping="potential"`` reads (TiO2GrowthEnv reports them; zeros in delta mode).
LEVEL_KEYS = ("reward_level", "reward_level_before")

#: Finished episodes kept for ``ep_rew_mean`` / ``ep_len_mean`` (SB3's ``stats_window_size``).
EPISODE_WINDOW = 100


# ---- configuration -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO hyper-parameters (hashable: it is closed over by the jitted update).

    Defaults follow PureJaxRL (annealed LR 2.5e-4, clip 0.2, ent 0.01, vf 0.5, grad-norm 0.5,
    Adam eps 1e-5); for SB3 parity set ``learning_rate=3e-4, anneal_lr=False, n_steps=2048,
    batch_size=64, n_epochs=10, ent_coef=0.0`` explicitly.

    Attributes:
        n_envs: parallel environments (vmapped).
        n_steps: env steps per environment per update (rollout length).
        batch_size: minibatch size in transitions; must divide ``n_envs * n_steps``.
        n_epochs: passes over the rollout per update.
        learning_rate: Adam step size (initial value if annealed).
        anneal_lr: decay the LR linearly to 0 over ``num_updates`` updates (stepwise per update).
        gamma: discount per env step.
        gae_lambda: GAE λ.
        clip_range: PPO ratio clip ε.
        clip_range_vf: if set, clip the value prediction to ``V_old ± clip_range_vf`` (SB3);
            ``None`` = no value clipping (SB3 default).
        normalize_advantage: standardise advantages per minibatch (SB3 and PureJaxRL do).
        ent_coef: entropy bonus coefficient.
        vf_coef: value-loss coefficient (loss = mean squared error, as SB3).
        max_grad_norm: global-norm gradient clip.
        adam_eps: Adam ε.
        bootstrap_ceiling: treat an episode that ends because a column reached the top of the
            box (``info["termination_reason"] == 1``) as truncated, not terminated: GAE
            bootstraps it from the value of the final observation. The box's height is an
            artefact of the simulation, not an end of the film's growth; cutting the return there
            teaches a policy facing negative per-step rewards (level mode) to build a tower to
            the ceiling to end the episode early (measured: it wins the episode return that way
            while the film stays rough). ``True`` by default.
        w_ess: weight of the ESS term added to the reward: ``−w_ess · max(0, ess_target − ESS)``.
            ``None`` (default): take ``env_params.reward.w_ess`` (the env's ``RewardConfig``,
            seed default 0.3) so the reward weights have one home; 0.3 if the env has none.
            A number overrides it (0 disables the term).
        ess_target: the per-step ESS ratio the policy must keep on average: the target of the
            ESS constraint below and the threshold of the reward term above; ``None``:
            ``env_params.reward.ess_target`` (0.5 if the env has none).
        ess_constraint: keep the mean per-step ESS ratio at or above ``ess_target`` with a
            Lagrangian term in the loss (see "ESS constraint" in the module docstring).
            ``True`` by default; ``False`` leaves PPO unconstrained (the seed's behaviour).
        ess_lambda_init: the multiplier λ at the start of a run (≥ 0).
        ess_lambda_lr: dual-ascent step size of λ per update (``λ ← max(0, λ + lr·(target −
            mean ESS))``).
        ess_penalty_coef: ρ of the augmented Lagrangian's quadratic term ``ρ/2 · max(0,
            target − ESS)²``: it acts inside the update on the current parameters, so the
            constraint holds without the oscillation of pure dual ascent (measured on the mock
            task: ρ = 0 swings the ESS between 0.3 and 0.95; ρ ≥ 50 holds it at 0.49–0.51).
        reward_shaping: ``"potential"`` (default): learn from the potential-based reshaping of
            a level reward, ``r + (γ L(s') − L(s)) / (1 − γ)`` with ``L`` the env's
            ``info["reward_level"]``/``info["reward_level_before"]`` (same optimal policy, far
            smaller state-dependent return; see "Credit" in the module docstring); no effect if
            the env does not report those keys (or reports zeros, as TiO2GrowthEnv in delta
            mode). ``"none"``: learn from the env reward as it is.
        normalize_reward: divide the learning reward by the running standard deviation of its
            discounted return (PureJaxRL's ``NormalizeVecReward``, SB3's ``VecNormalize``):
            value targets of order one at every lattice size. ``True`` by default.
        stagger_episodes: start each environment at a uniformly random point of its episode
            (a warm-up of ``U[0, max_steps)`` classical-KMC steps before training), so episode
            ends do not come in lockstep. The first (partial) episode of each environment is
            not counted in ``ep_rew_mean``. ``True`` by default.
        total_timesteps: env steps in total (all envs); ``num_updates`` is derived from it.
    """

    n_envs: int = 8
    n_steps: int = 128
    batch_size: int = 256
    n_epochs: int = 4
    learning_rate: float = 2.5e-4
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    clip_range_vf: Optional[float] = None
    normalize_advantage: bool = True
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    adam_eps: float = 1e-5
    bootstrap_ceiling: bool = True
    w_ess: Optional[float] = None
    ess_target: Optional[float] = None
    ess_constraint: bool = True
    ess_lambda_init: float = 0.0
    ess_lambda_lr: float = 1.0
    ess_penalty_coef: float = 100.0
    reward_shaping: str = "potential"
    normalize_reward: bool = True
    stagger_episodes: bool = True
    total_timesteps: int = 1_000_000

    def __post_init__(self):
        if self.reward_shaping not in REWARD_SHAPINGS:
            raise ValueError(f"PPOConfig.reward_shaping must be one of {REWARD_SHAPINGS}, "
                             f"got {self.reward_shaping!r}")
        for name in ("ess_lambda_init", "ess_lambda_lr", "ess_penalty_coef"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"PPOConfig.{name} must be a finite number >= 0, got {value}")
        if self.reward_shaping == "potential" and not float(self.gamma) < 1.0:
            raise ValueError(f"PPOConfig.reward_shaping='potential' needs gamma < 1 (the level "
                             f"potential is L/(1 - gamma)), got gamma={self.gamma}; use 'none'")
        if self.ess_target is not None and not 0.0 <= float(self.ess_target) <= 1.0:
            raise ValueError(f"PPOConfig.ess_target must be in [0, 1], got {self.ess_target}")
        for name in ("n_envs", "n_steps", "batch_size", "n_epochs", "total_timesteps"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"PPOConfig.{name} must be positive, got {getattr(self, name)}")
        if self.rollout_size % self.batch_size:
            raise ValueError(
                f"batch_size={self.batch_size} must divide n_envs*n_steps={self.rollout_size}"
            )
        if self.num_updates < 1:
            raise ValueError(
                f"total_timesteps={self.total_timesteps} is less than one rollout "
                f"(n_envs*n_steps={self.rollout_size})"
            )

    @property
    def rollout_size(self) -> int:
        """Transitions per update, ``n_envs * n_steps``."""
        return int(self.n_envs) * int(self.n_steps)

    @property
    def n_minibatches(self) -> int:
        return self.rollout_size // int(self.batch_size)

    @property
    def num_updates(self) -> int:
        """Updates in a full run, ``total_timesteps // (n_envs * n_steps)``."""
        return int(self.total_timesteps) // self.rollout_size

    def learning_rate_at(self, update: Array | int) -> Array:
        """LR (float32) used during update number ``update`` (0-based)."""
        lr = jnp.float32(self.learning_rate)
        if not self.anneal_lr:
            return lr
        frac = 1.0 - jnp.asarray(update, jnp.float32) / jnp.float32(self.num_updates)
        return lr * jnp.clip(frac, 0.0, 1.0)


# ---- state containers --------------------------------------------------------------------------


CEILING_REASON = 1  # TiO2GrowthEnv's info['termination_reason'] when a column is full

@struct.dataclass
class RunnerState:
    """Everything a run carries between updates (a pytree; checkpoint it whole).

    Attributes:
        train_state: ``flax.training.train_state.TrainState`` — ``params``, ``opt_state``
            (optax chain state: clip-by-norm, Adam), ``step`` (optimiser steps taken, int32);
            ``apply_fn``/``tx`` are static fields, not leaves.
        env_state: batched env states, leading axis ``n_envs``.
        last_obs: batched current observations, ``{"candidates": (n_envs, K, D), "global":
            (n_envs, G)}``.
        rng: PRNG key for the rest of the run.
        traj_log_weight: ``(n_envs,)`` float32, ``log W`` of each running trajectory
            (reset to 0 at episode end).
        ep_return: ``(n_envs,)`` float32, undiscounted env return of the running episode
            (env reward only, without the ESS term).
        ep_length: ``(n_envs,)`` int32, steps of the running episode.
        update_step: ``()`` int32, updates completed.
        env_steps: ``()`` int64, env steps taken over all envs.
        ep_partial: ``(n_envs,)`` bool, the running episode began before training did (the
            staggered first episode): it is not counted in the episode statistics.
        episodes: the last :data:`EPISODE_WINDOW` finished episodes (``ep_rew_mean``).
        ess_lambda: ``()`` float32, the Lagrange multiplier of the ESS constraint.
        reward_norm: running statistics of the discounted learning return.
    """

    train_state: TrainState
    env_state: Any
    last_obs: Any
    rng: Array
    traj_log_weight: Array
    ep_return: Array
    ep_length: Array
    update_step: Array
    env_steps: Array
    ep_partial: Array
    episodes: "EpisodeWindow"
    ess_lambda: Array
    reward_norm: "RewardNormState"


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
        new_prio = jnp.where(finished.reshape(-1), size + jnp.arange(finished.size, dtype=jnp.int32), -1)
        old_prio = jnp.where(self.valid, jnp.arange(size, dtype=jnp.int32), -1)
        prio = jnp.concatenate([old_prio, new_prio])
        _, idx = jax.lax.top_k(prio, size)  # newest first
        idx = idx[::-1]  # oldest first
        pick = lambda old, new: jnp.concatenate([old, new.reshape(-1).astype(old.dtype)])[idx]  # noqa: E731
        return EpisodeWindow(returns=pick(self.returns, returns), lengths=pick(self.lengths, lengths),
                             valid=prio[idx] >= 0)

    def mean(self, values: Array) -> Array:
        """Mean of ``values`` over the valid slots; NaN while none is."""
        n = self.valid.sum()
        return _safe_mean(jnp.sum(jnp.where(self.valid, values, 0.0)), n.astype(jnp.float32))


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


@struct.dataclass
class Transition:
    """One rollout step for all envs (leading axes ``(n_steps, n_envs)`` once stacked)."""

    obs: Any
    action: Array  # int32
    log_prob: Array  # log π_a at collection
    value: Array  # V(s_t)
    next_value: Array  # V(final_observation_t): value of the pre-reset next observation
    reward: Array  # learning reward: env_reward − w_ess·max(0, ess_target − ess_ratio)
    env_reward: Array  # reward returned by the env
    ess_ratio: Array  # per-step ESS ratio of the actor's distribution, K² / Σ_j 1/π_j
    terminated: Array  # bool
    done: Array  # bool, terminated | truncated


# ---- GAE ---------------------------------------------------------------------------------------


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


# ---- helpers -----------------------------------------------------------------------------------


def _masked_log_sums(log_w: Array, mask: Array) -> tuple[Array, Array, Array]:
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


def _safe_mean(total: Array, count: Array) -> Array:
    """``total / count``, NaN when ``count == 0``."""
    return jnp.where(count > 0, total / jnp.maximum(count, 1.0), jnp.nan)


DEFAULT_W_ESS = 0.3
DEFAULT_ESS_TARGET = 0.5


def resolve_ess_term(config: PPOConfig, env_params) -> tuple[Any, Any]:
    """``(w_ess, ess_target)`` used for the learning reward (see :class:`PPOConfig`)."""
    reward_cfg = getattr(env_params, "reward", None)
    w = config.w_ess
    if w is None:
        w = getattr(reward_cfg, "w_ess", DEFAULT_W_ESS)
    target = config.ess_target
    if target is None:
        target = getattr(reward_cfg, "ess_target", DEFAULT_ESS_TARGET)
    return w, target


def _info_keys_present(info: dict, keys: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(k for k in keys if k in info)


# ---- the trainer -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class PPOTrainer:
    """Returned by :func:`make_train`. Holds the static pieces and the jitted entry points.

    Attributes:
        config, network_config: the configurations.
        network: the linen actor-critic (``apply(params, obs) -> (logits, value)``).
        env, env_params: the gymnax environment and its (closed-over) parameters.
        tx: the optax transformation (clip-by-global-norm then Adam).
        info_keys: env ``info`` keys whose rollout means are reported (those the env provides).
    """

    config: PPOConfig
    network_config: NetworkConfig
    network: nn.Module
    env: Any
    env_params: Any
    tx: optax.GradientTransformation
    info_keys: tuple[str, ...]
    _chunk_fn: Callable = dataclasses.field(repr=False)
    _init_fn: Callable = dataclasses.field(repr=False)
    _rollout_fn: Callable = dataclasses.field(repr=False)
    _abstract_init_fn: Callable = dataclasses.field(repr=False)
    mesh: Optional[Mesh] = None
    state_sharding: Any = dataclasses.field(default=None, repr=False)

    @property
    def n_devices(self) -> int:
        """Devices the env batch is split over (1 without a mesh)."""
        return 1 if self.mesh is None else int(self.mesh.size)

    def init(self, key: Array) -> RunnerState:
        """Fresh :class:`RunnerState`: network params, optimiser state, ``n_envs`` reset envs
        (laid out on the mesh, if any)."""
        return self._init_fn(key)

    def shard_state(self, runner_state: RunnerState) -> RunnerState:
        """Lay a runner state out as this trainer's jitted functions expect it.

        With a mesh: per-env fields split over ``"data"``, the rest replicated (use it on a
        state restored from a checkpoint onto one device). Without a mesh: returned unchanged.
        """
        if self.mesh is None:
            return runner_state
        leaves = jax.tree.leaves(runner_state)
        target = jax.tree.structure(self.state_sharding)
        shardings = jax.tree.leaves(self.state_sharding)
        if len(leaves) != len(shardings):
            raise ValueError(
                f"runner state has {len(leaves)} leaves, this trainer's has {len(shardings)}"
            )
        if all(getattr(x, "sharding", None) == s for x, s in zip(leaves, shardings)):
            return runner_state
        # Rebuilt on this trainer's tree (its own apply_fn/tx static fields: a state restored
        # into another trainer's template does not trigger a recompile).
        return jax.tree.unflatten(
            target,
            [x if getattr(x, "sharding", None) == s else _dist.put(x, s)
             for x, s in zip(leaves, shardings)],
        )

    def abstract_state(self, key: Array) -> RunnerState:
        """Shapes and dtypes of ``init(key)`` (``jax.ShapeDtypeStruct`` leaves, nothing computed):
        the template for restoring a checkpoint (``restore_checkpoint(path, target=...)``)."""
        return jax.eval_shape(self._abstract_init_fn, key)

    def train_chunk(self, runner_state: RunnerState, n_updates: int) -> tuple[RunnerState, dict]:
        """Run ``n_updates`` PPO updates (jitted; compiled once per ``n_updates``).

        Returns the new runner state and a dict of float32 scalars (see :func:`make_train`).
        """
        return self._chunk_fn(self.shard_state(runner_state), int(n_updates))

    def collect_rollout(self, runner_state: RunnerState) -> tuple[RunnerState, Transition]:
        """One rollout without learning (jitted): the new state and the ``(n_steps, n_envs)``
        :class:`Transition` batch an update would learn from. For inspection and tests."""
        return self._rollout_fn(self.shard_state(runner_state))

    def train(self, key: Array) -> tuple[RunnerState, dict]:
        """PureJaxRL-style whole run: ``train_chunk(init(key), config.num_updates)``."""
        return self.train_chunk(self.init(key), self.config.num_updates)

    def learning_rate_at(self, update: Array | int) -> Array:
        return self.config.learning_rate_at(update)


def shuffle_into_minibatches(
    batch: Any, key: Array, n_minibatches: int, constrain: Callable[[Any, P], Any] = lambda t, _: t
) -> Any:
    """One epoch's minibatches from an env-major rollout (see the module docstring).

    The steps of each env are permuted independently (``permutation(key, ..., axis=1,
    independent=True)`` of an ``(n_envs, n_steps)`` arange); the result, flattened env-major, puts
    flat position ``i`` into minibatch ``i mod n_minibatches``, slot ``i // n_minibatches``.
    With the envs split over D devices and D dividing the minibatch size, every gather and
    reshape here stays within a device's block of envs.

    Args:
        batch: pytree of ``(n_envs, n_steps, ...)`` arrays.
        key: PRNG key of the epoch.
        n_minibatches: M; must divide ``n_envs * n_steps``.
        constrain: ``(tree, PartitionSpec) -> tree`` layout pin (identity without a mesh).

    Returns:
        The same pytree with leaves ``(M, n_envs * n_steps // M, ...)``.
    """
    n_envs, n_steps = jax.tree.leaves(batch)[0].shape[:2]
    batch_size = n_envs * n_steps // n_minibatches
    steps = jax.random.permutation(
        key, jnp.broadcast_to(jnp.arange(n_steps), (n_envs, n_steps)), axis=1, independent=True
    )
    steps = constrain(steps, P(_dist.DATA_AXIS))

    def one(x):
        x = jax.vmap(lambda xe, se: jnp.take(xe, se, axis=0))(x, steps)
        x = x.reshape((batch_size, n_minibatches) + x.shape[2:])
        return constrain(jnp.swapaxes(x, 0, 1), P(None, _dist.DATA_AXIS))

    return jax.tree.map(one, batch)


def minibatch_indices(key: Array, n_envs: int, n_steps: int, n_minibatches: int) -> Array:
    """``(env, step)`` of every slot of the epoch's minibatches: ``(M, batch_size, 2)`` int32,
    the layout :func:`shuffle_into_minibatches` produces for this key (for inspection and tests)."""
    envs, steps = jnp.meshgrid(jnp.arange(n_envs), jnp.arange(n_steps), indexing="ij")
    return shuffle_into_minibatches(jnp.stack([envs, steps], axis=-1), key, n_minibatches)


def _runner_state_sharding(abstract: RunnerState, mesh: Mesh) -> RunnerState:
    """A :class:`RunnerState` of shardings: per-env fields over ``"data"``, the rest replicated."""
    data, repl = _dist.data_sharding(mesh), _dist.replicated_sharding(mesh)
    per_env = {"env_state", "last_obs", "traj_log_weight", "ep_return", "ep_length", "ep_partial"}
    out = abstract.replace(**{
        f.name: jax.tree.map(lambda _, s=(data if f.name in per_env else repl): s,
                             getattr(abstract, f.name))
        for f in dataclasses.fields(abstract)
    })
    return out.replace(reward_norm=out.reward_norm.replace(returns=data))


def make_train(
    config: PPOConfig,
    network_config: NetworkConfig,
    env,
    env_params=None,
    info_keys: tuple[str, ...] = DEFAULT_INFO_KEYS,
    mesh: Optional[Mesh] = None,
    n_devices: Optional[int] = None,
) -> PPOTrainer:
    """Build a PPO trainer for a gymnax ``env`` with dict observations and ``Discrete(K)`` actions.

    Args:
        config: PPO hyper-parameters.
        network_config: the actor-critic architecture.
        env: a gymnax ``Environment`` (``num_actions == K``; observation
            ``{"candidates": (K, D), "global": (G,)}``).
        env_params: env parameters (default: ``env.default_params``); closed over, so a change
            means a new trainer (and a recompile).
        info_keys: ``info`` entries to average over rollouts (reported when present).
        mesh: a 1-D mesh with axis ``"data"`` (:func:`swarm_jax.distributed.make_data_mesh`):
            the env batch and rollout are split over its devices, parameters replicated, and
            ``init``/``train_chunk``/``collect_rollout`` take and return states laid out so
            (:attr:`PPOTrainer.state_sharding`). ``None`` (default): plain single-device jit.
        n_devices: shorthand for ``mesh=make_data_mesh(n_devices, config.n_envs)``; ignored if
            ``mesh`` is given.

    Raises:
        ValueError: ``n_envs`` or ``batch_size`` is not a multiple of the mesh size (every
            device must hold the same number of environments and of minibatch transitions).

    Returns:
        A :class:`PPOTrainer`. ``train_chunk(runner_state, n)`` returns metrics, all float32
        scalars, reduced over the chunk's ``n`` updates:

        * ``ep_rew_mean``, ``ep_len_mean``: mean env return (without the ESS term) and length of
          the episodes that finished in the chunk; NaN if none did. ``n_episodes``: their count.
        * ``policy_loss``, ``value_loss``, ``entropy``, ``approx_kl``, ``clip_fraction``, ``loss``:
          means over all minibatch steps of the chunk (``approx_kl`` is SB3's
          ``mean((r − 1) − log r)``).
        * ``ess_ratio``: mean per-step ESS ratio of the actor's distribution over the chunk's
          rollouts; ``ess_penalty``: mean per-step ``w_ess · max(0, ess_target − ESS)``;
          ``reward``: mean per-step env reward.
        * ``batch_ess``, ``batch_ess_running``: see the module docstring.
        * each of ``info_keys`` the env provides (``roughness``, ``coverage``, ``o_ti_ratio``,
          ``mean_height``): mean over the chunk's rollout steps and envs.
        * ``learning_rate``: the LR of the chunk's last update; ``env_steps``, ``update_step``:
          counters after the chunk (float32 copies; exact integers are in the runner state).
    """
    if env_params is None:
        env_params = env.default_params
    if mesh is None and n_devices is not None:
        mesh = _dist.make_data_mesh(n_devices, config.n_envs)
    if mesh is not None:
        if tuple(mesh.axis_names) != (_dist.DATA_AXIS,):
            raise ValueError(f"mesh axes {mesh.axis_names}: expected one axis {_dist.DATA_AXIS!r}")
        for name in ("n_envs", "batch_size"):
            if int(getattr(config, name)) % mesh.size:
                raise ValueError(
                    f"PPOConfig.{name}={getattr(config, name)} must be a multiple of the "
                    f"{mesh.size} devices of the mesh"
                )
    num_actions = int(env.num_actions)
    network = make_network(network_config, num_actions)
    cfg = config
    w_ess, ess_target = resolve_ess_term(config, env_params)

    if cfg.anneal_lr:
        steps_per_update = cfg.n_epochs * cfg.n_minibatches

        def lr_schedule(count):
            return cfg.learning_rate_at(count // steps_per_update)

        learning_rate = lr_schedule
    else:
        learning_rate = cfg.learning_rate
    tx = optax.chain(
        optax.clip_by_global_norm(cfg.max_grad_norm),
        optax.adam(learning_rate=learning_rate, eps=cfg.adam_eps),
    )

    v_reset = jax.vmap(env.reset, in_axes=(0, None))
    v_step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    # Which info keys does the env report? Trace one step abstractly (no compute).
    def _probe(key):
        obs, st = env.reset(key, env_params)
        return env.step(key, st, jnp.int32(0), env_params)[-1]

    probe_info = jax.eval_shape(_probe, jax.random.PRNGKey(0))
    present_keys = _info_keys_present(probe_info, tuple(info_keys))

    def constrain(tree, spec: P):
        """Pin ``tree``'s layout on the mesh (a no-op without one)."""
        if mesh is None:
            return tree
        return jax.lax.with_sharding_constraint(tree, NamedSharding(mesh, spec))

    # ---- init ----------------------------------------------------------------------------------
    shaping = cfg.reward_shaping == "potential" and all(k in probe_info for k in LEVEL_KEYS)
    max_steps = getattr(env_params, "max_steps_in_episode", None)
    stagger = bool(cfg.stagger_episodes) and max_steps is not None and int(max_steps) > 1

    def _stagger(env_state, obs, key):
        """Step env i through ``u_i ~ U[0, max_steps)`` classical (uniform-choice) events, so the
        envs sit at spread-out points of their episodes. Returns ``(env_state, obs, u > 0)``."""
        k_len, key = jax.random.split(key)
        n_warm = jax.random.randint(k_len, (cfg.n_envs,), 0, int(max_steps))

        def body(carry, t):
            env_state, obs, key = carry
            key, k_act, k_env = jax.random.split(key, 3)
            action = jax.random.randint(k_act, (cfg.n_envs,), 0, num_actions, dtype=jnp.int32)
            new_obs, new_state, *_ = v_step(
                jax.random.split(k_env, cfg.n_envs), env_state, action, env_params
            )
            live = t < n_warm
            keep = lambda new, old: jnp.where(  # noqa: E731
                live.reshape(live.shape + (1,) * (new.ndim - 1)), new, old)
            return (jax.tree.map(keep, new_state, env_state), jax.tree.map(keep, new_obs, obs),
                    key), None

        (env_state, obs, _), _ = jax.lax.scan(
            body, (env_state, obs, key), jnp.arange(int(max_steps), dtype=jnp.int32)
        )
        return env_state, obs, n_warm > 0

    def _init(key):
        key, k_net, k_env, k_stagger = jax.random.split(key, 4)
        obs, env_state = v_reset(jax.random.split(k_env, cfg.n_envs), env_params)
        params = network.init(k_net, jax.tree.map(lambda x: x[0], obs))
        train_state = TrainState.create(apply_fn=network.apply, params=params, tx=tx)
        ep_partial = jnp.zeros((cfg.n_envs,), bool)
        if stagger:
            env_state, obs, ep_partial = _stagger(env_state, obs, k_stagger)
        return RunnerState(
            train_state=train_state,
            env_state=env_state,
            last_obs=obs,
            rng=key,
            traj_log_weight=jnp.zeros((cfg.n_envs,), jnp.float32),
            ep_return=jnp.zeros((cfg.n_envs,), jnp.float32),
            ep_length=jnp.zeros((cfg.n_envs,), jnp.int32),
            update_step=jnp.zeros((), jnp.int32),
            env_steps=jnp.zeros((), jnp.int64),
            ep_partial=ep_partial,
            episodes=EpisodeWindow.empty(),
            ess_lambda=jnp.asarray(cfg.ess_lambda_init if cfg.ess_constraint else 0.0, jnp.float32),
            reward_norm=RewardNormState.create(cfg.n_envs),
        )

    # ---- rollout -------------------------------------------------------------------------------
    def _env_step(rs: RunnerState, _):
        params = rs.train_state.params
        rng, k_act, k_env = jax.random.split(rs.rng, 3)
        logits, value = network.apply(params, rs.last_obs)
        log_probs = log_probs_from_logits(logits)  # (N, K)
        action = jax.random.categorical(k_act, log_probs).astype(jnp.int32)
        log_prob = select_log_prob(log_probs, action)
        ess = ess_ratio(log_probs).astype(jnp.float32)
        step_lw = step_log_weight(log_probs, action).astype(jnp.float32)

        obs, env_state, reward, terminated, truncated, info = v_step(
            jax.random.split(k_env, cfg.n_envs), rs.env_state, action, env_params
        )
        _, next_value = network.apply(params, info["final_observation"])
        terminated = jnp.asarray(terminated, bool)
        done = jnp.logical_or(terminated, jnp.asarray(truncated, bool))
        if cfg.bootstrap_ceiling and "termination_reason" in info:
            # The box filling up ends the episode but not the film's growth: bootstrap it like
            # a time limit (``done`` still cuts the advantage chain and resets the env).
            terminated = terminated & (info["termination_reason"] != CEILING_REASON)
        env_reward = jnp.asarray(reward, jnp.float32)
        penalty = jnp.asarray(w_ess, jnp.float32) * jnp.maximum(
            0.0, jnp.asarray(ess_target, jnp.float32) - ess
        )
        learn_reward = env_reward
        if shaping:  # r + (γ L(s') − L(s)) / (1 − γ), L(s') = 0 after a true termination
            level = jnp.asarray(info[LEVEL_KEYS[0]], jnp.float32)
            level_before = jnp.asarray(info[LEVEL_KEYS[1]], jnp.float32)
            level = jnp.where(terminated, 0.0, level)
            learn_reward = learn_reward + (cfg.gamma * level - level_before) / (1.0 - cfg.gamma)
        learn_reward = learn_reward - penalty
        reward_norm = rs.reward_norm
        if cfg.normalize_reward:
            reward_norm = reward_norm.update(learn_reward, done, cfg.gamma)
            learn_reward = learn_reward / reward_norm.scale

        ep_return = rs.ep_return + env_reward
        ep_length = rs.ep_length + 1
        traj_lw = rs.traj_log_weight + step_lw
        transition = Transition(
            obs=rs.last_obs,
            action=action,
            log_prob=log_prob,
            value=value,
            next_value=jax.lax.stop_gradient(next_value),
            reward=learn_reward,
            env_reward=env_reward,
            ess_ratio=ess,
            terminated=terminated,
            done=done,
        )
        stats = {
            "done": done,
            "counted": done & ~rs.ep_partial,
            "ep_return": ep_return,
            "ep_length": ep_length,
            "traj_log_weight": traj_lw,
            "penalty": penalty,
            **{k: jnp.asarray(info[k], jnp.float32) for k in present_keys},
        }
        zf, zi = jnp.float32(0.0), jnp.int32(0)
        rs = rs.replace(
            env_state=env_state,
            last_obs=obs,
            rng=rng,
            traj_log_weight=jnp.where(done, zf, traj_lw),
            ep_return=jnp.where(done, zf, ep_return),
            ep_length=jnp.where(done, zi, ep_length),
            env_steps=rs.env_steps + cfg.n_envs,
            ep_partial=rs.ep_partial & ~done,
            reward_norm=reward_norm,
        )
        return rs, (transition, stats)

    # ---- loss and minibatch step ---------------------------------------------------------------
    def _loss(params, mb: Transition, advantages, returns, ess_lambda):
        logits, value = network.apply(params, mb.obs)
        log_probs = log_probs_from_logits(logits)
        # The ESS constraint: λ · (target − mean per-step ESS ratio of the current policy).
        violation = ess_target - ess_ratio(log_probs).mean()
        ess_term = (jax.lax.stop_gradient(ess_lambda) * violation
                    + 0.5 * cfg.ess_penalty_coef * jnp.maximum(violation, 0.0) ** 2)
        new_log_prob = select_log_prob(log_probs, mb.action)
        entropy = entropy_from_log_probs(log_probs).mean()

        log_ratio = new_log_prob - mb.log_prob
        ratio = jnp.exp(log_ratio)
        adv = advantages
        if cfg.normalize_advantage:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        surr = jnp.minimum(
            ratio * adv, jnp.clip(ratio, 1.0 - cfg.clip_range, 1.0 + cfg.clip_range) * adv
        )
        policy_loss = -surr.mean()

        if cfg.clip_range_vf is None:
            v_pred = value
        else:
            v_pred = mb.value + jnp.clip(value - mb.value, -cfg.clip_range_vf, cfg.clip_range_vf)
        value_loss = jnp.mean((returns - v_pred) ** 2)

        loss = policy_loss - cfg.ent_coef * entropy + cfg.vf_coef * value_loss
        if cfg.ess_constraint:
            loss = loss + ess_term
        aux = {
            "ess_loss": ess_term,
            "loss": loss,
            "policy_loss": policy_loss,
            "value_loss": value_loss,
            "entropy": entropy,
            "approx_kl": jnp.mean((ratio - 1.0) - log_ratio),
            "clip_fraction": jnp.mean(
                (jnp.abs(ratio - 1.0) > cfg.clip_range).astype(jnp.float32)
            ),
        }
        return loss, aux

    def _minibatch_step(carry, mb):
        train_state, ess_lambda = carry
        transition, advantages, returns = mb
        grads, aux = jax.grad(_loss, has_aux=True)(
            train_state.params, transition, advantages, returns, ess_lambda
        )
        return (train_state.apply_gradients(grads=grads), ess_lambda), aux

    def _epoch(carry, _):
        """One pass over the rollout; ``batch`` leaves are env-major ``(n_envs, n_steps, ...)``."""
        train_state, ess_lambda, rng, batch = carry
        rng, k_perm = jax.random.split(rng)
        minibatches = shuffle_into_minibatches(batch, k_perm, cfg.n_minibatches, constrain)
        (train_state, _), aux = jax.lax.scan(_minibatch_step, (train_state, ess_lambda), minibatches)
        return (train_state, ess_lambda, rng, batch), aux

    def _rollout(rs: RunnerState):
        return jax.lax.scan(_env_step, rs, None, length=cfg.n_steps)

    # ---- one update ----------------------------------------------------------------------------
    def _update(rs: RunnerState, _):
        rs, (traj, stats) = _rollout(rs)
        advantages, returns = compute_gae(
            traj.reward, traj.value, traj.next_value, traj.terminated, traj.done,
            cfg.gamma, cfg.gae_lambda,
        )
        env_major = lambda x: constrain(jnp.swapaxes(x, 0, 1), P(_dist.DATA_AXIS))  # noqa: E731
        batch = jax.tree.map(env_major, (traj, advantages, returns))
        rng, k_epochs = jax.random.split(rs.rng)
        (train_state, _, _, _), aux = jax.lax.scan(
            _epoch, (rs.train_state, rs.ess_lambda, k_epochs, batch), None, length=cfg.n_epochs
        )
        lr = cfg.learning_rate_at(rs.update_step)
        # Dual ascent on the ESS constraint, from this rollout's mean per-step ESS ratio.
        rollout_ess = traj.ess_ratio.mean()
        violation = jnp.asarray(ess_target, jnp.float32) - rollout_ess
        ess_lambda = rs.ess_lambda
        if cfg.ess_constraint:
            ess_lambda = jnp.maximum(0.0, ess_lambda + cfg.ess_lambda_lr * violation)
        counted = stats["counted"]
        rs = rs.replace(
            train_state=train_state, rng=rng, update_step=rs.update_step + 1,
            ess_lambda=ess_lambda.astype(jnp.float32),
            episodes=rs.episodes.push(stats["ep_return"], stats["ep_length"], counted),
        )

        lsw, lsw2, n_fin = _masked_log_sums(stats["traj_log_weight"], counted)
        per_update = {
            "n_episodes": n_fin,
            "log_sum_w": lsw,
            "log_sum_w2": lsw2,
            "ess_ratio": rollout_ess,
            "ess_constraint": violation,
            "ess_lambda": ess_lambda,
            "reward_scale": rs.reward_norm.scale,
            "learn_reward": traj.reward.mean(),
            "ess_penalty": stats["penalty"].mean(),
            "reward": traj.env_reward.mean(),
            "learning_rate": lr,
            **{k: stats[k].mean() for k in present_keys},
            **{k: v.mean() for k, v in aux.items()},
        }
        return rs, per_update

    def _train_chunk(rs: RunnerState, n_updates: int):
        rs, m = jax.lax.scan(_update, rs, None, length=n_updates)
        n_ep = m["n_episodes"].sum()
        log_sum_w = jax.nn.logsumexp(m["log_sum_w"])
        log_sum_w2 = jax.nn.logsumexp(m["log_sum_w2"])
        running = batch_ess(rs.traj_log_weight).astype(jnp.float32)
        metrics = {
            "ep_rew_mean": rs.episodes.mean(rs.episodes.returns),
            "ep_len_mean": rs.episodes.mean(rs.episodes.lengths),
            "n_episodes": n_ep,
            "batch_ess": jnp.where(
                n_ep > 0, batch_ess_from_sums(log_sum_w, log_sum_w2, n_ep), running
            ),
            "batch_ess_running": running,
            "learning_rate": m["learning_rate"][-1],
            "ess_lambda": m["ess_lambda"][-1],
            "reward_scale": m["reward_scale"][-1],
            "env_steps": rs.env_steps.astype(jnp.float32),
            "update_step": rs.update_step.astype(jnp.float32),
        }
        for k in ("ess_ratio", "ess_constraint", "ess_penalty", "reward", "learn_reward",
                  *present_keys, *aux_names):
            metrics[k] = m[k].mean()
        return rs, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

    aux_names = ("loss", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction",
                 "ess_loss")

    def _collect(rs):
        rs, (traj, _) = _rollout(rs)
        return rs, traj

    if mesh is None:
        state_sharding = None
        init_fn = jax.jit(_init)
        chunk_fn = jax.jit(_train_chunk, static_argnums=(1,))
        rollout_fn = jax.jit(_collect)
    else:
        abstract = jax.eval_shape(_init, jax.random.PRNGKey(0))
        state_sharding = _runner_state_sharding(abstract, mesh)
        repl = _dist.replicated_sharding(mesh)
        traj_sharding = NamedSharding(mesh, P(None, _dist.DATA_AXIS))  # (n_steps, n_envs, ...)
        init_jit = jax.jit(_init, in_shardings=repl, out_shardings=state_sharding)
        init_fn = lambda key: init_jit(_dist.put(key, repl))  # noqa: E731
        chunk_fn = jax.jit(
            _train_chunk, static_argnums=(1,), in_shardings=(state_sharding,),
            out_shardings=(state_sharding, repl),
        )
        rollout_fn = jax.jit(
            _collect, in_shardings=(state_sharding,), out_shardings=(state_sharding, traj_sharding)
        )

    return PPOTrainer(
        config=config,
        network_config=network_config,
        network=network,
        env=env,
        env_params=env_params,
        tx=tx,
        info_keys=present_keys,
        _chunk_fn=chunk_fn,
        _init_fn=init_fn,
        _rollout_fn=rollout_fn,
        _abstract_init_fn=_init,
        mesh=mesh,
        state_sharding=state_sharding,
    )


# ---- evaluation --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _make_evaluate(network, env, n_envs: int, n_steps: int, policy: str, info_keys: tuple):
    """Jitted ``(params, env_params, key) -> metrics`` for one (network, env, sizes, policy)."""
    if policy not in EVAL_POLICIES:
        raise ValueError(f"policy must be one of {EVAL_POLICIES}, got {policy!r}")
    v_reset = jax.vmap(env.reset, in_axes=(0, None))
    v_step = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    k_actions = int(env.num_actions)

    def run(params, env_params, key):
        k_reset, key = jax.random.split(key)
        obs, env_state = v_reset(jax.random.split(k_reset, n_envs), env_params)
        def step(carry, _):
            obs, env_state, key, ep_ret, ep_len, traj_lw = carry
            key, k_act, k_env = jax.random.split(key, 3)
            if policy == "uniform":
                log_probs = jnp.full((n_envs, k_actions), -math.log(k_actions), jnp.float32)
                action = jax.random.randint(k_act, (n_envs,), 0, k_actions, dtype=jnp.int32)
            else:
                logits, _ = network.apply(params, obs)
                if policy == "trained":
                    log_probs = log_probs_from_logits(logits)
                    action = jax.random.categorical(k_act, log_probs).astype(jnp.int32)
                else:  # greedy: a point mass on the argmax
                    action = jnp.argmax(logits, axis=-1).astype(jnp.int32)
                    log_probs = jnp.where(
                        jnp.arange(logits.shape[-1]) == action[:, None], 0.0, -jnp.inf
                    ).astype(jnp.float32)
            ess = ess_ratio(log_probs).astype(jnp.float32)
            step_lw = step_log_weight(log_probs, action).astype(jnp.float32)
            obs, env_state, reward, terminated, truncated, info = v_step(
                jax.random.split(k_env, n_envs), env_state, action, env_params
            )
            done = jnp.logical_or(jnp.asarray(terminated, bool), jnp.asarray(truncated, bool))
            reward = jnp.asarray(reward, jnp.float32)
            ep_ret, ep_len, traj_lw = ep_ret + reward, ep_len + 1, traj_lw + step_lw
            out = {
                "done": done, "ep_return": ep_ret, "ep_length": ep_len, "traj_lw": traj_lw,
                "ess": ess, "reward": reward,
                **{k: jnp.asarray(info[k], jnp.float32) for k in _info_keys_present(info, info_keys)},
            }
            carry = (
                obs, env_state, key,
                jnp.where(done, 0.0, ep_ret), jnp.where(done, 0, ep_len),
                jnp.where(done, 0.0, traj_lw),
            )
            return carry, out

        init = (
            obs, env_state, key, jnp.zeros((n_envs,), jnp.float32),
            jnp.zeros((n_envs,), jnp.int32), jnp.zeros((n_envs,), jnp.float32),
        )
        _, out = jax.lax.scan(step, init, None, length=n_steps)
        keys_present = _info_keys_present(out, info_keys)
        done = out["done"]
        donef = done.astype(jnp.float32)
        n_ep = donef.sum()
        lsw, lsw2, _ = _masked_log_sums(out["traj_lw"], done)
        ep_mean = _safe_mean(jnp.sum(out["ep_return"] * donef), n_ep)
        ep_var = _safe_mean(jnp.sum((out["ep_return"] - ep_mean) ** 2 * donef), n_ep - 1.0)
        res = {
            "ep_rew_mean": ep_mean,
            "ep_rew_sem": jnp.sqrt(ep_var / jnp.maximum(n_ep, 1.0)),
            "ep_len_mean": _safe_mean(jnp.sum(out["ep_length"] * donef), n_ep),
            "n_episodes": n_ep,
            "reward_per_step": out["reward"].mean(),
            "ess_ratio": out["ess"].mean(),
            "batch_ess": (
                jnp.float32(jnp.nan) if policy == "greedy"
                else batch_ess_from_sums(lsw, lsw2, n_ep)
            ),
        }
        for k in keys_present:
            res[k] = out[k].mean()
            res["final_" + k] = _safe_mean(jnp.sum(out[k] * donef), n_ep)
        return {k: jnp.asarray(v, jnp.float32) for k, v in res.items()}

    return jax.jit(run)


def evaluate(
    params,
    network: nn.Module,
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
        episodes; NaN with fewer than two), ``n_episodes``, ``reward_per_step`` (mean env reward per step),
        ``ess_ratio`` (mean per step), ``batch_ess`` (over finished trajectories), and for each
        info key ``k`` the env provides: ``k`` (mean over all steps and envs) and ``final_k``
        (mean over the last step of the finished episodes).
    """
    if env_params is None:
        env_params = env.default_params
    fn = _make_evaluate(network, env, int(n_envs), int(n_steps), policy, tuple(info_keys))
    out = fn(params, env_params, key)
    return {k: float(v) for k, v in out.items()}
