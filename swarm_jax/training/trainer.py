"""The training loop of one curriculum stage: config -> env + PPO -> chunks -> logs/checkpoints.

:func:`run_stage` is the library-level entry point behind ``train.py``. Given a validated
:class:`~swarm_jax.training.config.TrainConfig` it builds the :class:`TiO2GrowthEnv`, the PPO
trainer (:func:`make_trainer`) and either a fresh :class:`~swarm_jax.agents.ppo.RunnerState`
(optionally starting from transferred network parameters) or the one restored from the latest
checkpoint (``resume=True``), then runs the host loop on the shared chunked-run driver
(:class:`~swarm_jax.training.driver.ChunkDriver`; this module's :class:`_StageTask` is its
``ChunkTask``, :class:`_StageOutputs` its output hook)::

    while update < num_updates:
        runner_state, metrics = trainer.train_chunk(runner_state, n)   # jitted, n <= log_every
        check finite -> ESS monitor -> log (TensorBoard, CSV, progress bar) -> checkpoint?

The building blocks live in :mod:`~swarm_jax.training.factories` (env, trainer, memory check,
chunk schedule), :mod:`~swarm_jax.training.stage_files` (paths, YAML, CSV) and
:mod:`~swarm_jax.training.stage_result` (statuses, results); their public names are
re-exported here.

**Deterministic chunks.** Chunk boundaries sit at the multiples of ``training.log_every``
updates (counted from update 0; the last chunk may be shorter; the schedule is generated lazily),
checkpoints are written only at chunk boundaries (the first one at or after each multiple of
``training.checkpoint_freq`` env steps, and at least ``training.checkpoint_every_s`` seconds after
the previous one) and the whole random state lives in the runner state, so a run that is
interrupted and resumed ends with bitwise the same parameters and the same metric rows as an
uninterrupted one.

**Checkpoints** are saved asynchronously (:class:`CheckpointStore` with ``async_save``): the
next chunk runs while orbax writes; every later save, a stop, the final checkpoint and the end of
the stage wait for it. Each one is verified by its SHA-256 manifest; ``resume=True`` continues
from the newest checkpoint that verifies (reporting and setting aside newer corrupt ones), and a
checkpoint that cannot be written raises :class:`CheckpointWriteError` (one line naming the last
verified checkpoint and the resume command).

**Outputs** under ``out`` for stage ``N`` (:class:`StagePaths`)::

    tensorboard/stageN/        TensorBoard scalars (SB3 tags: rollout/*, train/*, custom/*, time/fps)
    checkpoints/stageN/<step>/ periodic checkpoints (whole RunnerState + config + meta), step =
                               env steps; the newest ``training.keep_checkpoints`` are kept
    stageN_final/              the final checkpoint (also written after an ESS early stop)
    config_stageN.yaml         the effective configuration (re-runnable with --config)
    metrics_stageN.csv         one row per log (per chunk)
    learning_curve_stageN.png  learning curves, written at the end

**Stops.** SIGINT/SIGTERM (:class:`~swarm_jax.training.safety.GracefulInterrupt`): the current
chunk finishes, a checkpoint is saved, status ``interrupted``, exit code ``128 + signal``
(130 for SIGINT). NaN/inf in the metrics or the network/optimiser state after a chunk: nothing
is saved (the last verified checkpoint stays, and only a verified one is named), status
``numerical_fault``, exit code 3. ESS ratio
below ``training.ess_threshold`` for ``training.ess_patience`` consecutive logs
(:class:`~swarm_jax.training.logging.ESSMonitor`): checkpoint + final, status
``stopped_early``, exit code 0.

Units: every step count is in environment steps summed over the parallel environments; times in
seconds; ``sps``/``fps`` = environment steps per second of training (compilation excluded).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax

from swarm_jax.agents.ppo import PPOTrainer, RunnerState
from swarm_jax.training.checkpoint import (
    CheckpointError,
    CheckpointStore,
    CheckpointWriteError,
    complete_steps,
    default_device,
    is_complete_checkpoint,
    newest_verified_step,
    read_config,
    save_final,
    verify_checkpoint,
)
from swarm_jax.training.config import TrainConfig, config_to_dict
from swarm_jax.training.driver import (
    CheckpointPolicy, ChunkDriver, ChunkEnd, ChunkInfo, ChunkTask, CompileClock, ProgressBar,
    RunContext, RunHooks, RunOutcome, fmt_duration,
)
from swarm_jax.training.factories import (
    canonical_state, check_training_memory, chunk_sizes, count_chunks, estimate_network_params,
    estimate_training_bytes, initial_runner_state, iter_chunk_sizes, make_env, make_trainer,
    resolve_devices,
)
from swarm_jax.training.logging import ESSMonitor, TensorBoardLogger, plot_learning_curves
from swarm_jax.training.safety import check_finite
from swarm_jax.training.stage_files import (
    RUN_CONTROL_KEYS, MetricsCSV, StagePaths, resume_differences, write_config_yaml,
)
from swarm_jax.training.stage_result import (
    ALREADY_COMPLETE, COMPLETED, EXIT_NUMERICAL_FAULT, INTERRUPTED, NUMERICAL_FAULT, STATUSES,
    STOPPED_EARLY, ChunkReport, TrainError, TrainResult, log_line,
)

__all__ = [
    "ALREADY_COMPLETE",
    "COMPLETED",
    "EXIT_NUMERICAL_FAULT",
    "INTERRUPTED",
    "NUMERICAL_FAULT",
    "RUN_CONTROL_KEYS",
    "STATUSES",
    "STOPPED_EARLY",
    "ChunkReport",
    "StageOptions",
    "StagePaths",
    "TrainError",
    "TrainResult",
    "check_training_memory",
    "chunk_sizes",
    "complete_steps",
    "count_chunks",
    "estimate_network_params",
    "estimate_training_bytes",
    "iter_chunk_sizes",
    "initial_runner_state",
    "log_line",
    "make_env",
    "make_trainer",
    "resolve_devices",
    "resume_differences",
    "run_stage",
    "write_config_yaml",
]

# Metric keys of PPOTrainer.train_chunk that are not already mapped by logging.METRIC_TAGS.
_EXTRA_TAGS = {
    "n_episodes": "rollout/n_episodes",
    "reward": "rollout/reward_mean",
    "loss": "train/loss",
    "learning_rate": "train/learning_rate",
}
_COUNTER_KEYS = ("env_steps", "update_step")  # float32 copies; exact values are in the state
# NaN by design when no episode finished within the chunk.
_EPISODE_KEYS = ("ep_rew_mean", "ep_len_mean")


def _fmt(x: float, spec: str = ".3g") -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, spec)


def _first_fault(runner_state: RunnerState, metrics: Mapping[str, float]) -> str | None:
    """Where the first NaN/inf is: the metrics (episode means may be NaN when no episode
    finished), the network parameters or the optimiser state."""
    no_episodes = not metrics.get("n_episodes", 0) > 0
    checked = {k: v for k, v in metrics.items() if not (no_episodes and k in _EPISODE_KEYS)}
    # Checked on the host: the trees are small, and device-side checks would compile per tree.
    host = jax.device_get((runner_state.train_state.params, runner_state.train_state.opt_state))
    return (check_finite(checked, "metrics") or check_finite(host[0], "params")
            or check_finite(host[1], "opt_state"))


def _tb_scalars(metrics: Mapping[str, float], fps: float) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for k, v in metrics.items():
        if k in _COUNTER_KEYS:
            continue
        out[_EXTRA_TAGS.get(k, k)] = None if not math.isfinite(v) else v
    out["fps"] = fps
    return out


# --------------------------------------------------------------------------------------------
# The stage on the chunked-run driver


@dataclasses.dataclass(frozen=True)
class StageContext:
    """What every part of one stage's run reads (fixed for the session).

    Attributes:
        cfg: the effective configuration; paths: the stage's :class:`StagePaths`.
        trainer: the PPO trainer; store: the stage's asynchronous checkpoint store.
        backend: ``jax.default_backend()``; resume_hint: the command that resumes the run.
        log: where lines go; t_start: ``time.perf_counter()`` at the start of the session.
    """

    cfg: TrainConfig
    paths: StagePaths
    trainer: PPOTrainer
    store: CheckpointStore
    backend: str
    resume_hint: str
    log: Callable[[str], None]
    t_start: float


@dataclasses.dataclass(frozen=True)
class _Start:
    """Where a session starts: the state and what the restored checkpoint said about it."""

    runner_state: RunnerState
    restored_step: int | None = None
    wall_before: float = 0.0
    init_from: str | None = None
    ess_below_count: int = 0


def _last_verified(store: CheckpointStore, candidate: Path | None) -> Path | None:
    """The newest checkpoint of ``store`` known to be verified: ``candidate`` if it verifies,
    else the newest verified step (after waiting for a pending save; never raises)."""
    try:
        store.wait()
    except CheckpointError:
        pass
    if candidate is not None and verify_checkpoint(candidate) is None:
        return candidate
    step = newest_verified_step(store.directory)  # from the newest down; older ones not hashed
    return store.step_path(step) if step is not None else None


def _restore_or_init(s: StageContext, resume: bool, init_params: Any, init_from: str | None
                     ) -> _Start:
    """The stage's starting point: the newest verified checkpoint (``resume``) or a fresh state."""
    if not resume:
        return _Start(initial_runner_state(s.trainer, s.cfg, init_params), init_from=init_from)
    paths, store = s.paths, s.store
    restored_step = store.latest_verified_step(report=lambda m: s.log(f"[{paths.label}] {m}"))
    if restored_step is None:
        raise TrainError(f"cannot resume: no verified checkpoint in {paths.checkpoints} "
                         "(each one is reported above)")
    saved_cfg = read_config(store.step_path(restored_step))[0]
    diffs = resume_differences(s.cfg, saved_cfg)
    if diffs:
        raise TrainError(f"cannot resume {store.step_path(restored_step)} with a different "
                         f"setup ({'; '.join(diffs[:3])}{'; ...' if len(diffs) > 3 else ''})")
    template = jax.eval_shape(s.trainer.init, jax.random.PRNGKey(s.cfg.training.seed))
    try:
        runner_state, _, meta = store.restore(restored_step, target=template,
                                              device=default_device())
    except CheckpointError as err:
        raise TrainError(f"cannot resume: {err}") from None
    s.log(f"[{paths.label}] resuming from {store.step_path(restored_step)} "
          f"(update {int(runner_state.update_step)}, {int(runner_state.env_steps)} env steps)")
    return _Start(runner_state, restored_step, float(meta.get("wall_time_s", 0.0)),
                  meta.get("init_from"), int(meta.get("ess_below_count", 0)))


