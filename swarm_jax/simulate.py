"""Production KMC simulations of TiO2 film growth from the command line.

Usage::

    python -m swarm_jax.simulate --policy classical --lattice-size 64 64 auto --monolayers 5 \\
        --temperature 300 --deposition-rate 1.0 --seed 0 --out runs/demo
    python -m swarm_jax.simulate --resume --out runs/demo      # after a kill or Ctrl-C

Runs ``--replicas`` independent lattices (batched with ``jax.vmap``). The budget is either
``--monolayers ML`` (default 5: the run ends at the end of the chunk in which every replica has
deposited ML·Lx·Ly atoms; ``--events`` then only caps it, default 1000 events per atom) or
``--events N`` KMC events per replica. Without ``--lattice-size`` the box is 20×20 and its
height ``auto``: :func:`default_box_height` layers, enough for the requested growth even as
random deposition (the roughest case); ``--lattice-size LX LY auto`` sizes only the height.

The loop runs in chunks (one jitted call each, compiled once per distinct chunk length) that end
at every log point (``--log-every``: default a quarter monolayer of events with --monolayers,
else events/100) and after at most ``--check-every`` events (default
:func:`default_check_every`, about 2^17 events over all replicas), so the ceiling, signals and
checkpoints are looked at within seconds even when ``--log-every`` is as large as the run.
Nothing kept in host memory grows with the run: the time series is streamed to disk.

Outputs in ``--out`` (written at the end, each whole or not at all: staged as ``.<name>.new``
and renamed into place together, summary.json last; a failed write, e.g. a full disk or
``ulimit -f``, prints one line, exits 1 and leaves the previous files as they were):

``timeseries.csv``
    One row per replica and log point (event 0 included), columns :data:`TIMESERIES_COLUMNS`:
    ``replica``, ``event`` (events executed by that replica), ``time`` (s), ``mean_height``
    (layers), ``roughness`` W (layers; x 4.59 for Å), ``coverage`` (fraction of columns with
    h > 0), ``n_ti``, ``n_o`` (atoms in the film), ``oxide_fraction``, ``o_ti_ratio``,
    ``n_deposited``, ``n_desorbed`` (atoms, cumulative), ``log_weight`` and ``ess`` (importance
    weight and ESS ratio, docs/physics.md: 0 and 1 for the classical policy) and ``status``:
    ``running`` on every row but each replica's last, which says how the run ended for it:
    ``done`` (budget reached), ``ceiling``, ``no_events``, ``stopped`` (another replica stopped
    the run) or ``interrupted``.
``final_state.npz``
    ``heights`` (Lx, Ly) int32 in layers, ``species`` (Lx, Ly, Lz) int8 (0 vacant, 1 Ti, 2 O,
    3 substrate) and ``oxide`` (Lx, Ly, Lz) int8 flags; a leading (R,) axis when R > 1.
``height_map.png``
    Final height map (replica 0).
``summary.json``
    Inputs, events requested/executed, physical time, final observables per replica with their
    mean and standard error, importance-weighted estimates with their diagnostics, stop status
    and message, throughput (events/s summed over replicas, compile time excluded), compile
    time, peak memory, command line, versions, JAX backend.

One owner per folder: ``--out`` is claimed (:func:`swarm_jax.outdir.claim_output_dir`) before
anything is compiled; a folder in use by a live run, a path that is a file, empty or not
writable, and (without ``--overwrite`` or ``--resume``) a folder holding files are refused with
one line.

Checkpoints and ``--resume``: while it runs, ``--out/checkpoints/`` holds ``run.json`` (the
command line), the streamed ``timeseries.partial.csv`` and orbax checkpoints of every replica's
carry (lattice, weights, policy caches) with the loop position, written atomically every
``--checkpoint-every`` events and/or ``--checkpoint-minutes`` of wall time (default 10 min) and
on SIGINT/SIGTERM. ``--resume --out DIR`` continues from the latest checkpoint with the saved
settings (the original command plus ``--resume`` is accepted too; a flag that would change the
result is refused) and gives bit for bit the outputs of an uninterrupted run. A checkpoint that
fails to restore is reported in one line and the previous one is used. A run that ends
(other than interrupted) removes ``checkpoints/``.

Physical limits: a run stops (exit status 0, all outputs written, ``status`` recorded) at the end
of the chunk in which any replica's film reaches the top of the box (``ceiling``,
docs/physics.md) or has no possible event (``no_events``); the reason is printed on stderr.
Memory is estimated before anything is allocated and a run that cannot fit is refused.

Units: temperature in K, deposition rate in ML/s (monolayers per second), physical time in s,
heights and roughness in layers (lattice constant a = 4.59 Å), lattice sizes in sites.

Every invalid input gives one line ``swarm_jax.simulate: error: ...`` on stderr and exit status 2.

SIGINT/SIGTERM: the chunk in progress finishes, a checkpoint and every output are written
(status ``interrupted``) and the exit status is 130; ``--resume`` continues.

Policies: ``classical`` is the rejection-free BKL engine (:func:`swarm_jax.physics.run`).
``trained`` (``--checkpoint CKPT``: a ``stageN_final`` directory, a step directory of
``checkpoints/stageN/`` or that store directory, meaning its latest step; saved on any device)
runs the actor of a training checkpoint (architecture and K from the checkpoint's config,
:mod:`swarm_jax.swarm.policy`) on any lattice size, in one of two modes (docs/physics.md):

``--mode candidates`` (default)
    per event, K candidates drawn i.i.d. from ``Γ_e / Γ_tot`` (the environment's path), scored by
    the actor, ``j ~ softmax``, executed; step log-weight ``−log(K π_j)``. The global "progress"
    feature is the fraction of the expected events done (``--events``, or one event per atom
    to deposit with ``--monolayers``), capped at 1.
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
with delta-method standard errors, the batch ESS, the PSIS tail shape ``khat`` and ``reliable``
with its ``reasons`` (:mod:`swarm_jax.analysis.importance`: not reliable below a batch ESS of
max(0.1 R, 3) or above k̂ = 0.7; also printed on stderr); ``trained_policy`` describes the
checkpoint.

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
import shutil
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
from swarm_jax.analysis import importance, plots
from swarm_jax.outdir import (
    LOCK_NAME, OutputDirError, atomic_write_text, atomic_writer, check_output_dir, claim_output_dir,
)
from swarm_jax.physics import (
    CEILING, RUNNING, STATUS_NAMES, LatticeState, PhysicsParams, estimate_state_bytes,
    film_arrays, init_flat, make_rate_tables, observables, run,
)
from swarm_jax.swarm import full_lattice
from swarm_jax.swarm.features import CANDIDATE_FEATURE_DIM, GLOBAL_FEATURE_DIM
from swarm_jax.compile_cache import enable_compilation_cache
from swarm_jax.cli import OneLineParser, count
from swarm_jax.env.tio2_env import METRIC_KEYS
from swarm_jax.swarm.policy import FilmStats, candidates_step, film_stats
from swarm_jax.trained_policy import PolicyLoadError, TrainedPolicy, load_policy
from swarm_jax.swarm.weights import batch_ess
from swarm_jax.training.safety import GracefulInterrupt, available_memory_bytes

__all__ = [
    "PROG", "TIMESERIES_COLUMNS", "LATTICE_CONSTANT_ANGSTROM", "UsageError", "SimulationConfig",
    "PolicyRunner", "ChunkFn", "POLICY_FACTORIES", "SimulationResult", "build_parser",
    "parse_config", "estimate_run_bytes", "check_memory", "classical_chunk",
    "make_classical_runner", "initial_state", "simulate", "build_summary", "write_outputs", "main",
    "SimulationRun", "start", "RunProgress", "default_box_height", "default_check_every",
    "next_chunk_events", "read_timeseries_rows", "claim_out", "remove_checkpoints",
]

PROG = "swarm_jax.simulate"
LATTICE_CONSTANT_ANGSTROM = 4.59  # rutile TiO2 a, Å (docs/physics.md)
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


class _Parser(OneLineParser):
    error_class = UsageError  # one line, no usage dump


def _real(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None


def _size(text: str) -> Optional[int]:
    """A lattice dimension, or ``auto`` (None)."""
    return None if text.strip().lower() == "auto" else count(text)


DEFAULT_MONOLAYERS = 5.0
EVENTS_PER_ATOM_CAP = 1000  # --monolayers without --events: event budget per atom to deposit
DEFAULT_LATERAL = (20, 20)
DEFAULT_CHECKPOINT_MINUTES = 10.0


def default_box_height(monolayers: float, columns: int) -> int:
    """Lz for growing ``monolayers`` ML on ``columns`` columns without reaching the top.

    Random deposition (no diffusion) is the roughest growth: column heights are Poisson with mean
    M, and the tallest of C columns lies below ``M + 1.5 sqrt(2 M ln C)`` with a wide margin;
    plus the substrate layer and two spare layers: ``Lz = ceil(M + 1.5 sqrt(2 M ln C)) + 3``.
    """
    m = max(0.0, float(monolayers))
    return int(math.ceil(m + 1.5 * math.sqrt(2.0 * m * math.log(max(columns, 2))))) + 3


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
    p.add_argument("--context-refresh", type=count, default=None, metavar="N",
                   help="full mode: events between refreshes of the policy's global context "
                        "(a full rescoring of the lattice; default Lx*Ly)")
    p.add_argument("--react-slots", type=count, default=None, metavar="R",
                   help="full mode: reactive sites per column scored by the network (default "
                        f"{full_lattice.DEFAULT_REACT_SLOTS}; >= LZ scores every slot)")
    p.add_argument("--lattice-size", nargs=3, type=_size, metavar=("LX", "LY", "LZ"),
                   default=None,
                   help="lattice sites; LZ may be 'auto' (default 20 20 auto: a box tall enough "
                        "for the requested growth, see --monolayers)")
    p.add_argument("--temperature", type=_real, default=300.0, metavar="K",
                   help="substrate temperature, K (default 300)")
    p.add_argument("--deposition-rate", type=_real, default=1.0, metavar="ML/s",
                   help="total deposition flux F, monolayers per second (default 1.0)")
    p.add_argument("--o-ti-ratio", type=_real, default=2.0, metavar="R",
                   help="O/Ti flux ratio r (default 2.0, stoichiometric)")
    p.add_argument("--events", type=count, default=None, metavar="N",
                   help="KMC events per replica (with --monolayers: the most it may take, "
                        f"default {EVENTS_PER_ATOM_CAP} per deposited atom)")
    p.add_argument("--monolayers", type=_real, default=None, metavar="ML",
                   help="deposit ML monolayers (ML*LX*LY atoms per replica; the run ends when "
                        f"every replica has); default {DEFAULT_MONOLAYERS:g} when --events is "
                        "not given")
    p.add_argument("--log-every", type=count, default=None, metavar="N",
                   help="events between time-series rows (default events/100, at least 1)")
    p.add_argument("--replicas", type=count, default=1, metavar="R",
                   help="independent lattices run batched (default 1)")
    p.add_argument("--seed", type=count, default=0, help="PRNG seed (default 0)")
    p.add_argument("--physics", action="append", default=[], metavar="KEY=VALUE",
                   help="override a PhysicsParams field, e.g. e_es=0.2 (repeatable)")
    p.add_argument("--max-memory-gb", type=_real, default=None, metavar="GB",
                   help="memory limit for the pre-run estimate (default: MemAvailable)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint (same settings; "
                        "the result is identical to an uninterrupted run)")
    p.add_argument("--checkpoint-every", type=count, default=None, metavar="N",
                   help="write a checkpoint every N events per replica (default: off; see "
                        "--checkpoint-minutes)")
    p.add_argument("--checkpoint-minutes", type=_real, default=DEFAULT_CHECKPOINT_MINUTES,
                   metavar="M", help="write a checkpoint every M minutes of wall time (default "
                                     f"{DEFAULT_CHECKPOINT_MINUTES:g}; 0: off)")
    p.add_argument("--check-every", type=count, default=None, metavar="N",
                   help="at most N events per replica between host checks of the ceiling, "
                        "signals and checkpoints (default: about 2^17 events over all replicas)")
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
    monolayers: Optional[float] = None  # deposit target (ML); the run ends when all replicas reach it
    check_every: int = 2**62
    checkpoint_every: Optional[int] = None
    checkpoint_minutes: float = 0.0
    resume: bool = False
    argv: tuple[str, ...] = ()

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
        return max(1, math.ceil(self.monolayers * lx * ly))

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


def _out_has_content(out_dir: str) -> bool:
    """Whether ``out_dir`` exists and holds anything besides the ownership lock file."""
    return os.path.isdir(out_dir) and any(n != LOCK_NAME for n in os.listdir(out_dir))


def _parse_lattice(args) -> tuple[int, int, int, int, Optional[float]]:
    """(Lx, Ly, Lz, events, monolayers) from --lattice-size and --events / --monolayers; LZ
    ``auto`` (or no --lattice-size) sizes the box with :func:`default_box_height`."""
    lx, ly, lz = args.lattice_size or (*DEFAULT_LATERAL, None)
    if lx is None or ly is None:
        raise _bad("--lattice-size", f"{lx} {ly} {lz}", "LX LY LZ with only LZ allowed 'auto'")
    if lx < 3 or ly < 3 or (lz is not None and lz < 2):
        raise _bad("--lattice-size", f"{lx} {ly} {lz}",
                   "LX LY LZ with LX, LY >= 3 (distinct periodic neighbours) and LZ >= 2 "
                   "(substrate plus one layer)")
    if lx * ly >= 2**31:
        raise _bad("--lattice-size", f"{lx} {ly} {lz}", "at most 2^31 - 1 columns and LZ <= 127")
    monolayers = args.monolayers
    if monolayers is None and args.events is None:
        monolayers = DEFAULT_MONOLAYERS
    if monolayers is not None and not (math.isfinite(monolayers) and 0 < monolayers <= 1e6):
        raise _bad("--monolayers", monolayers, "a number in (0, 1e6]")
    events = args.events
    if events is None:
        events = min(_MAX_INT, EVENTS_PER_ATOM_CAP * max(1, math.ceil(monolayers * lx * ly)))
    if not 1 <= events <= _MAX_INT:
        raise _bad("--events", events, "an integer in [1, 2^62]")
    growth = events / (lx * ly) if monolayers is None else min(monolayers, events / (lx * ly))
    if lz is None:
        lz = default_box_height(growth, lx * ly)
        if lz > 127:
            raise UsageError(
                f"--lattice-size {lx} {ly} auto: {events} events per replica need a box of "
                f"{lz} layers, more than 127; use more columns or fewer events / monolayers")
    elif lz > 127:
        raise _bad("--lattice-size", f"{lx} {ly} {lz}", "at most 2^31 - 1 columns and LZ <= 127")
    return lx, ly, lz, events, monolayers


def _check_ranges(args) -> None:
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


def _parse_policy(args, lx: int, ly: int, lz: int):
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


def _config_from_args(args, argv: Sequence[str]) -> SimulationConfig:
    lx, ly, lz, events, monolayers = _parse_lattice(args)
    _check_ranges(args)
    if args.log_every is not None:
        log_every = args.log_every
    elif monolayers is not None:  # a row per quarter monolayer of events (fewer at high T)
        log_every = max(1, lx * ly // 4)
    else:
        log_every = max(1, events // 100)
    log_every = min(log_every, events)
    physics = _parse_physics(args.physics)
    mode, context_refresh, react_slots = _parse_policy(args, lx, ly, lz)
    if args.policy not in POLICY_FACTORIES:
        raise UsageError(f"--policy {args.policy}: not available yet in this version "
                         f"(available: {', '.join(POLICY_FACTORIES)})")
    try:
        check_output_dir(args.out)
    except OutputDirError as exc:
        raise UsageError(str(exc)) from None
    check_every = args.check_every or default_check_every(
        args.replicas, mode if args.policy == "trained" else "classical")
    return SimulationConfig(
        lattice_size=(lx, ly, lz), temperature=args.temperature,
        deposition_rate=args.deposition_rate, o_ti_flux_ratio=args.o_ti_ratio,
        events=events, log_every=log_every, replicas=args.replicas, seed=args.seed,
        out_dir=args.out, policy=args.policy, checkpoint=args.checkpoint, mode=mode,
        context_refresh=context_refresh, react_slots=react_slots,
        physics=physics, max_memory_gb=args.max_memory_gb, quiet=args.quiet,
        overwrite=args.overwrite, command=shlex.join(["python", "-m", PROG, *argv]),
        monolayers=monolayers, check_every=check_every, checkpoint_every=args.checkpoint_every,
        checkpoint_minutes=args.checkpoint_minutes, resume=args.resume, argv=tuple(argv),
    )


# Fields that define a run's result: a resumed run must keep them.
_RUN_FIELDS = ("lattice_size", "temperature", "deposition_rate", "o_ti_flux_ratio", "events",
               "monolayers", "log_every", "replicas", "seed", "policy", "checkpoint", "mode", "context_refresh",
               "react_slots", "physics", "check_every")
# Flags that may differ between a run and its --resume.
_RESUME_FREE = {"--out", "--resume", "--quiet", "--overwrite", "--checkpoint-every",
                "--checkpoint-minutes", "--max-memory-gb"}


def _saved_argv(out_dir: str) -> list:
    path = os.path.join(out_dir, CHECKPOINT_DIR, RUN_FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            argv = json.load(fh)["argv"]
    except FileNotFoundError:
        raise UsageError(f"--resume: {out_dir} holds no run to resume (no {CHECKPOINT_DIR}/"
                         f"{RUN_FILE}; a finished run has nothing left to resume)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"--resume: cannot read {path}: {exc}") from None
    if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
        raise UsageError(f"--resume: {path} is not a run file written by {PROG}")
    return argv


def _resume_config(args, argv: Sequence[str]) -> SimulationConfig:
    """The configuration of the run saved in ``--out``; flags given now that define the result
    must agree with it (others, such as --quiet or the checkpoint cadence, apply)."""
    saved_argv = _saved_argv(args.out)
    saved = _config_from_args(build_parser().parse_args(saved_argv), saved_argv)
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    if given - _RESUME_FREE:
        now = _config_from_args(args, argv)
        for name in _RUN_FIELDS:
            if getattr(now, name) != getattr(saved, name):
                raise UsageError(
                    f"--resume: {name} = {getattr(now, name)!r} differs from the run in "
                    f"{args.out} ({getattr(saved, name)!r}); resume with its settings, or just "
                    f"--resume --out {args.out}")
    cadence = {"checkpoint_every": args.checkpoint_every} if "--checkpoint-every" in given else {}
    if "--checkpoint-minutes" in given:
        cadence["checkpoint_minutes"] = args.checkpoint_minutes
    if "--max-memory-gb" in given:
        cadence["max_memory_gb"] = args.max_memory_gb
    return dataclasses.replace(saved, quiet=args.quiet, resume=True, out_dir=args.out, **cadence)


def parse_config(argv: Optional[Sequence[str]] = None) -> SimulationConfig:
    """Parses and validates the command line (no JAX work; a trained policy's checkpoint is read
    here, so a bad one is refused before anything runs). With ``--resume`` the settings come
    from ``--out/checkpoints/run.json``. Raises :class:`UsageError`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.resume:
        return _resume_config(args, argv)
    return _config_from_args(args, argv)


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
            log importance weight so far and the ESS ratio of docs/physics.md (0 and 1 classically).
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
    """:func:`swarm_jax.trained_policy.load_policy`, cached per path within a process (the command
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
            progress = jnp.minimum(lat.n_events.astype(jnp.float64) * progress_scale, 1.0)
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
    """A trained policy (``--checkpoint``) in candidate or full-lattice mode (docs/physics.md)."""
    policy = load_trained_policy(config.checkpoint)
    physics = config.physics_params()
    mode = config.mode or "candidates"
    chunk_fn = _trained_chunk_fn(policy.network_config, policy.n_swarm, mode, config.react_slots)
    progress_scale = jnp.float64(1.0 / config.expected_events)
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

CHECKPOINT_DIR = "checkpoints"  # inside --out, removed when a run ends (other than interrupted)
RUN_FILE = "run.json"  # inside CHECKPOINT_DIR: the command line, for --resume
PARTIAL_TIMESERIES = "timeseries.partial.csv"  # inside CHECKPOINT_DIR: rows streamed so far
_CHECK_BUDGET = 2**17  # events (summed over replicas, classical-equivalent) between host checks
_POLICY_COST = {"classical": 1, "candidates": 4, "full": 16}  # relative cost of one event


def default_check_every(replicas: int, policy_mode: str) -> int:
    """Events per replica between host checks (ceiling, SIGINT, checkpoints): about 2^17
    classical-equivalent events over all replicas (a few seconds on a 2-core CPU at the measured
    rates), a multiple of 1024, at least 1024. ``policy_mode``: ``classical``, ``candidates``
    or ``full``."""
    per_replica = _CHECK_BUDGET // (max(1, int(replicas)) * _POLICY_COST[policy_mode])
    return max(1024, per_replica // 1024 * 1024)


@dataclasses.dataclass
class SimulationResult:
    """What :func:`simulate` produced (host arrays; replica axis first).

    The time series is streamed to ``timeseries_path`` while the run goes (its size grows with
    the run, host memory does not); :attr:`rows` reads it back."""

    timeseries_path: str  # CSV, TIMESERIES_COLUMNS
    heights: np.ndarray  # (R, Lx, Ly) int32
    species: np.ndarray  # (R, Lx, Ly, Lz) int8
    oxide: np.ndarray  # (R, Lx, Ly, Lz) int8
    final: dict  # observable -> (R,) array, plus n_events, status
    status: str  # "completed", "ceiling", "no_events" or "interrupted"
    message: str
    engine_seconds: float
    loop_seconds: float
    compile_seconds: float
    resumed_from: Optional[int] = None  # events per replica of the checkpoint resumed, if any

    @property
    def rows(self) -> list:
        """The time-series rows as dicts with typed values (int, float, str per column)."""
        return read_timeseries_rows(self.timeseries_path)


_INT_COLUMNS = {"replica", "event", "n_ti", "n_o", "n_deposited", "n_desorbed"}


def read_timeseries_rows(path: str) -> list:
    """Rows of a time-series CSV written here, typed back (floats round-trip exactly)."""
    def typed(key, text):
        if key == "status":
            return text
        return int(text) if key in _INT_COLUMNS else float(text)

    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: typed(k, v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _status_name(code: int) -> str:
    return STATUS_NAMES.get(int(code), f"status_{int(code)}")


def _replica_status_names(codes, end_status: Optional[str]) -> list:
    """Status names per replica; replicas still running at the end of the run get the run's end
    (``done`` when completed, ``interrupted``, or ``stopped`` when another replica stopped it)."""
    names = [_status_name(s) for s in codes]
    if end_status is None:
        return names
    return [end_status if n == "running" else n for n in names]


def _log_rows(values: dict, log_weight, ess, end_status: Optional[str] = None) -> list:
    statuses = _replica_status_names(values["status"], end_status)
    rows = []
    for r in range(values["n_events"].shape[0]):
        rows.append(dict(
            replica=r, event=int(values["n_events"][r]), time=float(values["time"][r]),
            mean_height=float(values["mean_height"][r]), roughness=float(values["roughness"][r]),
            coverage=float(values["coverage"][r]), n_ti=int(values["n_ti"][r]),
            n_o=int(values["n_o"][r]), oxide_fraction=float(values["oxide_fraction"][r]),
            o_ti_ratio=float(values["o_ti_ratio"][r]), n_deposited=int(values["n_deposited"][r]),
            n_desorbed=int(values["n_desorbed"][r]), log_weight=float(log_weight[r]),
            ess=float(ess[r]), status=statuses[r],
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
                f"{min(2 * lz, 127)}) or fewer events")
        name = "ceiling"
    else:
        text = (f"{head}: no event is possible (total rate 0 Hz; e.g. --deposition-rate 0 on an "
                "empty lattice)")
        name = "no_events"
    if config.replicas > 1:
        text += "; all replicas stopped at the end of that chunk"
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


@dataclasses.dataclass
class RunProgress:
    """Host-side position of a run, saved with every checkpoint.

    Attributes:
        done: events per replica requested from the engine so far (sum of chunk lengths).
        chunk: chunks run so far (chunk ``i`` uses the keys ``fold_in(replica_key, i)``).
        csv_bytes: length of the streamed time series at this point.
        engine_seconds: engine time so far, s (compilation excluded).
    """

    done: int = 0
    chunk: int = 0
    csv_bytes: int = 0
    engine_seconds: float = 0.0


def next_chunk_events(done: int, config: SimulationConfig) -> int:
    """Events per replica of the next chunk: up to the next log point, the end of the run and
    at most ``config.check_every`` (a pure function of the position, so a resumed run cuts its
    chunks exactly like an uninterrupted one)."""
    next_log = (done // config.log_every + 1) * config.log_every
    return min(config.check_every, next_log - done, config.events - done)


class _TimeseriesStream:
    """Appends time-series rows to ``path`` (flushed per write, fsynced at checkpoints)."""

    def __init__(self, path: str, keep_bytes: Optional[int]):
        new = keep_bytes is None or not os.path.exists(path)
        self._fh = open(path, "w" if new else "r+", newline="", encoding="utf-8")
        if not new:
            self._fh.truncate(keep_bytes)
            self._fh.seek(keep_bytes)
        self._writer = csv.DictWriter(self._fh, fieldnames=list(TIMESERIES_COLUMNS))
        if new:
            self._writer.writeheader()
            self._fh.flush()

    def write(self, rows: list) -> None:
        self._writer.writerows(rows)
        self._fh.flush()

    def sync(self) -> int:
        """fsync and return the file length (bytes)."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        return self._fh.tell()

    @property
    def closed(self) -> bool:
        return self._fh.closed

    def close(self) -> None:
        self._fh.close()


