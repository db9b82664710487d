"""The chunked-run driver shared by training (:mod:`swarm_jax.training.trainer`) and production
runs (:mod:`swarm_jax.production.run`).

A long run is a host loop over chunks, each one call of a jitted function. What the loop does
between chunks is the same for both: time the chunk (compilation apart), report it, stop on a
signal or a stop condition, write the checkpoints that are due. The pieces:

* :class:`ChunkTask` — what is run: ``position()`` (steps done: env steps, events per
  replica), ``next_chunk()`` (the length of the next chunk, None when done), ``step_chunk(n)``
  (runs it: the jitted call plus host checks, returns a :class:`ChunkEnd`), ``save(status,
  wait)`` (a checkpoint) and ``end_chunk(status)`` (host output after the stop decision);
* :class:`RunContext` — the frozen settings of the loop: label, total steps (for the ETA), the
  :class:`CheckpointPolicy` and the stop statuses that get a (waited-for) checkpoint;
* :class:`RunHooks` — output hooks in the style of SB3 callbacks: ``on_first_chunk``,
  ``on_chunk_end``, ``on_checkpoint``, ``on_end``;
* :class:`ChunkDriver` — the loop (``run()``) or a single chunk (``step()``), under
  :class:`~swarm_jax.training.safety.GracefulInterrupt`;
* :class:`CompileClock` (seconds of JIT tracing/lowering/compilation, from ``jax.monitoring``),
  :func:`check_memory_need` (the one refusal of a run that does not fit in memory),
  :class:`ProgressBar` and :func:`fmt_duration` (progress and ETA).

The order within one chunk (the contract both users rely on)::

    end = task.step_chunk(n)                  # timed; compile seconds measured apart
    on_first_chunk(info)                      # first chunk only, before any check
    if end.discard: stop with end.status      # e.g. a numerical fault: nothing reported, saved
    on_chunk_end(info)                        # logs, user callbacks (may raise a signal)
    status = end.status or "interrupted" if a signal arrived (read after the hooks)
    if status in ctx.save_on: task.save(status, wait=True) -> on_checkpoint
    task.end_chunk(status)
    if status: stop;  elif the checkpoint policy is due: task.save("running") -> on_checkpoint

A signal that arrives after the flag was read (during ``end_chunk`` or a periodic save) stops
the run before the next chunk, with an ``interrupted`` checkpoint of that position (unless one
was just written there).

Units: steps are whatever ``position()`` counts; times in seconds.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from swarm_jax.training.safety import GracefulInterrupt, available_memory_bytes

__all__ = [
    "COMPLETED", "INTERRUPTED", "RUNNING", "CheckpointPolicy", "CheckpointSchedule", "ChunkDriver",
    "ChunkEnd", "ChunkInfo", "ChunkTask", "CompileClock", "ProgressBar", "RunContext",
    "RunHooks", "RunOutcome", "check_memory_need", "fmt_duration",
]

COMPLETED = "completed"
INTERRUPTED = "interrupted"
RUNNING = "running"


# --------------------------------------------------------------------------- compile clock


class CompileClock:
    """Seconds JAX spends tracing, lowering and compiling while active (``jax.monitoring`` events;
    a use as a context manager registers the listener, its exit removes it)."""

    _EVENTS = (
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    )

    def __init__(self):
        self.total = 0.0

    def _listener(self, event: str, duration: float, **_: Any) -> None:
        if event in self._EVENTS:
            self.total += float(duration)

    def __enter__(self) -> CompileClock:
        import jax

        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc) -> None:
        import jax

        jax.monitoring.unregister_event_duration_listener(self._listener)


# --------------------------------------------------------------------------- memory


def check_memory_need(need: int, limit: int | None, refusal: Callable[[int], str],
                      error: type[Exception] = MemoryError) -> int:
    """Refuse a run before it allocates: raises ``error(refusal(limit))`` when ``need`` bytes
    exceed ``limit`` (default: :func:`~swarm_jax.training.safety.available_memory_bytes`,
    nothing is refused when that cannot be read). Returns ``need``.

    The estimators stay with their domain (``trainer.estimate_training_bytes``,
    ``production.config.estimate_run_bytes``); ``refusal(limit)`` writes their one line."""
    limit = available_memory_bytes() if limit is None else limit
    if limit is not None and need > limit:
        raise error(refusal(int(limit)))
    return int(need)


# --------------------------------------------------------------------------- progress


def fmt_duration(seconds: float) -> str:
    """``mm:ss`` or ``h:mm:ss``; ``?`` for an unknown (infinite or negative) duration."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60:02d}:{rem % 60:02d}"


