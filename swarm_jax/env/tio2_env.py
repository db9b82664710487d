"""``TiO2GrowthEnv``: the SwarmThinkers decision process as a gymnax environment.

One environment step is one KMC event. The state holds the film and the ``K = n_swarm``
candidate events drawn i.i.d. from ``Γ_e / Γ_tot``; the observation describes them; the action
``a ∈ [0, K)`` picks one; the chosen event is executed, the physical clock advances by
``−ln(1 − u) / Γ_tot`` (total before the event), and K fresh candidates are drawn from the new
state. Choosing uniformly is classical KMC (docs/physics.md, SwarmThinkers). The importance weight of a choice
needs the policy's distribution and lives with the trainer (:mod:`swarm_jax.swarm.weights`).

gymnax API (1.0): ``reset(key, params) -> (obs, state)``,
``step(key, state, action, params) -> (obs, state, reward, terminated, truncated, info)``;
``step`` auto-resets when ``terminated | truncated`` and returns the pre-reset observation in
``info["final_observation"]``. ``terminated``: the film cannot change any more (status
NO_EVENTS: Γ_tot = 0). ``truncated``: the episode is cut — its step counter reached
``max_steps_in_episode``, or a column reached the top layer (status CEILING: the box is full
there, which ends the simulation but not the film's growth, so learners bootstrap it).
``info["termination_reason"]`` = 1 (CEILING) / 2 (NO_EVENTS), 0 while running.

Episodes defined by physics: with ``EnvParams.episode_ml`` θ > 0 an episode ends (``terminated``,
reason 3 = END_THICKNESS) at the step whose deposit brings the film to ``deposit_target(C, θ)``
atoms, so every such episode holds exactly the same deposited amount and trained and classical
runs are compared at equal thickness; with ``episode_time`` > 0 it ends (reason 4 = END_TIME) at
the first event at or past that physical time. ``max_steps_in_episode`` stays as a safety cap
(truncation), and a column reaching the top of the box still truncates (counted, reason 1): use a
box tall enough that it is rare. The global ``progress`` feature follows the episode's own
measure (deposits, time or steps).

Batches: :meth:`TiO2GrowthEnv.step_batch` returns what ``jax.vmap(env.step)`` returns, bit for
bit, but resets only the envs that are done (under ``vmap`` the cond of ``step`` is a select that
resets and copies every env on every step; what that costs and what ``step_batch`` saves:
``docs/benchmarks.md``, "Environment"). :func:`batched_step` picks it for any env that has it.

Observation: ``{"candidates": float32 (K, CANDIDATE_FEATURE_DIM), "global": float32
(GLOBAL_FEATURE_DIM,)}``, identical shapes for every lattice size (:mod:`swarm_jax.swarm.features`).

``info`` (jnp scalars, pre-reset values of the step): roughness (layers), coverage, mean_height
(ML), fill_fraction, n_ti, n_o, o_ti_ratio, oxide_fraction, time (s, physical clock), dt (s),
event_kind (0..4, −1 if nothing happened), termination_reason, total_rate (Hz, after the step),
reward terms; gymnax adds terminated, truncated, final_observation.

The reward returned by the environment is float32 (``ess_ratio=None``: no ESS term).

Actions in the jitted env (``step``/``step_env``, which cannot raise on traced values): the action
is cast to int32 (a float is truncated toward zero) and clamped to ``[0, K - 1]``, so an
out-of-range action executes candidate 0 (below the range) or candidate ``K - 1`` (above it).
Validate actions at the boundary instead: the Gymnasium adapter (:mod:`swarm_jax.gym`) refuses
anything but an integer in ``[0, K)``, and the PPO trainer only samples valid indices.

Parameters: :class:`EnvParams` and :class:`~swarm_jax.physics.params.PhysicsParams` built from
concrete numbers are validated at construction (one ``ValueError`` naming the field and its
allowed range); traced values inside ``jit``/``vmap`` are not checked.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces

from swarm_jax.env.reward import RewardConfig, compute_reward, metrics_from_observables
from swarm_jax.physics.engine import Event
from swarm_jax.physics.film_observables import height_stats, observables
from swarm_jax.physics.lattice import (
    CEILING, NO_EVENTS, LatticeState, deposit_target_traced, deposited_atoms, init_flat, validate_lattice_size,
)
from swarm_jax.physics.params import PhysicsParams, check_type, concrete_number, make_rate_tables
from swarm_jax.swarm import features as F
from swarm_jax.swarm.candidates import draw_candidates, execute_candidate
from swarm_jax.validation import require_x64

#: The ``info`` entries that describe the film's morphology and composition: roughness W
#: (layers), coverage, O/Ti (atom-count ratio), mean height (ML). Learners and loggers report these.
METRIC_KEYS = ("roughness", "coverage", "o_ti_ratio", "mean_height")

_INT32_MAX = 2**31 - 1
_PHYSICS_FIELDS = tuple(f.name for f in dataclasses.fields(PhysicsParams))
_REWARD_FIELDS = tuple(f.name for f in dataclasses.fields(RewardConfig))


#: ``info["termination_reason"]`` codes beyond the lattice's own status (RUNNING 0, CEILING 1,
#: NO_EVENTS 2): the episode reached its deposited amount / its physical time.
END_THICKNESS, END_TIME = 3, 4
END_REASON_NAMES = {0: "running", CEILING: "ceiling", NO_EVENTS: "no_events",
                    END_THICKNESS: "thickness", END_TIME: "time"}


def end_reason(state: "EnvState", params: "EnvParams", n_columns: int) -> jax.Array:
    """int32 why the episode ends after ``state`` (0 while it runs): the lattice's status
    (CEILING, NO_EVENTS) first, then the deposited amount ``episode_ml`` (END_THICKNESS: the
    film holds exactly ``deposit_target`` deposits, one atom per step at most), then the physical
    time ``episode_time`` (END_TIME: the clock passed it with the step's event). A zero limit is off."""
    lattice = state.lattice
    thick = (params.episode_ml > 0) & (
        deposited_atoms(lattice) >= deposit_target_traced(params.episode_ml, n_columns))
    timed = (params.episode_time > 0) & (lattice.time >= params.episode_time)
    return jnp.where(lattice.status != 0, lattice.status,
                     jnp.where(thick, END_THICKNESS, jnp.where(timed, END_TIME, 0))).astype(jnp.int32)


def episode_progress(state: "EnvState", params: "EnvParams", n_columns: int) -> jax.Array:
    """The global "progress" feature in [0, 1]: deposits / target for a thickness-ended episode,
    time / ``episode_time`` for a time-ended one, else steps / ``max_steps_in_episode``."""
    lattice = state.lattice
    by_steps = state.step_count / jnp.maximum(jnp.asarray(params.max_steps_in_episode), 1)
    by_time = lattice.time / jnp.where(params.episode_time > 0, params.episode_time, 1.0)
    by_ml = deposited_atoms(lattice) / deposit_target_traced(params.episode_ml, n_columns)
    progress = jnp.where(params.episode_ml > 0, by_ml,
                         jnp.where(params.episode_time > 0, by_time, by_steps))
    return jnp.clip(progress, 0.0, 1.0)


def batched_step(env):
    """``(keys, state, action, params) -> vmap(env.step)``'s outputs, for a batch of envs.

    ``env.step_batch`` where the env has one (:meth:`TiO2GrowthEnv.step_batch`: the same outputs,
    resetting only the envs that are done), else ``jax.vmap(env.step, in_axes=(0, 0, 0, None))``
    (any gymnax env). The PPO rollout, evaluation and the env benchmark step through this.
    """
    step_batch = getattr(env, "step_batch", None)
    if step_batch is not None:
        return step_batch
    return jax.vmap(env.step, in_axes=(0, 0, 0, None))


def check_action(action, shape: tuple) -> None:
    """Outside ``jit``: ``action`` must be integer candidate indices of ``shape`` (``()`` for
    :meth:`TiO2GrowthEnv.step`, ``(B,)`` for ``step_batch``); one ``TypeError``/``ValueError``
    naming ``action``, its shape and the expected one. Tracers are not checked; values out of
    ``[0, K)`` are clamped (module docstring)."""
    if isinstance(action, jax.core.Tracer):
        return
    want = f"integer candidate index{'es' if shape else ''} of shape {shape}"
    if action is None or isinstance(action, (str, bytes, bool, np.bool_)):
        raise TypeError(f"action = {action!r}: must be an {want}")
    try:
        got = np.shape(action)
        dtype = getattr(action, "dtype", None) or np.asarray(action).dtype
    except (TypeError, ValueError):
        raise TypeError(f"action of type {type(action).__name__}: must be an {want}") from None
    if tuple(got) != tuple(shape):
        raise ValueError(f"action has shape {tuple(got)}: must be an {want}")
    if not np.issubdtype(dtype, np.integer):
        raise TypeError(f"action has dtype {dtype}: must be an {want}")


@struct.dataclass
class EnvParams:
    """Environment parameters: physics, episode length and reward (all traceable but ``reward.mode``).

    Build with :meth:`create` to set physics fields by name, e.g.
    ``EnvParams.create(temperature=600.0, max_steps_in_episode=500, w_roughness=2.0)``.
    """

    physics: PhysicsParams = struct.field(default_factory=PhysicsParams)
    max_steps_in_episode: int = 1000
    reward: RewardConfig = struct.field(default_factory=RewardConfig)
    episode_ml: float = 0.0
    episode_time: float = 0.0

    def __post_init__(self):
        # Concrete values only (see PhysicsParams); the step counter it bounds is int32. A tree
        # JAX rebuilds with placeholders (jax.tree.map(lambda _: None, p)) is not checked.
        if isinstance(self.physics, PhysicsParams) and not isinstance(
                self.physics.temperature, (type(None), bool)):
            check_type("EnvParams", "max_steps_in_episode", self.max_steps_in_episode,
                       f"an integer in [1, {_INT32_MAX}]")
        steps = concrete_number(self.max_steps_in_episode)
        if steps is not None and not (steps.is_integer() and 1 <= steps <= _INT32_MAX):
            raise ValueError(f"EnvParams.max_steps_in_episode = {self.max_steps_in_episode!r}: "
                             f"must be an integer in [1, {_INT32_MAX}]")
        for name, unit in (("episode_ml", "ML"), ("episode_time", "s")):
            value = concrete_number(getattr(self, name))
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"EnvParams.{name} = {getattr(self, name)!r}: must be a finite "
                                 f"number >= 0 ({unit}; 0 = no such end)")

    @classmethod
    def create(cls, *, max_steps_in_episode: int = 1000, max_steps: int | None = None, physics=None,
               reward=None, episode_ml: float = 0.0, episode_time: float = 0.0,
               **overrides) -> "EnvParams":
        """Builds params from keyword overrides of PhysicsParams and RewardConfig fields."""
        physics = physics if physics is not None else PhysicsParams()
        reward = reward if reward is not None else RewardConfig()
        phys_kw = {k: v for k, v in overrides.items() if k in _PHYSICS_FIELDS}
        rew_kw = {k: v for k, v in overrides.items() if k in _REWARD_FIELDS}
        unknown = set(overrides) - set(phys_kw) - set(rew_kw)
        if unknown:
            raise TypeError(f"unknown environment parameter(s): {sorted(unknown)}")
        if max_steps is not None:
            max_steps_in_episode = max_steps
        return cls(
            physics=physics.replace(**phys_kw),
            max_steps_in_episode=max_steps_in_episode,
            reward=RewardConfig(**{**{k: getattr(reward, k) for k in _REWARD_FIELDS}, **rew_kw}),
            episode_ml=episode_ml,
            episode_time=episode_time,
        )

    @property
    def temperature(self):
        """Substrate temperature, K."""
        return self.physics.temperature

    @property
    def deposition_rate(self):
        """Total deposition flux F, ML/s."""
        return self.physics.deposition_rate

    @property
    def o_ti_flux_ratio(self):
        """O/Ti flux ratio r (F_O = r F_Ti)."""
        return self.physics.o_ti_flux_ratio

    @property
    def max_steps(self):
        return self.max_steps_in_episode