class _Checkpointer:
    """Orbax checkpoints of a run's carry and :class:`RunProgress` in ``--out/checkpoints``,
    written every ``checkpoint_every`` events and/or ``checkpoint_minutes`` of wall time."""

    def __init__(self, config: SimulationConfig):
        self.config = config
        self.directory = os.path.join(config.out_dir, CHECKPOINT_DIR)
        self._store = None
        self._last_done, self._last_time = 0, time.monotonic()

    @property
    def store(self):
        if self._store is None:
            from swarm_jax.training.checkpoint import CheckpointStore
            self._store = CheckpointStore(self.directory, max_to_keep=2)
        return self._store

    def due(self, done: int) -> bool:
        c = self.config
        by_events = c.checkpoint_every is not None and done - self._last_done >= c.checkpoint_every
        by_time = (c.checkpoint_minutes > 0
                   and time.monotonic() - self._last_time >= 60.0 * c.checkpoint_minutes)
        return by_events or by_time

    def save(self, carry, progress: RunProgress, log_pending: bool = False) -> None:
        meta = dict(dataclasses.asdict(progress), log_pending=log_pending)
        self.store.save(progress.done, {"carry": carry}, {"command": self.config.command},
                        meta, force=True)
        self._last_done, self._last_time = progress.done, time.monotonic()
        _after_checkpoint(progress)

    def restore(self, template):
        """``(carry, RunProgress, log_pending)`` of the newest checkpoint that restores, or None
        if there is none. A checkpoint that fails to restore (truncated or damaged files) is
        reported in one line and the previous one is tried; :class:`UsageError` if none works."""
        if not os.path.isdir(self.directory) or self.store.latest_step() is None:
            return None
        for step in reversed(self.store.all_steps()):
            try:
                state, _, meta = self.store.restore(step, target={"carry": template})
            except Exception as exc:  # noqa: BLE001 (orbax raises many types; all mean "unusable")
                reason = " ".join(str(exc).split())[:160]
                _say(f"warning: checkpoint {step} in {self.directory} cannot be restored "
                     f"({type(exc).__name__}: {reason}); trying the previous one")
                continue
            return self._unpack(state, meta)
        raise UsageError(f"--resume: no checkpoint in {self.directory} can be restored; start "
                         "the run again with --overwrite")

    def _unpack(self, state, meta):
        meta = dict(meta)
        log_pending = bool(meta.pop("log_pending", False))
        progress = RunProgress(**meta)
        self._last_done = progress.done
        return state["carry"], progress, log_pending

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def _after_checkpoint(progress: RunProgress) -> None:
    """Called after each checkpoint is committed (a hook for tests that simulate a crash)."""


