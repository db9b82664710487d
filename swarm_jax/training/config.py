"""Training configuration: typed, frozen dataclasses loaded from YAML and validated up front.

A run is described by one :class:`TrainConfig` with five sections::

    environment  EnvironmentConfig  lattice, temperature [K], flux [ML/s], episode length, K, physics
    reward       RewardSection      reward weights and mode
    ppo          PPOSection         PPO hyper-parameters (SB3 semantics for n_steps / batch_size)
    network      NetworkSection     policy/value network shape
    training     TrainingSection    n_envs, budget, checkpoints, logging, seed, ESS stop, CPU overrides

plus the top-level ``name`` and ``stage`` (1, 2, 3 of the curriculum, or ``None``).

YAML files may use this nested layout, the seed's FLAT layout (every key at top level, e.g.
``temperature: 180.0``, ``learning_rate: 3e-4``, ``w_roughness: 1.0``), or a mix of the two. A
flat key is the bare field name of the section it belongs to; giving the same field both ways is an
error. PyYAML reads ``3e-4`` (no dot) as a string, so numeric strings are accepted wherever a
number is expected.

Every problem is reported as one :class:`ConfigError` (a ``ValueError``) whose message starts
with the dotted field name, the value given and what is allowed, e.g.
``environment.temperature = -5.0: must be a number > 0 K``. Validation runs in ``__post_init__``,
so sections built in code or changed with :func:`dataclasses.replace` are validated too.

Units: temperature in K, deposition_rate in ML/s (monolayers per second), every step/timestep count
in environment steps (one env step = one KMC event chosen through the swarm), summed over all
parallel environments unless stated otherwise.

This module itself needs only the standard library and PyYAML (importing the ``swarm_jax`` package
does load JAX). :meth:`EnvironmentConfig.physics_params` and the check of ``environment.physics``
names import :mod:`swarm_jax.physics.params` when first needed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from swarm_jax.agents.networks import NETWORK_KINDS
from swarm_jax.agents.ppo_config import DEFAULT_ESS_TARGET, REWARD_SHAPINGS, PPOConfig
from swarm_jax.env.reward import REWARD_MODES

__all__ = [
    "ConfigError",
    "FrozenMap",
    "EnvironmentConfig",
    "RewardSection",
    "PPOSection",
    "NetworkSection",
    "TrainingSection",
    "TrainConfig",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "with_overrides",
    "apply_cpu_overrides",
    "for_backend",
    "stage_config_path",
    "resolve_config_path",
    "configs_dir",
    "physics_field_names",
    "FLAT_KEYS",
    "STAGE_FILES",
]


class ConfigError(ValueError):
    """A configuration problem. ``field`` is the dotted name of the offending entry (or ``None``)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


# --------------------------------------------------------------------------------------------
# Small immutable mapping (hashable, so a whole TrainConfig can be a static jit argument).


