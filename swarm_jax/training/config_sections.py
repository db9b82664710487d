"""The sections of a training configuration and their YAML keys (:mod:`swarm_jax.training.config`
builds the whole :class:`~swarm_jax.training.config.TrainConfig` from them).

Defines the two sections that have no lower-layer class (:class:`EnvironmentConfig`,
:class:`TrainingSection`), the table of sections (:data:`SECTIONS`), the keys each YAML section
accepts (:data:`SECTION_KEYS`, :data:`FLAT_KEYS`), the keys stored in another section's class
(:data:`ROUTED_KEYS`) and the check of ``training.cpu_overrides``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from swarm_jax.agents.networks import NetworkConfig
from swarm_jax.agents.ppo_config import PPOConfig
from swarm_jax.env.reward import RewardConfig
from swarm_jax.physics.lattice import LATTICE_SIZE_RULE, validate_lattice_size
from swarm_jax.validation import ConfigError, STEPS_MAX, check_int_list, check_number, fail, show, suggest


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


def _unknown_key(path: str, key: Any, allowed, listing: str | None = None) -> ConfigError:
    key_text = key if isinstance(key, str) else show(key)
    where = f"{path}.{key_text}" if path else key_text
    listing = listing or f"allowed keys: {', '.join(sorted(allowed))}"
    return ConfigError(f"{where}: unknown key{suggest(key, allowed)}; {listing}", field=where)


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
      episode_ml: deposited amount θ (ML) that ends an episode (0: none): every episode then
        holds exactly ``deposit_target(Lx·Ly, θ)`` deposited atoms (docs/sampling.md).
      episode_time: physical time (s) that ends an episode (0: none).
      physics: overrides of other :class:`PhysicsParams` fields by name (e.g. ``e_es: 0.2``).
    """

    lattice_size: tuple[int, int, int] = (8, 8, 5)
    temperature: float = 180.0
    deposition_rate: float = 0.1
    o_ti_flux_ratio: float = 2.0
    max_steps: int = 1000
    n_swarm: int = 32
    physics: Mapping[str, float] = field(default_factory=FrozenMap)
    episode_ml: float = 0.0
    episode_time: float = 0.0

    def __post_init__(self):
        p = "environment."
        size = check_int_list(
            p + "lattice_size", self.lattice_size, length=3, mins=(3, 3, 2).__getitem__,
            allowed="a list of 3 integers [Lx, Ly, Lz] with Lx, Ly >= 3 (distinct periodic "
                    "neighbours) and Lz >= 2 (substrate plus one layer)")
        try:  # the limits shared with the environment and simulate
            validate_lattice_size(size)
        except ValueError:
            raise fail(p + "lattice_size", self.lattice_size, LATTICE_SIZE_RULE) from None
        _set(self, "lattice_size", size)
        _set(self, "temperature", check_number(p + "temperature", self.temperature, gt=0, unit="K"))
        _set(self, "deposition_rate",
             check_number(p + "deposition_rate", self.deposition_rate, gt=0, unit="ML/s"))
        _set(self, "o_ti_flux_ratio", check_number(p + "o_ti_flux_ratio", self.o_ti_flux_ratio, ge=0))
        _set(self, "max_steps", check_number(p + "max_steps", self.max_steps, integer=True, ge=1))
        _set(self, "n_swarm", check_number(p + "n_swarm", self.n_swarm, integer=True, ge=1))
        _set(self, "episode_ml", check_number(p + "episode_ml", self.episode_ml, ge=0, unit="ML"))
        _set(self, "episode_time", check_number(p + "episode_time", self.episode_time, ge=0, unit="s"))
        _set(self, "physics", self._check_physics(self.physics))

    @staticmethod
    def _check_physics(physics) -> FrozenMap:
        path = "environment.physics"
        if physics is None:
            return FrozenMap()
        if not isinstance(physics, Mapping):
            raise fail(path, physics, "a mapping of PhysicsParams field names to numbers")
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
            out[key] = check_number(f"{path}.{key}", value, **_PHYSICS_BOUNDS.get(key, {}))
        return FrozenMap(out)

    def physics_params(self):
        """The :class:`swarm_jax.physics.params.PhysicsParams` of this environment."""
        from swarm_jax.physics.params import PhysicsParams

        return PhysicsParams(temperature=self.temperature, deposition_rate=self.deposition_rate,
                             o_ti_flux_ratio=self.o_ti_flux_ratio, **dict(self.physics))




