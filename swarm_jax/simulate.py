"""Production KMC simulations of TiO2 film growth from the command line.

Usage::

    python -m swarm_jax.simulate --policy classical --lattice-size 20 20 10 --temperature 300 \\
        --deposition-rate 1.0 --events 100000 --seed 0 --out runs/demo

Runs ``--replicas`` independent lattices (batched with ``jax.vmap``) of ``--events`` KMC events
each, in logging chunks of ``--log-every`` events (one jitted call per chunk, compiled once per
distinct chunk length), and writes into ``--out``:

``timeseries.csv``
    One row per replica and log point (event 0 included), columns :data:`TIMESERIES_COLUMNS`:
    ``replica``, ``event`` (events executed by that replica), ``time`` (s), ``mean_height``
    (layers), ``roughness`` W (layers; x 4.59 for Å), ``coverage`` (fraction of columns with
    h > 0), ``n_ti``, ``n_o`` (atoms in the film), ``oxide_fraction``, ``o_ti_ratio``,
    ``n_deposited``, ``n_desorbed`` (atoms, cumulative), ``log_weight`` and ``ess`` (importance
    weight and ESS ratio of PHYSICS.md §4: 0 and 1 for the classical policy) and ``status``
    (``running``, ``ceiling`` or ``no_events``).
``final_state.npz``
    ``heights`` (Lx, Ly) int32 in layers, ``species`` (Lx, Ly, Lz) int8 (0 vacant, 1 Ti, 2 O,
    3 substrate) and ``oxide`` (Lx, Ly, Lz) int8 flags; a leading (R,) axis when R > 1.
``height_map.png``
    Final height map (replica 0).
``summary.json``
    Inputs, events requested/executed, physical time, final observables per replica with their
    mean and standard error, stop status and message, throughput (events/s summed over replicas,
    compile time excluded), compile time, peak memory, command line, versions, JAX backend.

Physical limits: a run stops (exit status 0, all outputs written, ``status`` recorded) at the end
of the logging chunk in which any replica's film reaches the top of the box (``ceiling``, PHYSICS.md
§1) or has no possible event (``no_events``); the reason is printed on stderr. Memory is
estimated before anything is allocated and a run that cannot fit is refused.

Units: temperature in K, deposition rate in ML/s (monolayers per second), physical time in s,
heights and roughness in layers (lattice constant a = 4.59 Å), lattice sizes in sites.

Every invalid input gives one line ``swarm_jax.simulate: error: ...`` on stderr and exit status 2.

SIGINT/SIGTERM: the chunk in progress finishes, every output is written (status
``interrupted``) and the exit status is 130.

Policies: ``classical`` is the rejection-free BKL engine (:func:`swarm_jax.physics.run`).
``trained`` (``--checkpoint CKPT``: a ``stageN_final`` directory, a step directory of
``checkpoints/stageN/`` or that store directory, meaning its latest step; saved on any device)
runs the actor of a training checkpoint (architecture and K from the checkpoint's config,
:mod:`swarm_jax.swarm.policy`) on any lattice size, in one of two modes (PHYSICS.md §4):

``--mode candidates`` (default)
    per event, K candidates drawn i.i.d. from ``Γ_e / Γ_tot`` (the environment's path), scored by
    the actor, ``j ~ softmax``, executed; step log-weight ``−log(K π_j)``. The global "progress"
    feature is the fraction of ``--events`` done.
``--mode full``
    every event weighted by ``exp(f_e) Γ_e`` (:mod:`swarm_jax.swarm.full_lattice`): cached scores
    refreshed in the 21 columns around each event, exact draws from a second float64 sum tree,
    step log-weight ``log Z − f_e − log Γ_tot``. The policy's global context is refreshed (a full
    rescoring) every ``--context-refresh`` events (default Lx·Ly); ``--react-slots`` reactive
    sites per column are scored by the network (default 4; see
    :func:`~swarm_jax.swarm.full_lattice.score_columns`).

Both modes use the physical clock. ``log_weight`` in the time series is each replica's trajectory
log importance weight; ``ess`` is the batch ESS ratio ``(Σ W)² / (R Σ W²)`` across replicas at that
log point (same value on every replica's row). summary.json adds ``importance_weighted``:
self-normalised estimates ``Σ W A / Σ W`` of the final roughness, coverage, O/Ti and mean height
with delta-method standard errors, and the batch ESS; ``trained_policy`` describes the checkpoint.

Other policies plug in through :data:`POLICY_FACTORIES`: a factory builds a :class:`PolicyRunner`
whose ``chunk_fn(carry, keys, n_events, *operands) -> carry`` advances a batch of lattices.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import difflib
import functools
import json
import math
import os
import resource
import shlex
import sys
import time
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from tqdm.auto import tqdm

import swarm_jax
from swarm_jax.distributed import batch_mesh, shard_batch
from swarm_jax.analysis import plots
from swarm_jax.physics import (
    CEILING, RUNNING, STATUS_NAMES, LatticeState, PhysicsParams, estimate_state_bytes,
    film_arrays, init_flat, make_rate_tables, observables, run,
)
from swarm_jax.swarm import full_lattice
from swarm_jax.swarm.features import CANDIDATE_FEATURE_DIM, GLOBAL_FEATURE_DIM
from swarm_jax.swarm.policy import (
    FilmStats, PolicyLoadError, TrainedPolicy, candidates_step, film_stats, load_policy,
)
from swarm_jax.swarm.weights import batch_ess, weighted_mean
from swarm_jax.training.safety import GracefulInterrupt, available_memory_bytes

__all__ = [
    "PROG", "TIMESERIES_COLUMNS", "LATTICE_CONSTANT_ANGSTROM", "UsageError", "SimulationConfig",
    "PolicyRunner", "ChunkFn", "POLICY_FACTORIES", "SimulationResult", "build_parser",
    "parse_config", "estimate_run_bytes", "check_memory", "classical_chunk",
    "make_classical_runner", "initial_state", "simulate", "build_summary", "write_outputs", "main",
]

PROG = "swarm_jax.simulate"
LATTICE_CONSTANT_ANGSTROM = 4.59  # rutile TiO2 a, Å (PHYSICS.md §1)
TIMESERIES_COLUMNS = (
    "replica", "event", "time", "mean_height", "roughness", "coverage", "n_ti", "n_o",
    "oxide_fraction", "o_ti_ratio", "n_deposited", "n_desorbed", "log_weight", "ess", "status",
)
FINAL_OBSERVABLES = ("mean_height", "roughness", "coverage", "o_ti_ratio", "oxide_fraction",
                     "n_ti", "n_o", "time")
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


class UsageError(Exception):
    """Invalid command line or impossible run (one line on stderr, exit status 2)."""


# =========================================================================== arguments


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise UsageError(message)


def _count(text: str) -> int:
    """An integer count; accepts ``100000``, ``1e5``, ``100_000``."""
    try:
        value = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
        if not (math.isfinite(value) and value.is_integer()):
            raise argparse.ArgumentTypeError(f"invalid integer: {text!r}")
        value = int(value)
    return value


def _real(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, allow_abbrev=False,
                description="Run KMC growth simulations of a TiO2 film and write a run directory "
                            "readable by swarm_jax.analyze.")
    p.add_argument("--policy", choices=("classical", "trained"), default="classical",
                   help="event selection: classical BKL (default) or a trained policy")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="trained policy checkpoint (--policy trained)")
    p.add_argument("--mode", choices=("candidates", "full"),
                   help="trained policy mode: K candidates per event (default) or the full "
                        "lattice (--policy trained)")
    p.add_argument("--context-refresh", type=_count, default=None, metavar="N",
                   help="full mode: events between refreshes of the policy's global context "
                        "(a full rescoring of the lattice; default Lx*Ly)")
    p.add_argument("--react-slots", type=_count, default=None, metavar="R",
                   help="full mode: reactive sites per column scored by the network (default "
                        f"{full_lattice.DEFAULT_REACT_SLOTS}; >= LZ scores every slot)")
    p.add_argument("--lattice-size", nargs=3, type=_count, metavar=("LX", "LY", "LZ"),
                   default=[20, 20, 10], help="lattice sites (default 20 20 10)")
    p.add_argument("--temperature", type=_real, default=300.0, metavar="K",
                   help="substrate temperature, K (default 300)")
    p.add_argument("--deposition-rate", type=_real, default=1.0, metavar="ML/s",
                   help="total deposition flux F, monolayers per second (default 1.0)")
    p.add_argument("--o-ti-ratio", type=_real, default=2.0, metavar="R",
                   help="O/Ti flux ratio r (default 2.0, stoichiometric)")
    p.add_argument("--events", type=_count, default=100_000, metavar="N",
                   help="KMC events per replica (default 100000)")
    p.add_argument("--log-every", type=_count, default=None, metavar="N",
                   help="events between time-series rows (default events/100, at least 1)")
    p.add_argument("--replicas", type=_count, default=1, metavar="R",
                   help="independent lattices run batched (default 1)")
    p.add_argument("--seed", type=_count, default=0, help="PRNG seed (default 0)")
    p.add_argument("--physics", action="append", default=[], metavar="KEY=VALUE",
                   help="override a PhysicsParams field, e.g. e_es=0.2 (repeatable)")
    p.add_argument("--max-memory-gb", type=_real, default=None, metavar="GB",
                   help="memory limit for the pre-run estimate (default: MemAvailable)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no final line")
    return p


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

    def physics_params(self):
        """The :class:`swarm_jax.physics.PhysicsParams` of this run."""
        return PhysicsParams(temperature=self.temperature, deposition_rate=self.deposition_rate,
                             o_ti_flux_ratio=self.o_ti_flux_ratio, **dict(self.physics))

    @property
    def fillable_sites(self) -> int:
        lx, ly, lz = self.lattice_size
        return lx * ly * (lz - 1)


def _bad(flag: str, value, allowed: str) -> UsageError:
    return UsageError(f"{flag} {value}: must be {allowed}")


def _physics_field_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(PhysicsParams))


def _parse_physics(items: Sequence[str]) -> tuple[tuple[str, float], ...]:
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


def _check_out_dir(out_dir: str, overwrite: bool) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"--out {out_dir}: exists and is not a directory")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise UsageError(f"--out {out_dir}: directory is not empty (pass --overwrite to write "
                         "into it anyway)")
    parent = os.path.dirname(os.path.abspath(out_dir))
    probe = out_dir if os.path.isdir(out_dir) else parent
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out_dir}: not writable")


def parse_config(argv: Optional[Sequence[str]] = None) -> SimulationConfig:
    """Parses and validates the command line (no JAX work; a trained policy's checkpoint is read
    here, so a bad one is refused before anything runs). Raises :class:`UsageError`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)

    lx, ly, lz = args.lattice_size
    size_text = f"{lx} {ly} {lz}"
    if lx < 3 or ly < 3 or lz < 2:
        raise _bad("--lattice-size", size_text,
                   "LX LY LZ with LX, LY >= 3 (distinct periodic neighbours) and LZ >= 2 "
                   "(substrate plus one layer)")
    if lx * ly >= 2**31 or lz > 127:
        raise _bad("--lattice-size", size_text, "at most 2^31 - 1 columns and LZ <= 127")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise _bad("--temperature", args.temperature, "a finite number > 0 (K)")
    if not (math.isfinite(args.deposition_rate) and args.deposition_rate >= 0):
        raise _bad("--deposition-rate", args.deposition_rate, "a finite number >= 0 (ML/s)")
    if not (math.isfinite(args.o_ti_ratio) and args.o_ti_ratio >= 0):
        raise _bad("--o-ti-ratio", args.o_ti_ratio, "a finite number >= 0 (F_O / F_Ti)")
    for flag, value, low in (("--events", args.events, 1), ("--replicas", args.replicas, 1),
                             ("--seed", args.seed, 0)):
        if not low <= value <= _MAX_INT:
            raise _bad(flag, value, f"an integer in [{low}, 2^62]")
    log_every = max(1, args.events // 100) if args.log_every is None else args.log_every
    if not 1 <= log_every <= _MAX_INT:
        raise _bad("--log-every", log_every, "an integer in [1, 2^62]")
    log_every = min(log_every, args.events)
    if args.max_memory_gb is not None and not (math.isfinite(args.max_memory_gb)
                                               and args.max_memory_gb > 0):
        raise _bad("--max-memory-gb", args.max_memory_gb, "a finite number > 0 (GB)")
    physics = _parse_physics(args.physics)

    mode, context_refresh, react_slots = args.mode, args.context_refresh, args.react_slots
    if args.policy == "classical":
        for flag, value in (("--mode", args.mode), ("--checkpoint", args.checkpoint),
                            ("--context-refresh", context_refresh), ("--react-slots", react_slots)):
            if value is not None:
                raise UsageError(f"{flag} {value}: only used with --policy trained")
    else:
        if args.checkpoint is None:
            raise UsageError("--policy trained needs --checkpoint PATH")
        if not os.path.exists(args.checkpoint):
            raise UsageError(f"--checkpoint {args.checkpoint}: no such file or directory")
        mode = mode or "candidates"
        if mode == "candidates":
            for flag, value in (("--context-refresh", context_refresh),
                                ("--react-slots", react_slots)):
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
    if args.policy not in POLICY_FACTORIES:
        raise UsageError(f"--policy {args.policy}: not available yet in this version "
                         f"(available: {', '.join(POLICY_FACTORIES)})")
    _check_out_dir(args.out, args.overwrite)

    return SimulationConfig(
        lattice_size=(lx, ly, lz), temperature=args.temperature,
        deposition_rate=args.deposition_rate, o_ti_flux_ratio=args.o_ti_ratio,
        events=args.events, log_every=log_every, replicas=args.replicas, seed=args.seed,
        out_dir=args.out, policy=args.policy, checkpoint=args.checkpoint, mode=mode,
        context_refresh=context_refresh, react_slots=react_slots,
        physics=physics, max_memory_gb=args.max_memory_gb, quiet=args.quiet,
        overwrite=args.overwrite, command=shlex.join(["python", "-m", PROG, *argv]),
    )


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
    """Returns the estimated bytes; raises :class:`UsageError` if they exceed the limit."""
    need = estimate_run_bytes(config.lattice_size, config.replicas, config.log_every,
                              config.mode if config.policy == "trained" else None)
    if config.max_memory_gb is not None:
        limit, source = int(config.max_memory_gb * 1e9), "--max-memory-gb"
    else:
        limit, source = available_memory_bytes(), "MemAvailable"
    if limit is not None and need > limit:
        lx, ly, lz = config.lattice_size
        raise UsageError(
            f"--lattice-size {lx} {ly} {lz} with --replicas {config.replicas}: needs about "
            f"{need / 1e9:.3g} GB, more than the {limit / 1e9:.3g} GB allowed ({source}); use a "
            "smaller lattice or fewer replicas, or set --max-memory-gb")
    return need


# =========================================================================== policies


ChunkFn = Callable[..., object]
"""``chunk_fn(carry, keys, n_events, *operands) -> carry``: advances a batch of lattices by
``n_events`` events each (a Python int, static). ``carry`` is the runner's pytree (for the
classical engine the :class:`LatticeState` itself; a policy adds e.g. its running log weights),
every leaf with a leading (R,) replica axis; ``keys`` are (R,) PRNG keys. ``operands`` are pytrees
of arrays (rate tables, network parameters) passed as traced arguments, so one compilation
serves every temperature or checkpoint of the same shapes. Must be pure and jit-able, defined
once at module level (compiled code is cached per function), and leave stopped lattices
(status != RUNNING) unchanged."""


def _identity(x):
    return x


class PolicyRunner(NamedTuple):
    """How a policy drives the lattices.

    Attributes:
        chunk_fn: see :data:`ChunkFn`.
        operands: the extra traced arguments of ``chunk_fn``.
        weights: ``weights(carry) -> (log_weight (R,), ess (R,))`` host arrays: the trajectory
            log importance weight so far and the ESS ratio of PHYSICS.md §4 (0 and 1 classically).
        init: ``init(state) -> carry`` from the batched initial :class:`LatticeState`.
        lattice: ``lattice(carry) -> LatticeState`` (batched), for observables and outputs.
    """

    chunk_fn: ChunkFn
    operands: tuple
    weights: Callable
    init: Callable = _identity
    lattice: Callable = _identity


def classical_chunk(state, keys, n_events: int, tables):
    """BKL engine on every replica: ``vmap`` of ``swarm_jax.physics.run(state, tables, key, n)``."""
    return jax.vmap(lambda s, k: run(s, tables, k, n_events=n_events))(state, keys)


def _classical_weights(state):
    r = state.status.shape[0]
    return np.zeros(r), np.ones(r)


def make_classical_runner(config: SimulationConfig, tables) -> PolicyRunner:
    """The rejection-free BKL engine (uniform policy: log weight 0, ESS ratio 1)."""
    return PolicyRunner(chunk_fn=classical_chunk, operands=(tables,), weights=_classical_weights)


# ---------------------------------------------------------------- trained policy


@functools.lru_cache(maxsize=4)
def load_trained_policy(path: str) -> TrainedPolicy:
    """:func:`swarm_jax.swarm.policy.load_policy`, cached per path within a process (the command
    line is validated, then run, from the same loaded checkpoint)."""
    return load_policy(path)


def _actor_logits(network, params, features, global_):
    """Actor logits (M,) of ``network`` for features (M, D) and global features (G,)."""
    return network.apply(params, {"candidates": features, "global": global_})[0]


@struct.dataclass
class CandidateCarry:
    """Candidate-mode carry, every leaf with a leading (R,) replica axis.

    Attributes:
      lattice: the films.
      log_weight: (R,) float64 trajectory log importance weights ``Σ_t −log(K π_j)``.
      step_ess_sum: (R,) float64 sum over executed events of the per-step ESS ratio.
      stats: per-replica :class:`~swarm_jax.swarm.policy.FilmStats` (global features in O(Lz)).
    """

    lattice: LatticeState
    log_weight: jnp.ndarray
    step_ess_sum: jnp.ndarray
    stats: FilmStats


def candidates_chunk(carry: CandidateCarry, keys, n_events: int, tables, physics, params, progress_scale,
                     *, logits_fn, n_swarm: int):
    """Candidate mode on every replica: ``n_events`` decisions of K candidates each.

    Event ``i`` of replica ``r`` uses the key ``fold_in(keys[r], i)``; progress (global feature) is
    ``n_events done x progress_scale``.
    """

    def one(c, key):
        def body(i, c):
            lat = c.lattice
            progress = lat.n_events.astype(jnp.float64) * progress_scale
            new, stats, step_lw, step_ess = candidates_step(
                lat, c.stats, tables, physics, logits_fn, params, jax.random.fold_in(key, i), n_swarm,
                progress)
            executed = new.n_events > lat.n_events
            return CandidateCarry(lattice=new, log_weight=c.log_weight + step_lw,
                                  step_ess_sum=c.step_ess_sum + jnp.where(executed, step_ess, 0.0),
                                  stats=stats)

        return jax.lax.fori_loop(0, n_events, body, c)

    return jax.vmap(one)(carry, keys)


def full_chunk(carry, keys, n_events: int, tables, physics, params, progress_scale, refresh_every,
               *, score_fn, react_slots: int):
    """Full-lattice mode on every replica (:func:`swarm_jax.swarm.full_lattice.run_batch`)."""
    return full_lattice.run_batch(carry, tables, physics, score_fn, params, keys, n_events,
                                  refresh_every, progress_scale, react_slots=react_slots)


@functools.lru_cache(maxsize=8)
def _trained_chunk_fn(network_config, n_swarm: int, mode: str, react_slots: Optional[int]) -> ChunkFn:
    """One chunk function per architecture and mode, so compiled code is reused within a process."""
    from swarm_jax.agents.networks import make_network

    logits_fn = functools.partial(_actor_logits, make_network(network_config, n_swarm))
    if mode == "full":
        return functools.partial(full_chunk, score_fn=logits_fn, react_slots=react_slots)
    return functools.partial(candidates_chunk, logits_fn=logits_fn, n_swarm=n_swarm)


def _batch_weights(log_weight):
    """(log_weight (R,), batch ESS ratio repeated (R,)) as host arrays."""
    log_w = np.asarray(jax.device_get(log_weight), np.float64)
    ess = float(batch_ess(jnp.asarray(log_w))) if log_w.size > 1 else 1.0
    return log_w, np.full(log_w.shape, ess)


def make_trained_runner(config: SimulationConfig, tables) -> PolicyRunner:
    """A trained policy (``--checkpoint``) in candidate or full-lattice mode (PHYSICS.md §4)."""
    policy = load_trained_policy(config.checkpoint)
    physics = config.physics_params()
    mode = config.mode or "candidates"
    chunk_fn = _trained_chunk_fn(policy.network_config, policy.n_swarm, mode, config.react_slots)
    progress_scale = jnp.float64(1.0 / config.events)
    if mode == "full":
        score_fn = chunk_fn.keywords["score_fn"]
        react_slots = config.react_slots

        @jax.jit
        def v_init(state, tables, physics, params):
            return jax.vmap(lambda s: full_lattice.init(s, tables, physics, score_fn, params,
                                                        react_slots=react_slots))(state)

        def init(state):
            return v_init(state, tables, physics, policy.params)

        operands = (tables, physics, policy.params, progress_scale,
                    jnp.int64(config.context_refresh))
    else:
        def init(state):
            r = state.status.shape[0]
            return CandidateCarry(lattice=state, log_weight=jnp.zeros((r,), jnp.float64),
                                  step_ess_sum=jnp.zeros((r,), jnp.float64),
                                  stats=jax.jit(jax.vmap(film_stats))(state))

        operands = (tables, physics, policy.params, progress_scale)
    return PolicyRunner(chunk_fn=chunk_fn, operands=operands,
                        weights=lambda carry: _batch_weights(carry.log_weight), init=init,
                        lattice=lambda carry: carry.lattice)


# Policy name -> factory(config, tables) -> PolicyRunner.
POLICY_FACTORIES: dict[str, Callable[[SimulationConfig, object], PolicyRunner]] = {
    "classical": make_classical_runner,
    "trained": make_trained_runner,
}


@functools.lru_cache(maxsize=None)
def _jitted(chunk_fn: ChunkFn):
    return jax.jit(chunk_fn, static_argnums=2, donate_argnums=0)


class _CompiledChunks:
    """Calls a runner's ``chunk_fn``, compiling it ahead of time (and timing that) once per
    distinct chunk length; compiled code is reused across runs of a process."""

    def __init__(self, runner: PolicyRunner):
        self._jitted = _jitted(runner.chunk_fn)
        self._operands = runner.operands
        self._compiled: dict[int, Callable] = {}
        self.compile_seconds = 0.0

    def __call__(self, carry, keys, n_events: int):
        fn = self._compiled.get(n_events)
        if fn is None:
            t0 = time.perf_counter()
            fn = self._jitted.lower(carry, keys, n_events, *self._operands).compile()
            self.compile_seconds += time.perf_counter() - t0
            self._compiled[n_events] = fn
        return fn(carry, keys, *self._operands)


# =========================================================================== run loop


@dataclasses.dataclass
class SimulationResult:
    """What :func:`simulate` produced (host arrays; replica axis first)."""

    rows: list  # list of dicts, TIMESERIES_COLUMNS
    heights: np.ndarray  # (R, Lx, Ly) int32
    species: np.ndarray  # (R, Lx, Ly, Lz) int8
    oxide: np.ndarray  # (R, Lx, Ly, Lz) int8
    final: dict  # observable -> (R,) array, plus n_events, status
    status: str  # "completed", "ceiling", "no_events" or "interrupted"
    message: str
    engine_seconds: float
    loop_seconds: float
    compile_seconds: float


def _status_name(code: int) -> str:
    return STATUS_NAMES.get(int(code), f"status_{int(code)}")


def _log_rows(values: dict, log_weight, ess) -> list:
    rows = []
    for r in range(values["n_events"].shape[0]):
        rows.append(dict(
            replica=r, event=int(values["n_events"][r]), time=float(values["time"][r]),
            mean_height=float(values["mean_height"][r]), roughness=float(values["roughness"][r]),
            coverage=float(values["coverage"][r]), n_ti=int(values["n_ti"][r]),
            n_o=int(values["n_o"][r]), oxide_fraction=float(values["oxide_fraction"][r]),
            o_ti_ratio=float(values["o_ti_ratio"][r]), n_deposited=int(values["n_deposited"][r]),
            n_desorbed=int(values["n_desorbed"][r]), log_weight=float(log_weight[r]),
            ess=float(ess[r]), status=_status_name(values["status"][r]),
        ))
    return rows


def _stop_message(config: SimulationConfig, status: np.ndarray, n_events: np.ndarray,
                  heights: np.ndarray) -> tuple[str, str]:
    """(status name, message) for the first stopped replica."""
    r = int(np.flatnonzero(status != RUNNING)[0])
    lx, ly, lz = config.lattice_size
    who = f"replica {r} " if config.replicas > 1 else ""
    head = f"{who}stopped after {int(n_events[r])} events"
    if int(status[r]) == CEILING:
        x, y = np.unravel_index(int(np.argmax(heights[r])), heights[r].shape)
        text = (f"{head}: column full at z = Lz-1 = {lz - 1} at (x, y) = ({x}, {y}) (the film "
                f"reached the top of the box); use a taller lattice (--lattice-size {lx} {ly} "
                f"{2 * lz}) or fewer events")
        name = "ceiling"
    else:
        text = (f"{head}: no event is possible (total rate 0 Hz; e.g. --deposition-rate 0 on an "
                "empty lattice)")
        name = "no_events"
    if config.replicas > 1:
        text += "; all replicas stopped at the end of that logging chunk"
    return name, text


@jax.jit
def _log_values(state: LatticeState) -> dict:
    """Observables of a batch of lattices for the time series: dict of (R,) arrays."""
    values = jax.vmap(observables)(state)
    values.update(n_events=state.n_events, status=state.status,
                  n_deposited=state.deposited.sum(axis=-1), n_desorbed=state.desorbed.sum(axis=-1))
    return values


_fold_keys = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))