class _StageTask(ChunkTask):
    """One stage as the driver's :class:`~swarm_jax.training.driver.ChunkTask`: position = env
    steps; a chunk = ``trainer.train_chunk`` up to the next multiple of ``log_every`` updates,
    then the finiteness check and the ESS monitor; checkpoints = the whole runner state (periodic
    and stop ones asynchronous in ``checkpoints/stageN``, the final one in ``stageN_final``)."""

    def __init__(self, s: StageContext, start: _Start):
        self.s, self.state = s, canonical_state(start.runner_state)
        self.update = int(self.state.update_step)
        self.wall_before, self.init_from = start.wall_before, start.init_from
        self.monitor = ESSMonitor(s.cfg.training.ess_threshold, s.cfg.training.ess_patience)
        self.monitor.below_count = start.ess_below_count
        self.cfg_dict = config_to_dict(s.cfg)
        self.last = (s.store.step_path(start.restored_step)
                     if start.restored_step is not None else None)
        self.checkpoint_s = 0.0

    def position(self) -> int:
        return int(self.state.env_steps)

    def next_chunk(self) -> int | None:
        return next(iter_chunk_sizes(self.update, self.s.cfg.num_updates,
                                     self.s.cfg.training.log_every), None)

    def step_chunk(self, n: int) -> ChunkEnd:
        new_state, metrics = self.s.trainer.train_chunk(self.state, n)
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        label = self.s.paths.label
        fault = _first_fault(new_state, metrics)
        if fault is not None:
            last = self.last_verified()
            where = (f"the last good (verified) checkpoint is {last}" if last
                     else "no verified checkpoint was written before it")
            message = (f"{label}: {fault} after update {self.update + n} (env steps "
                       f"{self.position() + n * self.s.cfg.rollout_size}); stopped, {where}")
            return ChunkEnd(self.position(), NUMERICAL_FAULT, message, discard=True)
        self.state, self.update = new_state, self.update + n
        stop = self.monitor.update(metrics["ess_ratio"])
        return ChunkEnd(self.position(), STOPPED_EARLY if stop else None,
                        f"{label}: {self.monitor.reason}" if stop else "", metrics)

    def meta(self, status: str) -> dict:
        return {
            "stage": self.s.paths.stage, "status": status,
            "env_steps": self.position(), "update": self.update,
            "num_updates": self.s.cfg.num_updates, "ess_below_count": self.monitor.below_count,
            "wall_time_s": self.wall_before + time.perf_counter() - self.s.t_start,
            "jax_backend": self.s.backend, "jax_version": jax.__version__,
            "init_from": self.init_from,
        }

    def save(self, status: str, wait: bool) -> Path:
        t0 = time.perf_counter()
        try:
            path = self.s.store.save(self.position(), self.state, self.cfg_dict, self.meta(status),
                                     force=True)
            if wait:
                self.s.store.wait()
        finally:
            self.checkpoint_s += time.perf_counter() - t0
        self.last = path
        return path

    def last_verified(self) -> Path | None:
        """The newest checkpoint known to be verified (never an unverified one)."""
        self.last = _last_verified(self.s.store, self.last)
        return self.last

    def finish(self, status: str) -> Path | None:
        """Wait for the pending save; write ``stageN_final`` when the stage completed or stopped
        early. Returns the final folder (or None)."""
        t0 = time.perf_counter()
        self.s.store.wait()  # the last periodic save is committed and verified (or its error raised)
        final_dir = None
        if status in (COMPLETED, STOPPED_EARLY):
            final_dir = save_final(self.s.paths.final, self.state, self.cfg_dict, self.meta(status))
        self.checkpoint_s += time.perf_counter() - t0
        return final_dir