@dataclass(frozen=True)
class TrainingSection:
    """The training run.

    The YAML ``training`` section also takes ``n_envs`` (parallel environments) and
    ``total_timesteps`` (env-step budget summed over all environments); their one home is
    :class:`~swarm_jax.agents.ppo_config.PPOConfig` (``TrainConfig.ppo``), see
    :data:`ROUTED_KEYS`.

    Attributes:
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
        for name in ("keep_checkpoints", "log_every", "ess_patience"):
            _set(self, name, check_number(p + name, getattr(self, name), integer=True, ge=1))
        _set(self, "checkpoint_freq",  # env steps: an int64 counter
             check_number(p + "checkpoint_freq", self.checkpoint_freq, integer=True, ge=1,
                          cap=STEPS_MAX))
        _set(self, "checkpoint_every_s",
             check_number(p + "checkpoint_every_s", self.checkpoint_every_s, ge=0, le=1e7, unit="s"))
        _set(self, "seed", check_number(p + "seed", self.seed, integer=True, ge=0, le=2**32 - 1))
        if self.ess_threshold is not None:
            _set(self, "ess_threshold",
                 check_number(p + "ess_threshold", self.ess_threshold, gt=0, le=1))
        _set(self, "cpu_overrides", _normalise_cpu_overrides(self.cpu_overrides))


SECTIONS: dict[str, type] = {
    "environment": EnvironmentConfig,
    "reward": RewardConfig,
    "ppo": PPOConfig,
    "network": NetworkConfig,
    "training": TrainingSection,
}
# Fields of a section class that are not keys of its YAML section: PPOConfig's n_envs and
# total_timesteps are written in the training section (ROUTED_KEYS), its w_ess is the reward
# section's (left None: the trainer takes the env's); RewardConfig's ess_target is written as
# ppo.ess_target (ROUTED_KEYS).
_NOT_KEYS = {"ppo": ("n_envs", "total_timesteps", "w_ess"), "reward": ("ess_target",)}
#: YAML keys whose value is stored in another section's class: ``(section, key) -> home``.
#: ``training.n_envs`` and ``training.total_timesteps`` live in ``PPOConfig`` (the algorithm's
#: sizes); ``ppo.ess_target`` lives in ``RewardConfig`` beside ``w_ess`` (the ESS term
#: ``−w_ess·max(0, ess_target − ESS)`` and the ESS constraint read it from the env's reward
#: config; ``PPOConfig.ess_target`` and ``w_ess`` are ``None`` in a training config).
ROUTED_KEYS: dict[tuple[str, str], str] = {("training", "n_envs"): "ppo",
                                           ("training", "total_timesteps"): "ppo",
                                           ("ppo", "ess_target"): "reward"}


def _yaml_keys(section: str, cls: type) -> tuple[str, ...]:
    """The keys of YAML section ``section``: routed-in keys that are not fields of ``cls`` first,
    then the fields of ``cls`` that are keys of the section, in field order."""
    fields = [f.name for f in dataclasses.fields(cls)]
    routed = tuple(k for (sec, k) in ROUTED_KEYS if sec == section and k not in fields)
    return routed + tuple(n for n in fields if n not in _NOT_KEYS.get(section, ()))


#: The keys of each YAML section.
SECTION_KEYS: dict[str, tuple[str, ...]] = {s: _yaml_keys(s, cls) for s, cls in SECTIONS.items()}
TOP_LEVEL_KEYS = ("name", "stage")
# Flat layout (the original project's): every key of every section may appear at top level.
# (Keys are unique across sections; asserted below.)
FLAT_KEYS: dict[str, str] = {n: s for s, keys in SECTION_KEYS.items() for n in keys}
assert len(FLAT_KEYS) == sum(map(len, SECTION_KEYS.values()))
_CPU_OVERRIDABLE = {f"{s}.{n}" for s in ("training", "ppo") for n in SECTION_KEYS[s]}
_CPU_OVERRIDABLE.discard("training.cpu_overrides")
_CPU_BARE = {k.split(".", 1)[1]: k for k in _CPU_OVERRIDABLE}  # "n_envs" -> "training.n_envs"


def _normalise_cpu_overrides(overrides) -> FrozenMap:
    path = "training.cpu_overrides"
    if overrides is None:
        return FrozenMap()
    if not isinstance(overrides, Mapping):
        raise fail(path, overrides, "a mapping of training/ppo keys to values")
    out = {}
    for key, value in overrides.items():
        dotted = key if key in _CPU_OVERRIDABLE else _CPU_BARE.get(key) if isinstance(key, str) else None
        if dotted is None:
            raise _unknown_key(path, key, sorted(_CPU_BARE) + sorted(_CPU_OVERRIDABLE))
        if dotted in out:
            raise ConfigError(f"{path}.{key}: {dotted} is overridden twice", field=f"{path}.{key}")
        if isinstance(value, (Mapping, list, tuple)):
            raise fail(f"{path}.{key}", value, "a scalar")
        out[dotted] = value
    return FrozenMap(out)
