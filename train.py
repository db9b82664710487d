#!/usr/bin/env python
"""Train the SwarmThinkers policy: one curriculum stage, or all three in a row.

Examples::

    python train.py --stage 1                                # configs/stage1_small.yaml
    python train.py --stage 2 --pretrained runs/train/stage1_final
    python train.py --stage all --out runs/curriculum        # 1 -> 2 -> 3 with transfer
    python train.py --config configs/tiny_test.yaml --out /tmp/tiny
    python train.py --stage 1 --resume                       # after Ctrl-C or a crash

Configuration: the stage's YAML (or ``--config``), then the CPU overrides of its
``training.cpu_overrides`` when JAX runs on CPU, then the flags given here (which therefore
always win). The result is validated before anything is compiled and written to
``OUT/config_stageN.yaml``. ``--resume`` continues from the latest complete checkpoint in
``OUT/checkpoints/stageN`` with the configuration saved in it (flags may still change the
budget, logging, checkpointing and the ESS stop); with ``--stage all`` it skips finished stages.

Outputs (under ``--out``, default ``runs/train``): ``tensorboard/stageN/``,
``checkpoints/stageN/``, ``stageN_final/``, ``config_stageN.yaml``, ``metrics_stageN.csv``,
``learning_curve_stageN.png`` (see ``swarm_jax.training.trainer``).

Exit status: 0 done (or stopped early by the ESS monitor, or nothing left to do), 1 a checkpoint
or output file could not be written (disk full, file-size limit; the last verified checkpoint is
intact and ``--resume`` continues from it), 2 bad input (one ``train.py: error: ...`` line on
stderr; also an ``--out`` folder that is a file, not writable, empty, or in use by another run),
3 NaN/inf during training (the last verified checkpoint is kept), 130 interrupted by SIGINT (143
for SIGTERM). A signal during a chunk lets the chunk finish, saves a checkpoint and prints the
command that resumes; at any other moment (start-up, compilation, a checkpoint or the final
write) the run stops at once with one line on stderr: the command that resumes once a verified
checkpoint exists, else that there is nothing to resume. Never a traceback.

The output folder has one owner: ``--out`` is locked for the whole run (see
``swarm_jax.outdir``). JAX's persistent compilation cache is on (``~/.cache/swarm_jax/jax``, or
``$SWARM_JAX_CACHE_DIR``; ``--no-compile-cache`` or ``SWARM_JAX_CACHE_DIR=off`` to disable), so a
second start of the same configuration skips most of the compilation.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path

PROG = "train.py"
_EARLY_SIGNALS: list[int] = []


def _early_signal(signum, frame):
    """SIGINT/SIGTERM while the package (and JAX) is imported, before main() runs."""
    _EARLY_SIGNALS.append(signum)
    raise KeyboardInterrupt


if __name__ == "__main__":
    for _sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_sig, _early_signal)
try:
    from swarm_jax.cli import (
        OneLineParser,
        count,
        exit_code,
        exit_on_uncaught_interrupt,
        ignore_interrupts,
        install_interrupt_handlers,
        signal_name,
    )
except KeyboardInterrupt:
    if __name__ != "__main__" or not _EARLY_SIGNALS:
        raise
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _name = signal.Signals(_EARLY_SIGNALS[0]).name
    print(f"{PROG}: interrupted by {_name} while starting; nothing was written", file=sys.stderr)
    sys.exit(128 + _EARLY_SIGNALS[0])
if __name__ == "__main__":  # from here on main(), or the excepthook before it, is one line
    install_interrupt_handlers()
    exit_on_uncaught_interrupt(PROG)


class _UsageError(Exception):
    """A bad command line (raised instead of argparse's print-usage-and-exit)."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds ``(default: X)`` only where the help does not already say the default and there is
    one to show (no ``(default: None)`` after ``(default 1, or the config's stage)``)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


class _Parser(OneLineParser):
    error_class = _UsageError  # one line, no usage block, no SystemExit from inside main()


def _stage(text: str) -> str:
    if text not in ("1", "2", "3", "all"):
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from 1, 2, 3, all)")
    return text


#: Flags that each override one config key: (flag, type, metavar, config key, help).
_OVERRIDE_FLAGS = (
    ("--total-timesteps", count, "N", "training.total_timesteps",
     "env-step budget of the stage, summed over environments"),
    ("--n-envs", count, "N", "training.n_envs", "parallel environments"),
    ("--seed", count, "N", "training.seed", "PRNG seed"),
    ("--ess-threshold", float, "X", "training.ess_threshold",
     "stop early when the ESS ratio stays below X, in (0, 1]"),
    ("--ess-patience", count, "N", "training.ess_patience",
     "consecutive logs below --ess-threshold before stopping"),
    ("--log-every", count, "N", "training.log_every",
     "PPO updates per jitted chunk, one log line and TensorBoard point each"),
)


def _dest(flag: str) -> str:
    """argparse's attribute name of ``flag`` (``--n-envs`` -> ``n_envs``)."""
    return flag.lstrip("-").replace("-", "_")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Train the SwarmThinkers policy with PPO (JAX).",
                formatter_class=_HelpFormatter)
    p.add_argument("--stage", type=_stage, default=None, metavar="{1,2,3,all}",
                   help="curriculum stage (default 1, or the config's stage); 'all' runs "
                        "1 -> 2 -> 3, each from the previous stage's final parameters")
    p.add_argument("--config", default=None, metavar="PATH",
                   help="YAML config used instead of the stage's file (a bare name is looked up "
                        "in configs/); not with --stage all")
    p.add_argument("--pretrained", default=None, metavar="CKPT",
                   help="start from the network parameters of this checkpoint (stageN_final, a "
                        "step directory, or a checkpoint folder), with a fresh optimiser")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest verified checkpoint in OUT/checkpoints/stageN "
                        "(a corrupt or unverified newer one is reported and set aside)")
    p.add_argument("--out", default="runs/train", metavar="DIR", help="output folder")
    for flag, type_, metavar, key, text in _OVERRIDE_FLAGS:
        p.add_argument(flag, type=type_, default=None, metavar=metavar,
                       help=f"{text} (default: the config's {key})")
    p.add_argument("--devices", type=count, default=None, metavar="N",
                   help="local devices to shard the environments over (default: all local "
                        "devices that divide n_envs; 1 = no sharding)")
    hosts = p.add_argument_group("multi-host", "one process per host, all started alike")
    hosts.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                       help="address of process 0 (or SWARM_JAX_COORDINATOR)")
    hosts.add_argument("--num-processes", type=count, default=None, metavar="N",
                       help="number of processes (or SWARM_JAX_NUM_PROCESSES)")
    hosts.add_argument("--process-id", type=count, default=None, metavar="I",
                       help="this process's index (or SWARM_JAX_PROCESS_ID)")
    hosts.add_argument("--coordinator-timeout", type=float, default=None, metavar="S",
                       help="seconds to wait for the coordinator and the other processes "
                            "(default 300, or SWARM_JAX_DISTRIBUTED_TIMEOUT)")
    p.add_argument("--no-progress", action="store_true",
                   help="print one line per log instead of a progress bar")
    p.add_argument("--no-compile-cache", action="store_true",
                   help="do not use JAX's persistent compilation cache (default: on, in "
                        "~/.cache/swarm_jax/jax or $SWARM_JAX_CACHE_DIR; SWARM_JAX_CACHE_DIR=off "
                        "also disables it)")
    return p