class SimulationRun:
    """A run in progress: the library-style interface under :func:`simulate`.

    ``run = start(config)`` builds it (initial or restored carry, open time series), then
    ``while not run.finished(): run.step()`` advances it one chunk at a time, and
    ``run.result()`` closes it and returns the :class:`SimulationResult`. Attributes worth
    reading between steps: ``carry`` (the runner's pytree), ``values`` (host observables of the
    last chunk, dict of (R,) arrays) and ``progress`` (:class:`RunProgress`)."""

    def __init__(self, config: SimulationConfig, runner: PolicyRunner):
        self.config, self.runner = config, runner
        self.chunks = _CompiledChunks(runner)
        params = config.physics_params()
        self.carry = runner.init(initial_state(config, params))
        self.replica_keys = jax.random.split(jax.random.key(config.seed), config.replicas)
        self.mesh = batch_mesh(config.replicas)
        self.progress = RunProgress()
        self.checkpointer = _Checkpointer(config)
        self.resumed_from = None
        os.makedirs(os.path.join(config.out_dir, CHECKPOINT_DIR), exist_ok=True)
        self.csv_path = os.path.join(config.out_dir, CHECKPOINT_DIR, PARTIAL_TIMESERIES)
        log_pending = self._restore() if config.resume else False
        self._shard()
        self.stream = _TimeseriesStream(
            self.csv_path, self.progress.csv_bytes if self.resumed_from is not None else None)
        self.values = self.record(log=self.resumed_from is None or log_pending)

    def _restore(self) -> bool:
        found = self.checkpointer.restore(self.carry)
        if found is None:
            return False
        self.carry, self.progress, log_pending = found
        self.resumed_from = self.progress.done
        return log_pending

    def _shard(self) -> None:
        if self.mesh is not None:  # replicas split over the local devices (jit follows the layout)
            self.carry = shard_batch(self.carry, self.mesh)
            self.replica_keys = shard_batch(self.replica_keys, self.mesh)

    def record(self, log: bool, end_status: Optional[str] = None) -> dict:
        """Host copy of the observables; appends a row per replica to the stream when ``log``."""
        values = jax.device_get(_log_values(self.runner.lattice(self.carry)))
        if log:
            log_weight, ess = self.runner.weights(self.carry)
            self.stream.write(_log_rows(values, log_weight, ess, end_status))
        return values

    def running(self) -> bool:
        return bool(np.all(self.values["status"] == RUNNING))

    def reached_target(self) -> bool:
        """Every replica has deposited the ``--monolayers`` target."""
        target = self.config.deposit_target
        return target is not None and bool(np.all(self.values["n_deposited"] >= target))

    def finished(self) -> bool:
        return (self.progress.done >= self.config.events or not self.running()
                or self.reached_target())

    def advance(self) -> int:
        """Runs the next chunk; returns its events per replica."""
        n = next_chunk_events(self.progress.done, self.config)
        keys = _fold_keys(self.replica_keys, self.progress.chunk)
        t0, compile_before = time.perf_counter(), self.chunks.compile_seconds
        self.carry = jax.block_until_ready(self.chunks(self.carry, keys, n))
        if self.mesh is not None:  # keep the compiled chunk's input layout (a no-op when it holds)
            self.carry = shard_batch(self.carry, self.mesh)
        elapsed = time.perf_counter() - t0 - (self.chunks.compile_seconds - compile_before)
        p = self.progress
        p.done, p.chunk, p.engine_seconds = p.done + n, p.chunk + 1, p.engine_seconds + elapsed
        return n

    def after_chunk(self, interrupted: bool) -> None:
        """Logs the rows due after a chunk (with the run's end status on the last one) and
        writes the checkpoint that is due (always on interruption)."""
        at_log = (self.progress.done % self.config.log_every == 0
                  or self.progress.done == self.config.events)
        self.values = self.record(log=False)
        end = self._end_status(interrupted)
        if end == "interrupted":
            self.progress.csv_bytes = self.stream.sync()
            self.checkpointer.save(self.carry, self.progress, log_pending=at_log)
        if at_log or end is not None:
            self.record(log=True, end_status=end)
        if end is None and self.checkpointer.due(self.progress.done):
            self.progress.csv_bytes = self.stream.sync()
            self.checkpointer.save(self.carry, self.progress)

    def _end_status(self, interrupted: bool) -> Optional[str]:
        if not self.running():
            return "stopped"
        if self.progress.done >= self.config.events or self.reached_target():
            return "done"
        return "interrupted" if interrupted else None

    def step(self, interrupted: bool = False) -> int:
        """Runs one chunk, logs and checkpoints what is due; returns its events per replica.
        ``interrupted``: the caller is stopping the run after this chunk (a checkpoint is
        written and the last rows say ``interrupted``)."""
        n = self.advance()
        self.after_chunk(interrupted=interrupted)
        return n

    def result(self, signal_name: Optional[str] = None) -> SimulationResult:
        """Closes the run and returns its :class:`SimulationResult` (host arrays)."""
        self.close()
        return _result(self, signal_name, self.progress.engine_seconds)

    def close(self) -> None:
        if self.stream.closed:
            return
        self.stream.sync()
        self.stream.close()
        self.checkpointer.close()


