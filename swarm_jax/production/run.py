"""The run loop of a production run: chunks, host checks, checkpoints and ``--resume``.

:func:`start` builds a :class:`SimulationRun` (initial or restored carry, the streamed time
series open), ``while not run.finished(): run.step()`` advances it one chunk at a time, and
``run.result()`` closes it and returns the :class:`SimulationResult`; :func:`simulate` does all
three with a progress bar and SIGINT/SIGTERM handling. Underneath, every chunk is one call of the
runner's ``(init, step)`` pair (:mod:`swarm_jax.production.runners`): chunk ``i`` of replica
``r`` uses the key ``fold_in(split(key(seed), R)[r], i)`` and its length is
:func:`next_chunk_events` of the position, so a run is a pure function of its configuration and
a resumed run gives bit for bit the outputs of an uninterrupted one.

While a run goes, ``--out/checkpoints/`` (:data:`CHECKPOINT_DIR`) holds the command line
(:data:`RUN_FILE`, written by the command line), the streamed time series
(:data:`PARTIAL_TIMESERIES`) and orbax checkpoints of the carry with its :class:`RunProgress`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from typing import Callable, Optional

import jax
import numpy as np

from swarm_jax.distributed import batch_mesh, shard_batch
from swarm_jax.physics import CEILING, RUNNING, LatticeState, film_arrays, observables
from swarm_jax.production.config import PROG, SimulationConfig, UsageError, say
from swarm_jax.production.runners import (
    CandidateCarry, CompiledChunks, PolicyRunner, fold_keys, make_runner, simulator,
)
from swarm_jax.production.writers import (
    FINAL_OBSERVABLES, SimulationResult, TimeseriesStream, log_rows, replica_status_names,
)
from swarm_jax.training.driver import (
    INTERRUPTED, CheckpointPolicy, ChunkDriver, ChunkEnd, ChunkInfo, ChunkTask, ProgressBar,
    RunContext, RunHooks,
)

__all__ = [
    "CHECKPOINT_DIR", "RUN_FILE", "PARTIAL_TIMESERIES", "RunProgress", "next_chunk_events",
    "SimulationResult", "SimulationRun", "start", "simulate", "remove_checkpoints",
    "check_own_checkpoints",
]

CHECKPOINT_DIR = "checkpoints"  # inside --out, removed when a run ends (other than interrupted)
RUN_FILE = "run.json"  # inside CHECKPOINT_DIR: the command line, for --resume
PARTIAL_TIMESERIES = "timeseries.partial.csv"  # inside CHECKPOINT_DIR: rows streamed so far


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
        text += "; all replicas stopped at the end of that chunk"
    return name, text


@jax.jit
def _log_values(state: LatticeState) -> dict:
    """Observables of a batch of lattices for the time series: dict of (R,) arrays."""
    values = jax.vmap(observables)(state)
    values.update(n_events=state.n_events, status=state.status,
                  n_deposited=state.deposited.sum(axis=-1), n_desorbed=state.desorbed.sum(axis=-1))
    return values


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


def _no_hook(progress: RunProgress) -> None:
    return None


class _Checkpointer:
    """Orbax checkpoints of a run's carry and :class:`RunProgress` in ``--out/checkpoints`` (when
    they are due is the driver's :class:`~swarm_jax.training.driver.CheckpointPolicy`, see
    :func:`checkpoint_policy`)."""

    def __init__(self, config: SimulationConfig):
        self.config = config
        self.directory = os.path.join(config.out_dir, CHECKPOINT_DIR)
        self._store = None

    @property
    def store(self):
        if self._store is None:
            from swarm_jax.training.checkpoint import CheckpointStore
            self._store = CheckpointStore(self.directory, max_to_keep=2)
        return self._store

    def save(self, carry, progress: RunProgress, log_pending: bool = False) -> None:
        meta = dict(dataclasses.asdict(progress), log_pending=log_pending)
        self.store.save(progress.done, {"carry": carry}, {"command": self.config.command},
                        meta, force=True)

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
                legacy = self._restore_legacy(step, template)  # written before the flat rate tree?
                if legacy is not None:
                    return self._unpack(*legacy)
                reason = " ".join(str(exc).split())[:160]
                say(f"warning: checkpoint {step} in {self.directory} cannot be restored "
                    f"({type(exc).__name__}: {reason}); trying the previous one")
                continue
            return self._unpack(state, meta)
        raise UsageError(f"--resume: no checkpoint in {self.directory} can be restored; start "
                         "the run again with --overwrite")

    def _restore_legacy(self, step, template):
        """Checkpoint ``step`` written when rate trees were binary ``(2P,)`` arrays: restored
        with those shapes, each tree converted to the flat structure (same leaves, sums
        recomputed; :func:`swarm_jax.physics.sumtree.upgrade_legacy`). None if it is not one."""
        from swarm_jax.physics import sumtree
        from swarm_jax.production.runners import lattice_of

        # Every carry leaf has a leading replica axis: a tree is (R, rows, B) float64.
        is_tree = lambda x: x.ndim == 3 and x.dtype == np.float64 and sumtree.is_tree_shape(x.shape)  # noqa: E731
        try:
            n_columns = lattice_of(template).n_columns
            if not any(is_tree(x) for x in jax.tree.leaves(template)):
                return None
            legacy = jax.tree.map(lambda x: np.zeros(sumtree.legacy_shape(x.shape, n_columns))
                                  if is_tree(x) else x, template)
            state, _, meta = self.store.restore(step, target={"carry": legacy})
        except Exception:  # noqa: BLE001 (not a legacy checkpoint either: the caller reports)
            return None
        carry = jax.tree.map(lambda x, old: jax.numpy.asarray(sumtree.upgrade_legacy(old, x.shape))
                             if is_tree(x) else old, template, state["carry"])
        say(f"note: checkpoint {step} holds binary rate trees (an older version); converted")
        return {"carry": carry}, meta

    def _unpack(self, state, meta):
        meta = dict(meta)
        log_pending = bool(meta.pop("log_pending", False))
        return state["carry"], RunProgress(**meta), log_pending

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def checkpoint_policy(config: SimulationConfig) -> CheckpointPolicy:
    """Periodic checkpoints of a production run: every ``--checkpoint-every`` events per replica
    since the last one, or ``--checkpoint-minutes`` of wall time, whichever comes first."""
    return CheckpointPolicy(every_steps=config.checkpoint_every,
                            every_seconds=60.0 * config.checkpoint_minutes)


class _CheckpointCallback(RunHooks):
    """The caller's ``on_checkpoint(progress)``, after each checkpoint is committed."""

    def __init__(self, on_checkpoint: Callable):
        self.on_checkpoint_fn = on_checkpoint

    def on_checkpoint(self, saved, status: str) -> None:
        self.on_checkpoint_fn(saved)