class ProgressBar:
    """A tqdm bar on stderr (or nothing when disabled) that messages do not tear.

    Args:
        enabled: show the bar.
        total, initial: steps of the whole run (None: unknown) and already done.
        desc, unit: tqdm's label and unit.
        bar_format: tqdm's format (None: tqdm's own, with its rate and ETA).
        log: where :meth:`say` writes.
    """

    def __init__(self, enabled: bool, total: int | None, initial: int, desc: str, unit: str,
                 bar_format: str | None = None, log: Callable[[str], None] = print):
        self.log = log
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=True,
                            dynamic_ncols=True, file=sys.stderr, bar_format=bar_format)

    @property
    def enabled(self) -> bool:
        return self.bar is not None

    def say(self, message: str) -> None:
        """A message line that does not tear the bar."""
        if self.bar is not None:
            self.bar.clear()
        self.log(message)
        if self.bar is not None:
            self.bar.refresh()

    def advance(self, n: int, postfix: Mapping[str, Any], refresh: bool = True) -> None:
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(dict(postfix), refresh=refresh)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------- checkpoint policy


@dataclasses.dataclass(frozen=True)
class CheckpointPolicy:
    """When a periodic checkpoint is due, from the steps and wall seconds since the last one.

    Attributes:
        every_steps: steps between checkpoints (None: never by steps).
        every_seconds: wall seconds between checkpoints (0: no time condition).
        aligned: True — due when a multiple of ``every_steps`` (counted from 0) was crossed
            since the last save; False — when ``every_steps`` steps passed since it.
        both: True — the steps AND at least ``every_seconds`` seconds are due (training:
            ``checkpoint_freq`` and ``checkpoint_every_s``); False — either one is
            (production: ``--checkpoint-every`` or ``--checkpoint-minutes``).
    """

    every_steps: int | None = None
    every_seconds: float = 0.0
    aligned: bool = False
    both: bool = False

    def due(self, steps: int, last_steps: int, elapsed_s: float) -> bool:
        e = self.every_steps
        if e is None:
            by_steps = False
        elif self.aligned:
            by_steps = steps // e > last_steps // e
        else:
            by_steps = steps - last_steps >= e
        if self.both:
            return by_steps and elapsed_s >= self.every_seconds
        return by_steps or (self.every_seconds > 0 and elapsed_s >= self.every_seconds)


class CheckpointSchedule:
    """A :class:`CheckpointPolicy` with the position and time of the last checkpoint (the start
    of the session counts as one)."""

    def __init__(self, policy: CheckpointPolicy, steps: int,
                 clock: Callable[[], float] = time.monotonic):
        self.policy, self.clock = policy, clock
        self.mark(steps)

    def mark(self, steps: int) -> None:
        """A checkpoint at ``steps`` was written now."""
        self.last_steps, self.last_time = int(steps), self.clock()

    def due(self, steps: int) -> bool:
        return self.policy.due(int(steps), self.last_steps, self.clock() - self.last_time)


# --------------------------------------------------------------------------- the loop


@dataclasses.dataclass(frozen=True)
class RunContext:
    """The settings of one driven run.

    Attributes:
        label: the run's name in messages (``stage1``, ``simulate``).
        total: the steps the run is heading for (None: unknown; no ETA).
        checkpoint: when a periodic checkpoint is due.
        save_on: stop statuses that get a checkpoint (waited for) before the run ends.
    """

    label: str
    total: int | None = None
    checkpoint: CheckpointPolicy = CheckpointPolicy()
    save_on: frozenset[str] = frozenset({INTERRUPTED})