def _loop(run: SimulationRun, progress: bool) -> str:
    """Chunks until the end of the run; returns the signal name if interrupted, else None."""
    config = run.config
    total = None if config.deposit_target is not None else config.events  # ends on growth
    bar = tqdm(total=total, initial=run.progress.done, unit="ev", unit_scale=True,
               dynamic_ncols=True, file=sys.stderr, disable=not progress, desc="events/replica")
    with GracefulInterrupt() as interrupt, bar:
        while not run.finished() and not interrupt.requested:
            n = run.advance()
            run.after_chunk(interrupted=interrupt.requested)
            bar.update(n)
            bar.set_postfix(h=f"{run.values['mean_height'].mean():.2f}",
                            W=f"{run.values['roughness'].mean():.2f}", refresh=False)
        return interrupt.signal_name if interrupt.requested else None


def start(config: SimulationConfig, runner: Optional[PolicyRunner] = None) -> SimulationRun:
    """A :class:`SimulationRun` of ``config`` ready to step (restored from the latest checkpoint
    in ``--out`` when ``config.resume``); ``runner`` defaults to ``config.policy``'s."""
    if runner is None:
        runner = POLICY_FACTORIES[config.policy](config, make_rate_tables(config.physics_params()))
    return SimulationRun(config, runner)


