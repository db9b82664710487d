"""PPO hyper-parameters: :class:`PPOConfig`, one frozen (hashable) dataclass closed over by the
jitted update, validated at construction. It is also the ``ppo`` section of a training config
(``swarm_jax.training.config.TrainConfig.ppo``): its defaults are the YAML defaults, and its error
messages name the field as the YAML writes it (``ppo.batch_size``, ``training.n_envs``)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional

import jax
import jax.numpy as jnp

from swarm_jax.validation import (
    INT32_MAX, STEPS_MAX, ConfigError, check_bool, check_choice, check_number, fail, show,
)

Array = jax.Array

#: ``reward_shaping`` choices.
REWARD_SHAPINGS = ("potential", "none")

#: ``objective`` choices: the original project's (env reward, ESS term and constraint) or the trajectory-level
#: KL-regularised one (``swarm_jax.agents.ppo``, "KL objective").
OBJECTIVES = ("reward", "kl")

#: ``info`` keys of a level reward's level after and before the step, ``L(s')`` and ``L(s)``, that
#: ``reward_shaping="potential"`` reads (TiO2GrowthEnv reports them; zeros in delta mode).
LEVEL_KEYS = ("reward_level", "reward_level_before")

#: The ESS term's weight and target when neither the PPOConfig nor the env gives one (the original project's).
DEFAULT_W_ESS = 0.3
DEFAULT_ESS_TARGET = 0.5


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO hyper-parameters (hashable: it is closed over by the jitted update).

    Defaults are those of the YAML configs (the original project's SB3 settings: constant LR 3e-4, n_steps 256,
    batch_size 64, n_epochs 10, clip 0.2, ent 0.01, vf 0.5, grad-norm 0.5; Adam eps 1e-5). For
    PureJaxRL's set ``learning_rate=2.5e-4, anneal_lr=True, n_steps=128, batch_size=256,
    n_epochs=4``. Every field is checked at construction (numeric strings such as ``"3e-4"`` are
    accepted and converted); a problem raises :class:`swarm_jax.validation.ConfigError` (a
    ``ValueError``) naming the field as a training config writes it: ``ppo.<name>``, but
    ``training.n_envs`` and ``training.total_timesteps`` (a ``TrainConfig`` fills those two from its
    ``training`` section).

    Attributes:
        n_envs: parallel environments (vmapped).
        n_steps: env steps per environment per update (rollout length).
        batch_size: minibatch size in transitions (SB3 semantics); must divide ``n_envs * n_steps``.
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
            ``None`` (default): take ``env_params.reward.w_ess`` (the env's ``RewardConfig``, the
            original project's default 0.3) so the reward weights have one home; 0.3 if the env
            has none.
            A number overrides it (0 disables the term). Not a key of the YAML ``ppo`` section:
            a training config sets the weight as ``reward.w_ess``.
        ess_target: the per-step ESS ratio the policy must keep on average: the target of the
            ESS constraint below and the threshold of the reward term above (default 0.5, the
            original project's "maintain ESS > 0.5"); ``None``: ``env_params.reward.ess_target`` (0.5 if the
            env has none). A training config stores the YAML's ``ppo.ess_target`` in its env's
            ``RewardConfig`` (beside ``w_ess``) and leaves ``None`` here.
        ess_constraint: keep the mean per-step ESS ratio at or above ``ess_target`` with a
            Lagrangian term in the loss (see "ESS constraint" in the module docstring).
            ``True`` by default; ``False`` leaves PPO unconstrained (the original project's behaviour).
        ess_lambda_init: the multiplier λ at the start of a run (≥ 0).
        ess_lambda_lr: dual-ascent step size of λ per update (``λ ← max(0, λ + lr·(target −
            mean ESS))``).
        ess_penalty_coef: ρ of the augmented Lagrangian's quadratic term ``ρ/2 · max(0,
            target − ESS)²``: it acts inside the update on the current parameters, so the
            constraint holds without the oscillation of pure dual ascent (``docs/physics.md``,
            "Learning: the ESS constraint", has the measurement).
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
        objective: ``"reward"`` (default): learn from the env reward with the original project's ESS term and
            the ESS constraint. ``"kl"``: maximise ``E_q[R] − kl_coef·KL(q‖p)`` over whole
            trajectories (q the policy's dynamics, p classical KMC): each step's learning reward
            gets ``+kl_coef · step_log_weight = −kl_coef·log(K·π(a_t|s_t))`` (module docstring of
            :mod:`swarm_jax.agents.ppo`, "KL objective"). It needs ``gamma = 1``,
            ``ess_constraint = false``, ``reward_shaping = none``, ``ent_coef = 0`` and no ESS
            reward term (``w_ess`` 0 or None; a training config needs ``reward.w_ess = 0``):
            each of those would change the optimum away from the tilted ensemble.
        kl_coef: β > 0 of the KL objective (dimensionless, in reward units per nat); only read
            when ``objective = "kl"``.
        total_timesteps: env steps in total (all envs); ``num_updates`` is derived from it.
    """

    #: Fields a training config keeps in its ``training`` section (error messages name them so).
    TRAINING_FIELDS: ClassVar[tuple[str, ...]] = ("n_envs", "total_timesteps")

    n_envs: int = 8
    n_steps: int = 256
    batch_size: int = 64
    n_epochs: int = 10
    learning_rate: float = 3e-4
    anneal_lr: bool = False
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
    ess_target: Optional[float] = DEFAULT_ESS_TARGET
    ess_constraint: bool = True
    ess_lambda_init: float = 0.0
    ess_lambda_lr: float = 1.0
    ess_penalty_coef: float = 100.0
    reward_shaping: str = "potential"
    normalize_reward: bool = True
    stagger_episodes: bool = True
    objective: str = "reward"
    kl_coef: float = 1.0
    total_timesteps: int = 100_000

    def __post_init__(self):
        self._check_learning_fields()
        self._check_ppo_fields()
        self._check_objective()
        if self.reward_shaping == "potential" and not self.gamma < 1:
            raise ConfigError(f"ppo.reward_shaping = 'potential' needs ppo.gamma < 1 (got "
                              f"{show(self.gamma)}); set reward_shaping: none for gamma = 1",
                              field="ppo.reward_shaping")
        self._check_rollout()

    @classmethod
    def checked_run_size(cls, name: str, value: Any) -> int:
        """``value`` of ``n_envs`` or ``total_timesteps`` as an int, checked (integers >= 1;
        ``total_timesteps`` counts env steps in int64, so it may exceed int32). The one rule for
        both fields, used here and by the YAML's ``training`` section."""
        cap = STEPS_MAX if name == "total_timesteps" else INT32_MAX
        return check_number(f"training.{name}", value, integer=True, ge=1, cap=cap)

    def _coerce(self, name: str, check, *args, **bounds) -> None:
        """Replaces field ``name`` by ``check("ppo.<name>", its value, *args, **bounds)``."""
        object.__setattr__(self, name, check(f"ppo.{name}", getattr(self, name), *args, **bounds))

    def _check_learning_fields(self) -> None:
        self._coerce("ess_constraint", check_bool)
        if self.ess_target is not None:
            self._coerce("ess_target", check_number, ge=0, le=1)
        for name in ("ess_lambda_init", "ess_lambda_lr", "ess_penalty_coef"):
            self._coerce(name, check_number, ge=0, le=1e6)
        self._coerce("reward_shaping", check_choice, REWARD_SHAPINGS)
        self._coerce("normalize_reward", check_bool)
        self._coerce("stagger_episodes", check_bool)
        if self.w_ess is not None:
            self._coerce("w_ess", check_number, ge=0)

    def _check_objective(self) -> None:
        """``objective``/``kl_coef``, and the settings the KL objective excludes (one line each)."""
        self._coerce("objective", check_choice, OBJECTIVES)
        self._coerce("kl_coef", check_number, gt=0, le=1e6)
        if self.objective != "kl":
            return
        why = "ppo.objective = 'kl' maximises E_q[R] - kl_coef*KL(q||p) over whole trajectories"
        conflicts = (
            ("gamma", self.gamma != 1, "1 (the trajectory KL is an undiscounted sum)"),
            ("ess_constraint", self.ess_constraint, "false (the KL term replaces it)"),
            ("reward_shaping", self.reward_shaping != "none",
             "'none' (use reward.mode: delta for a terminal observable)"),
            ("ent_coef", self.ent_coef != 0, "0 (the KL term is the entropy regulariser "
                                               "relative to physics; a bonus would move the optimum)"),
            ("w_ess", self.w_ess not in (None, 0), "0 (the ESS reward term would move the optimum)"),
        )
        for name, bad, allowed in conflicts:
            if bad:
                raise ConfigError(f"ppo.{name} = {show(getattr(self, name))}: must be {allowed} "
                                  f"with {why}", field=f"ppo.{name}")

    def _check_ppo_fields(self) -> None:
        self._coerce("learning_rate", check_number, gt=0)
        self._coerce("anneal_lr", check_bool)
        for name in ("n_steps", "batch_size", "n_epochs"):
            self._coerce(name, check_number, integer=True, ge=1)
        for name in self.TRAINING_FIELDS:
            object.__setattr__(self, name, self.checked_run_size(name, getattr(self, name)))
        for name in ("gamma", "gae_lambda"):
            self._coerce(name, check_number, ge=0, le=1)
        self._coerce("clip_range", check_number, gt=0)
        if self.clip_range_vf is not None:
            self._coerce("clip_range_vf", check_number, gt=0)
        self._coerce("normalize_advantage", check_bool)
        for name in ("ent_coef", "vf_coef"):
            self._coerce(name, check_number, ge=0)
        self._coerce("max_grad_norm", check_number, gt=0)
        self._coerce("adam_eps", check_number, gt=0)

    def _check_rollout(self) -> None:
        """batch_size fits the rollout; total_timesteps gives 1 to INT32_MAX updates."""
        batch, total, rollout = self.batch_size, self.total_timesteps, self.rollout_size
        sizes = f"n_envs * n_steps = {self.n_envs} * {self.n_steps} = {rollout}"
        if batch > rollout:
            raise fail("ppo.batch_size", batch, f"<= the rollout size {sizes}")
        if rollout % batch:
            raise ConfigError(f"ppo.batch_size = {batch}: must divide the rollout size {sizes}",
                              field="ppo.batch_size")
        if total < rollout:
            raise fail("training.total_timesteps", total, f">= one rollout, {sizes}",
                       f" ({total} steps is less than one rollout: no PPO update would run)")
        if total // rollout > INT32_MAX:
            raise ConfigError(
                f"training.total_timesteps = {total}: gives {total // rollout} PPO updates of "
                f"{sizes}; at most {INT32_MAX} (the update counter is int32)",
                field="training.total_timesteps")

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



def resolve_ess_term(config: PPOConfig, env_params) -> tuple[Any, Any]:
    """``(w_ess, ess_target)`` used for the learning reward (see :class:`PPOConfig`; 0 for the
    weight under the KL objective unless given)."""
    reward_cfg = getattr(env_params, "reward", None)
    w = config.w_ess
    if w is None and config.objective == "kl":
        w = 0.0  # the KL objective has no ESS reward term (PPOConfig.objective)
    if w is None:
        w = getattr(reward_cfg, "w_ess", DEFAULT_W_ESS)
    target = config.ess_target
    if target is None:
        target = getattr(reward_cfg, "ess_target", DEFAULT_ESS_TARGET)
    return w, target