@struct.dataclass
class EnvState:
    """Environment state.

    Attributes:
      lattice: the film (its ``time`` is the physical clock, s).
      candidates: (K,) Event, the candidates the current observation describes.
      step_count: int32 steps taken in this episode (drives truncation; not the physical clock).
      metrics: (3,) float64 [roughness, mean height, O/Ti] of ``lattice``
        (:func:`swarm_jax.env.reward.reward_metrics`).
      prev_metrics: (3,) the same before the last step (for the delta reward; = metrics at reset).
    """

    lattice: LatticeState
    candidates: Event
    step_count: jnp.ndarray
    metrics: jnp.ndarray
    prev_metrics: jnp.ndarray


class TiO2GrowthEnv(environment.Environment[EnvState, EnvParams]):
    """SOS TiO2 growth with SwarmThinkers candidates (see the module docstring).

    Args:
      lattice_size: (Lx, Ly, Lz) sites; the observation shapes do not depend on it.
      n_swarm: K, the number of candidates per decision (= number of actions).
      **overrides: defaults for :attr:`default_params` (PhysicsParams fields such as
        ``temperature``, RewardConfig fields such as ``w_roughness``, ``max_steps_in_episode``
        or ``max_steps``, or whole ``physics=``/``reward=`` objects).
    """

    #: ``info`` entries that describe the film (reported as rollout means by the trainer).
    metric_keys = METRIC_KEYS

    def __init__(self, lattice_size=(8, 8, 5), n_swarm: int = 32, **overrides):
        require_x64("a TiO2GrowthEnv")
        super().__init__()
        self.lattice_size = validate_lattice_size(lattice_size)
        if (isinstance(n_swarm, bool) or not isinstance(n_swarm, numbers.Integral)
                or not 1 <= int(n_swarm) <= _INT32_MAX):
            raise ValueError(f"n_swarm = {n_swarm!r}: must be an integer in [1, {_INT32_MAX}]")
        self.n_swarm = int(n_swarm)
        self._default_params = EnvParams.create(**overrides)

    # ------------------------------------------------------------------ gymnax interface

    @property
    def default_params(self) -> EnvParams:
        return self._default_params

    @property
    def name(self) -> str:
        lx, ly, lz = self.lattice_size
        return f"TiO2Growth-{lx}x{ly}x{lz}-K{self.n_swarm}"

    @property
    def num_actions(self) -> int:
        return self.n_swarm

    @property
    def obs_shapes(self) -> dict:
        """Shapes of the observation's arrays (independent of the lattice size)."""
        return {"candidates": (self.n_swarm, F.CANDIDATE_FEATURE_DIM), "global": (F.GLOBAL_FEATURE_DIM,)}

    def action_space(self, params: EnvParams | None = None) -> spaces.Discrete:
        return spaces.Discrete(self.n_swarm)

    def observation_space(self, params: EnvParams | None = None) -> spaces.Dict:
        k = self.n_swarm
        return spaces.Dict({
            "candidates": spaces.Box(
                jnp.broadcast_to(jnp.asarray(F.CANDIDATE_FEATURE_LOW), (k, F.CANDIDATE_FEATURE_DIM)),
                jnp.broadcast_to(jnp.asarray(F.CANDIDATE_FEATURE_HIGH), (k, F.CANDIDATE_FEATURE_DIM)),
                (k, F.CANDIDATE_FEATURE_DIM), jnp.float32,
            ),
            "global": spaces.Box(
                jnp.asarray(F.GLOBAL_FEATURE_LOW), jnp.asarray(F.GLOBAL_FEATURE_HIGH),
                (F.GLOBAL_FEATURE_DIM,), jnp.float32,
            ),
        })

    def reset_env(self, key: jax.Array, params: EnvParams):
        """A bare flat substrate (closed form, cheap: gymnax evaluates this on every step)."""
        tables = make_rate_tables(params.physics)
        lattice = init_flat(self.lattice_size, params.physics)
        heights = height_stats(lattice)
        metrics = metrics_from_observables(observables(lattice, heights))
        state = EnvState(
            lattice=lattice,
            candidates=draw_candidates(lattice, tables, key, self.n_swarm),
            step_count=jnp.zeros((), jnp.int32),
            metrics=metrics,
            prev_metrics=metrics,
        )
        return self._observe(state, params, tables, heights), state

    def step(self, key: jax.Array, state: EnvState, action, params: EnvParams | None = None):
        """gymnax's ``step`` (same keys, same outputs), with the auto-reset under ``lax.cond``.

        Unbatched, the reset is then only evaluated when the episode ends; under ``vmap`` the
        cond becomes a select and costs what gymnax's select does (O(N) per step, every env
        reset and copied). For batches use :meth:`step_batch`. A concrete
        ``action`` is checked first (:func:`check_action`); the step itself is jitted.
        """
        check_action(action, ())
        return self._step(key, state, action, params)

    @partial(jax.jit, static_argnames=("self",))
    def _step(self, key: jax.Array, state: EnvState, action, params: EnvParams | None = None):
        if params is None:
            params = self.default_params
        key_reset, (obs_st, state_st, reward, terminated, truncated, info) = self._step_no_reset(
            key, state, action, params)
        obs, state = jax.lax.cond(
            terminated | truncated, lambda: self.reset_env(key_reset, params),
            lambda: (obs_st, state_st))
        return obs, state, reward, terminated, truncated, info

    def _step_no_reset(self, key: jax.Array, state: EnvState, action, params: EnvParams):
        """One env's step without the auto-reset: ``(key_reset, (obs, state, reward, terminated,
        truncated, info))`` with the pre-reset ``obs``/``state`` (also ``info["final_observation"]``)
        and the key the reset of :meth:`step` / :meth:`step_batch` draws from."""
        key_step, key_reset = jax.random.split(key)
        obs_st, state_st, reward, terminated, info = self.step_env(key_step, state, action, params)
        truncated = self.is_truncated(state_st, params)
        info = {**info, "terminated": terminated, "truncated": truncated, "final_observation": obs_st}
        return key_reset, (obs_st, state_st, reward, terminated, truncated, info)

    def step_batch(self, keys: jax.Array, state: EnvState, action, params: EnvParams | None = None,
                   reset_slots: int | None = None):
        """``jax.vmap(self.step, in_axes=(0, 0, 0, None))`` with an auto-reset that resets only
        the envs that are done: the same outputs, bit for bit, for the same keys.

        Under ``vmap`` the per-env ``lax.cond`` of :meth:`step` becomes a select, so every step
        evaluates the reset of every env and copies every lattice array of the batch. Here the
        batch steps without a reset (``vmap`` of :meth:`step_env`); then, at batch level,
        ``lax.cond`` on the number of finished envs ``n``:

        * ``n = 0`` (most steps): nothing more;
        * ``0 < n ≤ reset_slots``: the rows of the done envs are gathered into ``reset_slots``
          fixed slots (``jnp.nonzero(..., size=reset_slots)``), reset there (the flat substrate
          of :func:`~swarm_jax.physics.lattice.init_flat` does not depend on the key, so ``vmap``
          builds it once; only the candidate draw and their features are per env) and
          scattered back: O(reset_slots · N) instead of O(B · N);
        * ``n > reset_slots``: the select over the whole batch, as ``vmap`` of :meth:`step`.

        Args:
          keys: ``(B,)`` keys, one per env (each split into step and reset keys as in :meth:`step`).
          state, action: batched ``(B, ...)`` states and actions.
          params: unbatched env parameters (default: :attr:`default_params`).
          reset_slots: static number of slots of the scatter path (default ``max(4, B // 64)``,
            clipped to ``[1, B]``: with staggered episodes of L steps about ``B / L`` envs finish
            per step, so more than that is rare and takes the whole-batch select).

        Returns:
          ``(obs, state, reward, terminated, truncated, info)`` with leading axis ``B``, as
          ``vmap`` of :meth:`step` (``info["final_observation"]`` the pre-reset observations).
        """
        check_action(action, (keys.shape[0],))
        if params is None:
            params = self.default_params
        n = keys.shape[0]
        slots = max(4, n // 64) if reset_slots is None else int(reset_slots)
        slots = min(max(slots, 1), n)
        key_reset, (obs_st, state_st, reward, terminated, truncated, info) = jax.vmap(
            self._step_no_reset, in_axes=(0, 0, 0, None))(keys, state, action, params)
        done = terminated | truncated
        v_reset = jax.vmap(self.reset_env, in_axes=(0, None))

        # The (obs, state) pair goes through the conds as an operand (a branch returns it or
        # updates it), so XLA updates its buffers in place: no copy of the batch when nobody is
        # done. (A three-way lax.switch in place of the nested conds copies it on every step;
        # measured in docs/benchmarks.md, "Environment".)
        def reset_rows(pair):
            (rows,) = jnp.nonzero(done, size=slots, fill_value=n)  # n: out of range, dropped
            reset = v_reset(key_reset[jnp.minimum(rows, n - 1)], params)
            return jax.tree.map(lambda full, new: full.at[rows].set(new, mode="drop"), pair, reset)

        def reset_all(pair):
            reset = v_reset(key_reset, params)

            def select(new, old):
                return jnp.where(done.reshape(done.shape + (1,) * (old.ndim - 1)), new, old)

            return jax.tree.map(select, reset, pair)

        n_done = done.sum(dtype=jnp.int32)
        obs, state = jax.lax.cond(
            n_done > 0,
            lambda pair: jax.lax.cond(n_done <= slots, reset_rows, reset_all, pair),
            lambda pair: pair,
            (obs_st, state_st),
        )
        return obs, state, reward, terminated, truncated, info

    def step_env(self, key: jax.Array, state: EnvState, action, params: EnvParams):
        tables = make_rate_tables(params.physics)
        key_clock, key_cand = jax.random.split(key)
        u_clock = jax.random.uniform(key_clock, (), jnp.float64)
        # Nothing below reads the old lattice after the event (its buffers are updated in place).
        lattice, step_info = execute_candidate(state.lattice, tables, state.candidates, action, u_clock)
        heights = height_stats(lattice)  # once per step: the reward, the info and the observation
        film = observables(lattice, heights)
        new_state = EnvState(
            lattice=lattice,
            candidates=draw_candidates(lattice, tables, key_cand, self.n_swarm),
            step_count=state.step_count + 1,
            metrics=metrics_from_observables(film),
            prev_metrics=state.metrics,
        )
        reward, rinfo = compute_reward(new_state, params.reward, film=film)
        terminated = self.is_terminated(new_state, params)
        info = dict(rinfo)
        info.update(
            dt=step_info.dt,
            event_kind=step_info.kind,
            termination_reason=end_reason(new_state, params, self.n_columns),
            total_rate=lattice.total,
        )
        obs = self._observe(new_state, params, tables, heights)
        return obs, new_state, reward.astype(jnp.float32), terminated, info

    def is_terminated(self, state: EnvState, params: EnvParams) -> jax.Array:
        """The episode is over: the film cannot change any more (no event is possible, Γ_tot = 0),
        or it reached the episode's deposited amount (``episode_ml``) or physical time
        (``episode_time``), where the objective is defined (no bootstrap past it)."""
        reason = end_reason(state, params, self.n_columns)
        return (reason == NO_EVENTS) | (reason == END_THICKNESS) | (reason == END_TIME)

    def is_truncated(self, state: EnvState, params: EnvParams) -> jax.Array:
        """The episode is cut, not finished: its step limit, or a column reached the top of the
        box (the box's height is an artefact of the simulation, not an end of the film's growth:
        a learner must bootstrap it, or it learns to build a tower to end episodes early)."""
        return (state.step_count >= params.max_steps_in_episode) | (state.lattice.status == CEILING)

    def get_obs(self, state: EnvState, params: EnvParams | None = None, key=None):
        params = self.default_params if params is None else params
        return self._observe(state, params, make_rate_tables(params.physics))

    # ------------------------------------------------------------------ helpers

    @property
    def n_columns(self) -> int:
        return self.lattice_size[0] * self.lattice_size[1]

    def _observe(self, state: EnvState, params: EnvParams, tables, heights: dict | None = None):
        progress = episode_progress(state, params, self.n_columns)
        return {
            "candidates": F.candidate_features(state.lattice, state.candidates),
            "global": F.global_features(state.lattice, tables, params.physics, progress, heights),
        }