def simulate(config: SimulationConfig, runner: Optional[PolicyRunner] = None,
             progress: bool = True) -> SimulationResult:
    """Runs the simulation of ``config`` in chunks and returns host-side results.

    Chunk ``i`` of replica ``r`` uses the key ``fold_in(split(key(seed), R)[r], i)``; chunks end
    at every log point and after at most ``config.check_every`` events (:func:`next_chunk_events`),
    so a run is a pure function of its configuration. The loop ends after ``config.events``
    events per replica, at the end of the first chunk in which a replica stopped (ceiling or no
    event), or after the chunk in progress when SIGINT/SIGTERM arrives (status ``interrupted``;
    a checkpoint is written). With ``config.resume`` it continues from the latest checkpoint in
    ``--out`` (identical results to an uninterrupted run). The time series is streamed to
    ``--out/checkpoints/timeseries.partial.csv``.
    """
    run = start(config, runner)
    t_loop = time.perf_counter()
    try:
        signal_name = None if run.finished() else _loop(run, progress)
    finally:
        run.close()
    loop_seconds = time.perf_counter() - t_loop - run.chunks.compile_seconds
    return _result(run, signal_name, loop_seconds)


def _completed_message(run: SimulationRun) -> str:
    config = run.config
    if config.deposit_target is None:
        return f"completed {config.events} events per replica"
    columns = config.lattice_size[0] * config.lattice_size[1]
    deposited = np.asarray(run.values["n_deposited"]) / columns
    if run.reached_target():
        return (f"completed: deposited {config.monolayers:g} monolayers per replica "
                f"({deposited.min():.3g}-{deposited.max():.3g} ML: the run ends at the end of "
                "the chunk in which the last replica reached the target)")
    return (f"completed the event budget (--events {config.events}) before {config.monolayers:g} "
            f"monolayers were deposited ({deposited.min():.3g} ML); raise --events")


