"""The shared chunked-run driver (:mod:`swarm_jax.training.driver`) on a tiny fake task: the
checkpoint policy, the order of hooks and checkpoints, interrupt -> checkpoint -> resume giving
the uninterrupted state, stops, discarded chunks, the memory refusal and the compile clock.
No training or simulation is compiled here (seconds)."""

from __future__ import annotations

import signal
import threading

import jax
import jax.numpy as jnp
import pytest

from swarm_jax.training.driver import (
    INTERRUPTED,
    RUNNING,
    CheckpointPolicy,
    CheckpointSchedule,
    ChunkDriver,
    ChunkEnd,
    ChunkTask,
    CompileClock,
    ProgressBar,
    RunContext,
    RunHooks,
    check_memory_need,
    fmt_duration,
)

main_thread_only = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="signal handlers can only be installed in the main thread")


class FakeTask(ChunkTask):
    """Steps 0..total in chunks of ``chunk`` (cut at multiples of it); the state is a 64-bit
    LCG stirred with every step, so any lost or repeated step changes it."""

    def __init__(self, total=100, chunk=10, store=None, stop_at=None, fault_at=None):
        self.total, self.chunk, self.stop_at, self.fault_at = total, chunk, stop_at, fault_at
        self.store = {} if store is None else store
        self.steps, self.value = 0, 12345
        if self.store:
            self.steps, self.value = self.store[max(self.store)]
        self.events: list = []

    def position(self):
        return self.steps

    def next_chunk(self):
        if self.steps >= self.total:
            return None
        return min(self.chunk - self.steps % self.chunk, self.total - self.steps)

    def step_chunk(self, n):
        if self.fault_at is not None and self.steps + n >= self.fault_at:
            return ChunkEnd(self.steps, "fault", "bad numbers", discard=True)
        for i in range(n):
            self.value = (self.value * 6364136223846793005 + self.steps + i + 1) % 2**64
        self.steps += n
        stop = "stopped" if self.stop_at is not None and self.steps >= self.stop_at else None
        return ChunkEnd(self.steps, stop, "stop condition" if stop else "",
                        {"value": self.value})

    def save(self, status, wait):
        self.store[self.steps] = (self.steps, self.value)
        self.events.append(("save", self.steps, status, wait))
        return self.steps

    def end_chunk(self, status):
        self.events.append(("end_chunk", self.steps, status))


class Recorder(RunHooks):
    def __init__(self, task, signal_at=None):
        self.task, self.signal_at = task, signal_at

    def on_first_chunk(self, info):
        self.task.events.append(("first", info.end.position))

    def on_chunk_end(self, info):
        self.task.events.append(("chunk", info.end.position, info.steps))
        if self.signal_at is not None and info.end.position == self.signal_at:
            signal.raise_signal(signal.SIGINT)

    def on_checkpoint(self, saved, status):
        self.task.events.append(("checkpoint", saved, status))

    def on_end(self, outcome):
        self.task.events.append(("end", outcome.status))


def _drive(task, policy=CheckpointPolicy(), signal_at=None, save_on=frozenset({INTERRUPTED})):
    ctx = RunContext("fake", total=task.total, checkpoint=policy, save_on=save_on)
    return ChunkDriver(task, ctx, [Recorder(task, signal_at)]).run()


# --------------------------------------------------------------------------- checkpoint policy


def test_aligned_policy_needs_a_crossed_multiple_and_the_seconds():
    p = CheckpointPolicy(every_steps=96, every_seconds=10.0, aligned=True, both=True)
    assert p.due(128, 64, 10.0)          # 96 crossed, 10 s passed
    assert not p.due(128, 64, 9.9)       # 96 crossed, too soon
    assert not p.due(190, 100, 60.0)     # no multiple of 96 in (100, 190]
    assert p.due(192, 100, 60.0)
    assert CheckpointPolicy(96, 0.0, aligned=True, both=True).due(96, 95, 0.0)


def test_since_last_policy_is_due_on_steps_or_seconds():
    p = CheckpointPolicy(every_steps=300, every_seconds=60.0)
    assert p.due(400, 100, 0.0) and not p.due(399, 100, 0.0)
    assert p.due(101, 100, 60.0)                             # by time alone
    assert not CheckpointPolicy(None, 0.0).due(10**9, 0, 1e9)  # neither set: never
    assert not CheckpointPolicy(300, 0.0).due(299, 0, 1e9)     # 0 s: no time condition


def test_schedule_counts_from_its_last_mark():
    now = [0.0]
    s = CheckpointSchedule(CheckpointPolicy(every_steps=10, every_seconds=5.0), 0,
                           clock=lambda: now[0])
    assert not s.due(9)
    now[0] = 5.0
    assert s.due(9)
    s.mark(9)
    assert not s.due(18) and s.due(19)


# --------------------------------------------------------------------------- the loop


def test_hooks_and_checkpoints_come_in_the_documented_order():
    task = FakeTask(total=35, chunk=10)
    outcome = _drive(task, CheckpointPolicy(every_steps=20, aligned=True, both=True))
    assert outcome.status == "completed" and outcome.chunks == 4 and outcome.signal_name is None
    assert task.events == [
        ("first", 10), ("chunk", 10, 10), ("end_chunk", 10, None),
        ("chunk", 20, 10), ("end_chunk", 20, None),
        ("save", 20, RUNNING, False), ("checkpoint", 20, RUNNING),
        ("chunk", 30, 10), ("end_chunk", 30, None),
        ("chunk", 35, 5), ("end_chunk", 35, None),
        ("end", "completed"),
    ]
    assert outcome.last.metrics["value"] == task.value


