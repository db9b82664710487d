"""Physics layer: lattice state, rate catalogue and the rejection-free KMC engine."""

from swarm_jax.physics.engine import (
    Event, StepInfo, apply_event, column_event_rates, events_per_column, from_arrays, rebuild_rates, run,
    sample_event, sample_events, step, step_with_uniforms, trace, waiting_time,
)
from swarm_jax.physics.lattice import (
    CEILING, DEPOSIT_O, DEPOSIT_TI, DESORB, EVENT_KIND_NAMES, HOP, NO_EVENTS, REACT, RUNNING,
    STATUS_NAMES, LatticeState, deposit_target, deposited_atoms, estimate_state_bytes, film_arrays,
    height_map, height_stats, init_flat, o_ti_ratio, observables, validate_lattice_size,
)
from swarm_jax.physics.params import O, SUBSTRATE, TI, VACANT, PhysicsParams, RateTables, make_rate_tables

__all__ = [name for name in dir() if not name.startswith("_")]