def _result(run: SimulationRun, signal_name: Optional[str], loop_seconds: float) -> SimulationResult:
    config, values, done = run.config, run.values, run.progress.done
    film = jax.device_get(jax.vmap(film_arrays)(run.runner.lattice(run.carry)))
    heights, species, oxide = (np.asarray(a) for a in film)
    if not np.all(values["status"] == RUNNING):
        status, message = _stop_message(config, values["status"], values["n_events"], heights)
        end = "stopped"
    elif done < config.events and not run.reached_target():
        status, end = "interrupted", "interrupted"
        message = (f"interrupted by {signal_name} after {done} events per replica; the outputs "
                   f"hold what was simulated; continue with --resume --out {config.out_dir}")
    else:
        status, end = "completed", "done"
        message = _completed_message(run)
    final = {k: np.asarray(values[k]) for k in FINAL_OBSERVABLES}
    final["n_events"] = np.asarray(values["n_events"])
    final["status"] = _replica_status_names(values["status"], end)
    final["log_weight"], final["ess"] = run.runner.weights(run.carry)
    if isinstance(run.carry, CandidateCarry):  # mean per-step ESS ratio of the K-candidate choices
        n_ev = np.maximum(np.asarray(final["n_events"]), 1)
        final["step_ess_mean"] = np.asarray(jax.device_get(run.carry.step_ess_sum)) / n_ev
    return SimulationResult(
        timeseries_path=run.csv_path, heights=heights, species=species, oxide=oxide, final=final,
        status=status, message=message, engine_seconds=run.progress.engine_seconds,
        loop_seconds=loop_seconds, compile_seconds=run.chunks.compile_seconds,
        resumed_from=run.resumed_from,
    )