class _StageOutputs(RunHooks):
    """The output channels of a stage as driver hooks: TensorBoard, ``metrics_stageN.csv``, the
    progress bar (or one log line per chunk) and the user's callbacks."""

    def __init__(self, task: _StageTask, restored_step: int | None, progress: bool,
                 callbacks: Sequence[Callable[[ChunkReport], None]]):
        self.task, self.callbacks, self._closed = task, callbacks, False
        paths, cfg = task.s.paths, task.s.cfg
        self.paths, self.log, self.num_updates = paths, task.s.log, cfg.num_updates
        self.csv = MetricsCSV(paths.metrics_csv, restored_step)
        purge = None
        if restored_step is not None:
            purge = restored_step + 1  # drop events logged after the checkpoint by the lost session
        elif paths.tensorboard.is_dir() and any(paths.tensorboard.glob("*tfevents*")):
            purge = 0  # an earlier attempt that never checkpointed: start the curves afresh
        self.tb = TensorBoardLogger(paths.tensorboard, purge_step=purge)
        # No tqdm rate/ETA: they would count compilation; the postfix carries the measured SPS
        # and an ETA from it (remaining env steps / env steps per second of training).
        self.bar = ProgressBar(progress, cfg.num_updates * cfg.rollout_size, task.position(),
                               paths.label, "step", log=self.log,
                               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                          "env steps [{elapsed}{postfix}]")

    def on_first_chunk(self, info: ChunkInfo) -> None:
        self.bar.say(f"[{self.paths.label}] compiled in {info.compile_s:.1f} s (first chunk "
                     f"{info.wall_s:.1f} s)")

    def on_chunk_end(self, info: ChunkInfo) -> None:
        """Report one good chunk on every channel."""
        metrics, runner_state = info.end.metrics, self.task.state
        update, env_steps, fps = self.task.update, info.end.position, info.sps
        time_s = self.task.wall_before + time.perf_counter() - self.task.s.t_start
        self.tb.log_scalars(env_steps, _tb_scalars(metrics, fps))
        self.csv.append({"env_steps": env_steps, "update": update, "time_s": time_s, "fps": fps,
                         **{k: v for k, v in metrics.items() if k not in _COUNTER_KEYS}})
        postfix = dict(sps=_fmt(fps, ".0f"), ep_rew=_fmt(metrics.get("ep_rew_mean")),
                       ess=_fmt(metrics.get("ess_ratio")), lam=_fmt(metrics.get("ess_lambda")),
                       rough=_fmt(metrics.get("roughness")), eta=fmt_duration(info.eta_s))
        if self.bar.enabled:
            self.bar.advance(info.steps, postfix)
        else:
            self.log(f"[{self.paths.label}] update {update}/{self.num_updates} | env steps "
                     f"{env_steps} | " + " | ".join(f"{k} {v}" for k, v in postfix.items())
                     + (f" | compile {info.compile_s:.1f}s" if info.compile_s > 0.5 else ""))
        for cb in self.callbacks:
            cb(ChunkReport(self.paths.stage, update, self.num_updates, env_steps, dict(metrics),
                           runner_state))

    def on_end(self, outcome: RunOutcome | None) -> None:
        if not self._closed:
            self._closed = True
            self.bar.close()
            self.tb.close()


