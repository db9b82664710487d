"""PPO hyper-parameters: :class:`PPOConfig`, one frozen (hashable) dataclass closed over by the
jitted update, validated at construction. ``swarm_jax.training.config`` maps the YAML's ``ppo``
section onto it (defaults there follow the seed; here they follow PureJaxRL)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp

Array = jax.Array

#: ``reward_shaping`` choices.
REWARD_SHAPINGS = ("potential", "none")

#: ``info`` keys of a level reward's level after and before the step, ``L(s')`` and ``L(s)``, that
#: ``reward_shaping="potential"`` reads (TiO2GrowthEnv reports them; zeros in delta mode).
LEVEL_KEYS = ("reward_level", "reward_level_before")

#: The learning keys the YAML's ``ppo`` section carries under the same names and defaults
#: (``swarm_jax.training.config.PPOSection`` takes its defaults from here).
LEARNING_FIELDS = ("ess_constraint", "ess_target", "ess_lambda_init", "ess_lambda_lr",
                   "ess_penalty_coef", "reward_shaping", "normalize_reward", "stagger_episodes")


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
