"""Training configuration: typed, frozen dataclasses loaded from YAML and validated up front.

A run is described by one :class:`TrainConfig` with five sections, each one class used everywhere
(the trainer hands ``cfg.ppo``, ``cfg.network`` and ``cfg.reward`` to the lower layers as they are)::

    environment  EnvironmentConfig  lattice, temperature [K], flux [ML/s], episode length, K, physics
    reward       RewardConfig       reward weights and mode (swarm_jax.env.reward)
    ppo          PPOConfig          PPO hyper-parameters, SB3 semantics for n_steps / batch_size
                                    (swarm_jax.agents.ppo_config)
    network      NetworkConfig      policy/value network shape (swarm_jax.agents.networks)
    training     TrainingSection    n_envs, budget, checkpoints, logging, seed, ESS stop, CPU overrides

plus the top-level ``name`` and ``stage`` (1, 2, 3 of the curriculum, or ``None``). The keys of a
section are the fields of its class (:data:`SECTION_KEYS`), except a few values that have their
home in another section (:data:`ROUTED_KEYS`): ``training.n_envs`` and
``training.total_timesteps`` are stored once, as ``cfg.ppo.n_envs``/``total_timesteps``;
``ppo.ess_target`` is stored beside ``reward.w_ess``, as ``cfg.reward.ess_target`` (the ESS term
and constraint take both from the env's reward config; ``cfg.ppo.ess_target`` and
``cfg.ppo.w_ess`` are ``None``).

YAML files may use this nested layout, the original project's FLAT layout (every key at top level, e.g.
``temperature: 180.0``, ``learning_rate: 3e-4``, ``w_roughness: 1.0``), or a mix of the two. A
flat key is the bare key of the section it belongs to; giving the same key both ways is an
error. PyYAML reads ``3e-4`` (no dot) as a string, so numeric strings are accepted wherever a
number is expected.

Every problem is reported as one :class:`ConfigError` (a ``ValueError``, defined in
:mod:`swarm_jax.validation`) whose message starts with the dotted field name, the value given and
what is allowed, e.g. ``environment.temperature = -5.0: must be a number > 0 K``. Validation runs
when a section is constructed (``RewardConfig``: when :class:`TrainConfig` builds it, since its
weights may be traced elsewhere), so configs built in code or changed with
:func:`dataclasses.replace` are validated too.

Units: temperature in K, deposition_rate in ML/s (monolayers per second), every step/timestep count
in environment steps (one env step = one KMC event chosen through the swarm), summed over all
parallel environments unless stated otherwise.

This module imports the section classes of the lower layers (and so JAX and Flax).
:meth:`EnvironmentConfig.physics_params` and the check of ``environment.physics`` names import
:mod:`swarm_jax.physics.params` when first needed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from swarm_jax.agents.networks import NetworkConfig
from swarm_jax.agents.ppo_config import PPOConfig
from swarm_jax.env.reward import RewardConfig
from swarm_jax.training.config_sections import (  # noqa: F401  (re-exported)
    _CPU_BARE, FLAT_KEYS, ROUTED_KEYS, SECTION_KEYS, SECTIONS, TOP_LEVEL_KEYS,
    EnvironmentConfig, FrozenMap, TrainingSection, _set, _unknown_key, physics_field_names,
)
from swarm_jax.validation import ConfigError, fail, show

__all__ = [
    "ConfigError",
    "FrozenMap",
    "EnvironmentConfig",
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
    "SECTION_KEYS",
    "STAGE_FILES",
    "ROUTED_KEYS",
    "stored_value",
]


# --------------------------------------------------------------------------------------------
# The whole configuration.


@dataclass(frozen=True)
class TrainConfig:
    """A full training configuration (see the module docstring). Frozen, hashable, validated."""

    name: str = "run"
    stage: int | None = None
    environment: EnvironmentConfig = field(default_factory=EnvironmentConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    training: TrainingSection = field(default_factory=TrainingSection)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise fail("name", self.name, "a non-empty string")
        if self.stage is not None and (isinstance(self.stage, bool) or self.stage not in (1, 2, 3)):
            raise fail("stage", self.stage, "1, 2, 3 or null")
        routed = _routed_values(self.training)
        for key in ("environment", "reward", "network", "training"):
            _set(self, key, _section(key, getattr(self, key)))
        _set(self, "ppo", _ppo_section(self.ppo, routed))
        if self.ppo.ess_target is not None:  # written as ppo.ess_target; stored in reward
            _set(self, "reward", self.reward.replace(ess_target=self.ppo.ess_target))
            _set(self, "ppo", dataclasses.replace(self.ppo, ess_target=None))
        if self.ppo.objective == "kl" and self.reward.w_ess != 0:
            raise ConfigError(f"reward.w_ess = {show(self.reward.w_ess)}: must be 0 with "
                              "ppo.objective = 'kl' (the ESS reward term would move the optimum)",
                              field="reward.w_ess")
        if self.training.cpu_overrides:
            try:
                applied = _apply_cpu(self)
            except ConfigError as err:
                raise ConfigError(f"training.cpu_overrides: applying the CPU overrides gives an "
                                  f"invalid config: {err}", field="training.cpu_overrides") from err
            # Store the coerced values (e.g. "3e-4" -> 0.0003) so the config round-trips exactly.
            coerced = FrozenMap({dotted: stored_value(applied, *dotted.split("."))
                                 for dotted in self.training.cpu_overrides})
            _set(self, "training", dataclasses.replace(self.training, cpu_overrides=coerced))

    @property
    def rollout_size(self) -> int:
        """Transitions collected per PPO update: ``n_envs * n_steps``."""
        return self.ppo.rollout_size

    @property
    def n_minibatches(self) -> int:
        """Minibatches per epoch: ``rollout_size // batch_size``."""
        return self.ppo.n_minibatches

    @property
    def num_updates(self) -> int:
        """PPO updates in the run: ``total_timesteps // rollout_size``."""
        return self.ppo.num_updates


