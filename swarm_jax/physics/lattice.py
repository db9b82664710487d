"""Lattice state of the solid-on-solid TiO2 film (docs/physics.md, Lattice); its observables are in
:mod:`swarm_jax.physics.film_observables`.

Storage (``C = Lx * Ly`` columns, column index ``c = x * Ly + y``; one extra *dummy* column at
index ``C`` absorbs the writes of events that do nothing, so every update has a fixed shape):

=================  ===================  ==========================================================
field              shape, dtype         meaning
=================  ===================  ==========================================================
heights            (C + 1,) int32       z of the top atom of each column (0 = bare substrate)
species            (C + 1, Lz) int8     VACANT / TI / O / SUBSTRATE per site
oxide              (C + 1, Lz) int8     1 where the atom belongs to a formed TiO2 unit
react_class        (C + 1, Lz) int8     n (0..6 occupied NN) where a non-oxide Ti can react, else -1
tree               (R, B) float64       B-ary sum tree of per-column total rates (Hz), see sumtree
total              () float64           Gamma_tot = sumtree.root(tree), its own field (see engine)
time               () float64           physical clock, s
n_events           () int64             events executed
event_counts       (5,) int64           per kind: deposit Ti, deposit O, hop, desorb, react
deposited          (2,) int64           atoms deposited, [Ti, O]
desorbed           (2,) int64           atoms desorbed, [Ti, O]
status             () int32             RUNNING, CEILING (a column is full) or NO_EVENTS
=================  ===================  ==========================================================

``react_class`` caches the reaction channel of every site (the only per-site rate information),
so a column's reaction total is one int8 row lookup and an event refreshes only the ≤ 21 sites
whose channel it can change.

Memory: 3 bytes per site for species, oxide and reaction class, plus about ``(8 C (1 + 1/B) + 4 C) / (C Lz)`` for
tree and heights.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from flax import struct

from swarm_jax.physics import sumtree
from swarm_jax.physics.params import O, SUBSTRATE, TI, PhysicsParams, make_rate_tables
from swarm_jax.validation import require_x64

# Event kinds (index into LatticeState.event_counts).
DEPOSIT_TI, DEPOSIT_O, HOP, DESORB, REACT = 0, 1, 2, 3, 4
EVENT_KIND_NAMES = ("deposit_ti", "deposit_o", "hop", "desorb", "react")
N_EVENT_KINDS = 5

# Run status.
RUNNING, CEILING, NO_EVENTS = 0, 1, 2
STATUS_NAMES = {RUNNING: "running", CEILING: "ceiling", NO_EVENTS: "no_events"}


@struct.dataclass
class LatticeState:
    heights: jnp.ndarray
    species: jnp.ndarray
    oxide: jnp.ndarray
    react_class: jnp.ndarray
    tree: jnp.ndarray
    total: jnp.ndarray
    time: jnp.ndarray
    n_events: jnp.ndarray
    event_counts: jnp.ndarray
    deposited: jnp.ndarray
    desorbed: jnp.ndarray
    status: jnp.ndarray
    lx: int = struct.field(pytree_node=False)
    ly: int = struct.field(pytree_node=False)
    lz: int = struct.field(pytree_node=False)

    @property
    def n_columns(self) -> int:
        return self.lx * self.ly

    @property
    def lattice_size(self) -> tuple[int, int, int]:
        return (self.lx, self.ly, self.lz)

    @property
    def dummy_column(self) -> int:
        return self.lx * self.ly

    @property
    def n_oxide(self) -> jnp.ndarray:
        """Atoms carrying the oxide flag (int64). An O(N) count, deliberately not a counter
        updated per event: see the in-place note in :mod:`swarm_jax.physics.engine`."""
        return jnp.sum(self.oxide[: self.n_columns], dtype=jnp.int64)


#: Most sites ``(Lx*Ly + 1) * Lz`` of a lattice: the per-site arrays are indexed with int32 (and
#: heights are int32). The one size limit of train.py, the environment and simulate; memory is
#: checked separately (``estimate_state_bytes``).
MAX_LATTICE_SITES = 2**31 - 1
LATTICE_SIZE_RULE = ("three integers (Lx, Ly, Lz) with Lx, Ly >= 3 (distinct periodic neighbours), "
                     "Lz >= 2 (substrate plus one layer) and (Lx*Ly + 1)*Lz <= 2^31 - 1 sites")


def validate_lattice_size(lattice_size) -> tuple[int, int, int]:
    """Checks (Lx, Ly, Lz) against :data:`LATTICE_SIZE_RULE` (integers, booleans refused) and
    returns them as ints; one ``ValueError`` ``lattice_size = ...: must be ...`` otherwise."""
    def bad():
        return ValueError(f"lattice_size = {lattice_size!r}: must be {LATTICE_SIZE_RULE}")

    try:
        values = tuple(lattice_size)
    except TypeError:
        raise bad() from None
    if len(values) != 3 or any(isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer))
                               for v in values):
        raise bad()
    lx, ly, lz = (int(v) for v in values)
    if lx < 3 or ly < 3 or lz < 2 or (lx * ly + 1) * lz > MAX_LATTICE_SITES:
        raise bad()
    return lx, ly, lz


def estimate_state_bytes(lattice_size) -> int:
    """Bytes held by one LatticeState of this size (used to refuse impossible allocations early;
    an estimate, so sizes beyond :data:`MAX_LATTICE_SITES` are estimated too, not refused)."""
    lx, ly, lz = (int(v) for v in lattice_size)
    c = lx * ly
    rows, b = sumtree.tree_shape(c)
    return 3 * (c + 1) * lz + 4 * (c + 1) + 8 * rows * b + 8 * 16


def _empty_fields(lx: int, ly: int, lz: int):
    c = lx * ly
    heights = jnp.zeros((c + 1,), jnp.int32)
    species = jnp.zeros((c + 1, lz), jnp.int8).at[:c, 0].set(SUBSTRATE)
    oxide = jnp.zeros((c + 1, lz), jnp.int8)
    react_class = jnp.full((c + 1, lz), -1, jnp.int8)
    return heights, species, oxide, react_class


def zero_counters():
    """The run counters of a fresh state, all zero: clock, event counts, deposited/desorbed atoms."""
    return dict(
        time=jnp.zeros((), jnp.float64),
        n_events=jnp.zeros((), jnp.int64),
        event_counts=jnp.zeros((N_EVENT_KINDS,), jnp.int64),
        deposited=jnp.zeros((2,), jnp.int64),
        desorbed=jnp.zeros((2,), jnp.int64),
    )


def init_flat(lattice_size, params: PhysicsParams) -> LatticeState:
    """A bare, flat substrate. Closed form (no rate rebuild): only depositions are possible.

    Cheap enough to run inside every environment step (gymnax's auto-reset evaluates it).
    Raises :class:`~swarm_jax.validation.X64Error` when JAX's 64-bit mode is off.
    """
    require_x64("a lattice (physics.init_flat)")
    lx, ly, lz = validate_lattice_size(lattice_size)
    heights, species, oxide, react_class = _empty_fields(lx, ly, lz)
    dep_total = make_rate_tables(params).dep.sum()
    leaves = jnp.full((lx * ly,), dep_total, jnp.float64)
    tree = sumtree.build(leaves)
    total = sumtree.root(tree)
    status = jnp.where(total > 0, RUNNING, NO_EVENTS).astype(jnp.int32)
    return LatticeState(
        heights=heights, species=species, oxide=oxide, react_class=react_class, tree=tree,
        total=total, status=status, lx=lx, ly=ly, lz=lz, **zero_counters(),
    )


def check_sos(heights, species, oxide) -> None:
    """Raises ValueError unless the arrays describe a valid SOS film (host-side check)."""
    heights = np.asarray(heights)
    species = np.asarray(species)
    oxide = np.asarray(oxide)
    lx, ly, lz = species.shape
    if heights.shape != (lx, ly):
        raise ValueError(f"heights has shape {heights.shape}, expected {(lx, ly)}")
    if heights.min() < 0 or heights.max() > lz - 1:
        raise ValueError(f"heights must lie in [0, {lz - 1}]")
    z = np.arange(lz)[None, None, :]
    filled = (z >= 1) & (z <= heights[..., None])
    if not np.all(species[..., 0] == SUBSTRATE):
        raise ValueError("layer z = 0 must be substrate")
    if not np.all(np.isin(species[..., 1:][filled[..., 1:]], (TI, O))):
        raise ValueError("every site 1 <= z <= h must hold Ti or O (no voids)")
    if not np.all(species[~filled & (z >= 1)] == 0):
        raise ValueError("every site above h must be vacant (no floating atoms)")
    if not np.all(oxide[~filled] == 0):
        raise ValueError("oxide flags are only allowed on film atoms")


# --------------------------------------------------------------------------- views and amounts


def height_map(state: LatticeState) -> jnp.ndarray:
    """(Lx, Ly) int32 heights in layers."""
    return state.heights[: state.n_columns].reshape(state.lx, state.ly)


def film_arrays(state: LatticeState):
    """(heights (Lx, Ly), species (Lx, Ly, Lz), oxide (Lx, Ly, Lz)) without the dummy column."""
    c = state.n_columns
    shape = (state.lx, state.ly, state.lz)
    return (
        height_map(state),
        state.species[:c].reshape(shape),
        state.oxide[:c].reshape(shape),
    )


def atoms_present(state: LatticeState) -> jnp.ndarray:
    """(2,) int64 [N_Ti, N_O] from the bookkeeping counters (deposited - desorbed)."""
    return state.deposited - state.desorbed


def deposit_target(n_columns: int, monolayers: float) -> int:
    """Atoms to deposit for ``monolayers`` ML on ``n_columns`` columns: ``max(1, ceil(θ · C))``.

    The one definition of "a deposited amount" used by thickness-ended episodes, production runs
    (``--monolayers``) and the sampling benchmark, so that runs compared "at θ ML" have deposited
    exactly the same number of atoms.
    """
    return max(1, math.ceil(float(monolayers) * int(n_columns)))


def deposit_target_traced(monolayers, n_columns: int) -> jnp.ndarray:
    """:func:`deposit_target` for a (possibly traced) ``monolayers`` θ: ``max(1, ceil(θ · C))``
    atoms as float64 (the same float64 product, so the same integer)."""
    return jnp.maximum(1.0, jnp.ceil(jnp.asarray(monolayers, jnp.float64) * n_columns))


def deposited_atoms(state: LatticeState) -> jnp.ndarray:
    """() int64 atoms deposited so far (Ti + O, desorbed ones included): the deposited amount."""
    return jnp.sum(state.deposited)
