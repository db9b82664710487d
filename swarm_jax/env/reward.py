"""Reward of the growth environment: morphology, stoichiometry and sampling fidelity.

Level mode (the reward of a state)::

    r = − w_roughness · W + w_coverage · mean(h) − w_ratio · |O/Ti − target_o_ti|
        − w_ess · max(0, ess_target − ESS)

Delta mode: the change of the first three terms over the step (new state minus the state before
the event) plus the same ESS term.

Units: ``W`` (roughness, RMS height deviation) and ``mean(h)`` are in layers = monolayers (ML;
one layer is the lattice constant a = 4.59 Å, multiply by a for Å); ``O/Ti`` (atom-count ratio
of the film, 0 while there is no Ti) and ``ESS`` (per-step ESS ratio, in [0, 1]) are
dimensionless. The weights are dimensionless, so the reward is in "layers". Default weights
follow the original project: 1.0, 0.5, 0.2, 0.3.

The ESS term needs the policy's distribution over the candidates, which only the trainer knows:
the environment alone calls :func:`compute_reward` with ``ess_ratio=None`` (term = 0) and the
trainer adds :func:`ess_penalty` of :func:`swarm_jax.swarm.weights.ess_ratio`.

What the ESS term does and does not do: it is a function of the *state* (the policy's
distribution at that state), the same for every candidate the policy might pick there, so it
cancels out of the advantage differences between actions and cannot steer the choice at a state
towards uniform (measured in ``docs/physics.md``, "Learning: the ESS constraint"). It is kept
for compatibility with the original project's reward. What keeps the policy near the physical proposal is the
ESS *constraint* in the PPO loss (``PPOConfig.ess_constraint``, a Lagrange multiplier adapted by
dual ascent so that the mean per-step ESS ratio stays at ``ess_target``).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import struct

from swarm_jax.physics.film_observables import observables
from swarm_jax.physics.lattice import LatticeState
from swarm_jax.validation import check_choice, check_number

REWARD_MODES = ("level", "delta")
# Order of the stored "previous metrics" vector (see EnvState.prev_metrics).
METRIC_NAMES = ("roughness", "mean_height", "o_ti_ratio")


@struct.dataclass
class RewardConfig:
    """Reward weights (dimensionless) and mode. ``mode`` is static ("level" or "delta").

    Also the ``reward`` section of a training config, built there with :meth:`checked`. The
    weights are pytree leaves (they may be traced or batched), so construction checks only the
    static ``mode``; :meth:`checked` checks and converts every field of plain Python values.
    ``ess_target`` is not a key of the YAML ``reward`` section: a training config sets it from
    ``ppo.ess_target``, the one ESS target of a run.
    """

    w_roughness: float = 1.0
    w_coverage: float = 0.5
    w_ratio: float = 0.2
    w_ess: float = 0.3
    mode: str = struct.field(pytree_node=False, default="level")
    target_o_ti: float = 2.0  # stoichiometric O/Ti of TiO2
    ess_target: float = 0.5  # per-step ESS ratio below which the ESS penalty starts

    def __post_init__(self):
        check_choice("reward.mode", self.mode, REWARD_MODES)

    @classmethod
    def checked(cls, **values) -> "RewardConfig":
        """A RewardConfig of plain values (e.g. a YAML section): every weight and ``target_o_ti``
        a number >= 0, ``ess_target`` in [0, 1] (numeric strings converted); raises
        :class:`swarm_jax.validation.ConfigError` naming ``reward.<field>``."""
        for name, value in values.items():
            if name != "mode":
                bounds = dict(le=1) if name == "ess_target" else {}
                values[name] = check_number(f"reward.{name}", value, ge=0, **bounds)
        return cls(**values)


def _lattice_of(state) -> LatticeState:
    return state if isinstance(state, LatticeState) else state.lattice


def metrics_from_observables(obs: dict) -> jnp.ndarray:
    """(3,) float64 [roughness W (layers), mean height (ML), O/Ti] picked from
    :func:`swarm_jax.physics.observables` (the order of :data:`METRIC_NAMES`)."""
    return jnp.stack([obs[name] for name in METRIC_NAMES]).astype(jnp.float64)


def reward_metrics(lattice: LatticeState) -> jnp.ndarray:
    """(3,) float64 [roughness W (layers), mean height (ML), O/Ti] of a lattice (O(C) over heights)."""
    return metrics_from_observables(observables(lattice))


def morphology_terms(metrics: jnp.ndarray, config: RewardConfig) -> jnp.ndarray:
    """(3,) signed reward terms [−w_r W, w_c mean(h), −w_ratio |O/Ti − target|] from metrics (..., 3)."""
    w, h, ratio = metrics[..., 0], metrics[..., 1], metrics[..., 2]
    return jnp.stack(
        [-config.w_roughness * w, config.w_coverage * h, -config.w_ratio * jnp.abs(ratio - config.target_o_ti)],
        axis=-1,
    )


def ess_penalty(ess_ratio, config: RewardConfig) -> jnp.ndarray:
    """The ESS term ``−w_ess · max(0, ess_target − ESS)`` (≤ 0) for a per-step ESS ratio."""
    return -config.w_ess * jnp.maximum(0.0, config.ess_target - jnp.asarray(ess_ratio))


def compute_reward(state, config: RewardConfig, ess_ratio=None, prev_state=None, film: dict | None = None):
    """Reward of ``state`` under ``config``; returns ``(reward float64 scalar, info dict)``.

    Args:
      state: a :class:`LatticeState` or an environment state (anything with ``.lattice``).
      config: the reward configuration.
      ess_ratio: per-step ESS ratio of the policy's choice, or None (the ESS term is then 0).
      prev_state: delta mode only: the state before the step (LatticeState or env state). If
        omitted, an environment state's ``prev_metrics`` (metrics before its last step) are used.
      film: the lattice's :func:`swarm_jax.physics.observables` when the caller has them already
        (the environment's step computes them once for the reward, the info and the observation).

    Returns:
      reward and ``info`` with the observables of :func:`swarm_jax.physics.observables`
      (``roughness``, ``coverage``, ``mean_height``, ``n_ti``, ``n_o``, ``o_ti_ratio``,
      ``oxide_fraction``, ``fill_fraction``, ``time``) and the terms ``reward_roughness``,
      ``reward_coverage``, ``reward_ratio``, ``reward_ess`` (their sum is the reward); in level
      mode also ``reward_level`` and ``reward_level_before``, the morphology level ``L`` (the
      sum of the three terms) of the state and of the state before the step (when known; 0
      otherwise and in delta mode), from which the trainer builds the potential-based shaped
      reward ``r + (γ L(s') − L(s)) / (1 − γ)`` (:class:`swarm_jax.agents.ppo.PPOConfig`).
    """
    lattice = _lattice_of(state)
    obs = observables(lattice) if film is None else film
    metrics = metrics_from_observables(obs)
    terms = morphology_terms(metrics, config)
    if prev_state is not None:
        prev_metrics = reward_metrics(_lattice_of(prev_state))
    elif hasattr(state, "prev_metrics"):
        prev_metrics = state.prev_metrics
    elif config.mode == "delta":
        raise ValueError("delta mode needs prev_state (or an env state carrying prev_metrics)")
    else:
        prev_metrics = None
    zero = jnp.zeros((), jnp.float64)
    level, level_before = zero, zero
    if config.mode == "delta":
        terms = terms - morphology_terms(prev_metrics, config)
    elif prev_metrics is not None:  # level mode: the level after and before, for PPO's shaping
        level, level_before = terms.sum(), morphology_terms(prev_metrics, config).sum()
    ess_term = zero if ess_ratio is None else ess_penalty(ess_ratio, config)
    reward = terms.sum() + ess_term
    info = dict(obs)
    info.update(
        reward_roughness=terms[0], reward_coverage=terms[1], reward_ratio=terms[2], reward_ess=ess_term,
        reward_level=level, reward_level_before=level_before,
    )
    return reward, info