@dataclasses.dataclass(frozen=True)
class ChunkEnd:
    """What :meth:`ChunkTask.step_chunk` reports.

    Attributes:
        position: steps done after the chunk.
        status: None to go on, else the status the run stops with after this chunk.
        message: a line for the user about the stop (may be empty).
        metrics: host values of the chunk (for hooks).
        discard: the chunk's result is not kept (a fault): no hooks, no checkpoint.
    """

    position: int
    status: str | None = None
    message: str = ""
    metrics: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    discard: bool = False


@dataclasses.dataclass(frozen=True)
class ChunkInfo:
    """A chunk as the hooks see it.

    Attributes:
        end: the task's :class:`ChunkEnd`.
        steps: steps in this chunk (``end.position`` minus the position before it).
        seconds: wall seconds of the chunk, compilation excluded (> 0).
        compile_s: seconds of tracing/compilation during the chunk.
        wall_s: wall seconds of the whole chunk call.
        sps: steps per second of this chunk (compilation excluded).
        eta_s: seconds left at this session's mean rate (inf when unknown).
        index: chunks run in this session before this one.
    """

    end: ChunkEnd
    steps: int
    seconds: float
    compile_s: float
    wall_s: float
    sps: float
    eta_s: float
    index: int


@dataclasses.dataclass
class RunOutcome:
    """How :meth:`ChunkDriver.run` ended.

    Attributes:
        status: :data:`COMPLETED`, :data:`INTERRUPTED` or the stop status of a :class:`ChunkEnd`.
        message: the stop message of the last :class:`ChunkEnd` (may be empty).
        last: the last kept chunk (None if none ran or every one was discarded).
        signal_name: ``SIGINT``/``SIGTERM`` when interrupted, else None.
        saved: what the stop checkpoint's ``task.save`` returned (None if none was written).
        seconds: chunk seconds of this session, compilation excluded.
        compile_s: compilation seconds during chunks.
        chunks: chunks run in this session.
    """

    status: str = COMPLETED
    message: str = ""
    last: ChunkEnd | None = None
    signal_name: str | None = None
    saved: Any = None
    seconds: float = 0.0
    compile_s: float = 0.0
    chunks: int = 0

    @property
    def signal_number(self) -> int | None:
        return int(signal.Signals[self.signal_name]) if self.signal_name else None


class ChunkTask:
    """What a :class:`ChunkDriver` runs (override every method but :meth:`end_chunk`)."""

    def position(self) -> int:
        """Steps done so far."""
        raise NotImplementedError

    def next_chunk(self) -> int | None:
        """Length of the next chunk (a pure function of the position, so resumed runs cut their
        chunks alike), or None when the run is done."""
        raise NotImplementedError

    def step_chunk(self, n: int) -> ChunkEnd:
        """Runs the next chunk of ``n`` (the jitted call) and checks it on the host."""
        raise NotImplementedError

    def save(self, status: str, wait: bool) -> Any:
        """Writes a checkpoint of the current state (``wait``: until committed); returns what
        the hooks receive (e.g. its path)."""
        raise NotImplementedError

    def end_chunk(self, status: str | None) -> None:
        """Host output after the stop decision and any stop checkpoint (``status``: the stop
        status or None)."""


class RunHooks:
    """Output hooks (the style of SB3's ``BaseCallback``); every method is a no-op here."""

    def on_first_chunk(self, info: ChunkInfo) -> None:
        """After the first chunk of the session (it holds the compilation), before any check."""

    def on_chunk_end(self, info: ChunkInfo) -> None:
        """After every kept chunk, before the interrupt check and any checkpoint."""

    def on_checkpoint(self, saved: Any, status: str) -> None:
        """After a checkpoint was written (``status``: ``running`` or the stop status)."""

    def on_end(self, outcome: RunOutcome) -> None:
        """After the last chunk (also after a discarded one)."""