# =========================================================================== outputs


def write_timeseries(path: str, source: str) -> None:
    """Copies the streamed time series ``source`` to ``path`` atomically."""
    def copy(fh):
        with open(source, "rb") as src:
            shutil.copyfileobj(src, fh)

    atomic_writer(path, copy, "wb")


def write_final_state(path: str, result: SimulationResult) -> None:
    """``heights``/``species``/``oxide`` with the replica axis dropped when R = 1 (atomic)."""
    squeeze = (lambda a: a[0]) if result.heights.shape[0] == 1 else (lambda a: a)
    atomic_writer(path, lambda fh: np.savez_compressed(
        fh, heights=squeeze(result.heights).astype(np.int32),
        species=squeeze(result.species).astype(np.int8),
        oxide=squeeze(result.oxide).astype(np.int8)), "wb")


WEIGHTED_OBSERVABLES = METRIC_KEYS  # the film observables learners report


def importance_estimates(final: dict, log_weight) -> dict:
    """Self-normalised importance estimates ``Σ W A / Σ W`` over replicas of the final roughness,
    coverage, O/Ti and mean height, each with its delta-method standard error (``None`` for one
    replica), plus the batch ESS, the PSIS tail shape ``khat`` and ``reliable``/``reasons``
    (:func:`swarm_jax.analysis.importance.weighted_estimates`)."""
    observables = {name: np.asarray(final[name], np.float64) for name in WEIGHTED_OBSERVABLES}
    return importance.weighted_estimates(observables, np.asarray(log_weight, np.float64))


