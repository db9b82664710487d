"""Rejection-free (BKL / n-fold way) KMC for the SOS TiO2 model: pure, jit- and vmap-able.

Event catalogue of one column ``c`` (``E = 7 + Lz`` slots, index ``k``)::

    k = 0        deposit Ti on top           k = 6       desorb the top atom
    k = 1        deposit O on top            k = 7 + z   reaction of the Ti at (c, z)
    k = 2 .. 5   hop of the top atom in direction k - 2 (+x, -x, +y, -y)

One sum-tree leaf per column holds the column's total rate. A step:

1. draws a column from the flat rate tree (:mod:`swarm_jax.physics.sumtree`, 3-4 levels), then
   an event inside it from the column's ``E`` freshly computed rates (float64, exact
   hierarchical draw);
2. applies it with fixed-shape scatters (unused write slots go to a dummy column);
3. refreshes the cached reaction classes of the changed sites and their 6 NN (<= 21 sites),
   then recomputes, from the new state, the leaves of the 15 columns that can have changed
   (the 5-column crosses around up to three changed columns) and their tree ancestors;
4. advances the clock by ``-ln(u) / Gamma_tot`` with ``Gamma_tot`` from *before* the event.

Every rate is recomputed from state and *set*, never adjusted by deltas. A stopped state
(status != RUNNING) is physically unchanged by further steps (only the dummy column's scratch
rows receive writes), so batched runs need no ``cond``.

In-place discipline (XLA keeps a scatter in place only when every read of the old buffer feeds
it): ``Gamma_tot`` is its own state field, heights are written first and all later positions are
derived from the new heights, and what is known about the chosen event's atom travels in
:class:`Event` from the sampling pass instead of being read back after the writes. Nothing else
may read an old buffer: XLA duplicates small gathers into each consumer, so a bookkeeping value
computed from an old read (it once was the oxide flag of a desorbing atom, for an oxide counter)
makes XLA copy the whole array on every event. ``tests/test_engine_hlo.py`` guards this.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from swarm_jax.physics import sumtree
from swarm_jax.physics.lattice import (
    CEILING, DEPOSIT_O, DEPOSIT_TI, DESORB, HOP, NO_EVENTS, REACT, RUNNING, LatticeState, check_sos,
    validate_lattice_size, zero_counters,
)
from swarm_jax.physics.params import DIRECTIONS, O, TI, VACANT, PhysicsParams, RateTables, make_rate_tables
from swarm_jax.validation import require_x64

N_SURFACE_EVENTS = 7  # deposit Ti, deposit O, 4 hops, desorb
K_DEP_TI, K_DEP_O, K_HOP0, K_DESORB, K_REACT0 = 0, 1, 2, 6, 7
_DX = np.array([d[0] for d in DIRECTIONS], np.int32)  # numpy: importing must not start a backend
_DY = np.array([d[1] for d in DIRECTIONS], np.int32)


def events_per_column(lz: int) -> int:
    return N_SURFACE_EVENTS + lz


@struct.dataclass
class Event:
    """One event of the catalogue, as drawn: enough to apply it without re-reading old state.

    Shapes are scalars for one event; candidate sets carry a leading (K,) axis.
    """

    column: jnp.ndarray  # int32 column index c = x * Ly + y
    slot: jnp.ndarray  # int32 k in [0, 7 + Lz)
    top_species: jnp.ndarray  # int8 species of the column's top atom before the event
    top_oxide: jnp.ndarray  # int8 its oxide flag
    rate: jnp.ndarray  # float64 Gamma_e, Hz

    @property
    def kind(self) -> jnp.ndarray:
        """Event kind (DEPOSIT_TI, DEPOSIT_O, HOP, DESORB or REACT) as int32."""
        k = self.slot
        return jnp.select(
            [k == K_DEP_TI, k == K_DEP_O, k < K_DESORB, k == K_DESORB],
            [DEPOSIT_TI, DEPOSIT_O, HOP, DESORB],
            REACT,
        ).astype(jnp.int32)


# --------------------------------------------------------------------------- geometry


def neighbour_columns(cols: jnp.ndarray, lx: int, ly: int) -> jnp.ndarray:
    """(..., 4) periodic lateral neighbours of columns ``cols`` in the order +x, -x, +y, -y.

    Column indices are non-negative, so truncating ``lax.div``/``lax.rem`` equal floor division
    and modulo here, without the sign fix-ups of ``//`` and ``%`` (fewer ops in the event loop).
    """
    cols = cols.astype(jnp.int32)
    x = jax.lax.div(cols, jnp.int32(ly))
    y = jax.lax.rem(cols, jnp.int32(ly))
    nx = jax.lax.rem(x[..., None] + (_DX + lx), jnp.int32(lx))
    ny = jax.lax.rem(y[..., None] + (_DY + ly), jnp.int32(ly))
    return nx * ly + ny


def hop_target(column: jnp.ndarray, slot: jnp.ndarray, lx: int, ly: int) -> jnp.ndarray:
    """The column a hop event (``slot`` in ``K_HOP0 .. K_HOP0 + 3``: +x, −x, +y, −y) moves its
    atom to; for any other slot the +x neighbour (callers mask it by the event's kind)."""
    return neighbour_columns(column, lx, ly)[..., jnp.clip(slot - K_HOP0, 0, 3)]


def _cross(cols: jnp.ndarray, lx: int, ly: int) -> jnp.ndarray:
    """(..., 5) a column and its 4 lateral neighbours."""
    return jnp.concatenate([cols[..., None], neighbour_columns(cols, lx, ly)], axis=-1)


# --------------------------------------------------------------------------- rates


def site_neighbours(cols: jnp.ndarray, zs: jnp.ndarray, lx: int, ly: int, lz: int):
    """The 6 NN of sites (cols, zs) (...,), in the order +x, -x, +y, -y, above, below.

    Returns ``(rows (..., 6) int32, zs (..., 6) int32 clipped into [0, Lz), inside (..., 6) bool)``;
    ``inside`` is False for the site above the top layer.
    """
    nb = neighbour_columns(cols, lx, ly)
    rows = jnp.concatenate([nb, cols[..., None], cols[..., None]], axis=-1)
    z = zs[..., None]
    nn_z = jnp.concatenate([jnp.broadcast_to(z, nb.shape), z + 1, z - 1], axis=-1)
    inside = (nn_z >= 0) & (nn_z <= lz - 1)
    return rows, jnp.clip(nn_z, 0, lz - 1).astype(jnp.int32), inside


def site_react_class(species, oxide, cols, zs, lx: int, ly: int, lz: int) -> jnp.ndarray:
    """Reaction channel of sites (cols, zs) (...,) from species/oxide arrays, as int8.

    ``n`` = number of occupied (Ti or O) NN when the site holds a non-oxide Ti with at least two
    non-oxide O among its 6 NN (docs/physics.md, Events and rates, "react"); -1 otherwise. The substrate counts
    neither as occupied nor as an O partner.
    """
    rows, nn_z, inside = site_neighbours(cols, zs, lx, ly, lz)
    nn_sp = jnp.where(inside, species[rows, nn_z], VACANT)
    nn_ox = oxide[rows, nn_z]
    free_o = jnp.sum((nn_sp == O) & (nn_ox == 0), axis=-1)
    occupied = jnp.sum((nn_sp == TI) | (nn_sp == O), axis=-1)
    reactive = (species[cols, zs] == TI) & (oxide[cols, zs] == 0) & (free_o >= 2)
    return jnp.where(reactive, occupied, -1).astype(jnp.int8)


def column_event_rates(state: LatticeState, tables: RateTables, cols: jnp.ndarray):
    """Rates of every catalogue slot of columns ``cols`` (M,), from heights, the top layer and
    the cached reaction classes.

    Returns ``(rates (M, 7 + Lz) float64, top_species (M,) int8, top_oxide (M,) int8)``.
    """
    lz = state.lz
    rows = _cross(cols, state.lx, state.ly)  # (M, 5): the column, then +x, -x, +y, -y
    h_rows = state.heights[rows]
    h = h_rows[:, 0]
    h_nb = h_rows[:, 1:]
    level = state.species[rows, h[:, None]]  # (M, 5) species at the top atom's level z = h
    top_sp = level[:, 0]
    top_ox = state.oxide[cols, h]
    lateral = level[:, 1:]
    n_ti = jnp.sum(lateral == TI, axis=1)
    n_o = jnp.sum(lateral == O, axis=1)
    has_atom = h >= 1
    s = jnp.clip(top_sp.astype(jnp.int32) - 1, 0, 1)  # Ti -> 0, O -> 1

    dep = jnp.where((h < lz - 1)[:, None], tables.dep[None, :], 0.0)
    down_step = (h_nb + 1 < h[:, None]).astype(jnp.int32)
    hop = tables.hop[s[:, None], top_ox[:, None].astype(jnp.int32), down_step, n_ti[:, None], n_o[:, None]]
    hop = jnp.where(has_atom[:, None] & (h_nb < lz - 1), hop, 0.0)
    desorb = jnp.where(has_atom, tables.desorb[s, n_ti, n_o], 0.0)
    cls = state.react_class[cols].astype(jnp.int32)  # (M, Lz)
    react = jnp.where(cls >= 0, tables.react[jnp.clip(cls, 0, 6)], 0.0)
    rates = jnp.concatenate([dep, hop, desorb[:, None], react], axis=1)
    return rates, top_sp, top_ox


@jax.jit
def rebuild_rates(state: LatticeState, tables: RateTables) -> LatticeState:
    """Recomputes every reaction class, leaf and the whole tree from scratch (O(N)).

    For initialisation from arbitrary arrays and for checks; never used inside a run.
    """
    c, lz = state.n_columns, state.lz
    cols = jnp.broadcast_to(jnp.arange(c, dtype=jnp.int32)[:, None], (c, lz))
    zs = jnp.broadcast_to(jnp.arange(lz, dtype=jnp.int32)[None, :], (c, lz))
    cls = site_react_class(state.species, state.oxide, cols, zs, state.lx, state.ly, lz)
    react_class = jnp.full((c + 1, lz), -1, jnp.int8).at[:c].set(cls)
    state = state.replace(react_class=react_class)
    rates, _, _ = column_event_rates(state, tables, jnp.arange(c, dtype=jnp.int32))
    tree = sumtree.build(rates.sum(axis=1))
    total = sumtree.root(tree)
    status = jnp.where(
        state.status != RUNNING, state.status, jnp.where(total > 0, RUNNING, NO_EVENTS)
    ).astype(jnp.int32)
    return state.replace(tree=tree, total=total, status=status)


def from_arrays(heights, species, oxide, params: PhysicsParams) -> LatticeState:
    """Builds a state from (Lx, Ly) heights and (Lx, Ly, Lz) species/oxide arrays (host-side; here
    rather than in :mod:`~swarm_jax.physics.lattice` because it needs :func:`rebuild_rates`).

    The arrays must satisfy the SOS invariant; rates are computed from scratch. Counters start at
    zero except ``deposited``, which is set to the atoms present (so bookkeeping balances).
    Raises :class:`~swarm_jax.validation.X64Error` when JAX's 64-bit mode is off.
    """
    require_x64("a lattice (physics.from_arrays)")
    heights = np.asarray(heights)
    species = np.asarray(species)
    oxide = np.asarray(oxide)
    lx, ly, lz = validate_lattice_size(species.shape)
    check_sos(heights, species, oxide)
    c = lx * ly
    h = np.zeros((c + 1,), np.int32)
    h[:c] = heights.reshape(c)
    sp = np.zeros((c + 1, lz), np.int8)
    sp[:c] = species.reshape(c, lz)
    ox = np.zeros((c + 1, lz), np.int8)
    ox[:c] = oxide.reshape(c, lz)
    counters = zero_counters()
    counters["deposited"] = jnp.array([(species == TI).sum(), (species == O).sum()], jnp.int64)
    state = LatticeState(
        heights=jnp.asarray(h), species=jnp.asarray(sp), oxide=jnp.asarray(ox),
        react_class=jnp.full((c + 1, lz), -1, jnp.int8),
        tree=jnp.zeros(sumtree.tree_shape(c), jnp.float64),
        total=jnp.zeros((), jnp.float64), status=jnp.zeros((), jnp.int32),
        lx=lx, ly=ly, lz=lz, **counters,
    )
    state = rebuild_rates(state, make_rate_tables(params))
    full = int(h[:c].max()) >= lz - 1
    return state.replace(status=jnp.asarray(CEILING if full else state.status, jnp.int32))


# --------------------------------------------------------------------------- selection


def select_in_column(state: LatticeState, tables: RateTables, cols: jnp.ndarray, u: jnp.ndarray) -> Event:
    """Draws one slot per column ``cols`` (M,) with probability Γ_k / Σ_k Γ_k, for uniforms u (M,)."""
    rates, top_sp, top_ox = column_event_rates(state, tables, cols)
    cum = jnp.cumsum(rates, axis=1)
    target = u * cum[:, -1]
    n_slots = rates.shape[1]
    k = jnp.minimum(jnp.sum(cum <= target[:, None], axis=1), n_slots - 1)
    # Rounding can land on a zero-rate slot at the end; fall back to the last slot with mass.
    last_nonzero = jnp.max(jnp.where(rates > 0, jnp.arange(n_slots), 0), axis=1)
    rate_k = jnp.take_along_axis(rates, k[:, None], axis=1)[:, 0]
    k = jnp.where(rate_k > 0, k, last_nonzero).astype(jnp.int32)
    rate_k = jnp.take_along_axis(rates, k[:, None], axis=1)[:, 0]
    return Event(column=cols.astype(jnp.int32), slot=k, top_species=top_sp, top_oxide=top_ox, rate=rate_k)


def sample_events(state: LatticeState, tables: RateTables, u_column: jnp.ndarray, u_slot: jnp.ndarray) -> Event:
    """Draws events i.i.d. from Γ_e / Γ_tot for uniforms (M,) each: tree descent, then in-column."""
    cols = jax.vmap(sumtree.sample, in_axes=(None, 0, None))(state.tree, u_column, state.total)
    cols = jnp.minimum(cols, state.n_columns - 1).astype(jnp.int32)
    return select_in_column(state, tables, cols, u_slot)


def sample_event(state: LatticeState, tables: RateTables, u_column, u_slot) -> Event:
    """One event drawn from Γ_e / Γ_tot (scalar uniforms)."""
    ev = sample_events(state, tables, jnp.reshape(u_column, (1,)), jnp.reshape(u_slot, (1,)))
    return jax.tree.map(lambda x: x[0], ev)


# --------------------------------------------------------------------------- application


def _reaction_partners(state: LatticeState, species, col, z):
    """Positions (row, z) of the first two non-oxide O among the 6 NN of the Ti at (col, z).

    ``species`` is passed separately so the caller can hand in the already-written array (a
    reaction does not change species) and keep the species scatter in place.
    """
    rows, zs, inside = site_neighbours(col, z, state.lx, state.ly, state.lz)
    free_o = inside & (species[rows, zs] == O) & (state.oxide[rows, zs] == 0)
    order = jnp.cumsum(free_o)
    first = jnp.argmax(free_o & (order == 1))
    second = jnp.argmax(free_o & (order == 2))
    return rows[first], zs[first], rows[second], zs[second]


def apply_event(state: LatticeState, tables: RateTables, event: Event, active=True) -> LatticeState:
    """Executes ``event`` (drawn from this very state) and updates rates locally.

    With ``active`` False (or a stopped state) nothing changes: all writes go to the dummy column.
    The clock is not touched here: :func:`execute_event` applies an event *and* advances it.
    """
    active = jnp.asarray(active) & (state.status == RUNNING)
    lz = state.lz
    dummy = jnp.int32(state.dummy_column)
    c = event.column
    k = event.slot
    kind = event.kind
    is_dep = (kind == DEPOSIT_TI) | (kind == DEPOSIT_O)
    is_hop = kind == HOP
    is_des = kind == DESORB
    is_react = kind == REACT
    target = hop_target(c, k, state.lx, state.ly)

    # 1. Heights first; every later position comes from the new heights.
    moves_a = active & (is_dep | is_hop | is_des)
    moves_b = active & is_hop
    col_a = jnp.where(moves_a, c, dummy)
    dh_a = jnp.where(moves_a, jnp.where(is_dep, 1, -1), 0).astype(jnp.int32)
    col_b = jnp.where(moves_b, target, dummy)
    dh_b = moves_b.astype(jnp.int32)
    heights = state.heights.at[jnp.stack([col_a, col_b])].add(jnp.stack([dh_a, dh_b]))
    h_c = heights[c]
    h_t = heights[target]

    # 2. Species: slot A is the landing site (deposit, hop), slot B the vacated one (hop, desorb).
    dep_species = jnp.where(kind == DEPOSIT_TI, TI, O).astype(jnp.int8)
    land_row = jnp.where(active & is_dep, c, jnp.where(active & is_hop, target, dummy))
    land_z = jnp.where(is_dep, h_c, h_t)
    land_species = jnp.where(is_dep, dep_species, event.top_species)
    land_oxide = jnp.where(is_dep, jnp.int8(0), event.top_oxide)
    vac_row = jnp.where(active & (is_hop | is_des), c, dummy)
    vac_z = h_c + 1
    rows2 = jnp.stack([land_row, vac_row])
    zs2 = jnp.clip(jnp.stack([land_z, vac_z]), 0, lz - 1)
    species = state.species.at[rows2, zs2].set(jnp.stack([land_species, jnp.int8(VACANT)]))

    # 3. Oxide flags: landing and vacated sites as above; a reaction flags the Ti and two O.
    rz = jnp.clip(k - K_REACT0, 0, lz - 1)
    o1_row, o1_z, o2_row, o2_z = _reaction_partners(state, species, c, rz)
    do_react = active & is_react
    ox_rows = jnp.where(
        do_react,
        jnp.stack([c, o1_row, o2_row]),
        jnp.stack([land_row, vac_row, dummy]),
    )
    ox_zs = jnp.where(do_react, jnp.stack([rz, o1_z, o2_z]), jnp.stack([zs2[0], zs2[1], jnp.int32(0)]))
    ox_vals = jnp.where(
        do_react, jnp.ones((3,), jnp.int8), jnp.stack([land_oxide, jnp.int8(0), jnp.int8(0)])
    )
    oxide = state.oxide.at[ox_rows, ox_zs].set(ox_vals)

    # 4. Reaction classes of the changed sites and their 6 NN (<= 21 sites), then the leaves of
    #    the crosses around the (up to three) changed columns.
    #    The changed sites are exactly the three oxide-write slots.
    nn_rows, nn_z, _ = site_neighbours(ox_rows, ox_zs, state.lx, state.ly, lz)
    site_rows = jnp.concatenate([ox_rows[:, None], nn_rows], axis=1).reshape(-1)  # (21,)
    site_z = jnp.concatenate([ox_zs[:, None], nn_z], axis=1).reshape(-1)
    site_cls = site_react_class(species, oxide, site_rows, site_z, state.lx, state.ly, lz)
    # Sites of the dummy column (and wrapped neighbours of it) get recomputed values: harmless.
    react_class = state.react_class.at[site_rows, site_z].set(site_cls)

    changed = jnp.where(
        is_hop,
        jnp.stack([c, target, target]),
        jnp.where(is_react, jnp.stack([c, o1_row, o2_row]), jnp.stack([c, c, c])),
    )
    affected = _cross(changed, state.lx, state.ly).reshape(-1)  # (15,)
    new = state.replace(heights=heights, species=species, oxide=oxide, react_class=react_class)
    rates, _, _ = column_event_rates(new, tables, affected)
    tree = sumtree.update(state.tree, affected, rates.sum(axis=1))
    total = sumtree.root(tree)

    # 5. Bookkeeping.
    one = active.astype(jnp.int64)
    top_is_o = (event.top_species == O).astype(jnp.int32)
    dep_index = jnp.where(kind == DEPOSIT_O, 1, 0)
    ceiling = active & ((is_dep & (h_c >= lz - 1)) | (is_hop & (h_t >= lz - 1)))
    status = jnp.where(
        state.status != RUNNING,
        state.status,
        jnp.where(ceiling, CEILING, jnp.where(total > 0, RUNNING, NO_EVENTS)),
    ).astype(jnp.int32)
    return new.replace(
        tree=tree,
        total=total,
        n_events=state.n_events + one,
        event_counts=state.event_counts.at[kind].add(one),
        deposited=state.deposited.at[dep_index].add(one * is_dep),
        desorbed=state.desorbed.at[top_is_o].add(one * is_des),
        status=status,
    )


def waiting_time(total, u) -> jnp.ndarray:
    """Exponential waiting time -ln(1 - u) / Γ_tot in s, for u in [0, 1) (finite for u = 0)."""
    return -jnp.log1p(-u) / total


# --------------------------------------------------------------------------- steps and runs


@struct.dataclass
class StepInfo:
    """What one step did (for traces, tests and the environment's info)."""

    event: Event
    kind: jnp.ndarray  # int32 event kind, -1 when nothing happened
    dt: jnp.ndarray  # float64 s
    total_before: jnp.ndarray  # float64 Γ_tot before the event, Hz
    active: jnp.ndarray  # bool


def execute_event(state: LatticeState, tables: RateTables, event: Event, u_clock, enabled=True):
    """Executes ``event`` (drawn from this very state) and advances the physical clock: the one
    place where an event is applied and time moves (the engine, the SwarmThinkers candidates,
    the production decision and the full-lattice sampler all execute through it).

    The clock advances by :func:`waiting_time` ``(Γ_tot, u_clock)`` with ``Γ_tot`` from *before*
    the event, whichever event it is (docs/physics.md, SwarmThinkers). With ``enabled`` False or
    a stopped state nothing changes (:func:`apply_event` writes to the dummy column, ``dt = 0``).

    Args:
      state: the lattice the event was drawn from.
      tables: its rate tables.
      event: a scalar :class:`Event`.
      u_clock: scalar uniform in [0, 1) for the waiting time.
      enabled: scalar bool, False for a padding step.

    Returns:
      ``(new_state, StepInfo)``; ``StepInfo.dt`` in s, ``kind`` −1 when nothing happened.
    """
    active = jnp.asarray(enabled) & (state.status == RUNNING)
    dt = jnp.where(active, waiting_time(state.total, u_clock), 0.0)
    total_before = state.total
    new = apply_event(state, tables, event, active)
    new = new.replace(time=state.time + dt)
    info = StepInfo(event=event, kind=jnp.where(active, event.kind, -1), dt=dt,
                    total_before=total_before, active=active)
    return new, info


def step_with_uniforms(state: LatticeState, tables: RateTables, u: jnp.ndarray, enabled=True):
    """One BKL event driven by three uniforms ``u = (u_column, u_slot, u_clock)``."""
    event = sample_event(state, tables, u[0], u[1])
    return execute_event(state, tables, event, u[2], enabled)


def step(state: LatticeState, tables: RateTables, key: jax.Array):
    """One BKL event. Returns ``(state, StepInfo)``."""
    u = jax.random.uniform(key, (3,), jnp.float64)
    return step_with_uniforms(state, tables, u)


DEFAULT_CHUNK = 1024


@partial(jax.jit, static_argnames=("n_events", "chunk"))
def run(state: LatticeState, tables: RateTables, key: jax.Array, n_events: int, chunk: int = DEFAULT_CHUNK):
    """Runs ``n_events`` BKL events (fewer if the state stops). Uniforms are drawn per chunk."""
    chunk = max(1, min(chunk, n_events))
    n_chunks = -(-n_events // chunk)

    def chunk_body(i, state):
        u = jax.random.uniform(jax.random.fold_in(key, i), (chunk, 3), jnp.float64)

        def event_body(j, state):
            state, _ = step_with_uniforms(state, tables, u[j], i * chunk + j < n_events)
            return state

        return jax.lax.fori_loop(0, chunk, event_body, state)

    return jax.lax.fori_loop(0, n_chunks, chunk_body, state)


@partial(jax.jit, static_argnames=("n_events",))
def trace(state: LatticeState, tables: RateTables, key: jax.Array, n_events: int):
    """Like :func:`run` but returns every step's :class:`StepInfo` (stacked); for tests/analysis."""
    keys = jax.random.split(key, n_events)

    def body(state, k):
        return step(state, tables, k)

    return jax.lax.scan(body, state, keys)