@main_thread_only
def test_interrupt_checkpoints_and_the_resumed_run_ends_in_the_same_state():
    reference = FakeTask(total=100, chunk=10)
    assert _drive(reference).status == "completed"

    store: dict = {}
    first = FakeTask(total=100, chunk=7, store=store)  # chunk ends at multiples of 7
    outcome = _drive(first, signal_at=42)  # the signal arrives in a hook after step 42
    assert outcome.status == INTERRUPTED and outcome.signal_name == "SIGINT"
    assert outcome.signal_number == int(signal.SIGINT) and outcome.saved == 42
    assert ("save", 42, INTERRUPTED, True) in first.events
    assert first.events[-3:] == [("checkpoint", 42, INTERRUPTED), ("end_chunk", 42, INTERRUPTED),
                                 ("end", INTERRUPTED)]
    assert list(store) == [42]

    second = FakeTask(total=100, chunk=7, store=store)
    assert second.position() == 42
    assert _drive(second).status == "completed"
    assert (second.steps, second.value) == (reference.steps, reference.value)


class SignalInEndChunk(FakeTask):
    """Raises SIGINT while the host output of the chunk ending at ``at`` is written (after the
    driver read the flag for that chunk)."""

    def __init__(self, at, **kw):
        super().__init__(**kw)
        self.at = at

    def end_chunk(self, status):
        super().end_chunk(status)
        if self.steps == self.at:
            signal.raise_signal(signal.SIGINT)


@main_thread_only
@pytest.mark.parametrize("periodic", [False, True])
def test_a_signal_after_the_check_stops_before_the_next_chunk(periodic):
    task = SignalInEndChunk(30, total=100, chunk=10)
    policy = CheckpointPolicy(every_steps=30 if periodic else None)
    outcome = _drive(task, policy)
    assert outcome.status == INTERRUPTED and outcome.signal_name == "SIGINT"
    assert task.steps == 30 and outcome.saved == 30
    saves = [e for e in task.events if e[0] == "save"]
    # a checkpoint just written at 30 is not written twice
    assert saves == ([("save", 30, RUNNING, False)] if periodic
                     else [("save", 30, INTERRUPTED, True)])
    assert task.events[-1] == ("end", INTERRUPTED)


def test_a_stop_status_gets_a_waited_checkpoint_only_when_listed():
    task = FakeTask(total=100, chunk=10, stop_at=30)
    outcome = _drive(task, save_on=frozenset({"stopped"}))
    assert (outcome.status, outcome.message, outcome.saved) == ("stopped", "stop condition", 30)
    assert ("save", 30, "stopped", True) in task.events and task.steps == 30

    task = FakeTask(total=100, chunk=10, stop_at=30)
    outcome = _drive(task)  # "stopped" not in save_on: no checkpoint, rows still ended
    assert outcome.status == "stopped" and outcome.saved is None
    assert not any(e[0] == "save" for e in task.events)
    assert ("end_chunk", 30, "stopped") in task.events


def test_a_discarded_chunk_stops_without_hooks_or_checkpoint():
    task = FakeTask(total=100, chunk=10, fault_at=30)
    outcome = _drive(task, CheckpointPolicy(every_steps=1))
    assert (outcome.status, outcome.message) == ("fault", "bad numbers")
    assert outcome.last.position == 20 and task.steps == 20
    assert task.events[-1] == ("end", "fault")
    assert ("chunk", 30, 10) not in task.events and ("save", 30, RUNNING, False) not in task.events


def test_single_steps_follow_the_same_order():
    task = FakeTask(total=30, chunk=10)
    driver = ChunkDriver(task, RunContext("fake", checkpoint=CheckpointPolicy(every_steps=20)))
    assert driver.step() is None and driver.step() is None
    assert ("save", 20, RUNNING, False) in task.events
    assert driver.step(interrupted=True) == INTERRUPTED
    assert task.events[-2:] == [("save", 30, INTERRUPTED, True), ("end_chunk", 30, INTERRUPTED)]


# --------------------------------------------------------------------------- helpers


def test_memory_refusal_names_the_limit_it_was_given():
    assert check_memory_need(10, 11, lambda limit: "unused") == 10
    with pytest.raises(ValueError, match="needs 12 of 11"):
        check_memory_need(12, 11, lambda limit: f"needs 12 of {limit}", ValueError)


def test_compile_clock_counts_a_compilation_and_not_a_cached_call():
    f = jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)
    x = jnp.arange(7.0)
    with CompileClock() as clock:
        f(x).block_until_ready()
    assert clock.total > 0
    with CompileClock() as again:
        f(x).block_until_ready()
    assert again.total == 0


def test_progress_bar_off_still_says_lines_and_durations_format():
    lines = []
    bar = ProgressBar(False, 100, 0, "fake", "step", log=lines.append)
    bar.say("hello")
    bar.advance(10, {"a": 1})
    bar.close()
    assert lines == ["hello"] and not bar.enabled
    assert fmt_duration(65) == "01:05" and fmt_duration(3725) == "1:02:05"
    assert fmt_duration(float("inf")) == "?" and fmt_duration(-1) == "?"
