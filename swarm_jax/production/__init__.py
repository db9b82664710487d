"""Production KMC runs as a library (the command line is :mod:`swarm_jax.simulate`).

An edge layer: it may import physics, swarm, env, agents, training and
:mod:`swarm_jax.trained_policy`; nothing in the core imports it.

- :mod:`~swarm_jax.production.config`: :class:`SimulationConfig`, defaults, validation of
  every value, the pre-run memory estimate.
- :mod:`~swarm_jax.production.runners`: how a policy drives a batch of lattices
  (:class:`PolicyRunner`, :func:`candidates_chunk`, :func:`full_chunk`, ...) and the
  ``(init_fn, step_fn)`` pair of a production run, :func:`simulator` (example in that module).
- :mod:`~swarm_jax.production.run`: the run loop (:func:`start` / :class:`SimulationRun` /
  :func:`simulate`), host checks, checkpoints and ``--resume``.
- :mod:`~swarm_jax.production.writers`: the streamed time series and the final outputs.
"""

from swarm_jax.production.config import (
    SimulationConfig, UsageError, check_memory, default_box_height, default_check_every,
    estimate_run_bytes,
)
from swarm_jax.production.runners import (
    POLICY_FACTORIES, CandidateCarry, PolicyRunner, Simulator, candidates_chunk, classical_chunk,
    fold_keys, full_chunk, initial_state, lattice_of, make_runner, simulator,
)
from swarm_jax.production.run import (
    RunProgress, SimulationResult, SimulationRun, next_chunk_events, simulate, start,
)
from swarm_jax.production.writers import (
    TIMESERIES_COLUMNS, build_summary, read_timeseries_rows, write_outputs,
)

__all__ = [
    "SimulationConfig", "UsageError", "check_memory", "default_box_height", "default_check_every",
    "estimate_run_bytes", "POLICY_FACTORIES", "CandidateCarry", "PolicyRunner", "Simulator",
    "candidates_chunk", "classical_chunk", "fold_keys", "full_chunk", "initial_state",
    "lattice_of", "make_runner", "simulator", "RunProgress", "SimulationResult", "SimulationRun",
    "next_chunk_events", "simulate", "start", "TIMESERIES_COLUMNS", "build_summary",
    "read_timeseries_rows", "write_outputs",
]
