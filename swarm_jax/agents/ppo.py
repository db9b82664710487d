"""PPO for the SwarmThinkers policy, in the PureJaxRL shape, with the gaps closed.

The training loop reads top to bottom in :func:`make_train`: a few small pure functions composed
into ``init`` and ``train_chunk``; the pieces live beside it —
:mod:`~swarm_jax.agents.ppo_config` (hyper-parameters), :mod:`~swarm_jax.agents.acting` (the
choice among the candidates), :mod:`~swarm_jax.agents.episodes` (episode bookkeeping),
:mod:`~swarm_jax.agents.losses` (GAE, learning reward, loss, ESS multiplier) and
:mod:`~swarm_jax.agents.evaluation` (rolling a policy without learning).

One *update* (all inside one jitted function):

1. **Rollout**: ``lax.scan`` over ``n_steps`` of a ``vmap``-ed ``env.step`` on ``n_envs``
   environments (gymnax auto-reset; through :func:`~swarm_jax.env.tio2_env.batched_step`, so
   ``TiO2GrowthEnv`` resets only the envs that are done, with the same outputs). The actor's
   distribution at each step gives the action (sampled), its log-probability, the per-step ESS
   ratio and the step importance log-weight.
2. **GAE**: a reverse ``lax.scan``. Unlike PureJaxRL's single ``done`` flag, *truncated* episodes
   (the step limit, and for TiO2GrowthEnv a column reaching the top of the box) are bootstrapped
   with the value of the true last observation ``info["final_observation"]`` and only
   *terminated* ones are cut:
   ``δ_t = r_t + γ V(s'_t) (1 − terminated_t) − V(s_t)``,
   ``A_t = δ_t + γ λ (1 − done_t) A_{t+1}``, ``done = terminated ∨ truncated``,
   where ``s'_t`` is the pre-reset next observation. Returns ``R_t = A_t + V(s_t)``.
3. **Optimisation**: ``n_epochs`` × ``n_minibatches`` nested ``lax.scan``: shuffle, clipped
   surrogate, value loss (optionally clipped, as SB3's ``clip_range_vf``), entropy bonus, the ESS
   constraint's augmented-Lagrangian term, ``optax.chain(clip_by_global_norm, adam(eps))`` with
   optional linear LR annealing; then one dual-ascent step of the ESS multiplier λ.

**Learning reward** (:func:`swarm_jax.agents.losses.learning_reward`). The env reward; for a
level reward reported with ``info["reward_level"]``/``["reward_level_before"]`` its
potential-based difference form ``(L(s') − L(s))/(1 − γ)`` (``reward_shaping="potential"``:
same optimal policy, no large state-dependent level in the return); minus the original project's ESS term
``w_ess · max(0, ess_target − ESS_t)``; divided by the running scale of its discounted return
(``normalize_reward``). ``ep_rew_mean`` and evaluation report the env reward alone.

**KL objective** (``objective="kl"``, β = ``kl_coef``; the original project's objective is ``"reward"``).
Each step's reward gets ``β·log w_t`` (the rollout's step importance log-weight, a fixed reward,
:func:`~swarm_jax.agents.losses.kl_reward`, added before reward normalisation), so the
undiscounted return is ``R(τ) − β·log q(τ)/p(τ)`` and its maximiser is the tilted ensemble
``p_β ∝ p·exp(R/β)``, under which the trajectory weight depends on ``τ`` only through ``R``
(derivation, and why the score-function gradient of the fixed reward is the whole gradient:
``docs/physics.md``, "Learning an exact sampler: the KL objective"). It requires ``gamma = 1``,
no potential shaping, no ESS constraint or ESS reward term and no entropy bonus
(:class:`~swarm_jax.agents.ppo_config.PPOConfig` rejects the combination in one line).

**ESS constraint.** The mean per-step ESS ratio ``K² / Σ_j 1/π_j`` of the policy over the visited
states must stay at or above ``ess_target``: ``λ·c + ρ/2·max(0, c)²`` with ``c = target −
mean ESS`` of the current parameters is added to every minibatch loss, and λ follows dual ascent
on the rollout's mean ESS (``docs/physics.md``, "Learning: the ESS constraint").

**Staggered starts.** With ``stagger_episodes`` the envs first run ``U[0, max_steps)`` classical
(uniform-choice) events each, so episode ends do not come in lockstep; those first partial
episodes are not counted. ``ep_rew_mean`` is the mean over the last 100 finished episodes.

**Minibatches** (:func:`~swarm_jax.agents.minibatches.shuffle_into_minibatches`): each epoch
shuffles every env's steps independently and deals the env-major rollout round-robin into
``n_minibatches``; every transition is used once per epoch, and the layout does not depend on
how the envs are spread over devices.

**Multi-device** (``make_train(..., mesh=...)`` or ``n_devices=``): the same program, its env
batch split over a ``"data"`` mesh; all device placement lives in :mod:`~swarm_jax.agents.sharded`
(the algorithm calls its :class:`~swarm_jax.agents.sharded.EnvLayout`, the identity on one device).

**Chunks.** :meth:`PPOTrainer.train_chunk` runs ``n_updates`` updates in one jitted ``lax.scan``
and returns *reduced* metrics (no per-step or per-update history leaves the device), so a long
run is a host loop of chunks with logging/checkpointing between them. It compiles once per chunk
size and, for a given key, ``k`` chunks of ``n`` updates give the same parameters as one chunk of
``k·n`` (the LR schedule reads the optimiser's own step count).

**Importance weights.** Each env carries the log of its trajectory weight
``log W = Σ_t log w_t``, ``log w_t = −log K − log π_{a_t}`` (``weights.step_log_weight``), reset at
every episode end. The chunk metric ``batch_ess`` is ``(Σ W_i)² / (n Σ W_i²)`` over the
trajectories that *finished* during the chunk (complete episodes: the honest fidelity figure of
``docs/physics.md``, SwarmThinkers); if none finished, it falls back to the running (partial)
trajectories at the end of the chunk. ``batch_ess_running`` is always the latter;
``n_episodes`` says which applies.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training.train_state import TrainState
from jax.sharding import Mesh

from swarm_jax.agents import episodes as ep
from swarm_jax.agents.acting import choose
from swarm_jax.agents.episodes import (  # noqa: F401  (re-exported)
    EpisodeWindow, RunningEpisodes, batch_ess_ratio_from_sums,
)
from swarm_jax.agents.evaluation import (  # noqa: F401  (re-exported)
    DEFAULT_INFO_KEYS, evaluate, info_keys_present,
)
from swarm_jax.agents.minibatches import (  # noqa: F401  (re-exported)
    minibatch_indices, shuffle_into_minibatches,
)
from swarm_jax.agents.losses import (  # noqa: F401  (re-exported)
    RewardNormState, compute_gae, dual_ascent, kl_reward, learning_reward, ppo_loss,
)
from swarm_jax.agents.networks import NetworkConfig, make_network
from swarm_jax.agents.ppo_config import (  # noqa: F401  (re-exported)
    LEVEL_KEYS, PPOConfig, resolve_ess_term,
)
from swarm_jax.agents.sharded import EnvLayout, jit_entry_points, place_state, resolve_layout
from swarm_jax.env.tio2_env import batched_step
from swarm_jax.swarm.weights import batch_ess_ratio

Array = jax.Array


# ---- state containers --------------------------------------------------------------------------


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
        episodes: the last :data:`~swarm_jax.agents.episodes.EPISODE_WINDOW` finished episodes (``ep_rew_mean``), kept per
            env (leading axis ``n_envs``) so that sharded runs never gather per-env data.
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
    episodes: EpisodeWindow
    ess_lambda: Array
    reward_norm: RewardNormState


    @property
    def running(self) -> RunningEpisodes:
        """The per-env running episodes as one :class:`RunningEpisodes`."""
        return RunningEpisodes(ret=self.ep_return, length=self.ep_length,
                               log_weight=self.traj_log_weight, partial=self.ep_partial)

    def with_running(self, running: RunningEpisodes) -> "RunnerState":
        return self.replace(ep_return=running.ret, ep_length=running.length,
                            traj_log_weight=running.log_weight, ep_partial=running.partial)


@struct.dataclass
class Transition:
    """One rollout step for all envs (leading axes ``(n_steps, n_envs)`` once stacked)."""

    obs: Any
    action: Array  # int32
    log_prob: Array  # log π_a at collection
    value: Array  # V(s_t)
    next_value: Array  # V(final_observation_t): value of the pre-reset next observation
    reward: Array  # the learning reward (swarm_jax.agents.losses.learning_reward)
    env_reward: Array  # reward returned by the env
    ess_ratio: Array  # per-step ESS ratio of the actor's distribution, K² / Σ_j 1/π_j
    step_log_weight: Array  # log w_t = −log K − log π_a at collection (Choice.step_log_weight)
    terminated: Array  # bool
    done: Array  # bool, terminated | truncated



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
        layout: where the env batch lives (:class:`~swarm_jax.agents.sharded.EnvLayout`: one
            device, or split over a ``"data"`` mesh); ``state_sharding``: the runner state's
            shardings on that mesh (None without one).
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
    layout: EnvLayout = EnvLayout()
    state_sharding: Any = dataclasses.field(default=None, repr=False)

    @property
    def mesh(self) -> Optional[Mesh]:
        """The ``"data"`` mesh the env batch is split over, or None."""
        return self.layout.mesh

    @property
    def n_devices(self) -> int:
        """Devices the env batch is split over (1 without a mesh)."""
        return self.layout.n_devices

    def init(self, key: Array) -> RunnerState:
        """Fresh :class:`RunnerState`: network params, optimiser state, ``n_envs`` reset envs
        (laid out on the mesh, if any)."""
        return self._init_fn(key)

    def shard_state(self, runner_state: RunnerState) -> RunnerState:
        """Lay a runner state out as this trainer's jitted functions expect it.

        With a mesh: per-env fields split over ``"data"``, the rest replicated (use it on a
        state restored from a checkpoint onto one device). Without a mesh: returned unchanged.
        """
        return place_state(runner_state, self.state_sharding)

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


# ---- make_train: small pure pieces, composed ---------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class _Setup:
    """What the pieces of one trainer share; closed over (static) by its jitted functions.

    Attributes:
        cfg, network, env, env_params, tx: as in :class:`PPOTrainer`.
        info_keys: ``info`` entries reported as rollout means (those the env provides).
        w_ess, ess_target: the resolved ESS reward weight and constraint target.
        shaping: the env reports a level reward's levels and ``reward_shaping="potential"``.
        warmup_steps: length of the staggered warm-up (0: no stagger).
        layout: where the envs live (one device, or split over a mesh).
    """

    cfg: PPOConfig
    network: nn.Module
    env: Any
    env_params: Any
    tx: optax.GradientTransformation
    info_keys: tuple[str, ...]
    w_ess: Any
    ess_target: Any
    shaping: bool
    warmup_steps: int
    layout: EnvLayout

    @property
    def num_actions(self) -> int:
        return int(self.env.num_actions)

    def v_reset(self, keys, params):
        return jax.vmap(self.env.reset, in_axes=(0, None))(keys, params)

    def v_step(self, keys, state, action, params):
        """``vmap`` of ``env.step``'s outputs, through the env's batched step
        (:func:`~swarm_jax.env.tio2_env.batched_step`: resets only the envs that are done, same
        outputs), each device on its own envs."""
        return self.layout.per_device(batched_step(self.env))(keys, state, action, params)


def _make_optimizer(cfg: PPOConfig) -> optax.GradientTransformation:
    """clip-by-global-norm then Adam; the LR annealed per update when ``anneal_lr``."""
    learning_rate: Any = cfg.learning_rate
    if cfg.anneal_lr:
        steps_per_update = cfg.n_epochs * cfg.n_minibatches
        learning_rate = lambda count: cfg.learning_rate_at(count // steps_per_update)  # noqa: E731
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm),
                       optax.adam(learning_rate=learning_rate, eps=cfg.adam_eps))


def _stagger(s: _Setup, env_state, obs, key):
    """Step env i through ``u_i ~ U[0, warmup_steps)`` classical (uniform-choice) events, so the
    envs sit at spread-out points of their episodes. Returns ``(env_state, obs, u > 0)``."""
    n = s.cfg.n_envs
    k_len, key = jax.random.split(key)
    n_warm = jax.random.randint(k_len, (n,), 0, s.warmup_steps)

    def body(carry, t):
        env_state, obs, key = carry
        key, k_act, k_env = jax.random.split(key, 3)
        action = choose(None, None, obs, k_act, "uniform", s.num_actions).action
        new_obs, new_state, *_ = s.v_step(jax.random.split(k_env, n), env_state, action,
                                          s.env_params)
        live = t < n_warm

        def keep(new, old):
            return jnp.where(live.reshape(live.shape + (1,) * (new.ndim - 1)), new, old)

        return (jax.tree.map(keep, new_state, env_state), jax.tree.map(keep, new_obs, obs), key), None

    (env_state, obs, _), _ = jax.lax.scan(
        body, (env_state, obs, key), jnp.arange(s.warmup_steps, dtype=jnp.int32))
    return env_state, obs, n_warm > 0


def _init(s: _Setup, key: Array) -> RunnerState:
    """Network parameters, optimiser state and ``n_envs`` reset (and staggered) environments."""
    cfg = s.cfg
    key, k_net, k_env, k_stagger = jax.random.split(key, 4)
    obs, env_state = s.v_reset(jax.random.split(k_env, cfg.n_envs), s.env_params)
    params = s.network.init(k_net, jax.tree.map(lambda x: x[0], obs))
    partial = jnp.zeros((cfg.n_envs,), bool)
    if s.warmup_steps:
        env_state, obs, partial = _stagger(s, env_state, obs, k_stagger)
    running = RunningEpisodes.zeros(cfg.n_envs, partial)
    train_state = TrainState.create(apply_fn=s.network.apply, params=params, tx=s.tx)
    # A strong step count (flax's Python 0 is weakly typed), as a checkpoint restores it: fresh
    # and restored states then share one compiled chunk function.
    train_state = train_state.replace(step=jnp.zeros((), int))
    return RunnerState(
        train_state=train_state,
        env_state=env_state, last_obs=obs, rng=key,
        traj_log_weight=running.log_weight, ep_return=running.ret, ep_length=running.length,
        update_step=jnp.zeros((), jnp.int32), env_steps=jnp.zeros((), jnp.int64),
        ep_partial=running.partial, episodes=EpisodeWindow.empty(cfg.n_envs),
        ess_lambda=jnp.asarray(cfg.ess_lambda_init if cfg.ess_constraint else 0.0, jnp.float32),
        reward_norm=RewardNormState.create(cfg.n_envs),
    )


def _env_step(s: _Setup, rs: RunnerState, _):
    """One rollout step of every env: choose, step, learning reward, episode bookkeeping."""
    cfg, params = s.cfg, rs.train_state.params
    rng, k_act, k_env = jax.random.split(rs.rng, 3)
    choice = choose(s.network, params, rs.last_obs, k_act, "trained", s.num_actions)
    obs, env_state, reward, terminated, truncated, info = s.v_step(
        jax.random.split(k_env, cfg.n_envs), rs.env_state, choice.action, s.env_params)
    _, next_value = s.network.apply(params, info["final_observation"])
    terminated = jnp.asarray(terminated, bool)
    done = terminated | jnp.asarray(truncated, bool)
    learn, penalty = learning_reward(cfg, reward, info, terminated, choice.ess, s.w_ess,
                                     s.ess_target, s.shaping)
    if cfg.objective == "kl":
        learn = learn + kl_reward(cfg, choice.step_log_weight)
    reward_norm = rs.reward_norm
    if cfg.normalize_reward:
        reward_norm = reward_norm.update(learn, done, cfg.gamma)
        learn = learn / reward_norm.scale
    running, record = ep.advance(rs.running, reward, choice.step_log_weight, done)
    transition = Transition(
        obs=rs.last_obs, action=choice.action, log_prob=choice.log_prob, value=choice.value,
        next_value=jax.lax.stop_gradient(next_value), reward=learn,
        env_reward=jnp.asarray(reward, jnp.float32), ess_ratio=choice.ess,
        step_log_weight=choice.step_log_weight, terminated=terminated, done=done,
    )
    record.update(penalty=penalty,
                  **{k: jnp.asarray(info[k], jnp.float32) for k in s.info_keys})
    rs = rs.with_running(running).replace(
        env_state=env_state, last_obs=obs, rng=rng, env_steps=rs.env_steps + cfg.n_envs,
        reward_norm=reward_norm)
    return rs, (transition, record)


def _optimise(s: _Setup, train_state: TrainState, ess_lambda: Array, batch, key: Array):
    """``n_epochs`` passes of ``n_minibatches`` gradient steps over an env-major rollout."""

    def minibatch_step(state, mb):
        transition, advantages, returns = mb
        grads, aux = jax.grad(
            lambda p: ppo_loss(s.cfg, s.network, p, transition, advantages, returns,
                               ess_lambda, s.ess_target),
            has_aux=True)(state.params)
        return state.apply_gradients(grads=grads), aux

    def epoch(carry, _):
        state, key = carry
        key, k_perm = jax.random.split(key)
        minibatches = shuffle_into_minibatches(batch, k_perm, s.cfg.n_minibatches, s.layout)
        state, aux = jax.lax.scan(minibatch_step, state, minibatches)
        return (state, key), aux

    (train_state, _), aux = jax.lax.scan(epoch, (train_state, key), None, length=s.cfg.n_epochs)
    return train_state, aux


def _update(s: _Setup, rs: RunnerState, _):
    """One PPO update: rollout, GAE, optimisation, dual ascent, episode window; per-update stats."""
    cfg = s.cfg
    first_stamp = rs.env_steps  # stamps of this rollout's finished episodes start here
    rs, (traj, record) = jax.lax.scan(lambda r, x: _env_step(s, r, x), rs, None,
                                      length=cfg.n_steps)
    advantages, returns = compute_gae(traj.reward, traj.value, traj.next_value, traj.terminated,
                                      traj.done, cfg.gamma, cfg.gae_lambda)
    env_major = lambda x: s.layout.split_envs(jnp.swapaxes(x, 0, 1))  # noqa: E731
    batch = jax.tree.map(env_major, (traj, advantages, returns))
    rng, k_epochs = jax.random.split(rs.rng)
    train_state, aux = _optimise(s, rs.train_state, rs.ess_lambda, batch, k_epochs)
    rollout_ess = traj.ess_ratio.mean()
    ess_lambda = dual_ascent(cfg, rs.ess_lambda, rollout_ess, s.ess_target)
    rs = rs.replace(
        train_state=train_state, rng=rng, update_step=rs.update_step + 1, ess_lambda=ess_lambda,
        episodes=rs.episodes.push(record["ep_return"], record["ep_length"], record["counted"],
                                  first_stamp),
    )
    finished = ep.finished_summary(record)
    return rs, {
        "n_episodes": finished["n_episodes"],
        "log_sum_w": finished["log_sum_w"],
        "log_sum_w2": finished["log_sum_w2"],
        "log_w_sum": finished["log_w_sum"],
        "log_w_sq_sum": finished["log_w_sq_sum"],
        "kl_per_step": -traj.step_log_weight.mean(),
        "ess_ratio": rollout_ess,
        "ess_constraint": jnp.asarray(s.ess_target, jnp.float32) - rollout_ess,
        "ess_lambda": ess_lambda,
        "reward_scale": rs.reward_norm.scale,
        "learn_reward": traj.reward.mean(),
        "ess_penalty": record["penalty"].mean(),
        "reward": traj.env_reward.mean(),
        "learning_rate": cfg.learning_rate_at(rs.update_step - 1),
        **{k: record[k].mean() for k in s.info_keys},
        **{k: v.mean() for k, v in aux.items()},
    }


#: Per-update statistics reported as their mean over a chunk.
_CHUNK_MEANS = ("ess_ratio", "ess_constraint", "ess_penalty", "reward", "learn_reward", "loss",
                "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "ess_loss",
                "kl_per_step")


def _train_chunk(s: _Setup, rs: RunnerState, n_updates: int):
    """``n_updates`` updates in one ``lax.scan``; metrics reduced to float32 scalars."""
    rs, m = jax.lax.scan(lambda r, x: _update(s, r, x), rs, None, length=n_updates)
    n_ep = m["n_episodes"].sum()
    running = batch_ess_ratio(rs.traj_log_weight).astype(jnp.float32)
    finished = ep.batch_ess_ratio_from_sums(jax.nn.logsumexp(m["log_sum_w"]),
                                      jax.nn.logsumexp(m["log_sum_w2"]), n_ep)
    lw_mean, lw_var = ep.log_weight_moments(m["log_w_sum"].sum(), m["log_w_sq_sum"].sum(), n_ep)
    lw_running = rs.traj_log_weight.astype(jnp.float64)  # fallback, as batch_ess: no NaN metric
    lw_mean = jnp.where(n_ep > 0, lw_mean, lw_running.mean())
    lw_var = jnp.where(n_ep > 0, lw_var, lw_running.var())
    metrics = {
        **dict(zip(("ep_rew_mean", "ep_len_mean"),
                   rs.episodes.means(rs.episodes.returns, rs.episodes.lengths))),
        "n_episodes": n_ep,
        "batch_ess": jnp.where(n_ep > 0, finished, running),
        "batch_ess_running": running,
        "traj_log_weight_mean": lw_mean,
        "traj_log_weight_var": lw_var,
        "learning_rate": m["learning_rate"][-1],
        "ess_lambda": m["ess_lambda"][-1],
        "reward_scale": m["reward_scale"][-1],
        "env_steps": rs.env_steps.astype(jnp.float32),
        "update_step": rs.update_step.astype(jnp.float32),
        **{k: m[k].mean() for k in (*_CHUNK_MEANS, *s.info_keys)},
    }
    return rs, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


def _collect(s: _Setup, rs: RunnerState):
    rs, (traj, _) = jax.lax.scan(lambda r, x: _env_step(s, r, x), rs, None, length=s.cfg.n_steps)
    return rs, traj


def _setup(config: PPOConfig, network_config: NetworkConfig, env, env_params, info_keys,
           layout: EnvLayout) -> _Setup:
    """Resolve everything the pieces share (network, optimiser, reported keys, shaping, stagger)."""
    def probe(key):  # which info keys does the env report? (traced abstractly, nothing computed)
        obs, st = env.reset(key, env_params)
        return env.step(key, st, jnp.int32(0), env_params)[-1]

    probe_info = jax.eval_shape(probe, jax.random.PRNGKey(0))
    if info_keys is None:
        info_keys = tuple(getattr(env, "metric_keys", DEFAULT_INFO_KEYS))
    w_ess, ess_target = resolve_ess_term(config, env_params)
    max_steps = getattr(env_params, "max_steps_in_episode", None)
    stagger = config.stagger_episodes and max_steps is not None and int(max_steps) > 1
    return _Setup(
        cfg=config, network=make_network(network_config, int(env.num_actions)), env=env,
        env_params=env_params, tx=_make_optimizer(config),
        info_keys=info_keys_present(probe_info, tuple(info_keys)), w_ess=w_ess,
        ess_target=ess_target,
        shaping=config.reward_shaping == "potential" and all(k in probe_info for k in LEVEL_KEYS),
        warmup_steps=int(max_steps) if stagger else 0, layout=layout,
    )


def make_train(
    config: PPOConfig,
    network_config: NetworkConfig,
    env,
    env_params=None,
    info_keys: Optional[tuple[str, ...]] = None,
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
        info_keys: ``info`` entries to average over rollouts (reported when present); default:
            the env's ``metric_keys`` attribute (TiO2GrowthEnv: roughness, coverage, O/Ti, mean
            height), else :data:`DEFAULT_INFO_KEYS`.
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

        * ``ep_rew_mean``, ``ep_len_mean``: mean env return (without shaping, normalisation or
          the ESS term) and length of the last 100 finished episodes (SB3's meaning); NaN until
          one has finished. ``n_episodes``: episodes finished within the chunk.
        * ``policy_loss``, ``value_loss``, ``entropy``, ``approx_kl``, ``clip_fraction``, ``loss``:
          means over all minibatch steps of the chunk (``approx_kl`` is SB3's
          ``mean((r − 1) − log r)``).
        * ``ess_ratio``: mean per-step ESS ratio of the actor's distribution over the chunk's
          rollouts; ``ess_constraint``: ``ess_target`` minus it (≤ 0 when the constraint holds);
          ``ess_lambda``: the multiplier after the chunk; ``ess_loss``: mean constraint term of
          the loss; ``ess_penalty``: mean per-step ``w_ess · max(0, ess_target − ESS)``;
          ``reward``: mean per-step env reward; ``learn_reward``: mean per-step learning reward
          (shaped, normalised); ``reward_scale``: the normaliser's divisor.
        * ``batch_ess``, ``batch_ess_running``: see the module docstring.
        * ``kl_per_step``: mean of ``−step_log_weight = log(K·π_a)`` over the chunk's rollout
          steps (a per-step estimate of KL(q‖p); 0 for the uniform policy).
          ``traj_log_weight_mean``, ``traj_log_weight_var``: mean and variance of ``log W``
          over the episodes finished within the chunk (if none finished, over the running
          partial trajectories at the end of the chunk, as ``batch_ess``).
        * each of ``info_keys`` the env provides (``roughness``, ``coverage``, ``o_ti_ratio``,
          ``mean_height``): mean over the chunk's rollout steps and envs.
        * ``learning_rate``: the LR of the chunk's last update; ``env_steps``, ``update_step``:
          counters after the chunk (float32 copies; exact integers are in the runner state).
    """
    env_params = env.default_params if env_params is None else env_params
    layout = resolve_layout(config.n_envs, config.batch_size, mesh, n_devices)
    setup = _setup(config, network_config, env, env_params, info_keys, layout)
    init, chunk, collect = (functools.partial(f, setup) for f in (_init, _train_chunk, _collect))
    return PPOTrainer(
        config=config, network_config=network_config, network=setup.network, env=env,
        env_params=env_params, tx=setup.tx, info_keys=setup.info_keys,
        _abstract_init_fn=init, layout=layout,
        **jit_entry_points(init, chunk, collect, layout),
    )