# --------------------------------------------------------------------------------------------
# The stage loop


@dataclasses.dataclass(frozen=True)
class StageOptions:
    """How :func:`run_stage` runs a stage (every field can also be passed to it by keyword).

    Attributes:
        init_params: network parameters to start from (same tree as the trainer's params, e.g.
            from :func:`swarm_jax.training.curriculum.load_transfer_params`); the optimiser
            state is fresh. Ignored when resuming.
        init_from: where ``init_params`` came from (recorded in the checkpoint metadata).
        resume: continue from the latest complete checkpoint of this stage (required to exist).
        progress: show a tqdm bar (env steps) instead of one printed line per log.
        callbacks: called after every good chunk with a :class:`ChunkReport`.
        trainer: a prebuilt trainer (default :func:`make_trainer`).
        n_devices: local devices to shard the environments over (default: all that divide
            ``n_envs``; see :func:`resolve_devices`). Ignored with ``trainer``.
        resume_hint: the command that resumes this run (for the interruption message).
        log: where progress lines and messages go.
    """

    init_params: Any = None
    init_from: str | None = None
    resume: bool = False
    progress: bool = True
    callbacks: Sequence[Callable[[ChunkReport], None]] = ()
    trainer: PPOTrainer | None = None
    n_devices: int | None = None
    resume_hint: str | None = None
    log: Callable[[str], None] = log_line


