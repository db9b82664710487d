"""Configuration of a production run: :class:`SimulationConfig`, its defaults and the validation
of every value (flag names appear in the messages, which the command line prints as they are).

Nothing here builds an ``argparse`` parser (that is :mod:`swarm_jax.simulate`, the command line):
the ``parse_*`` / ``check_*`` functions take any object with the parser's attribute names
(``args.temperature``, ``args.lattice_size``, ...) and raise :class:`UsageError` with one line.
The pre-run memory estimate (:func:`estimate_run_bytes`, :func:`check_memory`) and the default
host-check cadence (:func:`default_check_every`) are functions of the configuration and live here
too. A trained policy's checkpoint is read once per path and process
(:func:`load_trained_policy`), so the command line is validated, then run, from the same load.

Units: temperature in K, deposition rate in ML/s, events per replica, lattice sizes in sites.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import numbers
import os
import sys
from typing import Optional, Sequence

from swarm_jax.physics import PhysicsParams, estimate_state_bytes
from swarm_jax.physics.lattice import LATTICE_SIZE_RULE, deposit_target, validate_lattice_size
from swarm_jax.swarm import full_lattice
from swarm_jax.swarm.features import CANDIDATE_FEATURE_DIM, GLOBAL_FEATURE_DIM
from swarm_jax.trained_policy import PolicyLoadError, TrainedPolicy, load_policy
from swarm_jax.training.driver import check_memory_need

__all__ = [
    "PROG", "UsageError", "SimulationConfig", "DEFAULT_MONOLAYERS", "EVENTS_PER_ATOM_CAP",
    "DEFAULT_LATERAL", "DEFAULT_CHECKPOINT_MINUTES", "default_box_height", "default_check_every",
    "parse_physics", "parse_lattice", "check_ranges", "parse_policy", "load_trained_policy",
    "estimate_run_bytes", "check_memory", "say",
]

PROG = "swarm_jax.simulate"  # the prefix of every message (the command line's name)

# PhysicsParams fields with a flag of their own (not accepted through --physics).
_OWN_FLAGS = {"temperature": "--temperature", "deposition_rate": "--deposition-rate",
              "o_ti_flux_ratio": "--o-ti-ratio"}
# Physical ranges of --physics overrides (others only need to be finite).
_PHYSICS_BOUNDS = {
    "sticking_ti": (0.0, 1.0), "sticking_o": (0.0, 1.0), "attempt_frequency": (0.0, None),
    "oxide_hop_factor": (0.0, None), "bond_scale": (0.0, None),
}
_INCLUSIVE_LOW = {"sticking_ti", "sticking_o", "bond_scale"}
_MAX_INT = 2**62  # bound on counts (events, seeds): int64 arithmetic inside the engine


DEFAULT_MONOLAYERS = 5.0
EVENTS_PER_ATOM_CAP = 1000  # --monolayers without --events: event budget per atom to deposit
DEFAULT_LATERAL = (20, 20)
DEFAULT_CHECKPOINT_MINUTES = 10.0


class UsageError(ValueError):
    """Invalid command line, configuration or impossible run (one line on stderr, exit status 2;
    a ``ValueError`` for library callers)."""


def default_box_height(monolayers: float, columns: int) -> int:
    """Lz for growing ``monolayers`` ML on ``columns`` columns without reaching the top.

    Random deposition (no diffusion) is the roughest growth: column heights are Poisson with mean
    M, and the tallest of C columns lies below ``M + 1.5 sqrt(2 M ln C)`` with a wide margin;
    plus the substrate layer and two spare layers: ``Lz = ceil(M + 1.5 sqrt(2 M ln C)) + 3``.
    """
    m = max(0.0, float(monolayers))
    return int(math.ceil(m + 1.5 * math.sqrt(2.0 * m * math.log(max(columns, 2))))) + 3


_CHECK_BUDGET = 2**17  # events (summed over replicas, classical-equivalent) between host checks
_POLICY_COST = {"classical": 1, "candidates": 4, "full": 16}  # relative cost of one event


def default_check_every(replicas: int, policy_mode: str) -> int:
    """Events per replica between host checks (ceiling, SIGINT, checkpoints): about 2^17
    classical-equivalent events over all replicas (meant to be seconds at the rates of
    ``docs/benchmarks.md``), a multiple of 1024, at least 1024. ``policy_mode``: ``classical``, ``candidates``
    or ``full``."""
    per_replica = _CHECK_BUDGET // (max(1, int(replicas)) * _POLICY_COST[policy_mode])
    return max(1024, per_replica // 1024 * 1024)


@dataclasses.dataclass(frozen=True)
class SimulationConfig:
    """A validated run. Units: K, ML/s, events; ``physics`` holds extra PhysicsParams fields."""

    lattice_size: tuple[int, int, int]
    temperature: float
    deposition_rate: float
    o_ti_flux_ratio: float
    events: int
    log_every: int
    replicas: int
    seed: int
    out_dir: str
    policy: str = "classical"
    checkpoint: Optional[str] = None
    mode: Optional[str] = None
    context_refresh: Optional[int] = None
    react_slots: Optional[int] = None
    physics: tuple[tuple[str, float], ...] = ()
    max_memory_gb: Optional[float] = None
    quiet: bool = False
    overwrite: bool = False
    command: str = ""
    monolayers: Optional[float] = None  # deposit target (ML); the run ends when all replicas reach it
    check_every: int = 2**62
    checkpoint_every: Optional[int] = None
    checkpoint_minutes: float = 0.0
    resume: bool = False
    argv: tuple[str, ...] = ()

    def __post_init__(self):
        check_config(self)

    def physics_params(self):
        """The :class:`swarm_jax.physics.PhysicsParams` of this run."""
        return PhysicsParams(temperature=self.temperature, deposition_rate=self.deposition_rate,
                             o_ti_flux_ratio=self.o_ti_flux_ratio, **dict(self.physics))

    @property
    def deposit_target(self) -> Optional[int]:
        """Atoms each replica must deposit (``--monolayers``), or None (an event budget only)."""
        if self.monolayers is None:
            return None
        lx, ly, _ = self.lattice_size
        return deposit_target(lx * ly, self.monolayers)

    @property
    def expected_events(self) -> int:
        """Events the run is expected to take: ``--events``, or one per atom to deposit (the
        low-temperature limit) with ``--monolayers``. Scales a trained policy's progress feature."""
        target = self.deposit_target
        return self.events if target is None else min(self.events, target)

    @property
    def fillable_sites(self) -> int:
        lx, ly, lz = self.lattice_size
        return lx * ly * (lz - 1)