def stored_value(cfg: TrainConfig, section: str, key: str) -> Any:
    """The value of YAML key ``section.key`` of ``cfg``, read from its home (:data:`ROUTED_KEYS`)."""
    return getattr(getattr(cfg, ROUTED_KEYS.get((section, key), section)), key)


def _routed_values(training) -> dict:
    """The keys of a ``training`` mapping whose home is the ppo section (popped from a copy of
    the mapping by :func:`_section`); ``{}`` for a built :class:`TrainingSection`."""
    if not isinstance(training, Mapping):
        return {}
    return {k: v for k, v in training.items() if ROUTED_KEYS.get(("training", k)) == "ppo"}


def _section_keys(key: str, values: Mapping) -> dict:
    """``values`` as a dict, after checking that each is a key of YAML section ``key``."""
    for k in values:
        if k not in SECTION_KEYS[key]:
            raise _unknown_key(key, k, SECTION_KEYS[key])
    return dict(values)


def _section(key: str, value):
    """Section ``key`` (not ppo) from a mapping of its keys, or as given (a RewardConfig built in
    code gets its weights checked here: its own construction checks only the mode)."""
    cls = SECTIONS[key]
    if isinstance(value, Mapping):
        values = {k: v for k, v in _section_keys(key, value).items()
                  if (key, k) not in ROUTED_KEYS}
    elif isinstance(value, cls):
        if cls is not RewardConfig:
            return value
        values = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    else:
        raise fail(key, value, f"a mapping (or a {cls.__name__})")
    return RewardConfig.checked(**values) if cls is RewardConfig else cls(**values)


def _ppo_section(value, sizes: Mapping) -> PPOConfig:
    """The ppo section with the n_envs and total_timesteps written in the training section
    (``sizes``; checked with them: the batch size must divide the rollout, the budget must hold
    one)."""
    if isinstance(value, Mapping):
        ppo = PPOConfig(**_section_keys("ppo", value), **sizes)
    elif isinstance(value, PPOConfig):
        if value.w_ess is not None:
            raise ConfigError(f"ppo.w_ess = {show(value.w_ess)}: must be None in a TrainConfig (the "
                              "ESS reward weight is reward.w_ess)", field="ppo.w_ess")
        same = all(getattr(value, k) == v for k, v in sizes.items())
        ppo = value if same else dataclasses.replace(value, **sizes)
    else:
        raise fail("ppo", value, "a mapping (or a PPOConfig)")
    if isinstance(value, Mapping) and ppo.ess_target is None:
        raise fail("ppo.ess_target", None, "a number in [0, 1]")
    return ppo