def run_stage(cfg: TrainConfig, out: str | Path, stage: int, options: StageOptions | None = None,
              **overrides: Any) -> TrainResult:
    """Train one stage (see the module docstring) and return a :class:`TrainResult`.

    Args:
        cfg: the effective configuration (CPU overrides already applied if wanted).
        out: the run's output folder; this stage writes the paths of :class:`StagePaths`.
        stage: curriculum stage number used in the output names.
        options: a :class:`StageOptions` (default: its defaults).
        **overrides: fields of :class:`StageOptions` by name (``resume=True``,
            ``progress=False``, ``callbacks=[...]``, ...); an unknown name is a ``TypeError``.

    Raises:
        TrainError: ``resume`` without a (verified) checkpoint, a fresh start over existing
            results, or a checkpoint that does not fit ``cfg``.
        CheckpointWriteError: a checkpoint could not be written (disk full, file-size limit);
            the earlier checkpoints are intact.
    """
    o = dataclasses.replace(options or StageOptions(), **overrides)
    t_start = time.perf_counter()
    paths = StagePaths(Path(out), int(stage))
    with CompileClock() as clock:
        trainer = o.trainer if o.trainer is not None else make_trainer(cfg, o.n_devices)
        resume_hint = o.resume_hint or f"python train.py --stage {stage} --resume --out {paths.root}"
        existing = complete_steps(paths.checkpoints)
        if not o.resume and (existing or is_complete_checkpoint(paths.final)):
            raise TrainError(f"{paths.root} already holds {paths.label} results "
                             f"({paths.checkpoints if existing else paths.final}); pass --resume "
                             "to continue that run, or choose another --out")
        if o.resume and not existing:
            raise TrainError(f"nothing to resume: no complete checkpoint in {paths.checkpoints}")
        store = CheckpointStore(paths.checkpoints, max_to_keep=cfg.training.keep_checkpoints,
                                async_save=True)
        s = StageContext(cfg, paths, trainer, store, jax.default_backend(), resume_hint, o.log,
                         t_start)
        try:
            result = _train(s, _restore_or_init(s, o.resume, o.init_params, o.init_from),
                            o.progress, o.callbacks)
        except CheckpointWriteError as err:
            last = _last_verified(store, None)
            where = (f"the last verified checkpoint is {last}" if last is not None
                     else "no verified checkpoint was written")
            raise CheckpointWriteError(f"{paths.label}: {err}; {where}; free disk space (or raise "
                                       f"the file-size limit) and resume with: {resume_hint}"
                                       ) from None
        finally:
            try:
                store.close()
            except CheckpointError:
                pass  # a failed pending save was reported above
    t = result.timings
    result.timings = dict(train=t["train"], checkpoint=t["checkpoint"], wall=t["wall"],
                          compile=clock.total, sps=t["sps"])
    return result


