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

SIGINT/SIGTERM: during a chunk, the chunk in progress finishes, a checkpoint and every output
are written (status ``interrupted``); at any other moment (start-up, compilation of the initial
state, restoring, writing the outputs) the run stops at once. Either way: one line on stderr, no
traceback, exit status 130 (SIGINT) or 143 (SIGTERM), and ``--resume`` continues once the run
has started (its ``checkpoints/run.json`` exists).

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

This module is the command line only (the parser, the checks of ``--out`` and ``--resume``, the
messages and :func:`main`); the library is :mod:`swarm_jax.production` (configuration, runners
and their ``(init_fn, step_fn)`` pair, the run loop, the writers), whose public names are
re-exported here as they always were.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
from typing import Optional, Sequence

import swarm_jax
from swarm_jax.cli import (OneLineParser, count, exit_code, exit_on_uncaught_interrupt,
                           ignore_interrupts, install_interrupt_handlers, signal_name)

if __name__ == "__main__":  # from here on a signal is one line (the package import came before)
    install_interrupt_handlers()
    exit_on_uncaught_interrupt("swarm_jax.simulate")
from swarm_jax.compile_cache import enable_compilation_cache
from swarm_jax.outdir import (
    LOCK_NAME, OutputDirError, atomic_write_text, check_output_dir, claim_output_dir,
)
from swarm_jax.physics import estimate_state_bytes
from swarm_jax.swarm import full_lattice
from swarm_jax.training.checkpoint import quiet_orbax_write_failures
# The library (swarm_jax.production), re-exported under the names this module always had.
from swarm_jax.production.config import (  # noqa: F401
    DEFAULT_CHECKPOINT_MINUTES, DEFAULT_LATERAL, DEFAULT_MONOLAYERS, EVENTS_PER_ATOM_CAP, PROG,
    SimulationConfig, UsageError, check_memory, check_ranges, default_box_height,
    default_check_every, estimate_run_bytes, load_trained_policy, parse_lattice, parse_physics,
    parse_policy, say as _say,
)
from swarm_jax.production.runners import (  # noqa: F401
    POLICY_FACTORIES, CandidateCarry, ChunkFn, CompiledChunks, PolicyRunner, Simulator,
    candidates_chunk, check_policy, classical_chunk, full_chunk, initial_state, make_classical_runner,
    make_runner, make_trained_runner, simulator,
)
from swarm_jax.production.run import (  # noqa: F401
    CHECKPOINT_DIR, PARTIAL_TIMESERIES, RUN_FILE, RunProgress, SimulationResult, SimulationRun,
    check_own_checkpoints, next_chunk_events, remove_checkpoints, simulate, start,
)
from swarm_jax.production.writers import (  # noqa: F401
    FINAL_OBSERVABLES, LATTICE_CONSTANT_ANGSTROM, OUTPUT_FILES, TIMESERIES_COLUMNS,
    WEIGHTED_OBSERVABLES, build_summary, importance_estimates, read_timeseries_rows,
    write_final_state, write_outputs, write_timeseries,
)

__all__ = [
    "PROG", "TIMESERIES_COLUMNS", "LATTICE_CONSTANT_ANGSTROM", "UsageError", "SimulationConfig",
    "PolicyRunner", "ChunkFn", "POLICY_FACTORIES", "SimulationResult", "build_parser",
    "parse_config", "estimate_run_bytes", "check_memory", "classical_chunk",
    "make_classical_runner", "initial_state", "simulate", "build_summary", "write_outputs", "main",
    "SimulationRun", "start", "RunProgress", "default_box_height", "default_check_every",
    "next_chunk_events", "read_timeseries_rows", "claim_out", "remove_checkpoints",
]

_CompiledChunks = CompiledChunks  # the name tests patch (its __call__ runs every chunk)


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


def _out_has_content(out_dir: str) -> bool:
    """Whether ``out_dir`` exists and holds anything besides the ownership lock file."""
    return os.path.isdir(out_dir) and any(n != LOCK_NAME for n in os.listdir(out_dir))


def _config_from_args(args, argv: Sequence[str]) -> SimulationConfig:
    lx, ly, lz, events, monolayers = parse_lattice(args)
    check_ranges(args)
    if args.log_every is not None:
        log_every = args.log_every
    elif monolayers is not None:  # a row per quarter monolayer of events (fewer at high T)
        log_every = max(1, lx * ly // 4)
    else:
        log_every = max(1, events // 100)
    log_every = min(log_every, events)
    physics = parse_physics(args.physics)
    mode, context_refresh, react_slots = parse_policy(args, lx, ly, lz)
    try:
        check_output_dir(args.out)
    except OutputDirError as exc:
        raise UsageError(str(exc)) from None
    check_every = args.check_every or default_check_every(
        args.replicas, mode if args.policy == "trained" else "classical")
    config = SimulationConfig(
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
    check_policy(config)  # the registered policies (the library path checks the same)
    return config


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


# =========================================================================== entry point


def _after_checkpoint(progress: RunProgress) -> None:
    """Called after each checkpoint is committed (a hook for tests that simulate a crash)."""


def _checkpoint_hook(progress: RunProgress) -> None:
    _after_checkpoint(progress)  # looked up when called, so replacing _after_checkpoint works


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
    if not config.resume:
        try:  # --overwrite replaces simulate's outputs, never another tool's checkpoints
            check_own_checkpoints(out)
        except UsageError:
            lock.release()
            raise
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
        result = simulate(config, progress=not config.quiet, on_checkpoint=_checkpoint_hook)
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
    return result.exit_code


def _interrupted(err: BaseException, out_dir: Optional[str]) -> int:
    """One line for a SIGINT/SIGTERM outside the chunk loop's graceful stop (start-up, the first
    compilation of the initial state, restoring, writing the outputs); exit 128 + signal."""
    ignore_interrupts()
    name = signal_name(err)
    if out_dir is not None and os.path.isfile(os.path.join(out_dir, CHECKPOINT_DIR, RUN_FILE)):
        _say(f"interrupted by {name}; continue with: python -m {PROG} --resume --out "
             f"{shlex.quote(str(out_dir))}")
    else:
        _say(f"interrupted by {name} before the run started; nothing to resume")
    return exit_code(err)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point. Exit status: 0 done (also when stopped at the ceiling or with no possible
    event; see ``status`` in summary.json), 1 outputs could not be written, 2 bad input,
    130 (SIGINT) / 143 (SIGTERM) interrupted: during a chunk, the chunk finishes and the outputs
    and a checkpoint are written; at any other moment the run stops at once; either way one
    line, and ``--resume`` continues once the run has started.
    JAX's persistent compilation cache is on (``swarm_jax.compile_cache``; ``SWARM_JAX_CACHE_DIR``
    moves it, ``SWARM_JAX_CACHE_DIR=off`` turns it off)."""
    if argv is None:
        install_interrupt_handlers()
    out: list = []
    try:
        return _main(argv, out)
    except KeyboardInterrupt as err:
        return _interrupted(err, out[0] if out else None)


def _main(argv: Optional[Sequence[str]], out: list) -> int:
    swarm_jax.enable_x64()  # the KMC clock, selection and rate totals are float64
    enable_compilation_cache()
    quiet_orbax_write_failures()  # a failed checkpoint write: one line, not orbax's tracebacks
    try:
        config = parse_config(argv)
        estimated = check_memory(config)
        lock = claim_out(config)
    except UsageError as exc:
        _say("error:", str(exc).replace("\n", " "))
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    out.append(config.out_dir)
    with lock:
        return _run_and_write(config, estimated)


if __name__ == "__main__":
    sys.exit(main())