def initial_state(config: SimulationConfig, params: PhysicsParams) -> LatticeState:
    """R bare substrates, every leaf with a leading (R,) replica axis."""
    one = init_flat(config.lattice_size, params)
    return jax.tree.map(lambda x: jnp.tile(x[None], (config.replicas,) + (1,) * x.ndim), one)


def simulate(config: SimulationConfig, runner: Optional[PolicyRunner] = None,
             progress: bool = True) -> SimulationResult:
    """Runs the simulation of ``config`` in logging chunks and returns host-side results.

    Chunk ``i`` of replica ``r`` uses the key ``fold_in(split(key(seed), R)[r], i)``, so a run is
    a pure function of its configuration. The loop ends after ``config.events`` events per
    replica, at the end of the first chunk in which a replica stopped (ceiling or no event), or
    after the chunk in progress when SIGINT/SIGTERM arrives (status ``interrupted``).
    """
    params = config.physics_params()
    tables = make_rate_tables(params)
    if runner is None:
        runner = POLICY_FACTORIES[config.policy](config, tables)
    chunks = _CompiledChunks(runner)
    carry = runner.init(initial_state(config, params))
    replica_keys = jax.random.split(jax.random.key(config.seed), config.replicas)
    mesh = batch_mesh(config.replicas)
    if mesh is not None:  # replicas split over the local devices (jit follows the layout)
        carry, replica_keys = shard_batch(carry, mesh), shard_batch(replica_keys, mesh)

    def record(carry):
        values = jax.device_get(_log_values(runner.lattice(carry)))
        log_weight, ess = runner.weights(carry)
        return values, _log_rows(values, log_weight, ess)

    values, rows = record(carry)
    engine_seconds, done, chunk_index = 0.0, 0, 0
    t_loop = time.perf_counter()
    bar = tqdm(total=config.events, unit="ev", unit_scale=True, dynamic_ncols=True,
               file=sys.stderr, disable=not progress, desc="events/replica")
    with GracefulInterrupt() as interrupt, bar:
        while (done < config.events and np.all(values["status"] == RUNNING)
               and not interrupt.requested):
            n = min(config.log_every, config.events - done)
            keys = _fold_keys(replica_keys, chunk_index)
            t0, compile_before = time.perf_counter(), chunks.compile_seconds
            carry = jax.block_until_ready(chunks(carry, keys, n))
            if mesh is not None:  # keep the compiled chunk's input layout (a no-op when it holds)
                carry = shard_batch(carry, mesh)
            engine_seconds += time.perf_counter() - t0 - (chunks.compile_seconds - compile_before)
            values, new_rows = record(carry)
            rows.extend(new_rows)
            done, chunk_index = done + n, chunk_index + 1
            bar.update(n)
            bar.set_postfix(h=f"{values['mean_height'].mean():.2f}",
                            W=f"{values['roughness'].mean():.2f}", refresh=False)
    loop_seconds = time.perf_counter() - t_loop - chunks.compile_seconds

    film = jax.device_get(jax.vmap(film_arrays)(runner.lattice(carry)))
    heights, species, oxide = (np.asarray(a) for a in film)
    if not np.all(values["status"] == RUNNING):
        status, message = _stop_message(config, values["status"], values["n_events"], heights)
    elif done < config.events:
        status = "interrupted"
        message = (f"interrupted by {interrupt.signal_name} after {done} events per replica; "
                   "the outputs hold what was simulated")
    else:
        status, message = "completed", f"completed {config.events} events per replica"
    final = {k: np.asarray(values[k]) for k in FINAL_OBSERVABLES}
    final["n_events"] = np.asarray(values["n_events"])
    final["status"] = [_status_name(s) for s in values["status"]]
    final["log_weight"], final["ess"] = runner.weights(carry)
    if isinstance(carry, CandidateCarry):  # mean per-step ESS ratio of the K-candidate choices
        n_ev = np.maximum(np.asarray(final["n_events"]), 1)
        final["step_ess_mean"] = np.asarray(jax.device_get(carry.step_ess_sum)) / n_ev
    return SimulationResult(
        rows=rows, heights=heights, species=species, oxide=oxide, final=final, status=status,
        message=message, engine_seconds=engine_seconds, loop_seconds=loop_seconds,
        compile_seconds=chunks.compile_seconds,
    )


