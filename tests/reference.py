"""A slow, from-scratch NumPy reference of the TiO2 SOS KMC model, written from docs/physics.md.

It shares no logic with ``swarm_jax.physics``: the film is a plain 3-D array, every rate of
the lattice is recomputed from scratch with ``nu * exp(-E / kT)`` on every call, events are applied
site by site, and the BKL step chooses among all events of the flattened catalogue with a
float64 cumulative sum. It exists to hold the JAX engine to the physics contract in tests.

Conventions (the decisions the engine also takes, docs/physics.md, Lattice and Events and rates):

- arrays ``species[x, y, z]`` (0 vacant, 1 Ti, 2 O, 3 substrate), ``oxide[x, y, z]`` (0/1) and
  ``heights[x, y]`` (z of the top atom, 0 = bare substrate); periodic in x and y;
- the substrate layer z = 0 is never a bond partner, an O partner or an "occupied" neighbour;
- a column is full at ``h = Lz - 1``: nothing is deposited on it or hops onto it;
- catalogue per column ``c = x * Ly + y``: slot 0 deposit Ti, 1 deposit O, 2..5 hop of the top
  atom towards +x, -x, +y, -y, 6 desorb the top atom, ``7 + z`` reaction of the Ti at height z;
- a reaction flags the Ti and the first two non-oxide O among its 6 NN in the order
  +x, -x, +y, -y, above (z + 1), below (z - 1).

Units: rates in Hz, time in s, energies in eV, temperature in K.
"""

from __future__ import annotations

import math

import numpy as np

K_B = 8.617333e-5  # eV/K, docs/physics.md, Units

VACANT, TI, O, SUBSTRATE = 0, 1, 2, 3
KIND_DEPOSIT_TI, KIND_DEPOSIT_O, KIND_HOP, KIND_DESORB, KIND_REACT = 0, 1, 2, 3, 4
STATUS_RUNNING, STATUS_CEILING, STATUS_NO_EVENTS = 0, 1, 2

# Lateral directions in the fixed order +x, -x, +y, -y.
LATERAL = ((1, 0), (-1, 0), (0, 1), (0, -1))


def slot_kind(slot: int) -> int:
    """Event kind of a catalogue slot."""
    if slot == 0:
        return KIND_DEPOSIT_TI
    if slot == 1:
        return KIND_DEPOSIT_O
    if 2 <= slot <= 5:
        return KIND_HOP
    if slot == 6:
        return KIND_DESORB
    return KIND_REACT


def check_sos(heights, species, oxide) -> None:
    """Asserts the SOS invariant (docs/physics.md, Lattice) on (Lx, Ly) / (Lx, Ly, Lz) arrays."""
    heights = np.asarray(heights)
    species = np.asarray(species)
    oxide = np.asarray(oxide)
    lx, ly, lz = species.shape
    assert heights.shape == (lx, ly)
    for x in range(lx):
        for y in range(ly):
            h = int(heights[x, y])
            assert 0 <= h <= lz - 1, f"height {h} out of range at {(x, y)}"
            assert species[x, y, 0] == SUBSTRATE, f"substrate missing at {(x, y)}"
            assert oxide[x, y, 0] == 0, f"oxide flag on substrate at {(x, y)}"
            for z in range(1, lz):
                if z <= h:
                    assert species[x, y, z] in (TI, O), f"void at {(x, y, z)}"
                else:
                    assert species[x, y, z] == VACANT, f"floating atom at {(x, y, z)}"
                    assert oxide[x, y, z] == 0, f"oxide flag on vacant site {(x, y, z)}"