_MODES = (None, "candidates", "full")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_config(config: SimulationConfig) -> None:
    """Validates every field of ``config`` (run by its constructor, so the command line and the
    library path check alike; the command line has checked the same values under flag names
    before). Raises one :class:`UsageError` (a ``ValueError``) ``SimulationConfig.field = value:
    must be ...``. The policy name is checked against the registered factories when a runner is
    built (:func:`swarm_jax.production.runners.check_policy`)."""
    def bad(name, allowed):
        return UsageError(f"SimulationConfig.{name} = {getattr(config, name)!r}: must be {allowed}")

    try:
        validate_lattice_size(config.lattice_size)
    except ValueError:
        raise bad("lattice_size", LATTICE_SIZE_RULE) from None
    for name, low in (("events", 1), ("log_every", 1), ("replicas", 1), ("seed", 0),
                      ("check_every", 1)):
        value = getattr(config, name)
        if not (_is_int(value) and low <= value <= _MAX_INT):
            raise bad(name, f"an integer in [{low}, 2^62]")
    for name in ("checkpoint_every", "context_refresh", "react_slots"):
        value = getattr(config, name)
        if value is not None and not (_is_int(value) and 0 <= value <= _MAX_INT):
            raise bad(name, "None or a non-negative integer")
    if not isinstance(config.policy, str) or not config.policy:
        raise bad("policy", "a policy name such as 'classical' or 'trained'")
    if config.policy == "trained" and not isinstance(config.checkpoint, (str, os.PathLike)):
        raise bad("checkpoint", "the path of a training checkpoint when policy = 'trained'")
    if config.mode not in _MODES:
        raise bad("mode", "None, 'candidates' or 'full'")
    if not isinstance(config.out_dir, (str, os.PathLike)) or not str(config.out_dir):
        raise bad("out_dir", "a folder path")
    if config.monolayers is not None and not (
            isinstance(config.monolayers, numbers.Real) and not isinstance(config.monolayers, bool)
            and math.isfinite(config.monolayers) and 0 < config.monolayers <= 1e6):
        raise bad("monolayers", "None or a number in (0, 1e6]")
    if not isinstance(config.physics, tuple) or not all(
            isinstance(kv, tuple) and len(kv) == 2 and isinstance(kv[0], str) for kv in config.physics):
        raise bad("physics", "a tuple of (PhysicsParams field name, value) pairs")
    try:
        config.physics_params()  # types and ranges of temperature, fluxes and --physics values
    except TypeError as err:  # an unknown field name, or a value that is not a number
        raise UsageError(f"SimulationConfig: {err}") from None
    except ValueError as err:
        raise UsageError(f"SimulationConfig: {err}") from None