def _train(s: StageContext, start: _Start, progress: bool,
           callbacks: Sequence[Callable[[ChunkReport], None]]) -> TrainResult:
    """Train chunk by chunk on the driver, checkpoint, finish: the body of :func:`run_stage`."""
    cfg, paths, log = s.cfg, s.paths, s.log
    task = _StageTask(s, start)
    write_config_yaml(cfg, paths.config_yaml,
                      header=f"Effective configuration of {paths.label} (jax backend: {s.backend}).\n"
                             "Re-run with: python train.py --config <this file>")
    num_updates, rollout = cfg.num_updates, cfg.rollout_size
    start_steps = task.position()
    if start.restored_step is None:
        log(f"[{paths.label}] {cfg.name}: lattice {'x'.join(map(str, cfg.environment.lattice_size))}"
            f", {cfg.ppo.n_envs} envs x {cfg.ppo.n_steps} steps = {rollout} per update, "
            f"{num_updates} updates ({num_updates * rollout} env steps), backend {s.backend}"
            + (f", from {task.init_from}" if task.init_from else ""))
    log(f"[{paths.label}] compiling the update (first start; cached afterwards)...")
    ctx = RunContext(paths.label, total=num_updates * rollout,
                     checkpoint=CheckpointPolicy(cfg.training.checkpoint_freq,
                                                 cfg.training.checkpoint_every_s,
                                                 aligned=True, both=True),
                     save_on=frozenset({STOPPED_EARLY, INTERRUPTED}))
    outputs = _StageOutputs(task, start.restored_step, progress, callbacks)
    try:
        outcome = ChunkDriver(task, ctx, [outputs]).run()
    finally:
        outputs.on_end(None)  # idempotent: closes the bar and TensorBoard on an error too
    status, message = outcome.status, outcome.message
    final_dir = task.finish(status)
    update, env_steps = task.update, task.position()
    if status == COMPLETED:
        message = (f"{paths.label}: completed {update} updates, {env_steps} env steps; "
                   f"final checkpoint {final_dir}")
    elif status == STOPPED_EARLY:
        message += f"; final checkpoint {final_dir}"
    elif status == INTERRUPTED:
        message = (f"{paths.label}: {outcome.signal_name} received; saved {outcome.saved} at "
                   f"update {update}/{num_updates}; resume with: {s.resume_hint}")
    _plot(paths, log)
    timings = dict(train=outcome.seconds, checkpoint=task.checkpoint_s,
                   wall=time.perf_counter() - s.t_start,
                   sps=(env_steps - start_steps) / outcome.seconds if outcome.seconds else 0.0)
    last_metrics = dict(outcome.last.metrics) if outcome.last is not None else {}
    return TrainResult(stage=paths.stage, status=status, message=message, env_steps=env_steps,
                       updates=update, num_updates=num_updates, paths=paths,
                       final_dir=final_dir, last_checkpoint=task.last, metrics=last_metrics,
                       timings=timings, signal_number=outcome.signal_number)


def _plot(paths: StagePaths, log: Callable[[str], None]) -> None:
    """Learning curves of the stage, if anything was logged (a plotting problem is reported,
    not raised: the checkpoints matter more)."""
    if not paths.metrics_csv.is_file():
        return
    try:
        plot_learning_curves(paths.metrics_csv, paths.learning_curve,
                             title=f"{paths.label} ({paths.root})")
    except (ValueError, OSError) as err:
        log(f"[{paths.label}] warning: no learning-curve plot: {err}")