def _flag_overrides(args) -> dict:
    """{config key: value} of the override flags given on the command line."""
    return {key: getattr(args, _dest(flag)) for flag, _, _, key, _ in _OVERRIDE_FLAGS
            if getattr(args, _dest(flag)) is not None}


def _resume_hint(args) -> str:
    parts = ["python", PROG] + (["--stage", args.stage] if args.stage else [])
    if args.config:
        parts += ["--config", args.config]
    parts += ["--resume", "--out", args.out]
    for flag, *_ in _OVERRIDE_FLAGS:
        value = getattr(args, _dest(flag))
        if value is not None:
            parts += [flag, str(value)]
    if args.no_progress:
        parts.append("--no-progress")
    if args.no_compile_cache:
        parts.append("--no-compile-cache")
    return shlex.join(parts)


def _stage_configs(args, backend: str) -> list[tuple[int, object]]:
    """The effective config of every stage to run (validated; nothing compiled)."""
    from swarm_jax.training.checkpoint import newest_verified_step, read_config
    from swarm_jax.training.config import (
        config_from_dict,
        for_backend,
        load_config,
        resolve_config_path,
        stage_config_path,
        with_overrides,
    )
    from swarm_jax.training.trainer import StagePaths

    flags = _flag_overrides(args)
    if args.stage == "all":
        wanted: list[tuple[int, Path]] = [(n, stage_config_path(n)) for n in (1, 2, 3)]
    elif args.config is not None:
        path = resolve_config_path(args.config)
        base = load_config(path)
        if args.stage is not None and base.stage is not None and int(args.stage) != base.stage:
            raise _UsageError(f"--stage {args.stage} contradicts {path}, which is a stage "
                              f"{base.stage} config")
        wanted = [(int(args.stage) if args.stage else (base.stage or 1), path)]
    else:
        n = int(args.stage or 1)
        wanted = [(n, stage_config_path(n))]

    out = []
    for stage, path in wanted:
        store = StagePaths(Path(args.out), stage).checkpoints
        newest = None
        if args.resume and args.config is None:
            newest = newest_verified_step(store)
        if newest is not None:
            # Continue with the configuration the run was started with (its newest verified
            # checkpoint's; corrupt newer ones are reported when the stage starts).
            cfg = config_from_dict(read_config(store / str(newest))[0])
        else:
            cfg = for_backend(load_config(path), backend)
            # The effective config is self-contained: the CPU overrides are applied, not kept.
            cfg = with_overrides(cfg, {"training.cpu_overrides": {}})
        cfg = with_overrides(cfg, {**flags, "stage": stage})
        out.append((stage, cfg))
    return out


