"""Observables of a film (docs/physics.md, Observables): the one place that computes them.

Roughness W, mean height, coverage and the extreme heights come from :func:`height_stats` (from
the height map, O(C)) or :func:`height_stats_from_counts` (from a height histogram, O(Lz));
composition (O/Ti, oxide fraction) from :func:`o_ti_ratio` and :func:`oxide_fraction`;
:func:`observables` gathers them for one lattice. The environment's reward and observation, the
policy's global features, production outputs and the sampling benchmark all read these.

:class:`FilmStats` keeps the height histogram and the oxide count up to date per event
(:func:`update_film_stats`), so a production decision gets the global features in O(Lz + K)
instead of an O(N) pass over the lattice.

This module is ``swarm_jax.physics.film_observables``; ``swarm_jax.physics.observables`` is the
function :func:`observables` (``from swarm_jax.physics import observables``).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import struct

from swarm_jax.physics.engine import Event, hop_target
from swarm_jax.physics.lattice import DEPOSIT_O, DEPOSIT_TI, DESORB, HOP, REACT, LatticeState, atoms_present

__all__ = ["height_stats", "height_stats_from_counts", "mean_height_from_atoms", "o_ti_ratio", "oxide_fraction", "observables",
           "FilmStats", "film_stats", "update_film_stats"]


def height_stats(state: LatticeState) -> dict:
    """Statistics of the height map, O(C): ``mean_height`` (ML), ``roughness`` W (layers, the RMS
    deviation of h from its mean), ``coverage`` (fraction of columns with h > 0), ``h_max``,
    ``h_min`` (layers); float64 scalars."""
    h = state.heights[: state.n_columns].astype(jnp.float64)
    mean_h = h.mean()
    return dict(
        mean_height=mean_h,
        roughness=jnp.sqrt(jnp.mean((h - mean_h) ** 2)),
        coverage=jnp.mean((h > 0).astype(jnp.float64)),
        h_max=h.max(),
        h_min=h.min(),
    )


def height_stats_from_counts(height_counts: jnp.ndarray, n_columns: int) -> dict:
    """:func:`height_stats` from a height histogram ``height_counts`` (Lz,) (columns at each
    h = 0 .. Lz − 1) in O(Lz); the same keys and values up to float64 rounding."""
    lz = height_counts.shape[0]
    levels = jnp.arange(lz, dtype=jnp.float64)
    counts = height_counts.astype(jnp.float64)
    mean_h = jnp.sum(levels * counts) / n_columns
    present = height_counts > 0
    return dict(
        mean_height=mean_h,
        roughness=jnp.sqrt(jnp.sum(counts * (levels - mean_h) ** 2) / n_columns),
        coverage=1.0 - counts[0] / n_columns,
        h_max=jnp.max(jnp.where(present, levels, 0.0)),
        h_min=jnp.min(jnp.where(present, levels, float(lz - 1))),
    )


def mean_height_from_atoms(state: LatticeState) -> jnp.ndarray:
    """Mean height (ML) from the atom counters in O(1): the film's atoms fill its columns exactly
    (SOS), so ``Σ_c h_c = N_Ti + N_O`` (:func:`~swarm_jax.physics.lattice.atoms_present`)."""
    return jnp.sum(atoms_present(state)) / state.n_columns


def o_ti_ratio(n_ti, n_o) -> jnp.ndarray:
    """Atom-count ratio O/Ti of a film, float64; 0 while it holds no Ti."""
    return jnp.where(n_ti > 0, jnp.asarray(n_o, jnp.float64) / jnp.maximum(n_ti, 1), 0.0)


def oxide_fraction(n_oxide, n_atoms) -> jnp.ndarray:
    """Fraction of the film's atoms carrying the oxide flag, float64; 0 for an empty film."""
    return jnp.where(n_atoms > 0, n_oxide / jnp.maximum(n_atoms, 1), 0.0)


def observables(state: LatticeState, heights: dict | None = None) -> dict:
    """Morphology and composition of docs/physics.md, Observables (O(C) in the number of columns).

    Returns a dict of scalars: ``mean_height`` (ML), ``roughness`` W (layers; x a for Å),
    ``coverage`` (fraction of columns with h > 0), ``n_ti``, ``n_o``, ``o_ti_ratio`` (0 when no Ti),
    ``oxide_fraction`` (oxide atoms / film atoms; an O(N) count over the oxide flags), ``fill_fraction`` (mean h / (Lz - 1)),
    ``time`` (s). ``heights``: this state's :func:`height_stats` when the caller has them already.
    """
    hs = height_stats(state) if heights is None else heights
    n = atoms_present(state)
    n_ti, n_o = n[0], n[1]
    return dict(
        mean_height=hs["mean_height"],
        roughness=hs["roughness"],
        coverage=hs["coverage"],
        n_ti=n_ti,
        n_o=n_o,
        o_ti_ratio=o_ti_ratio(n_ti, n_o),
        oxide_fraction=oxide_fraction(state.n_oxide, n_ti + n_o),
        fill_fraction=hs["mean_height"] / (state.lz - 1),
        time=state.time,
    )


# --------------------------------------------------------------------------- incremental statistics


@struct.dataclass
class FilmStats:
    """What the global features need beyond the lattice's O(1) counters, kept up to date per event.

    Attributes:
      height_counts: (Lz,) int64 number of columns at each height h = 0 .. Lz - 1.
      n_oxide: () int64 atoms carrying the oxide flag.
    """

    height_counts: jnp.ndarray
    n_oxide: jnp.ndarray


def film_stats(lattice: LatticeState) -> FilmStats:
    """:class:`FilmStats` of ``lattice`` from scratch (O(N); at initialisation and in tests)."""
    h = lattice.heights[: lattice.n_columns]
    counts = jnp.zeros((lattice.lz,), jnp.int64).at[h].add(1)
    return FilmStats(height_counts=counts, n_oxide=lattice.n_oxide)


def update_film_stats(stats: FilmStats, event: Event, new_lattice: LatticeState, active) -> FilmStats:
    """Stats after ``event`` (drawn from the previous state, executed iff ``active``) from the new
    lattice: heights of the event column (and hop target) change by ±1, a reaction flags 3 atoms,
    a desorbing oxide atom takes its flag away. Only the new heights are read (in-place safe)."""
    kind = event.kind
    is_dep = (kind == DEPOSIT_TI) | (kind == DEPOSIT_O)
    is_hop = kind == HOP
    is_des = kind == DESORB
    target = hop_target(event.column, event.slot, new_lattice.lx, new_lattice.ly)
    dh_c = jnp.where(is_dep, 1, jnp.where(is_hop | is_des, -1, 0)) * active
    dh_t = is_hop.astype(jnp.int32) * active
    lz = new_lattice.lz
    h_c, h_t = new_lattice.heights[event.column], new_lattice.heights[target]
    counts = stats.height_counts
    counts = counts.at[jnp.clip(h_c - dh_c, 0, lz - 1)].add(-jnp.abs(dh_c))
    counts = counts.at[jnp.clip(h_c, 0, lz - 1)].add(jnp.abs(dh_c))
    counts = counts.at[jnp.clip(h_t - dh_t, 0, lz - 1)].add(-dh_t)
    counts = counts.at[jnp.clip(h_t, 0, lz - 1)].add(dh_t)
    d_ox = jnp.where(kind == REACT, 3, jnp.where(is_des, -event.top_oxide.astype(jnp.int64), 0)) * active
    return FilmStats(height_counts=counts, n_oxide=stats.n_oxide + d_ox)