def say(*parts) -> None:
    """One line on stderr, prefixed with ``swarm_jax.simulate:``."""
    print(f"{PROG}:", *parts, file=sys.stderr, flush=True)


def _bad(flag: str, value, allowed: str) -> UsageError:
    return UsageError(f"{flag} {value}: must be {allowed}")


def _physics_field_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(PhysicsParams))


def parse_physics(items: Sequence[str]) -> tuple[tuple[str, float], ...]:
    """``KEY=VALUE`` strings -> validated ((name, value), ...) of PhysicsParams overrides."""
    names = _physics_field_names()
    settable = [n for n in names if n not in _OWN_FLAGS]
    out: dict[str, float] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--physics {item!r}: must be KEY=VALUE, e.g. --physics e_es=0.2")
        if key in _OWN_FLAGS:
            raise UsageError(f"--physics {key}: set it with {_OWN_FLAGS[key]}, not --physics")
        if key not in names:
            match = difflib.get_close_matches(key, settable, n=1, cutoff=0.6)
            hint = f" (did you mean {match[0]!r}?)" if match else ""
            raise UsageError(f"--physics {key}: unknown PhysicsParams field{hint}; "
                             f"allowed: {', '.join(settable)}")
        if key in out:
            raise UsageError(f"--physics {key}: given twice")
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        low, high = _PHYSICS_BOUNDS.get(key, (None, None))
        ok = math.isfinite(value)
        if ok and low is not None:
            ok = value >= low if key in _INCLUSIVE_LOW else value > low
        if ok and high is not None:
            ok = value <= high
        if not ok:
            if low is None:
                allowed = "a finite number"
            elif high is None:
                allowed = f"a number {'>=' if key in _INCLUSIVE_LOW else '>'} {low:g}"
            else:
                allowed = f"a number in [{low:g}, {high:g}]"
            raise UsageError(f"--physics {key}={text}: the value must be {allowed}")
        out[key] = value
    return tuple(out.items())