def _error(message: str, code: int = 2) -> int:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The parsed command line, with the flag combinations that exclude each other refused."""
    args = build_parser().parse_args(argv)
    if args.stage == "all" and args.config is not None:
        raise _UsageError("--config cannot be combined with --stage all (each stage uses "
                          "its own configs/stageN_*.yaml)")
    if args.resume and args.pretrained is not None:
        raise _UsageError("--pretrained and --resume exclude each other: a resumed run "
                          "continues from its own checkpoint")
    if args.devices is not None and args.devices < 1:
        raise _UsageError(f"--devices {args.devices}: must be >= 1")
    return args


def _start_up(args: argparse.Namespace) -> None:
    """Refuses a bad ``--out`` before any work, then starts multi-host JAX (which must come
    before any JAX computation). Raises ``OutputDirError`` or ``_UsageError``."""
    from swarm_jax.outdir import check_output_dir

    check_output_dir(args.out)  # a file, an unwritable or empty path
    try:
        from swarm_jax.distributed import initialize_distributed

        initialize_distributed(args.coordinator, args.num_processes, args.process_id,
                               timeout_s=args.coordinator_timeout,
                               log=lambda m: print(f"{PROG}: {m}", file=sys.stderr, flush=True))
    except (ValueError, RuntimeError) as err:
        raise _UsageError(f"distributed start-up failed: {err}") from None


def _report(results) -> int:
    """Prints one line per stage that ran and the last stage's message; its exit code."""
    from swarm_jax.training.trainer import ALREADY_COMPLETE, COMPLETED

    for r in results:
        if r.status == ALREADY_COMPLETE:
            continue
        t = r.timings
        print(f"{r.paths.label}: {r.status}; {r.env_steps} env steps, {r.updates}/{r.num_updates} "
              f"updates; wall {t.get('wall', 0):.1f} s (compile {t.get('compile', 0):.1f} s, "
              f"train {t.get('train', 0):.1f} s = {t.get('sps', 0):.0f} env-steps/s, "
              f"checkpoints {t.get('checkpoint', 0):.1f} s)")
    last = results[-1]
    print(last.message, file=sys.stdout if last.status == COMPLETED else sys.stderr)
    return last.exit_code