class ReferenceLattice:
    """The SOS film and its counters; every rate recomputed from scratch on demand.

    Args:
      heights: (Lx, Ly) ints. species, oxide: (Lx, Ly, Lz) ints. params: a ``PhysicsParams``
      (only its float fields are read).
    """

    def __init__(self, heights, species, oxide, params):
        self.species = np.array(species, dtype=np.int64)
        self.oxide = np.array(oxide, dtype=np.int64)
        self.heights = np.array(heights, dtype=np.int64)
        self.lx, self.ly, self.lz = self.species.shape
        check_sos(self.heights, self.species, self.oxide)
        self.params = params
        self.time = 0.0
        self.n_events = 0
        self.event_counts = np.zeros(5, np.int64)
        # Atoms already present count as deposited, so deposited - desorbed = atoms present.
        self.deposited = np.array([(self.species == TI).sum(), (self.species == O).sum()], np.int64)
        self.desorbed = np.zeros(2, np.int64)
        self.status = STATUS_RUNNING
        self._update_status()

    # ------------------------------------------------------------------ construction helpers

    @classmethod
    def flat(cls, lattice_size, params):
        lx, ly, lz = lattice_size
        species = np.zeros((lx, ly, lz), np.int64)
        species[:, :, 0] = SUBSTRATE
        return cls(np.zeros((lx, ly), np.int64), species, np.zeros_like(species), params)

    @classmethod
    def from_engine(cls, state, params):
        """Copies an engine ``LatticeState`` (arrays and counters) into a reference lattice."""
        from swarm_jax.physics import film_arrays

        heights, species, oxide = (np.asarray(a) for a in film_arrays(state))
        ref = cls(heights, species, oxide, params)
        ref.time = float(state.time)
        ref.n_events = int(state.n_events)
        ref.event_counts = np.asarray(state.event_counts, np.int64).copy()
        ref.deposited = np.asarray(state.deposited, np.int64).copy()
        ref.desorbed = np.asarray(state.desorbed, np.int64).copy()
        ref.status = int(state.status)
        return ref

    def to_engine(self):
        """A fresh engine ``LatticeState`` with the same film (engine counters start at zero)."""
        from swarm_jax.physics import from_arrays

        return from_arrays(self.heights, self.species.astype(np.int8), self.oxide.astype(np.int8), self.params)

    # ------------------------------------------------------------------ geometry

    @property
    def n_columns(self) -> int:
        return self.lx * self.ly

    @property
    def n_slots(self) -> int:
        return 7 + self.lz

    def column_xy(self, column: int):
        return column // self.ly, column % self.ly

    def neighbour_xy(self, x: int, y: int, direction: int):
        dx, dy = LATERAL[direction]
        return (x + dx) % self.lx, (y + dy) % self.ly

    def is_film_atom(self, x: int, y: int, z: int) -> bool:
        """True for a Ti or O at (x, y, z); substrate, vacancies and sites outside the box are not."""
        return 0 <= z < self.lz and self.species[x, y, z] in (TI, O)

    # ------------------------------------------------------------------ energies and rates

    def _kT(self) -> float:
        return K_B * float(self.params.temperature)

    def _arrhenius(self, energy: float) -> float:
        return float(self.params.attempt_frequency) * math.exp(-energy / self._kT())

    def _pair_bond(self, s1: int, s2: int) -> float:
        """E_n(s, s') = lambda |eps(s, s')| in eV."""
        p = self.params
        if {s1, s2} == {TI, O}:
            eps = p.eps_ti_o
        elif s1 == s2 == TI:
            eps = p.eps_ti_ti
        elif s1 == s2 == O:
            eps = p.eps_o_o
        else:
            raise ValueError((s1, s2))
        return float(p.bond_scale) * abs(float(eps))

    def lateral_bond_energy(self, x: int, y: int, z: int) -> float:
        """Sum of E_n over the occupied lateral neighbours of the atom at (x, y, z)."""
        s = int(self.species[x, y, z])
        energy = 0.0
        for d in range(4):
            nx, ny = self.neighbour_xy(x, y, d)
            if self.is_film_atom(nx, ny, z):
                energy += self._pair_bond(s, int(self.species[nx, ny, z]))
        return energy

    def deposition_rates(self):
        """(F_Ti S_Ti, F_O S_O) per column, Hz."""
        p = self.params
        f_ti = float(p.deposition_rate) / (1.0 + float(p.o_ti_flux_ratio))
        f_o = float(p.o_ti_flux_ratio) * f_ti
        return f_ti * float(p.sticking_ti), f_o * float(p.sticking_o)

    def hop_rate(self, x: int, y: int, direction: int) -> float:
        h = int(self.heights[x, y])
        if h < 1:
            return 0.0
        nx, ny = self.neighbour_xy(x, y, direction)
        h_target = int(self.heights[nx, ny])
        if h_target >= self.lz - 1:  # the target column is full
            return 0.0
        p = self.params
        s = int(self.species[x, y, h])
        e_diff = float(p.e_diff_ti) if s == TI else float(p.e_diff_o)
        energy = e_diff + self.lateral_bond_energy(x, y, h)
        if h_target + 1 < h:  # lands lower than it started: down a step
            energy += float(p.e_es)
        if self.oxide[x, y, h]:
            energy *= float(p.oxide_hop_factor)
        return self._arrhenius(energy)

    def desorb_rate(self, x: int, y: int) -> float:
        h = int(self.heights[x, y])
        if h < 1:
            return 0.0
        p = self.params
        s = int(self.species[x, y, h])
        e_des0 = float(p.e_des_ti) if s == TI else float(p.e_des_o)
        return self._arrhenius(e_des0 + self.lateral_bond_energy(x, y, h))

    def nearest_neighbours(self, x: int, y: int, z: int):
        """The 6 NN sites of (x, y, z) in the order +x, -x, +y, -y, above, below."""
        sites = [(*self.neighbour_xy(x, y, d), z) for d in range(4)]
        sites.append((x, y, z + 1))
        sites.append((x, y, z - 1))
        return sites

    def free_oxygen_neighbours(self, x: int, y: int, z: int):
        """NN sites of (x, y, z), in NN order, holding an O without the oxide flag."""
        return [
            (nx, ny, nz)
            for nx, ny, nz in self.nearest_neighbours(x, y, z)
            if self.is_film_atom(nx, ny, nz) and self.species[nx, ny, nz] == O and not self.oxide[nx, ny, nz]
        ]

    def react_rate(self, x: int, y: int, z: int) -> float:
        if self.species[x, y, z] != TI or self.oxide[x, y, z]:
            return 0.0
        if len(self.free_oxygen_neighbours(x, y, z)) < 2:
            return 0.0
        n = sum(self.is_film_atom(*site) for site in self.nearest_neighbours(x, y, z))
        p = self.params
        energy = float(p.e_react_scale) * (float(p.e_react_base) + float(p.e_react_slope) * n / 6.0)
        return self._arrhenius(energy)

    def react_classes(self) -> np.ndarray:
        """(Lx, Ly, Lz) int: the occupied-NN count n of every Ti that can react, -1 elsewhere."""
        out = np.full(self.species.shape, -1, np.int64)
        for x in range(self.lx):
            for y in range(self.ly):
                for z in range(1, self.lz):
                    if self.react_rate(x, y, z) > 0.0:
                        out[x, y, z] = sum(self.is_film_atom(*site) for site in self.nearest_neighbours(x, y, z))
        return out

    def column_rates(self, column: int) -> np.ndarray:
        """(7 + Lz,) rates of one column's catalogue, Hz."""
        x, y = self.column_xy(column)
        rates = np.zeros(self.n_slots, np.float64)
        if self.heights[x, y] < self.lz - 1:
            rates[0], rates[1] = self.deposition_rates()
        for d in range(4):
            rates[2 + d] = self.hop_rate(x, y, d)
        rates[6] = self.desorb_rate(x, y)
        for z in range(1, self.lz):
            rates[7 + z] = self.react_rate(x, y, z)
        return rates

    def all_rates(self) -> np.ndarray:
        """(Lx * Ly, 7 + Lz) rates of the whole catalogue, recomputed from scratch, Hz."""
        return np.stack([self.column_rates(c) for c in range(self.n_columns)])

    def total_rate(self) -> float:
        return float(self.all_rates().sum())

    # ------------------------------------------------------------------ events

    def _update_status(self) -> None:
        if self.status != STATUS_RUNNING:
            return  # a stopped run stays stopped
        if self.heights.max() >= self.lz - 1:
            self.status = STATUS_CEILING
        elif self.total_rate() <= 0.0:
            self.status = STATUS_NO_EVENTS

    def apply(self, column: int, slot: int) -> int:
        """Executes event ``slot`` of ``column`` (must have a positive rate); returns its kind."""
        assert self.status == STATUS_RUNNING, "the run has stopped"
        assert self.column_rates(column)[slot] > 0.0, f"event {(column, slot)} is impossible"
        x, y = self.column_xy(column)
        h = int(self.heights[x, y])
        kind = slot_kind(slot)
        if kind in (KIND_DEPOSIT_TI, KIND_DEPOSIT_O):
            s = TI if kind == KIND_DEPOSIT_TI else O
            self.species[x, y, h + 1] = s
            self.oxide[x, y, h + 1] = 0
            self.heights[x, y] = h + 1
            self.deposited[0 if s == TI else 1] += 1
        elif kind == KIND_HOP:
            nx, ny = self.neighbour_xy(x, y, slot - 2)
            h_target = int(self.heights[nx, ny])
            self.species[nx, ny, h_target + 1] = self.species[x, y, h]
            self.oxide[nx, ny, h_target + 1] = self.oxide[x, y, h]
            self.heights[nx, ny] = h_target + 1
            self.species[x, y, h] = VACANT
            self.oxide[x, y, h] = 0
            self.heights[x, y] = h - 1
        elif kind == KIND_DESORB:
            s = int(self.species[x, y, h])
            self.desorbed[0 if s == TI else 1] += 1
            self.species[x, y, h] = VACANT
            self.oxide[x, y, h] = 0
            self.heights[x, y] = h - 1
        else:
            z = slot - 7
            partners = self.free_oxygen_neighbours(x, y, z)[:2]
            self.oxide[x, y, z] = 1
            for site in partners:
                self.oxide[site] = 1
        self.n_events += 1
        self.event_counts[kind] += 1
        self._update_status()
        return kind

    def step(self, rng: np.random.Generator):
        """One BKL event: pick (column, slot) with probability rate / total over the whole flat
        catalogue, advance the clock by -ln(u) / total (total before the event), apply it.

        Returns ``(column, slot, kind, dt)`` or ``None`` when the run has stopped.
        """
        if self.status != STATUS_RUNNING:
            return None
        rates = self.all_rates()
        flat = rates.ravel()
        cumulative = np.cumsum(flat)
        total = cumulative[-1]
        index = int(np.searchsorted(cumulative, rng.random() * total, side="right"))
        index = min(index, flat.size - 1)
        while flat[index] <= 0.0:  # rounding at the very end can land on a zero-rate slot
            index -= 1
        column, slot = divmod(index, self.n_slots)
        dt = -math.log(1.0 - rng.random()) / total
        self.time += dt
        kind = self.apply(column, slot)
        return column, slot, kind, dt

    def run(self, rng: np.random.Generator, n_events: int) -> None:
        for _ in range(n_events):
            if self.step(rng) is None:
                return

    # ------------------------------------------------------------------ observables

    @property
    def n_oxide(self) -> int:
        return int(self.oxide.sum())

    def observables(self) -> dict:
        h = self.heights.astype(np.float64)
        mean_h = float(h.mean())
        return dict(
            mean_height=mean_h,
            roughness=math.sqrt(float(((h - mean_h) ** 2).mean())),
            coverage=float((h > 0).mean()),
            n_ti=int((self.species == TI).sum()),
            n_o=int((self.species == O).sum()),
            time=self.time,
        )