def parse_lattice(args) -> tuple[int, int, int, int, Optional[float]]:
    """(Lx, Ly, Lz, events, monolayers) from --lattice-size and --events / --monolayers; LZ
    ``auto`` (or no --lattice-size) sizes the box with :func:`default_box_height`."""
    lx, ly, lz = args.lattice_size or (*DEFAULT_LATERAL, None)
    if lx is None or ly is None:
        raise _bad("--lattice-size", f"{lx} {ly} {lz}", "LX LY LZ with only LZ allowed 'auto'")
    _check_lattice(lx, ly, 2 if lz is None else lz, f"{lx} {ly} {'auto' if lz is None else lz}")
    monolayers = args.monolayers
    if monolayers is None and args.events is None:
        monolayers = DEFAULT_MONOLAYERS
    if monolayers is not None and not (math.isfinite(monolayers) and 0 < monolayers <= 1e6):
        raise _bad("--monolayers", monolayers, "a number in (0, 1e6]")
    events = args.events
    if events is None:
        events = min(_MAX_INT, EVENTS_PER_ATOM_CAP * deposit_target(lx * ly, monolayers))
    if not 1 <= events <= _MAX_INT:
        raise _bad("--events", events, "an integer in [1, 2^62]")
    growth = events / (lx * ly) if monolayers is None else min(monolayers, events / (lx * ly))
    if lz is None:
        lz = default_box_height(growth, lx * ly)
        _check_lattice(lx, ly, lz, f"{lx} {ly} auto (a box of {lz} layers for {events} events "
                                   "per replica; use more columns or fewer events / monolayers)")
    return lx, ly, lz, events, monolayers


def _check_lattice(lx: int, ly: int, lz: int, shown: str) -> None:
    """The lattice limits shared with train.py and the environment
    (:func:`swarm_jax.physics.lattice.validate_lattice_size`), as a ``--lattice-size`` error."""
    try:
        validate_lattice_size((lx, ly, lz))
    except ValueError:
        rule = LATTICE_SIZE_RULE.replace("three integers (Lx, Ly, Lz)", "LX LY LZ")
        rule = rule.replace("Lx", "LX").replace("Ly", "LY").replace("Lz", "LZ")
        raise _bad("--lattice-size", shown, rule) from None


def check_ranges(args) -> None:
    """Physical and count ranges of the scalar flags."""
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise _bad("--temperature", args.temperature, "a finite number > 0 (K)")
    if not (math.isfinite(args.deposition_rate) and args.deposition_rate >= 0):
        raise _bad("--deposition-rate", args.deposition_rate, "a finite number >= 0 (ML/s)")
    if not (math.isfinite(args.o_ti_ratio) and args.o_ti_ratio >= 0):
        raise _bad("--o-ti-ratio", args.o_ti_ratio, "a finite number >= 0 (F_O / F_Ti)")
    for flag, value, low in (("--replicas", args.replicas, 1), ("--seed", args.seed, 0),
                             ("--log-every", args.log_every, 1),
                             ("--checkpoint-every", args.checkpoint_every, 1),
                             ("--check-every", args.check_every, 1)):
        if value is not None and not low <= value <= _MAX_INT:
            raise _bad(flag, value, f"an integer in [{low}, 2^62]")
    if args.max_memory_gb is not None and not (math.isfinite(args.max_memory_gb)
                                               and args.max_memory_gb > 0):
        raise _bad("--max-memory-gb", args.max_memory_gb, "a finite number > 0 (GB)")
    if not (math.isfinite(args.checkpoint_minutes) and 0 <= args.checkpoint_minutes <= 1e6):
        raise _bad("--checkpoint-minutes", args.checkpoint_minutes, "a number in [0, 1e6]")


@functools.lru_cache(maxsize=4)
def load_trained_policy(path: str) -> TrainedPolicy:
    """:func:`swarm_jax.trained_policy.load_policy`, cached per path within a process (the command
    line is validated, then run, from the same loaded checkpoint)."""
    return load_policy(path)