def build_summary(config: SimulationConfig, result: SimulationResult, state_bytes: int,
                  estimated_bytes: int) -> dict:
    executed = [int(n) for n in result.final["n_events"]]
    total_events = sum(executed)
    final = {k: importance.mean_stderr(result.final[k]) for k in FINAL_OBSERVABLES if k != "time"}
    final["roughness_angstrom"] = importance.mean_stderr(
        np.asarray(result.final["roughness"]) * LATTICE_CONSTANT_ANGSTROM)
    return {
        "lattice_size": list(config.lattice_size),
        "lattice_constant_angstrom": LATTICE_CONSTANT_ANGSTROM,
        "temperature": config.temperature,
        "deposition_rate": config.deposition_rate,
        "o_ti_flux_ratio": config.o_ti_flux_ratio,
        "physics_overrides": dict(config.physics),
        "policy": config.policy,
        "mode": config.mode,
        "trained_policy": _policy_summary(config, result),
        "replicas": config.replicas,
        "seed": config.seed,
        "monolayers_requested": config.monolayers,
        "events_requested": config.events,
        "events_executed": executed,
        "n_events": executed[0] if config.replicas == 1 else executed,
        "log_every": config.log_every,
        "check_every": config.check_every,
        "resumed_from_events": result.resumed_from,
        "physical_time_s": importance.mean_stderr(result.final["time"]),
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


def _policy_summary(config: SimulationConfig, result: SimulationResult) -> Optional[dict]:
    if config.policy != "trained":
        return None
    policy = dict(load_trained_policy(config.checkpoint).summary(), mode=config.mode)
    if config.mode == "full":
        policy.update(context_refresh_events=config.context_refresh,
                      react_slots=config.react_slots, score_clip=full_lattice.F_CLIP)
    if "step_ess_mean" in result.final:
        policy["step_ess_mean"] = np.asarray(result.final["step_ess_mean"], np.float64).tolist()
    return policy


OUTPUT_FILES = ("timeseries.csv", "final_state.npz", "height_map.png", "summary.json")


def write_outputs(config: SimulationConfig, result: SimulationResult, summary: dict) -> None:
    """Writes timeseries.csv, final_state.npz, height_map.png and summary.json into --out.

    Each file is first written whole (temporary file, fsync, rename) under a staging name
    ``.<name>.new``; only when all four are written are they renamed into place (summary.json
    last). Raises :class:`swarm_jax.outdir.OutputWriteError` (an ``OSError``) on failure, with
    the staged files removed and the previous outputs untouched."""
    out = config.out_dir
    os.makedirs(out, exist_ok=True)
    staged = {name: os.path.join(out, f".{name}.new") for name in OUTPUT_FILES}
    try:
        write_timeseries(staged["timeseries.csv"], result.timeseries_path)
        write_final_state(staged["final_state.npz"], result)
        title = f"Final height map, {config.temperature:g} K" + (
            " (replica 0)" if config.replicas > 1 else "")
        plots.plot_height_map(staged["height_map.png"], result.heights[0],
                              LATTICE_CONSTANT_ANGSTROM, title=title)
        atomic_write_text(staged["summary.json"],
                          json.dumps(summary, indent=2, allow_nan=False) + "\n")
        for name in OUTPUT_FILES:
            os.replace(staged[name], os.path.join(out, name))
    finally:
        for path in staged.values():
            if os.path.exists(path):
                os.unlink(path)


def remove_checkpoints(config: SimulationConfig) -> None:
    """Deletes ``--out/checkpoints`` (after a run that cannot be resumed has written its outputs)."""
    shutil.rmtree(os.path.join(config.out_dir, CHECKPOINT_DIR), ignore_errors=True)
# =========================================================================== entry point


def _say(*parts) -> None:
    print(f"{PROG}:", *parts, file=sys.stderr, flush=True)


def _warn_fillable(config: SimulationConfig) -> None:
    target = config.deposit_target
    if target is not None and target > config.fillable_sites:
        lx, ly, lz = config.lattice_size
        _say(f"warning: --monolayers {config.monolayers:g} ({target} atoms) exceeds the "
             f"{config.fillable_sites} sites that can be filled (Lx*Ly*(Lz-1) for --lattice-size "
             f"{lx} {ly} {lz}); the film will reach the top of the box and stop the run")
    elif target is None and config.events > config.fillable_sites:
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


def _warn_weights(summary: dict) -> None:
    """One stderr line when the importance-weighted estimates are not reliable."""
    iw = summary["importance_weighted"]
    if summary["policy"] != "classical" and not iw["reliable"]:
        _say("warning: importance-weighted estimates in summary.json are NOT reliable: "
             + "; ".join(iw["reasons"]))


def _final_line(config: SimulationConfig, result: SimulationResult, summary: dict) -> str:
    rate = summary["events_per_second"]
    final = summary["final"]
    replicas = f"{config.replicas} replica{'s' if config.replicas > 1 else ''}"
    return (f"{result.status}: {sum(summary['events_executed'])} events ({replicas}), "
            f"t = {summary['physical_time_s']['mean']:.4g} s, "
            f"h = {final['mean_height']['mean']:.3f}, W = {final['roughness']['mean']:.3f} layers, "
            f"{'n/a' if rate is None else f'{rate:.3g}'} events/s "
            f"(compile {result.compile_seconds:.1f} s) -> {config.out_dir}")


def claim_out(config: SimulationConfig):
    """Claims ``--out`` for this process (:func:`swarm_jax.outdir.claim_output_dir`): a folder
    owned by a live run, or one holding files when neither --overwrite nor --resume is given, is
    refused (:class:`UsageError`). Returns the :class:`~swarm_jax.outdir.OutputLock`."""
    out = config.out_dir
    free = config.overwrite or config.resume
    busy_text = (f"--out {out}: directory is not empty (pass --overwrite to write into it anyway, "
                 "or --resume to continue the run in it)")
    if not free and not os.path.exists(os.path.join(out, LOCK_NAME)) and _out_has_content(out):
        raise UsageError(busy_text)  # refused before the lock file is added to a user's folder
    try:
        lock = claim_output_dir(out)
    except OutputDirError as exc:
        raise UsageError(str(exc)) from None
    if not free and _out_has_content(out):
        lock.release()
        raise UsageError(busy_text)
    return lock


def _start_run_dir(config: SimulationConfig) -> None:
    """A fresh run: drops a previous run's checkpoints and records the command line for --resume."""
    if config.resume:
        return
    remove_checkpoints(config)
    os.makedirs(os.path.join(config.out_dir, CHECKPOINT_DIR), exist_ok=True)
    argv = [a for a in config.argv if a != "--overwrite"]
    atomic_write_text(os.path.join(config.out_dir, CHECKPOINT_DIR, RUN_FILE),
                      json.dumps({"argv": argv, "command": config.command}, indent=2) + "\n")


def _run_and_write(config: SimulationConfig, estimated: int) -> int:
    """Runs, writes the outputs, and removes the checkpoints of a run that ended (exit status)."""
    _warn_fillable(config)
    _warn_training_conditions(config)
    try:
        _start_run_dir(config)
        result = simulate(config, progress=not config.quiet)
        if result.status != "completed" or result.message.endswith("raise --events"):
            _say(result.message)
        summary = build_summary(config, result, estimate_state_bytes(config.lattice_size),
                                estimated)
        write_outputs(config, result, summary)
    except OSError as exc:
        _say("error:", f"cannot write outputs to --out {config.out_dir}: {exc.strerror or exc}; "
             "the previous outputs and checkpoints are left as they were")
        return 1
    except UsageError as exc:  # --resume with no usable checkpoint
        _say("error:", str(exc))
        return 2
    _warn_weights(summary)
    if result.status != "interrupted":
        remove_checkpoints(config)
    if not config.quiet:
        print(_final_line(config, result, summary))
    return 130 if result.status == "interrupted" else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point. Exit status: 0 done (also when stopped at the ceiling or with no possible
    event; see ``status`` in summary.json), 1 outputs could not be written, 2 bad input,
    130 interrupted (outputs and a checkpoint written; continue with ``--resume``).
    JAX's persistent compilation cache is on (``swarm_jax.compile_cache``; ``SWARM_JAX_CACHE_DIR``
    moves it, ``SWARM_JAX_CACHE_DIR=off`` turns it off)."""
    enable_compilation_cache()
    try:
        config = parse_config(argv)
        estimated = check_memory(config)
        lock = claim_out(config)
    except UsageError as exc:
        _say("error:", str(exc).replace("\n", " "))
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    with lock:
        return _run_and_write(config, estimated)


if __name__ == "__main__":
    sys.exit(main())