class FrozenMap(Mapping):
    """Read-only, hashable ``str -> scalar`` mapping used for ``physics`` and ``cpu_overrides``."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping | None = None):
        object.__setattr__(self, "_data", dict(data or {}))

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self) -> Iterator:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._data.items())))

    def __eq__(self, other) -> bool:
        if isinstance(other, Mapping):
            return self._data == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"

    def __setattr__(self, name, value):
        raise AttributeError("FrozenMap is immutable")

    def __getstate__(self):
        return self._data

    def __setstate__(self, state):
        object.__setattr__(self, "_data", dict(state))


# --------------------------------------------------------------------------------------------
# Value checkers. Each takes the dotted path of the field and returns the coerced value.


def _show(value: Any, limit: int = 80) -> str:
    """repr() for messages, shortened (and safe for huge ints, whose repr may raise)."""
    try:
        text = repr(value)
    except ValueError:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(path: str, value: Any, allowed: str, extra: str = "") -> ConfigError:
    return ConfigError(f"{path} = {_show(value)}: must be {allowed}{extra}", field=path)


def _bounds_text(gt=None, ge=None, lt=None, le=None, unit: str = "") -> str:
    unit = f" {unit}" if unit else ""
    lo = None if gt is None and ge is None else ("(" if gt is not None else "[")
    hi = None if lt is None and le is None else (")" if lt is not None else "]")
    a = gt if gt is not None else ge
    b = lt if lt is not None else le
    if lo and hi:
        return f"in {lo}{a}, {b}{hi}{unit}"
    if lo:
        return f"{'>' if gt is not None else '>='} {a}{unit}"
    if hi:
        return f"{'<' if lt is not None else '<='} {b}{unit}"
    return "finite"


#: Largest value of an integer setting that JAX holds as int32 (episode step counters, update
#: counters, array sizes and scan lengths).
INT32_MAX = 2**31 - 1
#: Largest env-step count (training.total_timesteps, checkpoint_freq): env-step counters are int64
#: and grow by n_envs per step, so keep a factor-2 headroom below 2**63.
STEPS_MAX = 2**62


def _number(path: str, value: Any, *, integer: bool = False, gt=None, ge=None, lt=None, le=None,
            unit: str = "", cap: int | None = INT32_MAX):
    """Coerces ``value`` to an int or a finite float and checks the bounds (numeric strings ok).

    Integers without an upper bound (``le``/``lt``) are capped at ``cap`` (default
    :data:`INT32_MAX`: values JAX stores as int32), so that ``1e30`` is one clear line rather than
    an ``OverflowError`` later.
    """
    kind = "an integer" if integer else "a number"
    allowed = f"{kind} {_bounds_text(gt, ge, lt, le, unit)}"
    if integer and le is None and lt is None and cap is not None:
        le = cap
        allowed += f" and <= {cap}"
    if isinstance(value, bool) or value is None:
        raise _fail(path, value, allowed)
    raw = value
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise _fail(path, raw, allowed) from None
    if not isinstance(value, numbers.Real):
        raise _fail(path, raw, allowed, f" (got {type(raw).__name__})")
    if not isinstance(value, numbers.Integral) and not math.isfinite(float(value)):
        raise _fail(path, raw, allowed)
    if integer:
        if isinstance(value, numbers.Integral):
            value = int(value)
        elif float(value).is_integer():
            value = int(float(value))
        else:
            raise _fail(path, raw, allowed)
    else:
        try:
            value = float(value)
        except OverflowError:
            raise _fail(path, raw, allowed) from None
    if ((gt is not None and not value > gt) or (ge is not None and not value >= ge)
            or (lt is not None and not value < lt) or (le is not None and not value <= le)):
        raise _fail(path, raw, allowed)
    return value


def _boolean(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, value, "true or false")
    return value


def _suggest(key: Any, allowed) -> str:
    if not isinstance(key, str):
        return ""
    match = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _choice(path: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        hint = _suggest(value, choices) if isinstance(value, str) else ""
        raise ConfigError(f"{path} = {_show(value)}: must be one of {', '.join(map(repr, choices))}{hint}",
                          field=path)
    return value


def _int_list(path: str, value: Any, *, allowed: str, mins, length: int | None = None
              ) -> tuple[int, ...]:
    """A list/tuple of integers; ``mins(i)`` is the lower bound of entry ``i``."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
        raise _fail(path, value, allowed)
    if (length is not None and len(value) != length) or len(value) == 0:
        raise _fail(path, value, allowed)
    out = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (numbers.Integral, float, str)):
            raise _fail(path, value, allowed)
        try:
            n = _number(f"{path}[{i}]", v, integer=True, ge=mins(i))
        except ConfigError:
            raise _fail(path, value, allowed, f" (each <= {INT32_MAX})") from None
        out.append(n)
    return tuple(out)


def _unknown_key(path: str, key: Any, allowed, listing: str | None = None) -> ConfigError:
    key_text = key if isinstance(key, str) else _show(key)
    where = f"{path}.{key_text}" if path else key_text
    listing = listing or f"allowed keys: {', '.join(sorted(allowed))}"
    return ConfigError(f"{where}: unknown key{_suggest(key, allowed)}; {listing}", field=where)


def _set(obj, name: str, value) -> None:
    object.__setattr__(obj, name, value)


# --------------------------------------------------------------------------------------------
# Sections.

# environment.physics may override these PhysicsParams fields only through their own section keys.
_PHYSICS_IN_ENVIRONMENT = ("temperature", "deposition_rate", "o_ti_flux_ratio")
# Extra range checks for physics overrides whose sign/range is physical; others just finite.
_PHYSICS_BOUNDS = {
    "sticking_ti": dict(ge=0, le=1),
    "sticking_o": dict(ge=0, le=1),
    "attempt_frequency": dict(gt=0, unit="Hz"),
    "oxide_hop_factor": dict(gt=0),
    "bond_scale": dict(ge=0),
}