def parse_policy(args, lx: int, ly: int, lz: int):
    """(mode, context_refresh, react_slots) of a trained policy, validated (the checkpoint is
    loaded here); all None for the classical policy."""
    mode, context_refresh, react_slots = args.mode, args.context_refresh, args.react_slots
    if args.policy == "classical":
        for flag, value in (("--mode", args.mode), ("--checkpoint", args.checkpoint),
                            ("--context-refresh", context_refresh), ("--react-slots", react_slots)):
            if value is not None:
                raise UsageError(f"{flag} {value}: only used with --policy trained")
        return mode, context_refresh, react_slots
    if args.checkpoint is None:
        raise UsageError("--policy trained needs --checkpoint PATH")
    if not os.path.exists(args.checkpoint):
        raise UsageError(f"--checkpoint {args.checkpoint}: no such file or directory")
    mode = mode or "candidates"
    if mode == "candidates":
        for flag, value in (("--context-refresh", context_refresh), ("--react-slots", react_slots)):
            if value is not None:
                raise UsageError(f"{flag} {value}: only used with --mode full")
    else:
        context_refresh = lx * ly if context_refresh is None else context_refresh
        if not 1 <= context_refresh <= _MAX_INT:
            raise _bad("--context-refresh", context_refresh, "an integer in [1, 2^62]")
        react_slots = full_lattice.DEFAULT_REACT_SLOTS if react_slots is None else react_slots
        if not 0 <= react_slots <= 1024:
            raise _bad("--react-slots", react_slots, "an integer in [0, 1024]")
        react_slots = min(react_slots, lz)
    try:
        trained = load_trained_policy(args.checkpoint)
    except PolicyLoadError as exc:
        raise UsageError(f"--checkpoint {args.checkpoint}: {exc}") from None
    if mode == "full" and not trained.per_candidate:
        raise UsageError(
            f"--mode full: the checkpoint's network (kind {trained.network_config.kind!r}) "
            "scores a whole K-set at once, not single events; use --mode candidates")
    return mode, context_refresh, react_slots


# =========================================================================== memory


def estimate_run_bytes(lattice_size, replicas: int, log_every: int, mode: Optional[str] = None) -> int:
    """Bytes a run needs beyond the JAX runtime itself.

    Per replica: the state three times (chunk input and output on the device, the final host
    copy), the chunk's uniforms (3 float64 per event, drawn in blocks of at most 1024 events) and
    the 15-column rate recomputation of one event (a few KiB). ``mode="full"`` (trained policy,
    full lattice) adds, three times, the score cache ((C + 1) x (7 + Lz) float32) and the weight
    tree, plus the feature and activation buffers of one rescoring block.
    """
    lx, ly, lz = (int(v) for v in lattice_size)
    state = estimate_state_bytes((lx, ly, lz))
    uniforms = 24 * min(int(log_every), 1024)
    per_event = 15 * 5 * lz * 2 + 15 * (7 + lz) * 8 * 3
    extra = 0
    if mode == "full":
        c = lx * ly
        cache = 4 * (c + 1) * (7 + lz) + 16 * (1 << max(0, (c - 1).bit_length()))
        rows = full_lattice.ROWS_PER_BLOCK
        block = rows * (CANDIDATE_FEATURE_DIM + GLOBAL_FEATURE_DIM + 4 * 256) * 4 * 2
        extra = 3 * cache + block
    return int(replicas) * (3 * state + uniforms + per_event + extra)


def check_memory(config: SimulationConfig) -> int:
    """Returns the estimated bytes; raises :class:`UsageError` if they exceed the limit
    (``--max-memory-gb``, else MemAvailable; :func:`~swarm_jax.training.driver.check_memory_need`)."""
    need = estimate_run_bytes(config.lattice_size, config.replicas, config.log_every,
                              config.mode if config.policy == "trained" else None)
    limit, source = None, "MemAvailable"
    if config.max_memory_gb is not None:
        limit, source = int(config.max_memory_gb * 1e9), "--max-memory-gb"
    lx, ly, lz = config.lattice_size

    def refusal(limit: int) -> str:
        return (f"--lattice-size {lx} {ly} {lz} with --replicas {config.replicas}: needs about "
                f"{need / 1e9:.3g} GB, more than the {limit / 1e9:.3g} GB allowed ({source}); use "
                "a smaller lattice or fewer replicas, or set --max-memory-gb")

    return check_memory_need(need, limit, refusal, UsageError)