class _ProgressHook(RunHooks):
    """The events/replica bar of :func:`simulate` with the mean height and roughness."""

    def __init__(self, run: SimulationRun, bar: ProgressBar):
        self.run, self.bar = run, bar

    def on_chunk_end(self, info: ChunkInfo) -> None:
        self.bar.advance(info.steps, dict(h=f"{self.run.values['mean_height'].mean():.2f}",
                                          W=f"{self.run.values['roughness'].mean():.2f}"),
                         refresh=False)


class SimulationRun(ChunkTask):
    """A run in progress: the library-style interface under :func:`simulate`, and the
    :class:`~swarm_jax.training.driver.ChunkTask` of the shared chunked-run driver (position =
    events per replica).

    ``run = start(config)`` builds it (initial or restored carry, open time series), then
    ``while not run.finished(): run.step()`` advances it one chunk at a time, and
    ``run.result()`` closes it and returns the :class:`SimulationResult`. Attributes worth
    reading between steps: ``carry`` (the runner's pytree), ``values`` (host observables of the
    last chunk, dict of (R,) arrays) and ``progress`` (:class:`RunProgress`).
    ``on_checkpoint(progress)`` is called after each checkpoint is committed."""

    def __init__(self, config: SimulationConfig, runner: PolicyRunner,
                 on_checkpoint: Callable = _no_hook):
        self.config, self.runner = config, runner
        self.chunks = CompiledChunks(runner)
        self.carry = simulator(config, runner).init_fn()  # chunks: CompiledChunks (= step_fn)
        self.replica_keys = jax.random.split(jax.random.key(config.seed), config.replicas)
        self.mesh = batch_mesh(config.replicas)
        self.progress = RunProgress()
        self.checkpointer = _Checkpointer(config)
        self.resumed_from = None
        os.makedirs(os.path.join(config.out_dir, CHECKPOINT_DIR), exist_ok=True)
        self.csv_path = os.path.join(config.out_dir, CHECKPOINT_DIR, PARTIAL_TIMESERIES)
        log_pending = self._restore() if config.resume else False
        self._shard()
        self.stream = TimeseriesStream(
            self.csv_path, self.progress.csv_bytes if self.resumed_from is not None else None)
        self.values = self.record(log=self.resumed_from is None or log_pending)
        self._rows_pending = False  # the rows of the position reached are written
        self.driver = ChunkDriver(self, RunContext("simulate", total=config.events,
                                                   checkpoint=checkpoint_policy(config)),
                                  [_CheckpointCallback(on_checkpoint)])

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

    def record(self, log: bool, end_status: Optional[str] = None,
               values: Optional[dict] = None) -> dict:
        """Host copy of the observables (``values``, when the caller already fetched them for
        the current carry); appends a row per replica to the stream when ``log``."""
        if values is None:
            values = jax.device_get(_log_values(self.runner.lattice(self.carry)))
        if log:
            log_weight, ess = self.runner.weights(self.carry)
            self.stream.write(log_rows(values, log_weight, ess, end_status))
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

    # -- the driver's ChunkTask

    def position(self) -> int:
        return self.progress.done

    def next_chunk(self) -> Optional[int]:
        return None if self.finished() else next_chunk_events(self.progress.done, self.config)

    def step_chunk(self, n: int) -> ChunkEnd:
        """Runs the next chunk of ``n`` events per replica and fetches its observables; the
        run's end status (``stopped``/``done``) if it ended."""
        keys = fold_keys(self.replica_keys, self.progress.chunk)
        t0, compile_before = time.perf_counter(), self.chunks.compile_seconds
        self.carry = jax.block_until_ready(self.chunks(self.carry, keys, n))
        if self.mesh is not None:  # keep the compiled chunk's input layout (a no-op when it holds)
            self.carry = shard_batch(self.carry, self.mesh)
        elapsed = time.perf_counter() - t0 - (self.chunks.compile_seconds - compile_before)
        p = self.progress
        p.done, p.chunk, p.engine_seconds = p.done + n, p.chunk + 1, p.engine_seconds + elapsed
        self.values = self.record(log=False)
        self._rows_pending = True
        return ChunkEnd(p.done, self._end_status())

    def _at_log(self) -> bool:
        return (self.progress.done % self.config.log_every == 0
                or self.progress.done == self.config.events)

    def save(self, status: str, wait: bool = True) -> RunProgress:
        """A checkpoint of the carry (synchronous); on interruption the rows of a log point are
        left to the resumed run (``log_pending``), so they are written with its status."""
        self.progress.csv_bytes = self.stream.sync()
        self.checkpointer.save(self.carry, self.progress, log_pending=(
            status == INTERRUPTED and self._rows_pending and self._at_log()))
        return self.progress

    def end_chunk(self, status: Optional[str]) -> None:
        """Logs the rows due after a chunk (with the run's end status on the last one)."""
        self._rows_pending = False
        if self._at_log() or status is not None:
            self.record(log=True, end_status=status, values=self.values)  # the carry is unchanged

    def _end_status(self) -> Optional[str]:
        if not self.running():
            return "stopped"
        if self.progress.done >= self.config.events or self.reached_target():
            return "done"
        return None

    def step(self, interrupted: bool = False) -> int:
        """Runs one chunk, logs and checkpoints what is due; returns its events per replica.
        ``interrupted``: the caller is stopping the run after this chunk (a checkpoint is
        written and the last rows say ``interrupted``)."""
        n = next_chunk_events(self.progress.done, self.config)
        self.driver.step(interrupted, n)
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