def physics_field_names() -> tuple[str, ...]:
    """Names of the :class:`swarm_jax.physics.params.PhysicsParams` fields (imports that module)."""
    from swarm_jax.physics.params import PhysicsParams

    return tuple(f.name for f in dataclasses.fields(PhysicsParams))


@dataclass(frozen=True)
class EnvironmentConfig:
    """The simulated system and the episode.

    Attributes:
      lattice_size: (Lx, Ly, Lz) sites; Lx, Ly >= 3 (periodic), Lz >= 2 (substrate + one layer).
      temperature: substrate temperature, K (> 0).
      deposition_rate: total flux F, ML/s (> 0: training needs growth).
      o_ti_flux_ratio: r = F_O / F_Ti (>= 0).
      max_steps: episode length in env steps (truncation; the ceiling may end it earlier).
      n_swarm: K, candidate events proposed per env step (>= 1).
      physics: overrides of other :class:`PhysicsParams` fields by name (e.g. ``e_es: 0.2``).
    """

    _section: ClassVar[str] = "environment"

    lattice_size: tuple[int, int, int] = (8, 8, 5)
    temperature: float = 180.0
    deposition_rate: float = 0.1
    o_ti_flux_ratio: float = 2.0
    max_steps: int = 1000
    n_swarm: int = 32
    physics: Mapping[str, float] = field(default_factory=FrozenMap)

    def __post_init__(self):
        p = "environment."
        size = _int_list(p + "lattice_size", self.lattice_size, length=3, mins=(3, 3, 2).__getitem__,
                         allowed="a list of 3 integers [Lx, Ly, Lz] with Lx, Ly >= 3 (distinct "
                         "periodic neighbours) and Lz >= 2 (substrate plus one layer)")
        _set(self, "lattice_size", size)
        _set(self, "temperature", _number(p + "temperature", self.temperature, gt=0, unit="K"))
        _set(self, "deposition_rate",
             _number(p + "deposition_rate", self.deposition_rate, gt=0, unit="ML/s"))
        _set(self, "o_ti_flux_ratio", _number(p + "o_ti_flux_ratio", self.o_ti_flux_ratio, ge=0))
        _set(self, "max_steps", _number(p + "max_steps", self.max_steps, integer=True, ge=1))
        _set(self, "n_swarm", _number(p + "n_swarm", self.n_swarm, integer=True, ge=1))
        _set(self, "physics", self._check_physics(self.physics))

    @staticmethod
    def _check_physics(physics) -> FrozenMap:
        path = "environment.physics"
        if physics is None:
            return FrozenMap()
        if not isinstance(physics, Mapping):
            raise _fail(path, physics, "a mapping of PhysicsParams field names to numbers")
        if not physics:
            return FrozenMap()
        names = physics_field_names()
        out = {}
        for key, value in physics.items():
            if key in _PHYSICS_IN_ENVIRONMENT:
                raise ConfigError(
                    f"{path}.{key}: set it as environment.{key}, not as a physics override",
                    field=f"{path}.{key}")
            if key not in names:
                allowed = [n for n in names if n not in _PHYSICS_IN_ENVIRONMENT]
                raise _unknown_key(path, key, allowed)
            out[key] = _number(f"{path}.{key}", value, **_PHYSICS_BOUNDS.get(key, {}))
        return FrozenMap(out)

    def physics_params(self):
        """The :class:`swarm_jax.physics.params.PhysicsParams` of this environment."""
        from swarm_jax.physics.params import PhysicsParams

        return PhysicsParams(temperature=self.temperature, deposition_rate=self.deposition_rate,
                             o_ti_flux_ratio=self.o_ti_flux_ratio, **dict(self.physics))




@dataclass(frozen=True)
class RewardSection:
    """Reward weights (all >= 0; the signs are fixed by the reward formula) and mode.

    ``mode``: ``"level"`` rewards the current morphology each step, ``"delta"`` its change.
    """

    _section: ClassVar[str] = "reward"

    w_roughness: float = 1.0
    w_coverage: float = 0.5
    w_ratio: float = 0.2
    w_ess: float = 0.3
    mode: str = "level"

    def __post_init__(self):
        for name in ("w_roughness", "w_coverage", "w_ratio", "w_ess"):
            _set(self, name, _number(f"reward.{name}", getattr(self, name), ge=0))
        _choice("reward.mode", self.mode, REWARD_MODES)