def _apply_cpu(cfg: TrainConfig) -> TrainConfig:
    """The config with ``cpu_overrides`` applied (the result keeps none, so this cannot recurse)."""
    updates: dict[str, dict] = {"training": {"cpu_overrides": FrozenMap()}, "ppo": {}}
    for dotted, value in cfg.training.cpu_overrides.items():
        section, name = dotted.split(".", 1)
        # a routed key goes to the PPOConfig: it checks it, and stores or hands it on
        updates["ppo" if (section, name) in ROUTED_KEYS else section][name] = value
    return dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, **updates["training"]),
                               ppo=dataclasses.replace(cfg.ppo, **updates["ppo"]))


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
            raise ConfigError(f"{show(key)}: config keys must be strings", field=show(key))
        if key in SECTIONS:
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise fail(key, value, "a mapping of keys")
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
    return TrainConfig(**top, **sections)


_TOP_LEVEL_LISTING = (
    f"allowed at top level: the sections {', '.join(SECTIONS)}, the keys {', '.join(TOP_LEVEL_KEYS)}, "
    "or any field of a section given flat (the original project's layout, e.g. temperature, learning_rate, n_envs)")


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
        out[key] = {name: plain(stored_value(cfg, key, name)) for name in SECTION_KEYS[key]}
    return out


def _valid_paths() -> list[str]:
    paths = list(TOP_LEVEL_KEYS) + list(SECTIONS)
    paths += [f"{s}.{n}" for s, keys in SECTION_KEYS.items() for n in keys]
    return paths


_OVERRIDE_LISTING = ("override keys are dotted paths like 'training.n_envs', "
                     "'environment.physics.e_es', a section name, 'name', 'stage' or a flat field name")


def with_overrides(cfg: TrainConfig, overrides: Mapping[str, Any]) -> TrainConfig:
    """A validated copy of ``cfg`` with dotted-key overrides applied.

    Keys: ``"training.n_envs"``, ``"ppo.learning_rate"``, ``"environment.physics.e_es"``,
    ``"training.cpu_overrides.n_envs"``, ``"name"``, ``"stage"``, a whole section (``"ppo"`` with a
    mapping, merged into it) or a key of the flat layout (``"n_envs"``).
    """
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"overrides must be a mapping of dotted keys, got {type(overrides).__name__}")
    d = config_to_dict(cfg)
    for key, value in overrides.items():
        if not isinstance(key, str):
            raise ConfigError(f"{show(key)}: override keys must be strings", field=show(key))
        parts = key.split(".")
        if len(parts) == 1 and parts[0] in FLAT_KEYS:
            parts = [FLAT_KEYS[parts[0]], parts[0]]
        head = parts[0]
        if len(parts) == 1 and head in TOP_LEVEL_KEYS:
            d[head] = value
        elif len(parts) == 1 and head in SECTIONS:
            if not isinstance(value, Mapping):
                raise fail(head, value, "a mapping of keys")
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
        raise fail("stage", stage, "1, 2 or 3")
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


#: Limits of a config document (a config is a few hundred bytes, three levels deep, alias-free):
#: larger, deeper or alias-heavier files are refused in one line instead of exhausting the
#: recursion limit (deep nesting), the memory (huge files) or the time (alias bombs).
MAX_CONFIG_BYTES = 1_000_000
MAX_CONFIG_DEPTH = 32
MAX_CONFIG_ALIASES = 64


class _DocumentTooComplex(yaml.YAMLError):
    """A document over one of the limits above (reported like any YAML error, with its line)."""

    def __init__(self, problem: str, mark):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key repeated within one mapping (PyYAML keeps the last silently)
    and documents nested deeper than :data:`MAX_CONFIG_DEPTH` or with more than
    :data:`MAX_CONFIG_ALIASES` aliases."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth, self._aliases = 0, 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_CONFIG_ALIASES:
                raise _DocumentTooComplex(f"more than {MAX_CONFIG_ALIASES} aliases (*name); a "
                                          "config needs none", event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_CONFIG_DEPTH:
                raise _DocumentTooComplex(f"nested deeper than {MAX_CONFIG_DEPTH} levels",
                                          event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


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
        with open(path, "rb") as fh:  # at most the limit plus one byte (also of /dev/zero)
            raw = fh.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {str(path)!r}: larger than the {MAX_CONFIG_BYTES} "
                              "bytes a config may have")
        text = raw.decode("utf-8")
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
    except RecursionError:  # a construct the depth limit does not see; never a traceback
        raise ConfigError(f"config file {str(path)!r}: invalid YAML: nested too deeply") from None
    if data is None:
        raise ConfigError(f"config file {str(path)!r}: is empty (expected a mapping of config keys)")
    if isinstance(data, Mapping) and "name" not in data:
        data = {"name": path.stem, **data}
    try:
        return config_from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}", field=err.field) from None
