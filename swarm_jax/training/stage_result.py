"""What a training stage returns and reports: its statuses and exit codes, :class:`TrainError`,
the per-chunk :class:`ChunkReport` of the callbacks and the :class:`TrainResult`."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

from swarm_jax.agents.ppo import RunnerState
from swarm_jax.training.driver import COMPLETED, INTERRUPTED
from swarm_jax.training.stage_files import StagePaths

__all__ = ["ALREADY_COMPLETE", "COMPLETED", "EXIT_NUMERICAL_FAULT", "INTERRUPTED",
           "NUMERICAL_FAULT", "STATUSES", "STOPPED_EARLY", "ChunkReport", "TrainError",
           "TrainResult", "log_line"]

STOPPED_EARLY = "stopped_early"
NUMERICAL_FAULT = "numerical_fault"
ALREADY_COMPLETE = "already_complete"
STATUSES = (COMPLETED, STOPPED_EARLY, INTERRUPTED, NUMERICAL_FAULT, ALREADY_COMPLETE)

EXIT_NUMERICAL_FAULT = 3


def log_line(message: str) -> None:
    """Default ``log`` of the loop: a line on stdout, flushed (progress stays visible in pipes)."""
    print(message, flush=True)


class TrainError(ValueError):
    """A run cannot start as asked (nothing to resume, results would be overwritten, a checkpoint
    that does not fit the config, ...). The message is one line meant for the user."""



@dataclasses.dataclass
class ChunkReport:
    """What a callback of :func:`run_stage` receives after every chunk (before any checkpoint)."""

    stage: int
    update: int
    num_updates: int
    env_steps: int
    metrics: dict[str, float]
    runner_state: RunnerState


@dataclasses.dataclass
class TrainResult:
    """Outcome of :func:`run_stage`.

    Attributes:
        stage, status (one of :data:`STATUSES`), message (a line for the user).
        env_steps, updates, num_updates: where the run stands / was heading.
        paths: the :class:`StagePaths`; ``final_dir``: the final checkpoint if one was written;
        last_checkpoint: the newest complete periodic checkpoint (None if none).
        metrics: the metrics of the last good log (Python floats).
        timings: seconds — ``wall`` (this session), ``compile`` (JIT tracing + compilation),
            ``train`` (chunks minus compilation), ``checkpoint``, and ``sps`` = env steps of
            this session / ``train``.
        signal_number: the signal that interrupted the run, if any.
    """

    stage: int
    status: str
    message: str
    env_steps: int
    updates: int
    num_updates: int
    paths: StagePaths
    final_dir: Path | None = None
    last_checkpoint: Path | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    signal_number: int | None = None

    @property
    def exit_code(self) -> int:
        if self.status == INTERRUPTED:
            return 128 + int(self.signal_number or signal.SIGINT)
        if self.status == NUMERICAL_FAULT:
            return EXIT_NUMERICAL_FAULT
        return 0

    @property
    def finished(self) -> bool:
        """True when the stage has a final checkpoint (completed or stopped early)."""
        return self.status in (COMPLETED, STOPPED_EARLY, ALREADY_COMPLETE)