@dataclass(frozen=True)
class PPOSection:
    """PPO hyper-parameters.

    ``n_steps`` is the rollout length per environment; ``batch_size`` the minibatch size in
    transitions (SB3 semantics): one update collects ``n_envs * n_steps`` transitions and runs
    ``n_epochs`` passes of ``n_envs * n_steps // batch_size`` minibatches over them.

    The learning keys (meaning in :class:`swarm_jax.agents.ppo.PPOConfig`): ``ess_constraint``,
    ``ess_target`` (the mean per-step ESS ratio to keep, default 0.5 as in the seed),
    ``ess_lambda_init``, ``ess_lambda_lr`` (dual ascent of the multiplier), ``ess_penalty_coef``
    (quadratic term of the augmented Lagrangian), ``reward_shaping`` ("potential" or "none"),
    ``normalize_reward`` and ``stagger_episodes``.
    """

    _section: ClassVar[str] = "ppo"

    learning_rate: float = 3e-4
    anneal_lr: bool = False
    n_steps: int = 256
    batch_size: int = 64
    n_epochs: int = 10
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    # The learning keys: PPOConfig's defaults (its ess_target None means "the env's", 0.5).
    ess_constraint: bool = PPOConfig.ess_constraint
    ess_target: float = DEFAULT_ESS_TARGET
    ess_lambda_init: float = PPOConfig.ess_lambda_init
    ess_lambda_lr: float = PPOConfig.ess_lambda_lr
    ess_penalty_coef: float = PPOConfig.ess_penalty_coef
    reward_shaping: str = PPOConfig.reward_shaping
    normalize_reward: bool = PPOConfig.normalize_reward
    stagger_episodes: bool = PPOConfig.stagger_episodes

    def __post_init__(self):
        p = "ppo."
        _set(self, "ess_constraint", _boolean(p + "ess_constraint", self.ess_constraint))
        _set(self, "ess_target", _number(p + "ess_target", self.ess_target, ge=0, le=1))
        for name in ("ess_lambda_init", "ess_lambda_lr", "ess_penalty_coef"):
            _set(self, name, _number(p + name, getattr(self, name), ge=0, le=1e6))
        _choice(p + "reward_shaping", self.reward_shaping, REWARD_SHAPINGS)
        _set(self, "normalize_reward", _boolean(p + "normalize_reward", self.normalize_reward))
        _set(self, "stagger_episodes", _boolean(p + "stagger_episodes", self.stagger_episodes))
        _set(self, "learning_rate", _number(p + "learning_rate", self.learning_rate, gt=0))
        _set(self, "anneal_lr", _boolean(p + "anneal_lr", self.anneal_lr))
        for name in ("n_steps", "batch_size", "n_epochs"):
            _set(self, name, _number(p + name, getattr(self, name), integer=True, ge=1))
        _set(self, "gamma", _number(p + "gamma", self.gamma, ge=0, le=1))
        _set(self, "gae_lambda", _number(p + "gae_lambda", self.gae_lambda, ge=0, le=1))
        _set(self, "clip_range", _number(p + "clip_range", self.clip_range, gt=0))
        _set(self, "ent_coef", _number(p + "ent_coef", self.ent_coef, ge=0))
        _set(self, "vf_coef", _number(p + "vf_coef", self.vf_coef, ge=0))
        _set(self, "max_grad_norm", _number(p + "max_grad_norm", self.max_grad_norm, gt=0))
        if self.reward_shaping == "potential" and not self.gamma < 1:
            raise ConfigError(f"ppo.reward_shaping = 'potential' needs ppo.gamma < 1 (got "
                              f"{_show(self.gamma)}); set reward_shaping: none for gamma = 1",
                              field="ppo.reward_shaping")


ACTIVATIONS = ("tanh", "relu", "gelu")


@dataclass(frozen=True)
class NetworkSection:
    """Network shape: ``kind`` (per-candidate "swarm" scorer or a "flat_mlp"), hidden layer widths."""

    _section: ClassVar[str] = "network"

    kind: str = "swarm"
    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = "tanh"

    def __post_init__(self):
        _choice("network.kind", self.kind, NETWORK_KINDS)
        _set(self, "hidden_sizes", _int_list("network.hidden_sizes", self.hidden_sizes,
                                             mins=lambda i: 1,
                                             allowed="a non-empty list of integers >= 1"))
        _choice("network.activation", self.activation, ACTIVATIONS)


