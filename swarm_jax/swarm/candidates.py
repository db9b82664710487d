"""SwarmThinkers candidates: K events drawn i.i.d. from the physics, one of them executed.

A *candidate set* is an :class:`~swarm_jax.physics.engine.Event` with a leading ``(K,)`` axis,
drawn with the engine's own selection structure (sum-tree descent, then an exact in-column draw):
``O(K log C)`` work plus gathers around the K columns, never a pass over the lattice.

Choosing candidate ``a`` executes exactly that event; the clock advances by the physical
waiting time ``−ln(1 − u) / Γ_tot`` with ``Γ_tot`` from before the event, whatever was chosen
(docs/physics.md, SwarmThinkers). Choosing uniformly is classical KMC because the candidates are i.i.d. draws from
``Γ_e / Γ_tot``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from swarm_jax.physics.engine import K_REACT0, Event, execute_event, sample_events
from swarm_jax.physics.lattice import DEPOSIT_O, DEPOSIT_TI, REACT, LatticeState
from swarm_jax.physics.params import RateTables


def draw_candidates(lattice: LatticeState, tables: RateTables, key: jax.Array, n_swarm: int) -> Event:
    """Draws ``n_swarm`` events i.i.d. from ``Γ_e / Γ_tot`` (an Event with leading (K,) axis).

    ``tables`` must be the rate tables the lattice's sum tree was built with. On a stopped
    lattice (status != RUNNING) the candidates are well-formed but meaningless; executing one
    does nothing.
    """
    u = jax.random.uniform(key, (2, n_swarm), jnp.float64)
    return sample_events(lattice, tables, u[0], u[1])


def select_candidate(candidates: Event, action: jnp.ndarray) -> Event:
    """The candidate at index ``action`` (scalar int) as a scalar Event."""
    k = jax.tree.leaves(candidates)[0].shape[0]
    a = jnp.clip(jnp.asarray(action, jnp.int32), 0, k - 1)
    return jax.tree.map(lambda x: x[a], candidates)


def candidate_site_z(lattice: LatticeState, candidates: Event) -> jnp.ndarray:
    """(K,) int32 height z of the site each candidate describes.

    deposit Ti/O: the landing site ``h + 1`` of the column; hop/desorb: the top atom ``h``;
    react: the reacting Ti at ``z = slot − 7``.
    """
    h = lattice.heights[candidates.column]
    kind = candidates.kind
    is_dep = (kind == DEPOSIT_TI) | (kind == DEPOSIT_O)
    z_react = candidates.slot - K_REACT0
    return jnp.where(is_dep, h + 1, jnp.where(kind == REACT, z_react, h)).astype(jnp.int32)


def execute_candidate(
    lattice: LatticeState, tables: RateTables, candidates: Event, action: jnp.ndarray, u_clock: jnp.ndarray,
    enabled=True,
):
    """Executes candidate ``action`` and advances the physical clock
    (:func:`~swarm_jax.physics.engine.execute_event` of the chosen candidate).

    Args:
      lattice: the state the candidates were drawn from.
      tables: its rate tables.
      candidates: (K,) Event from :func:`draw_candidates`.
      action: scalar int index of the chosen candidate.
      u_clock: scalar uniform in [0, 1) for the waiting time.
      enabled: scalar bool, False for a padding step (nothing changes).

    Returns:
      ``(new_lattice, StepInfo)``; ``StepInfo.dt`` in s, ``kind`` −1 when nothing happened.
    """
    return execute_event(lattice, tables, select_candidate(candidates, action), u_clock, enabled)