def _interrupted(err: BaseException, args: argparse.Namespace | None) -> int:
    """One line for a SIGINT/SIGTERM outside the chunk loop's graceful stop (start-up,
    compilation, a checkpoint, the final write): the command that resumes, once a verified
    checkpoint exists; the exit status 128 + signal."""
    ignore_interrupts()
    name, hint = signal_name(err), None
    if args is not None:
        try:
            from swarm_jax.training.checkpoint import newest_verified_step

            stores = sorted((Path(args.out) / "checkpoints").glob("stage[123]"))
            if any(newest_verified_step(store) is not None for store in stores):
                hint = _resume_hint(args)
        except Exception:  # noqa: BLE001 (no hint rather than a traceback)
            hint = None
    if hint is not None:
        print(f"{PROG}: interrupted by {name}; resume with: {hint}", file=sys.stderr)
    else:
        print(f"{PROG}: interrupted by {name} before any checkpoint was written; nothing to "
              "resume (run the same command again to start over)", file=sys.stderr)
    return exit_code(err)


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status.
    SIGINT/SIGTERM at any moment: one line on stderr, exit status 130/143 (see the module
    docstring)."""
    if __name__ == "__main__" or argv is None:
        install_interrupt_handlers()
    parsed: list[argparse.Namespace] = []
    try:
        return _main(argv, parsed)
    except KeyboardInterrupt as err:
        return _interrupted(err, parsed[0] if parsed else None)


def _main(argv: list[str] | None, parsed: list) -> int:
    from swarm_jax.outdir import OutputDirError, claim_output_dir

    try:
        args = _parse_args(argv)
        parsed.append(args)
        _start_up(args)
    except (_UsageError, OutputDirError) as err:
        return _error(str(err))

    import jax

    import swarm_jax

    swarm_jax.enable_x64()  # 64-bit JAX before any array exists

    from swarm_jax.compile_cache import enable_compilation_cache

    if not args.no_compile_cache:
        enable_compilation_cache()
    from swarm_jax.training.checkpoint import (
        CheckpointError, CheckpointWriteError, quiet_orbax_write_failures,
    )

    quiet_orbax_write_failures()  # a failed write: one line, not orbax's tracebacks
    from swarm_jax.training.config import ConfigError
    from swarm_jax.training.curriculum import plan_stages, run_curriculum
    from swarm_jax.training.trainer import StagePaths, TrainError

    lock = None
    try:
        backend = jax.default_backend()
        stages = _stage_configs(args, backend)
        claim = jax.process_index() == 0  # one owner per output folder (process 0 of a run)
        if claim and Path(args.out).is_dir():  # a live run's folder: refused before anything else
            lock = claim_output_dir(args.out)
        plans = plan_stages(stages, args.out, resume=args.resume, pretrained=args.pretrained)
        if not args.resume and args.pretrained is None and stages[0][0] > 1:
            prev = StagePaths(Path(args.out), stages[0][0] - 1).final
            if prev.is_dir():
                print(f"note: stage {stages[0][0]} starts from freshly initialised parameters; "
                      f"pass --pretrained {prev} to start from stage {stages[0][0] - 1}'s")
        if all(p.action == "skip" for p in plans):
            print(f"nothing to do: {', '.join(f'stage {p.stage}' for p in plans)} already "
                  f"complete in {args.out}")
            return 0
        if args.devices is not None and args.devices > jax.local_device_count():
            raise _UsageError(f"--devices {args.devices}: only {jax.local_device_count()} local "
                              f"{jax.default_backend()} device(s) available")
        if claim and lock is None:  # a new folder: created only once the run is sure to start
            lock = claim_output_dir(args.out)
        results = run_curriculum(plans, args.out, progress=not args.no_progress,
                                 resume_hint=_resume_hint(args), n_devices=args.devices)
    except CheckpointWriteError as err:
        return _error(str(err), 1)
    except (_UsageError, ConfigError, TrainError, CheckpointError, OutputDirError) as err:
        return _error(str(err))
    except OSError as err:  # an output file could not be written (disk full, size limit, ...)
        return _error(f"could not write under {args.out}: {err.strerror or err}", 1)
    finally:
        if lock is not None:
            lock.release()

    return _report(results)


if __name__ == "__main__":
    sys.exit(main())