@dataclass(frozen=True)
class TrainingSection:
    """The training run.

    Attributes:
      n_envs: parallel environments.
      total_timesteps: env-step budget summed over all environments.
      checkpoint_freq: checkpoint every this many env steps (summed over environments), at the
        first update boundary at or after each multiple.
      checkpoint_every_s: wall-time floor between periodic checkpoints, s (>= 0; 0: none): a
        checkpoint that ``checkpoint_freq`` makes due waits until this long after the previous
        one, so that checkpoint time stays a small fraction of wall time at any budget. Saves
        are asynchronous; the final and interruption checkpoints are never deferred.
      keep_checkpoints: checkpoints kept on disk (oldest deleted first).
      log_every: PPO updates between host-side logs (the jitted chunk length).
      seed: PRNG seed, in [0, 2**32 - 1].
      ess_threshold: stop early when the ESS ratio stays below this (in (0, 1]); ``None``: never.
      ess_patience: consecutive logged updates below ``ess_threshold`` before stopping.
      cpu_overrides: ``training``/``ppo`` values applied by :func:`apply_cpu_overrides` when the run
        is on CPU (keys bare, e.g. ``n_envs``, or dotted, e.g. ``ppo.batch_size``; stored dotted).
    """

    _section: ClassVar[str] = "training"

    n_envs: int = 8
    total_timesteps: int = 100_000
    checkpoint_freq: int = 10_000
    checkpoint_every_s: float = 0.0
    keep_checkpoints: int = 3
    log_every: int = 1
    seed: int = 0
    ess_threshold: float | None = None
    ess_patience: int = 1
    cpu_overrides: Mapping[str, Any] = field(default_factory=FrozenMap)

    def __post_init__(self):
        p = "training."
        for name in ("n_envs", "keep_checkpoints", "log_every", "ess_patience"):
            _set(self, name, _number(p + name, getattr(self, name), integer=True, ge=1))
        for name in ("total_timesteps", "checkpoint_freq"):  # env steps: int64 counters
            _set(self, name, _number(p + name, getattr(self, name), integer=True, ge=1,
                                     cap=STEPS_MAX))
        _set(self, "checkpoint_every_s",
             _number(p + "checkpoint_every_s", self.checkpoint_every_s, ge=0, le=1e7, unit="s"))
        _set(self, "seed", _number(p + "seed", self.seed, integer=True, ge=0, le=2**32 - 1))
        if self.ess_threshold is not None:
            _set(self, "ess_threshold",
                 _number(p + "ess_threshold", self.ess_threshold, gt=0, le=1))
        _set(self, "cpu_overrides", _normalise_cpu_overrides(self.cpu_overrides))


def _field_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


SECTIONS: dict[str, type] = {
    "environment": EnvironmentConfig,
    "reward": RewardSection,
    "ppo": PPOSection,
    "network": NetworkSection,
    "training": TrainingSection,
}
TOP_LEVEL_KEYS = ("name", "stage")
# Flat (seed) layout: every field name of every section may appear at top level. (Names are
# unique across sections; asserted below.)
FLAT_KEYS: dict[str, str] = {n: s for s, cls in SECTIONS.items() for n in _field_names(cls)}
assert len(FLAT_KEYS) == sum(len(_field_names(c)) for c in SECTIONS.values())
_CPU_OVERRIDABLE = {f"{s}.{n}" for s in ("training", "ppo") for n in _field_names(SECTIONS[s])}
_CPU_OVERRIDABLE.discard("training.cpu_overrides")
_CPU_BARE = {k.split(".", 1)[1]: k for k in _CPU_OVERRIDABLE}  # "n_envs" -> "training.n_envs"


def _normalise_cpu_overrides(overrides) -> FrozenMap:
    path = "training.cpu_overrides"
    if overrides is None:
        return FrozenMap()
    if not isinstance(overrides, Mapping):
        raise _fail(path, overrides, "a mapping of training/ppo keys to values")
    out = {}
    for key, value in overrides.items():
        dotted = key if key in _CPU_OVERRIDABLE else _CPU_BARE.get(key) if isinstance(key, str) else None
        if dotted is None:
            raise _unknown_key(path, key, sorted(_CPU_BARE) + sorted(_CPU_OVERRIDABLE))
        if dotted in out:
            raise ConfigError(f"{path}.{key}: {dotted} is overridden twice", field=f"{path}.{key}")
        if isinstance(value, (Mapping, list, tuple)):
            raise _fail(f"{path}.{key}", value, "a scalar")
        out[dotted] = value
    return FrozenMap(out)