# =========================================================================== outputs


def _mean_stderr(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    stderr = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else None
    return {"per_replica": v.tolist(), "mean": float(v.mean()), "stderr": stderr}


def write_timeseries(path: str, rows: list) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(TIMESERIES_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)


def write_final_state(path: str, result: SimulationResult) -> None:
    """``heights``/``species``/``oxide`` with the replica axis dropped when R = 1."""
    squeeze = (lambda a: a[0]) if result.heights.shape[0] == 1 else (lambda a: a)
    np.savez_compressed(path, heights=squeeze(result.heights).astype(np.int32),
                        species=squeeze(result.species).astype(np.int8),
                        oxide=squeeze(result.oxide).astype(np.int8))


WEIGHTED_OBSERVABLES = ("roughness", "coverage", "o_ti_ratio", "mean_height")


def importance_estimates(final: dict, log_weight) -> dict:
    """Self-normalised importance estimates ``Σ W A / Σ W`` over replicas of the final
    roughness, coverage, O/Ti and mean height, each with its delta-method standard error
    (:func:`swarm_jax.swarm.weights.weighted_mean`; ``None`` for one replica), and the batch ESS."""
    log_w = jnp.asarray(np.asarray(log_weight, np.float64))
    n = int(log_w.shape[0])
    out = {}
    for name in WEIGHTED_OBSERVABLES:
        est, se = weighted_mean(jnp.asarray(np.asarray(final[name], np.float64)), log_w)
        out[name] = {"estimate": float(est), "stderr": float(se) if n > 1 else None}
    out["batch_ess_ratio"] = float(batch_ess(log_w)) if n > 1 else 1.0
    out["batch_ess"] = out["batch_ess_ratio"] * n
    return out


def build_summary(config: SimulationConfig, result: SimulationResult, state_bytes: int,
                  estimated_bytes: int) -> dict:
    executed = [int(n) for n in result.final["n_events"]]
    total_events = sum(executed)
    final = {k: _mean_stderr(result.final[k]) for k in FINAL_OBSERVABLES if k != "time"}
    final["roughness_angstrom"] = _mean_stderr(
        np.asarray(result.final["roughness"]) * LATTICE_CONSTANT_ANGSTROM)
    policy = None
    if config.policy == "trained":
        policy = dict(load_trained_policy(config.checkpoint).summary(), mode=config.mode)
        if config.mode == "full":
            policy.update(context_refresh_events=config.context_refresh,
                          react_slots=config.react_slots, score_clip=full_lattice.F_CLIP)
        if "step_ess_mean" in result.final:
            policy["step_ess_mean"] = np.asarray(result.final["step_ess_mean"], np.float64).tolist()
    return {
        "lattice_size": list(config.lattice_size),
        "lattice_constant_angstrom": LATTICE_CONSTANT_ANGSTROM,
        "temperature": config.temperature,
        "deposition_rate": config.deposition_rate,
        "o_ti_flux_ratio": config.o_ti_flux_ratio,
        "physics_overrides": dict(config.physics),
        "policy": config.policy,
        "mode": config.mode,
        "trained_policy": policy,
        "replicas": config.replicas,
        "seed": config.seed,
        "events_requested": config.events,
        "events_executed": executed,
        "n_events": executed[0] if config.replicas == 1 else executed,
        "log_every": config.log_every,
        "physical_time_s": _mean_stderr(result.final["time"]),
        "final": final,
        "log_weight": np.asarray(result.final["log_weight"], np.float64).tolist(),
        "ess": np.asarray(result.final["ess"], np.float64).tolist(),
        "importance_weighted": importance_estimates(result.final, result.final["log_weight"]),
        "status": result.status,
        "replica_status": result.final["status"],
        "message": result.message,
        "events_per_second": (total_events / result.engine_seconds
                              if result.engine_seconds > 0 else None),
        "events_per_second_with_logging": (total_events / result.loop_seconds
                                           if result.loop_seconds > 0 else None),
        "engine_seconds": result.engine_seconds,
        "compile_seconds": result.compile_seconds,
        "peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "state_bytes_per_replica": state_bytes,
        "estimated_run_bytes": estimated_bytes,
        "command": config.command,
        "package_version": swarm_jax.__version__,
        "jax_version": jax.__version__,
        "jax_backend": jax.default_backend(),
    }


def write_outputs(config: SimulationConfig, result: SimulationResult, summary: dict) -> None:
    """Writes timeseries.csv, final_state.npz, height_map.png and summary.json into --out."""
    out = config.out_dir
    os.makedirs(out, exist_ok=True)
    write_timeseries(os.path.join(out, "timeseries.csv"), result.rows)
    write_final_state(os.path.join(out, "final_state.npz"), result)
    title = f"Final height map, {config.temperature:g} K" + (
        " (replica 0)" if config.replicas > 1 else "")
    plots.plot_height_map(os.path.join(out, "height_map.png"), result.heights[0],
                          LATTICE_CONSTANT_ANGSTROM, title=title)
    with open(os.path.join(out, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2, allow_nan=False)


# =========================================================================== entry point


def _say(*parts) -> None:
    print(f"{PROG}:", *parts, file=sys.stderr, flush=True)


def _warn_fillable(config: SimulationConfig) -> None:
    if config.events > config.fillable_sites:
        lx, ly, lz = config.lattice_size
        _say(f"warning: --events {config.events} exceeds the {config.fillable_sites} sites that "
             f"can be filled (Lx*Ly*(Lz-1) for --lattice-size {lx} {ly} {lz}); at 180-300 K most "
             "events are depositions, so the film may reach the top of the box and stop the run")


def _warn_training_conditions(config: SimulationConfig) -> None:
    """A note on stderr when a trained policy runs at another temperature or flux than it saw."""
    if config.policy != "trained":
        return
    env = load_trained_policy(config.checkpoint).summary()["trained_environment"]
    for key, now, unit in (("temperature", config.temperature, "K"),
                           ("deposition_rate", config.deposition_rate, "ML/s")):
        then = env.get(key)
        if isinstance(then, (int, float)) and not math.isclose(then, now, rel_tol=1e-9):
            _say(f"note: the policy was trained at {key} {then:g} {unit}, this run uses {now:g} "
                 f"{unit} (the importance weights stay exact; the proposal may be poorer)")


def _final_line(config: SimulationConfig, result: SimulationResult, summary: dict) -> str:
    rate = summary["events_per_second"]
    final = summary["final"]
    replicas = f"{config.replicas} replica{'s' if config.replicas > 1 else ''}"
    return (f"{result.status}: {sum(summary['events_executed'])} events ({replicas}), "
            f"t = {summary['physical_time_s']['mean']:.4g} s, "
            f"h = {final['mean_height']['mean']:.3f}, W = {final['roughness']['mean']:.3f} layers, "
            f"{'n/a' if rate is None else f'{rate:.3g}'} events/s "
            f"(compile {result.compile_seconds:.1f} s) -> {config.out_dir}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point. Exit status: 0 done (also when stopped at the ceiling or with no possible
    event; see ``status`` in summary.json), 1 outputs could not be written, 2 bad input,
    130 interrupted (outputs written)."""
    __import__("swarm_jax.compile_cache").compile_cache.enable_compilation_cache()  # persistent JIT cache
    try:
        config = parse_config(argv)
        estimated = check_memory(config)
        try:
            os.makedirs(config.out_dir, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--out {config.out_dir}: {exc.strerror or exc}") from None
    except UsageError as exc:
        _say("error:", str(exc).replace("\n", " "))
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    _warn_fillable(config)
    _warn_training_conditions(config)

    result = simulate(config, progress=not config.quiet)
    if result.status != "completed":
        _say(result.message)
    summary = build_summary(config, result, estimate_state_bytes(config.lattice_size), estimated)
    try:
        write_outputs(config, result, summary)
    except OSError as exc:
        _say("error:", f"cannot write outputs to --out {config.out_dir}: {exc.strerror or exc}")
        return 1
    if not config.quiet:
        print(_final_line(config, result, summary))
    return 130 if result.status == "interrupted" else 0


if __name__ == "__main__":
    sys.exit(main())
