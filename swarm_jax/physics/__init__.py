"""Physics layer: lattice state, rate catalogue, the rejection-free KMC engine and film observables."""

from swarm_jax.physics.engine import (
    Event, StepInfo, apply_event, column_event_rates, events_per_column, execute_event, from_arrays,
    rebuild_rates, run, sample_event, sample_events, step, step_with_uniforms, trace, waiting_time,
)
from swarm_jax.physics.film_observables import (
    FilmStats, film_stats, height_stats, height_stats_from_counts, o_ti_ratio, observables, oxide_fraction,
    update_film_stats,
)
from swarm_jax.physics.lattice import (
    CEILING, DEPOSIT_O, DEPOSIT_TI, DESORB, EVENT_KIND_NAMES, HOP, NO_EVENTS, REACT, RUNNING,
    STATUS_NAMES, LatticeState, deposit_target, deposit_target_traced, deposited_atoms, estimate_state_bytes,
    film_arrays, height_map, init_flat, validate_lattice_size,
)
from swarm_jax.physics.params import O, SUBSTRATE, TI, VACANT, PhysicsParams, RateTables, make_rate_tables

__all__ = [name for name in dir() if not name.startswith("_")]