# --------------------------------------------------------------------------------------------
# The whole configuration.


@dataclass(frozen=True)
class TrainConfig:
    """A full training configuration (see the module docstring). Frozen, hashable, validated."""

    name: str = "run"
    stage: int | None = None
    environment: EnvironmentConfig = field(default_factory=EnvironmentConfig)
    reward: RewardSection = field(default_factory=RewardSection)
    ppo: PPOSection = field(default_factory=PPOSection)
    network: NetworkSection = field(default_factory=NetworkSection)
    training: TrainingSection = field(default_factory=TrainingSection)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise _fail("name", self.name, "a non-empty string")
        if self.stage is not None and (isinstance(self.stage, bool) or self.stage not in (1, 2, 3)):
            raise _fail("stage", self.stage, "1, 2, 3 or null")
        for key, cls in SECTIONS.items():
            value = getattr(self, key)
            if isinstance(value, Mapping):
                _set(self, key, _build_section(key, value))
            elif not isinstance(value, cls):
                raise _fail(key, value, f"a mapping (or a {cls.__name__})")
        self._check_consistency()
        if self.training.cpu_overrides:
            try:
                applied = _apply_cpu(self)
            except ConfigError as err:
                raise ConfigError(f"training.cpu_overrides: applying the CPU overrides gives an "
                                  f"invalid config: {err}", field="training.cpu_overrides") from err
            # Store the coerced values (e.g. "3e-4" -> 0.0003) so the config round-trips exactly.
            coerced = FrozenMap({
                dotted: getattr(getattr(applied, dotted.split(".")[0]), dotted.split(".")[1])
                for dotted in self.training.cpu_overrides})
            _set(self, "training", dataclasses.replace(self.training, cpu_overrides=coerced))

    def _check_consistency(self) -> None:
        n_envs, n_steps, batch = self.training.n_envs, self.ppo.n_steps, self.ppo.batch_size
        rollout = n_envs * n_steps
        sizes = f"n_envs * n_steps = {_show(n_envs)} * {_show(n_steps)} = {_show(rollout)}"
        if batch > rollout:
            raise ConfigError(f"ppo.batch_size = {_show(batch)}: must be <= the rollout size {sizes}",
                              field="ppo.batch_size")
        if rollout % batch:
            raise ConfigError(f"ppo.batch_size = {_show(batch)}: must divide the rollout size {sizes}",
                              field="ppo.batch_size")
        if self.training.total_timesteps < rollout:
            raise ConfigError(
                f"training.total_timesteps = {_show(self.training.total_timesteps)}: must be >= one "
                f"rollout, {sizes}", field="training.total_timesteps")
        if self.training.total_timesteps // rollout > INT32_MAX:
            raise ConfigError(
                f"training.total_timesteps = {_show(self.training.total_timesteps)}: gives "
                f"{self.training.total_timesteps // rollout} PPO updates of {sizes}; at most "
                f"{INT32_MAX} (the update counter is int32)", field="training.total_timesteps")

    @property
    def rollout_size(self) -> int:
        """Transitions collected per PPO update: ``n_envs * n_steps``."""
        return self.training.n_envs * self.ppo.n_steps

    @property
    def num_minibatches(self) -> int:
        """Minibatches per epoch: ``rollout_size // batch_size``."""
        return self.rollout_size // self.ppo.batch_size

    @property
    def num_updates(self) -> int:
        """PPO updates in the run: ``total_timesteps // rollout_size``."""
        return self.training.total_timesteps // self.rollout_size


def _build_section(key: str, values: Mapping):
    cls = SECTIONS[key]
    names = _field_names(cls)
    for k in values:
        if k not in names:
            raise _unknown_key(key, k, names)
    return cls(**dict(values))