class ChunkDriver:
    """Runs a :class:`ChunkTask` chunk by chunk (see the module docstring for the order).

    ``step(interrupted)`` runs one chunk (for callers with a loop of their own); ``run()`` loops
    until the task is done, a chunk stops it or SIGINT/SIGTERM arrives
    (:class:`~swarm_jax.training.safety.GracefulInterrupt`: the chunk in progress finishes, a
    checkpoint is written, the outcome says ``interrupted``)."""

    def __init__(self, task: ChunkTask, ctx: RunContext, hooks: Sequence[RunHooks] = ()):
        self.task, self.ctx, self.hooks = task, ctx, tuple(hooks)
        self.start = int(task.position())
        self.schedule = CheckpointSchedule(ctx.checkpoint, self.start)
        self.outcome = RunOutcome()
        self._last_saved: tuple[int, Any] | None = None

    def _emit(self, name: str, *args) -> None:
        for hook in self.hooks:
            getattr(hook, name)(*args)

    def _time_chunk(self, n: int) -> ChunkInfo:
        before = int(self.task.position())
        t0 = time.perf_counter()
        with CompileClock() as clock:
            end = self.task.step_chunk(n)
        wall = time.perf_counter() - t0
        seconds = max(wall - clock.total, 1e-9)
        o = self.outcome
        o.chunks, o.compile_s = o.chunks + 1, o.compile_s + clock.total
        steps = int(end.position) - before
        o.seconds += seconds
        rate = (int(end.position) - self.start) / o.seconds if o.seconds > 0 else 0.0
        total = self.ctx.total
        eta = (total - int(end.position)) / rate if total is not None and rate > 0 else math.inf
        return ChunkInfo(end=end, steps=steps, seconds=seconds, compile_s=clock.total,
                         wall_s=wall, sps=steps / seconds, eta_s=eta, index=o.chunks - 1)

    def _save(self, status: str, wait: bool) -> Any:
        saved = self.task.save(status, wait)
        self.schedule.mark(self.task.position())
        self._last_saved = (self.task.position(), saved)
        self._emit("on_checkpoint", saved, status)
        return saved

    def _stop_between_chunks(self, signal_name: str | None) -> None:
        """A signal that arrived after the last chunk's check (while its rows or its periodic
        checkpoint were written): stop before the next chunk, with a checkpoint of the current
        position unless one was just written there."""
        o = self.outcome
        position = self.task.position()
        if self._last_saved is not None and self._last_saved[0] == position:
            o.saved = self._last_saved[1]
        else:
            o.saved = self._save(INTERRUPTED, wait=True)
        o.status, o.message, o.signal_name = INTERRUPTED, "", signal_name

    def step(self, interrupted: bool | Callable[[], bool] = False, n: int | None = None
             ) -> str | None:
        """Runs one chunk (``n`` steps, default ``task.next_chunk()``) with its reports and
        checkpoints; returns the status the run stops with, or None to go on. ``interrupted``
        (or a function read after the hooks): stop after this chunk as interrupted."""
        n = self.task.next_chunk() if n is None else n
        info = self._time_chunk(n)
        end = info.end
        if info.index == 0:
            self._emit("on_first_chunk", info)
        if end.discard:
            self.outcome.status, self.outcome.message = end.status, end.message
            return end.status
        self.outcome.last = end
        self._emit("on_chunk_end", info)
        stop = interrupted() if callable(interrupted) else interrupted
        status = end.status or (INTERRUPTED if stop else None)
        if status in self.ctx.save_on:
            self.outcome.saved = self._save(status, wait=True)
        self.task.end_chunk(status)
        if status is not None:
            self.outcome.status, self.outcome.message = status, end.message
        elif self.schedule.due(end.position):
            self._save(RUNNING, wait=False)
        return status

    def run(self) -> RunOutcome:
        """Chunks until done, stopped or interrupted; returns the :class:`RunOutcome`."""
        with GracefulInterrupt() as interrupt:
            while self.task.next_chunk() is not None:
                if interrupt.requested:
                    self._stop_between_chunks(interrupt.signal_name)
                    break
                status = self.step(lambda: interrupt.requested)
                if status is not None:
                    if status == INTERRUPTED:
                        self.outcome.signal_name = interrupt.signal_name
                    break
        self._emit("on_end", self.outcome)
        return self.outcome