def _loop(run: SimulationRun, progress: bool) -> Optional[str]:
    """Chunks until the end of the run (the driver's loop, with a progress bar); returns the
    signal name if interrupted, else None."""
    config = run.config
    total = None if config.deposit_target is not None else config.events  # ends on growth
    bar = ProgressBar(progress, total, run.progress.done, "events/replica", "ev")
    run.driver.hooks = run.driver.hooks + (_ProgressHook(run, bar),)
    try:
        return run.driver.run().signal_name
    finally:
        bar.close()


def start(config: SimulationConfig, runner: Optional[PolicyRunner] = None,
          on_checkpoint: Callable = _no_hook) -> SimulationRun:
    """A :class:`SimulationRun` of ``config`` ready to step (restored from the latest checkpoint
    in ``--out`` when ``config.resume``); ``runner`` defaults to ``config.policy``'s
    (:func:`~swarm_jax.production.runners.make_runner`); ``on_checkpoint(progress)`` is called
    after each checkpoint is committed."""
    if runner is None:
        runner = make_runner(config)
    return SimulationRun(config, runner, on_checkpoint)


def simulate(config: SimulationConfig, runner: Optional[PolicyRunner] = None,
             progress: bool = True, on_checkpoint: Callable = _no_hook) -> SimulationResult:
    """Runs the simulation of ``config`` in chunks and returns host-side results.

    Chunk ``i`` of replica ``r`` uses the key ``fold_in(split(key(seed), R)[r], i)``; chunks end
    at every log point and after at most ``config.check_every`` events (:func:`next_chunk_events`),
    so a run is a pure function of its configuration. The loop ends after ``config.events``
    events per replica, at the end of the first chunk in which a replica stopped (ceiling or no
    event), or after the chunk in progress when SIGINT/SIGTERM arrives (status ``interrupted``;
    a checkpoint is written). With ``config.resume`` it continues from the latest checkpoint in
    ``--out`` (identical results to an uninterrupted run). The time series is streamed to
    ``--out/checkpoints/timeseries.partial.csv``. ``progress``: a progress bar on stderr;
    ``on_checkpoint(progress)`` is called after each checkpoint is committed.
    """
    run = start(config, runner, on_checkpoint)
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
    final["status"] = replica_status_names(values["status"], end)
    final["log_weight"], final["ess"] = run.runner.weights(run.carry)
    if isinstance(run.carry, CandidateCarry):  # mean per-step ESS ratio of the K-candidate choices
        n_ev = np.maximum(np.asarray(final["n_events"]), 1)
        final["step_ess_mean"] = np.asarray(jax.device_get(run.carry.step_ess_sum)) / n_ev
    return SimulationResult(
        timeseries_path=run.csv_path, heights=heights, species=species, oxide=oxide, final=final,
        status=status, message=message, engine_seconds=run.progress.engine_seconds,
        loop_seconds=loop_seconds, compile_seconds=run.chunks.compile_seconds,
        resumed_from=run.resumed_from, signal_name=signal_name if status == "interrupted" else None,
    )


def check_own_checkpoints(out_dir: str) -> None:
    """Raises :class:`UsageError` if ``out_dir/checkpoints`` holds what another tool wrote
    (train.py writes its checkpoints to a folder of the same name). Simulate's own folder is
    recognised by its :data:`RUN_FILE` (written before anything else goes in); an empty folder
    is nobody's data."""
    path = os.path.join(out_dir, CHECKPOINT_DIR)
    if (os.path.isdir(path) and not os.path.isfile(os.path.join(path, RUN_FILE))
            and os.listdir(path)):
        raise UsageError(f"--out {out_dir}: {path} holds checkpoints that {PROG} did not write "
                         f"(no {RUN_FILE}; e.g. train.py's); they are not deleted: choose "
                         "another --out")


def remove_checkpoints(config: SimulationConfig) -> None:
    """Deletes ``--out/checkpoints`` (after a run that cannot be resumed has written its outputs,
    or before a fresh run), only if simulate wrote it (:func:`check_own_checkpoints`)."""
    check_own_checkpoints(config.out_dir)
    shutil.rmtree(os.path.join(config.out_dir, CHECKPOINT_DIR), ignore_errors=True)