def _apply_cpu(cfg: TrainConfig) -> TrainConfig:
    """The config with ``cpu_overrides`` applied (the result keeps none, so this cannot recurse)."""
    updates: dict[str, dict] = {"training": {"cpu_overrides": FrozenMap()}, "ppo": {}}
    for dotted, value in cfg.training.cpu_overrides.items():
        section, name = dotted.split(".", 1)
        updates[section][name] = value
    return dataclasses.replace(
        cfg,
        training=dataclasses.replace(cfg.training, **updates["training"]),
        ppo=dataclasses.replace(cfg.ppo, **updates["ppo"]),
    )


# --------------------------------------------------------------------------------------------
# Public API.


def config_from_dict(d: Mapping) -> TrainConfig:
    """Builds and validates a :class:`TrainConfig` from a nested, flat or mixed mapping."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"config: the top level must be a mapping of keys, got {type(d).__name__}",
                          field=None)
    sections: dict[str, dict] = {k: {} for k in SECTIONS}
    top: dict[str, Any] = {}
    allowed = list(SECTIONS) + list(TOP_LEVEL_KEYS) + list(FLAT_KEYS)
    for key, value in d.items():
        if not isinstance(key, str):
            raise ConfigError(f"{_show(key)}: config keys must be strings", field=_show(key))
        if key in SECTIONS:
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise _fail(key, value, "a mapping of keys")
            for k, v in value.items():
                if k in sections[key]:
                    raise _given_twice(key, k)
                sections[key][k] = v
        elif key in TOP_LEVEL_KEYS:
            top[key] = value
        elif key in FLAT_KEYS:
            section = FLAT_KEYS[key]
            if key in sections[section] or (isinstance(d.get(section), Mapping) and key in d[section]):
                raise _given_twice(section, key)
            sections[section][key] = value
        else:
            raise _unknown_key("", key, allowed, _TOP_LEVEL_LISTING)
    built = {k: _build_section(k, v) for k, v in sections.items()}
    return TrainConfig(**top, **built)


_TOP_LEVEL_LISTING = (
    f"allowed at top level: the sections {', '.join(SECTIONS)}, the keys {', '.join(TOP_LEVEL_KEYS)}, "
    "or any field of a section given flat (seed layout, e.g. temperature, learning_rate, n_envs)")


def _given_twice(section: str, key: str) -> ConfigError:
    return ConfigError(
        f"{section}.{key}: given twice (as the top-level key {key!r} and in the {section!r} "
        "section); keep one", field=f"{section}.{key}")


def config_to_dict(cfg: TrainConfig) -> dict:
    """Nested, JSON-serialisable dict; ``config_from_dict(config_to_dict(cfg)) == cfg``."""

    def plain(v):
        if isinstance(v, Mapping):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    out: dict[str, Any] = {"name": cfg.name, "stage": cfg.stage}
    for key in SECTIONS:
        section = getattr(cfg, key)
        out[key] = {f.name: plain(getattr(section, f.name)) for f in dataclasses.fields(section)}
    return out


def _valid_paths() -> list[str]:
    paths = list(TOP_LEVEL_KEYS) + list(SECTIONS)
    paths += [f"{s}.{n}" for s, cls in SECTIONS.items() for n in _field_names(cls)]
    return paths


_OVERRIDE_LISTING = ("override keys are dotted paths like 'training.n_envs', "
                     "'environment.physics.e_es', a section name, 'name', 'stage' or a flat field name")


def with_overrides(cfg: TrainConfig, overrides: Mapping[str, Any]) -> TrainConfig:
    """A validated copy of ``cfg`` with dotted-key overrides applied.

    Keys: ``"training.n_envs"``, ``"ppo.learning_rate"``, ``"environment.physics.e_es"``,
    ``"training.cpu_overrides.n_envs"``, ``"name"``, ``"stage"``, a whole section (``"ppo"`` with a
    mapping, merged into it) or a flat seed key (``"n_envs"``).
    """
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"overrides must be a mapping of dotted keys, got {type(overrides).__name__}")
    d = config_to_dict(cfg)
    for key, value in overrides.items():
        if not isinstance(key, str):
            raise ConfigError(f"{_show(key)}: override keys must be strings", field=_show(key))
        parts = key.split(".")
        if len(parts) == 1 and parts[0] in FLAT_KEYS:
            parts = [FLAT_KEYS[parts[0]], parts[0]]
        head = parts[0]
        if len(parts) == 1 and head in TOP_LEVEL_KEYS:
            d[head] = value
        elif len(parts) == 1 and head in SECTIONS:
            if not isinstance(value, Mapping):
                raise _fail(head, value, "a mapping of keys")
            for k in value:
                if k not in d[head]:
                    raise _unknown_key(head, k, list(d[head]))
            d[head].update(value)
        elif len(parts) >= 2 and head in SECTIONS and parts[1] in d[head]:
            name = parts[1]
            if len(parts) == 2:
                d[head][name] = value
            elif (head, name) == ("environment", "physics"):
                d[head][name] = {**d[head][name], ".".join(parts[2:]): value}
            elif (head, name) == ("training", "cpu_overrides"):
                sub = ".".join(parts[2:])
                sub = _CPU_BARE.get(sub, sub)  # stored keys are dotted
                d[head][name] = {**d[head][name], sub: value}
            else:
                raise _unknown_key("", key, _valid_paths(), _OVERRIDE_LISTING)
        else:
            raise _unknown_key("", key, _valid_paths(), _OVERRIDE_LISTING)
    return config_from_dict(d)


def apply_cpu_overrides(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``training.cpu_overrides`` applied (kept in the result, so this is idempotent)."""
    if not cfg.training.cpu_overrides:
        return cfg
    applied = _apply_cpu(cfg)
    return dataclasses.replace(
        applied, training=dataclasses.replace(applied.training,
                                              cpu_overrides=cfg.training.cpu_overrides))


