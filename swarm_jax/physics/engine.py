"""Rejection-free (BKL / n-fold way) KMC for the SOS TiO2 model: pure, jit- and vmap-able.

Event catalogue of one column ``c`` (``E = 7 + Lz`` slots, index ``k``)::

    k = 0        deposit Ti on top           k = 6       desorb the top atom
    k = 1        deposit O on top            k = 7 + z   reaction of the Ti at (c, z)
    k = 2 .. 5   hop of the top atom in direction k - 2 (+x, -x, +y, -y)

One sum-tree leaf per column holds the column's total rate. A step:

1. draws a column from the tree (O(log C)), then an event inside it from the column's ``E``
   freshly computed rates (float64, exact hierarchical draw);
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
    CEILING, DEPOSIT_O, DEPOSIT_TI, DESORB, HOP, N_EVENT_KINDS, NO_EVENTS, REACT, RUNNING, LatticeState,
)
from swarm_jax.physics.params import DIRECTIONS, O, TI, VACANT, RateTables

N_SURFACE_EVENTS = 7  # deposit Ti, deposit O, 4 hops, desorb
K_DEP_TI, K_DEP_O, K_HOP0, K_DESORB, K_REACT0 = 0, 1, 2, 6, 7
_DX = np.array([d[0] for d in DIRECTIONS], np.int32)  # numpy: importing must not start a backend
_DY = np.array([d[1] for d in DIRECTIONS], np.int32)


def _window_geometry():
    """Offsets (25, 2) of the columns within lattice distance 3, ordered by distance (the
    column, its cross in the order of DIRECTIONS, then distance 2 and 3), and the window
    indices (13, 5) of the cross of each of the first 13 (distance <= 2)."""
    offsets = [(0, 0)] + [tuple(d) for d in DIRECTIONS]
    for r in (2, 3):
        offsets += sorted((dx, dy) for dx in range(-r, r + 1) for dy in range(-r, r + 1) if abs(dx) + abs(dy) == r)
    index = {o: i for i, o in enumerate(offsets)}
    cross = [[index[(dx + ex, dy + ey)] for ex, ey in [(0, 0)] + list(DIRECTIONS)] for dx, dy in offsets[:13]]
    return np.array(offsets, np.int32), np.array(cross, np.int32)


WINDOW_OFFSETS, WINDOW_CROSS = _window_geometry()


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


def react_class_from_neighbours(site_sp, site_ox, nn_sp, nn_ox) -> jnp.ndarray:
    """Reaction channel (int8) of sites with species/oxide ``site_*`` (...,) whose 6 NN hold
    ``nn_*`` (..., 6) (VACANT / 0 for a neighbour outside the lattice).

    ``n`` = number of occupied (Ti or O) NN when the site holds a non-oxide Ti with at least two
    non-oxide O among its 6 NN (docs/physics.md, Events and rates, "react"); -1 otherwise. The
    substrate counts neither as occupied nor as an O partner.
    """
    free_o = jnp.sum((nn_sp == O) & (nn_ox == 0), axis=-1)
    occupied = jnp.sum((nn_sp == TI) | (nn_sp == O), axis=-1)
    reactive = (site_sp == TI) & (site_ox == 0) & (free_o >= 2)
    return jnp.where(reactive, occupied, -1).astype(jnp.int8)


def site_react_class(species, oxide, cols, zs, lx: int, ly: int, lz: int) -> jnp.ndarray:
    """Reaction channel of sites (cols, zs) (...,) from species/oxide arrays, as int8
    (see :func:`react_class_from_neighbours`)."""
    rows, nn_z, inside = site_neighbours(cols, zs, lx, ly, lz)
    nn_sp = jnp.where(inside, species[rows, nn_z], VACANT)
    return react_class_from_neighbours(species[cols, zs], oxide[cols, zs], nn_sp, oxide[rows, nn_z])


def rates_from_cross(tables: RateTables, lz: int, h_cross, level, top_ox, cls) -> jnp.ndarray:
    """Rates (M, 7 + Lz) float64 of every catalogue slot of M columns, from their crosses.

    ``h_cross`` (M, 5) int32: heights of the column, then its +x, -x, +y, -y neighbours;
    ``level`` (M, 5) int8: species at the column's top level ``z = h`` in the same columns;
    ``top_ox`` (M,) int8: oxide flag of the top atom; ``cls`` (M, Lz) int8: reaction classes.
    """
    h = h_cross[:, 0]
    h_nb = h_cross[:, 1:]
    lateral = level[:, 1:]
    n_ti = jnp.sum(lateral == TI, axis=1)
    n_o = jnp.sum(lateral == O, axis=1)
    has_atom = h >= 1
    s = jnp.clip(level[:, 0].astype(jnp.int32) - 1, 0, 1)  # Ti -> 0, O -> 1

    dep = jnp.where((h < lz - 1)[:, None], tables.dep[None, :], 0.0)
    down_step = (h_nb + 1 < h[:, None]).astype(jnp.int32)
    hop = tables.hop[s[:, None], top_ox[:, None].astype(jnp.int32), down_step, n_ti[:, None], n_o[:, None]]
    hop = jnp.where(has_atom[:, None] & (h_nb < lz - 1), hop, 0.0)
    desorb = jnp.where(has_atom, tables.desorb[s, n_ti, n_o], 0.0)
    cls = cls.astype(jnp.int32)
    react = jnp.where(cls >= 0, tables.react[jnp.clip(cls, 0, 6)], 0.0)
    return jnp.concatenate([dep, hop, desorb[:, None], react], axis=1)


def column_event_rates(state: LatticeState, tables: RateTables, cols: jnp.ndarray):
    """Rates of every catalogue slot of columns ``cols`` (M,), from heights, the top layer and
    the cached reaction classes.

    Returns ``(rates (M, 7 + Lz) float64, top_species (M,) int8, top_oxide (M,) int8)``.
    """
    rows = _cross(cols, state.lx, state.ly)  # (M, 5): the column, then +x, -x, +y, -y
    h_rows = state.heights[rows]
    h = h_rows[:, 0]
    level = state.species[rows, h[:, None]]  # (M, 5) species at the top atom's level z = h
    top_ox = state.oxide[cols, h]
    rates = rates_from_cross(tables, state.lz, h_rows, level, top_ox, state.react_class[cols])
    return rates, level[:, 0], top_ox


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


# --------------------------------------------------------------------------- selection


def select_slot(rates: jnp.ndarray, u: jnp.ndarray) -> jnp.ndarray:
    """Slot k (M,) int32 of each row of ``rates`` (M, E) with probability Γ_k / Σ_k Γ_k, for
    uniforms u (M,); never a zero-rate slot (rounding past the end falls back to the last slot
    with mass)."""
    cum = jnp.cumsum(rates, axis=1)
    target = u * cum[:, -1]
    n_slots = rates.shape[1]
    k = jnp.minimum(jnp.sum(cum <= target[:, None], axis=1), n_slots - 1)
    last_nonzero = jnp.max(jnp.where(rates > 0, jnp.arange(n_slots), 0), axis=1)
    rate_k = jnp.take_along_axis(rates, k[:, None], axis=1)[:, 0]
    return jnp.where(rate_k > 0, k, last_nonzero).astype(jnp.int32)


def select_in_column(state: LatticeState, tables: RateTables, cols: jnp.ndarray, u: jnp.ndarray) -> Event:
    """Draws one slot per column ``cols`` (M,) with probability Γ_k / Σ_k Γ_k, for uniforms u (M,)."""
    rates, top_sp, top_ox = column_event_rates(state, tables, cols)
    k = select_slot(rates, u)
    rate_k = jnp.take_along_axis(rates, k[:, None], axis=1)[:, 0]
    return Event(column=cols.astype(jnp.int32), slot=k, top_species=top_sp, top_oxide=top_ox, rate=rate_k)


def sample_columns(state: LatticeState, u_column: jnp.ndarray) -> jnp.ndarray:
    """Columns (M,) int32 drawn from the rate tree with probability leaf_c / Γ_tot."""
    cols = jax.vmap(sumtree.sample, in_axes=(None, 0, None))(state.tree, u_column, state.total)
    return jnp.minimum(cols, state.n_columns - 1).astype(jnp.int32)


def sample_events(state: LatticeState, tables: RateTables, u_column: jnp.ndarray, u_slot: jnp.ndarray) -> Event:
    """Draws events i.i.d. from Γ_e / Γ_tot for uniforms (M,) each: tree descent, then in-column."""
    return select_in_column(state, tables, sample_columns(state, u_column), u_slot)


def sample_event(state: LatticeState, tables: RateTables, u_column, u_slot) -> Event:
    """One event drawn from Γ_e / Γ_tot (scalar uniforms)."""
    ev = sample_events(state, tables, jnp.reshape(u_column, (1,)), jnp.reshape(u_slot, (1,)))
    return jax.tree.map(lambda x: x[0], ev)


# --------------------------------------------------------------------------- application


@struct.dataclass
class Window:
    """The lattice around one column, gathered once per event (:data:`WINDOW_OFFSETS`).

    ``cols`` (W,) int32 global column ids (periodic images may repeat on small lattices; every
    write is matched by global id, so repeated entries stay identical); ``heights`` (W,) int32;
    ``species``, ``oxide`` (W, Lz) int8.
    """

    cols: jnp.ndarray
    heights: jnp.ndarray
    species: jnp.ndarray
    oxide: jnp.ndarray


def gather_window(state: LatticeState, column) -> Window:
    """The window around ``column`` (scalar int32): one gather per array."""
    col = jnp.asarray(column, jnp.int32)
    x = jax.lax.div(col, jnp.int32(state.ly))
    y = jax.lax.rem(col, jnp.int32(state.ly))
    wx = jax.lax.rem(x + (WINDOW_OFFSETS[:, 0] + 3 * state.lx), jnp.int32(state.lx))
    wy = jax.lax.rem(y + (WINDOW_OFFSETS[:, 1] + 3 * state.ly), jnp.int32(state.ly))
    cols = (wx * state.ly + wy).astype(jnp.int32)
    return Window(cols=cols, heights=state.heights[cols], species=state.species[cols], oxide=state.oxide[cols])


def window_rates(win: Window, react_class, tables: RateTables, n: int) -> jnp.ndarray:
    """Rates (n, 7 + Lz) of the first ``n`` (<= 13) window columns, from the window and their
    reaction classes ``react_class`` (n, Lz)."""
    nb = WINDOW_CROSS[:n]  # (n, 5) window indices: the column, then +x, -x, +y, -y
    h_cross = win.heights[nb]
    h = h_cross[:, 0]
    level = jnp.take_along_axis(win.species[nb], jnp.broadcast_to(h[:, None, None], nb.shape + (1,)), axis=2)[..., 0]
    top_ox = jnp.take_along_axis(win.oxide[:n], h[:, None], axis=1)[:, 0]
    return rates_from_cross(tables, win.species.shape[1], h_cross, level, top_ox, react_class)


def window_react_class(species, oxide) -> jnp.ndarray:
    """Reaction classes (13, Lz) int8 of every site of the inner 13 window columns."""
    inner = WINDOW_CROSS[:, 1:]  # (13, 4) lateral neighbours, window indices
    vac = jnp.full((13, 1), VACANT, species.dtype)
    zero = jnp.zeros((13, 1), oxide.dtype)
    sp, ox = species[:13], oxide[:13]
    nn_sp = jnp.concatenate([
        jnp.moveaxis(species[inner], 1, 2),  # (13, Lz, 4) lateral
        jnp.concatenate([sp[:, 1:], vac], axis=1)[..., None],  # above
        jnp.concatenate([vac, sp[:, :-1]], axis=1)[..., None],  # below
    ], axis=2)
    nn_ox = jnp.concatenate([
        jnp.moveaxis(oxide[inner], 1, 2),
        jnp.concatenate([ox[:, 1:], zero], axis=1)[..., None],
        jnp.concatenate([zero, ox[:, :-1]], axis=1)[..., None],
    ], axis=2)
    return react_class_from_neighbours(sp, ox, nn_sp, nn_ox)


def _reaction_partners(win: Window, z):
    """(column, z) of the first two non-oxide O among the 6 NN of the Ti at (window centre, z),
    in the order +x, -x, +y, -y, above, below."""
    lz = win.species.shape[1]
    idx = jnp.array([1, 2, 3, 4, 0, 0], jnp.int32)
    nz = z + jnp.array([0, 0, 0, 0, 1, -1], jnp.int32)
    inside = (nz >= 0) & (nz <= lz - 1)
    nz = jnp.clip(nz, 0, lz - 1)
    free_o = inside & (win.species[idx, nz] == O) & (win.oxide[idx, nz] == 0)
    order = jnp.cumsum(free_o)
    first = jnp.argmax(free_o & (order == 1))
    second = jnp.argmax(free_o & (order == 2))
    return win.cols[idx[first]], nz[first], win.cols[idx[second]], nz[second]


def apply_in_window(state: LatticeState, tables: RateTables, event: Event, active, win: Window) -> LatticeState:
    """:func:`apply_event` for a window already gathered around ``event.column``."""
    active = jnp.asarray(active) & (state.status == RUNNING)
    lz = state.lz
    c, k, kind = event.column, event.slot, event.kind
    is_dep = (kind == DEPOSIT_TI) | (kind == DEPOSIT_O)
    is_hop = kind == HOP
    is_des = kind == DESORB
    is_react = kind == REACT
    target = win.cols[1 + jnp.clip(k - K_HOP0, 0, 3)]
    at_c = win.cols == c  # (W,) every image of the event column
    at_t = win.cols == target
    z = jnp.arange(lz, dtype=jnp.int32)[None, :]

    # Heights: the event column (deposit +1, hop and desorb -1), the hop target +1.
    dh = jnp.where(is_dep, 1, jnp.where(is_hop | is_des, -1, 0))
    heights = win.heights + active * (dh * at_c + is_hop * at_t).astype(jnp.int32)
    h_c = heights[0]
    h_t = heights[1 + jnp.clip(k - K_HOP0, 0, 3)]

    # Species and oxide: the landing site (deposit, hop), the vacated one (hop, desorb), and a
    # reaction's Ti with its two O partners (chosen before any write; species do not change).
    land = active & (is_dep | is_hop) & jnp.where(is_dep, at_c, at_t)[:, None] & (z == jnp.where(is_dep, h_c, h_t))
    vac = active & (is_hop | is_des) & at_c[:, None] & (z == h_c + 1)
    dep_species = jnp.where(kind == DEPOSIT_TI, TI, O).astype(jnp.int8)
    land_species = jnp.where(is_dep, dep_species, event.top_species)
    land_oxide = jnp.where(is_dep, jnp.int8(0), event.top_oxide)
    species = jnp.where(land, land_species, jnp.where(vac, jnp.int8(VACANT), win.species))
    rz = jnp.clip(k - K_REACT0, 0, lz - 1)
    o1_col, o1_z, o2_col, o2_z = _reaction_partners(win, rz)
    reacts = active & is_react & (
        (at_c[:, None] & (z == rz))
        | ((win.cols == o1_col)[:, None] & (z == o1_z))
        | ((win.cols == o2_col)[:, None] & (z == o2_z))
    )
    oxide = jnp.where(reacts, jnp.int8(1), jnp.where(land, land_oxide, jnp.where(vac, jnp.int8(0), win.oxide)))

    # Every site whose channel can change lies in the inner 13 columns, and so does every
    # column whose rates can change: recompute them all from the new window, set, never add.
    new_win = win.replace(heights=heights, species=species, oxide=oxide)
    react_class = window_react_class(species, oxide)
    leaves = window_rates(new_win, react_class, tables, 13).sum(axis=1)
    cross, inner = win.cols[:5], win.cols[:13]
    tree = sumtree.update(state.tree, inner, leaves)
    total = sumtree.root(tree)

    one = active.astype(jnp.int64)
    ceiling = active & ((is_dep & (h_c >= lz - 1)) | (is_hop & (h_t >= lz - 1)))
    status = jnp.where(
        state.status != RUNNING,
        state.status,
        jnp.where(ceiling, CEILING, jnp.where(total > 0, RUNNING, NO_EVENTS)),
    ).astype(jnp.int32)
    pair = jnp.arange(2)
    return state.replace(
        heights=state.heights.at[cross].set(heights[:5]),
        species=state.species.at[cross].set(species[:5]),
        oxide=state.oxide.at[cross].set(oxide[:5]),
        react_class=state.react_class.at[inner].set(react_class),
        tree=tree,
        total=total,
        n_events=state.n_events + one,
        event_counts=state.event_counts + one * (jnp.arange(N_EVENT_KINDS) == kind),
        deposited=state.deposited + (one * is_dep) * (pair == (kind == DEPOSIT_O).astype(jnp.int32)),
        desorbed=state.desorbed + (one * is_des) * (pair == (event.top_species == O).astype(jnp.int32)),
        status=status,
    )


def apply_event(state: LatticeState, tables: RateTables, event: Event, active=True) -> LatticeState:
    """Executes ``event`` (drawn from this very state) and updates rates locally.

    One gather of the window around the event column, one vectorised pass over it (the
    event's writes as masks, the reaction classes of the inner 13 columns and their rates),
    one scatter per array and the rate-tree update. With ``active`` False (or a stopped state)
    nothing changes. The clock is not touched here (see :func:`waiting_time` and
    :func:`step_with_uniforms`).
    """
    return apply_in_window(state, tables, event, active, gather_window(state, event.column))


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


def step_with_uniforms(state: LatticeState, tables: RateTables, u: jnp.ndarray, enabled=True):
    """One BKL event driven by three uniforms ``u = (u_column, u_slot, u_clock)``.

    The window around the drawn column is gathered once and serves both the in-column draw and
    the application (:func:`apply_in_window`).
    """
    active = jnp.asarray(enabled) & (state.status == RUNNING)
    col = sample_columns(state, jnp.reshape(u[0], (1,)))[0]
    win = gather_window(state, col)
    rates = window_rates(win, state.react_class[col][None], tables, 1)
    k = select_slot(rates, jnp.reshape(u[1], (1,)))[0]
    h = win.heights[0]
    event = Event(column=col, slot=k, top_species=win.species[0, h], top_oxide=win.oxide[0, h], rate=rates[0, k])
    dt = jnp.where(active, waiting_time(state.total, u[2]), 0.0)
    total_before = state.total
    new = apply_in_window(state, tables, event, active, win)
    new = new.replace(time=state.time + dt)
    info = StepInfo(event=event, kind=jnp.where(active, event.kind, -1), dt=dt,
                    total_before=total_before, active=active)
    return new, info


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