def for_backend(cfg: TrainConfig, backend: str | None = None) -> TrainConfig:
    """Applies the CPU overrides when ``backend`` (default: ``jax.default_backend()``) is ``"cpu"``."""
    if backend is None:
        import jax

        backend = jax.default_backend()
    return apply_cpu_overrides(cfg) if backend == "cpu" else cfg


# --------------------------------------------------------------------------------------------
# Files.

STAGE_FILES = {1: "stage1_small.yaml", 2: "stage2_medium.yaml", 3: "stage3_large.yaml"}


def configs_dir() -> Path:
    """The ``configs/`` folder: the repository's (source checkout or editable install), else a
    copy shipped inside the package (``swarm_jax/configs``) if a build put one there."""
    here = Path(__file__).resolve()
    candidates = [here.parents[2] / "configs", here.parents[1] / "configs"]
    for c in candidates:
        if c.is_dir():
            return c
    raise ConfigError("no configs/ folder found; looked in " + ", ".join(map(str, candidates)))


def stage_config_path(stage: int) -> Path:
    """Path of the YAML of curriculum stage 1, 2 or 3."""
    if isinstance(stage, bool) or stage not in STAGE_FILES:
        raise _fail("stage", stage, "1, 2 or 3")
    path = configs_dir() / STAGE_FILES[stage]
    if not path.is_file():
        raise ConfigError(f"stage {stage} config not found: {path}", field="stage")
    return path


def resolve_config_path(name_or_path: str | Path) -> Path:
    """An existing file path as given; else, for a bare name, ``configs/<name>[.yaml]``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.parent == Path("."):
        for candidate in (configs_dir() / path.name, configs_dir() / f"{path.name}.yaml"):
            if candidate.is_file():
                return candidate
    raise ConfigError(f"config file {str(name_or_path)!r}: not found (bare names are also looked "
                      f"up in {configs_dir()})")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key repeated within one mapping (PyYAML keeps the last silently)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    seen = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r} (first at line {seen[key].line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark
        except TypeError:  # unhashable key: let PyYAML report it
            pass
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_config(path: str | Path) -> TrainConfig:
    """Reads and validates a YAML config. ``name`` defaults to the file's stem.

    Raises:
      ConfigError: file missing or unreadable (names the path), invalid YAML (with line and
        column), or any invalid entry (names the dotted field; prefixed with the path).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r}: not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {str(path)!r}: cannot be read ({err})") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        context, cmark = getattr(err, "context", None), getattr(err, "context_mark", None)
        if context and cmark is not None:
            problem += f" ({context} started at line {cmark.line + 1}, column {cmark.column + 1})"
        raise ConfigError(f"config file {str(path)!r}: invalid YAML{where}: {problem}") from None
    if data is None:
        raise ConfigError(f"config file {str(path)!r}: is empty (expected a mapping of config keys)")
    if isinstance(data, Mapping) and "name" not in data:
        data = {"name": path.stem, **data}
    try:
        return config_from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}", field=err.field) from None
