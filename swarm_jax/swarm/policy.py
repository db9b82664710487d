"""Production stepping with a scoring function: the candidate-mode decision of a trained actor.

A decision draws K candidates i.i.d. from ``Γ_e / Γ_tot`` (``swarm_jax.swarm.candidates``), scores
them with ``logits_fn(params, candidate features, global features)``, samples one and executes it
(``docs/physics.md``, SwarmThinkers); :class:`FilmStats` keeps the global features' statistics up
to date per event so a decision costs O(Lz + K) instead of an O(N) pass over the lattice. The
scoring function comes from :mod:`swarm_jax.trained_policy` (a trained actor loaded from a
checkpoint) or from anywhere else: this module knows nothing of networks or checkpoints.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from swarm_jax.physics.engine import apply_event, waiting_time
from swarm_jax.physics.lattice import RUNNING
from swarm_jax.swarm.candidates import draw_candidates, select_candidate
from swarm_jax.swarm.features import assemble_global_features, candidate_features
from swarm_jax.swarm.weights import ess_ratio, step_log_weight

__all__ = ["FilmStats", "film_stats", "update_film_stats", "global_features_from_stats",
           "candidates_step"]


# --------------------------------------------------------------------------- candidate mode


@struct.dataclass
class FilmStats:
    """What the global features need beyond the lattice's O(1) counters, kept up to date per event
    so a decision costs O(Lz + K) instead of an O(N) pass over the lattice.

    Attributes:
      height_counts: (Lz,) int64 number of columns at each height h = 0 .. Lz - 1.
      n_oxide: () int64 atoms carrying the oxide flag.
    """

    height_counts: jnp.ndarray
    n_oxide: jnp.ndarray


def film_stats(lattice) -> FilmStats:
    """:class:`FilmStats` of ``lattice`` from scratch (O(N); at initialisation and in tests)."""
    h = lattice.heights[: lattice.n_columns]
    counts = jnp.zeros((lattice.lz,), jnp.int64).at[h].add(1)
    return FilmStats(height_counts=counts, n_oxide=lattice.n_oxide)


def update_film_stats(stats: FilmStats, event, new_lattice, active) -> FilmStats:
    """Stats after ``event`` (drawn from the previous state, executed iff ``active``) from the new
    lattice: heights of the event column (and hop target) change by ±1, a reaction flags 3 atoms,
    a desorbing oxide atom takes its flag away. Only the new heights are read (in-place safe)."""
    from swarm_jax.physics.engine import hop_target
    from swarm_jax.physics.lattice import DEPOSIT_O, DEPOSIT_TI, DESORB, HOP, REACT

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


def global_features_from_stats(lattice, stats: FilmStats, tables, physics, progress) -> jnp.ndarray:
    """:func:`swarm_jax.swarm.features.global_features` in O(Lz) from :class:`FilmStats` (same
    layout and values up to float64 rounding; ``tests/test_simulate_trained.py`` checks it)."""
    n_cols = lattice.n_columns
    top = lattice.lz - 1
    levels = jnp.arange(lattice.lz, dtype=jnp.float64)
    counts = stats.height_counts.astype(jnp.float64)
    mean_h = jnp.sum(levels * counts) / n_cols
    present = stats.height_counts > 0
    return assemble_global_features(
        lattice, tables, physics, progress,
        mean_h=mean_h,
        roughness=jnp.sqrt(jnp.sum(counts * (levels - mean_h) ** 2) / n_cols),
        h_max=jnp.max(jnp.where(present, levels, 0.0)),
        h_min=jnp.min(jnp.where(present, levels, float(top))),
        coverage=1.0 - counts[0] / n_cols,
        n_oxide=stats.n_oxide,
        n_open=n_cols - counts[top],
    )


def candidates_step(lattice, stats: FilmStats, tables, physics, logits_fn, params, key: jax.Array, n_swarm: int,
                    progress, enabled=True):
    """One SwarmThinkers decision in candidate mode (the environment's path, docs/physics.md, SwarmThinkers).

    Draws ``n_swarm`` candidates i.i.d. from ``Γ_e / Γ_tot``
    (:func:`~swarm_jax.swarm.candidates.draw_candidates`), scores them with
    ``logits_fn(params, features (K, D), global (G,)) -> (K,)``, samples ``j ~ softmax``, executes
    it (:func:`~swarm_jax.physics.engine.apply_event`) and advances the physical clock by
    ``−ln(1 − u) / Γ_tot`` (total before the event), as the environment's ``execute_candidate``.
    The global features come from ``stats`` (:class:`FilmStats`, O(Lz)), which is updated too.

    Args:
      progress: the run's fraction done in [0, 1] (the global "progress" feature).
      enabled: False leaves everything unchanged (padding steps of a chunk).

    Returns:
      ``(lattice, stats, step_log_weight, step_ess)``: ``−log(K π_j)`` (0 when nothing happened)
      and the per-step ESS ratio ``K² / Σ_j 1/π_j`` (1 when nothing happened).
    """
    k_cand, k_choice, k_clock = jax.random.split(key, 3)
    active = jnp.asarray(enabled) & (lattice.status == RUNNING)
    candidates = draw_candidates(lattice, tables, k_cand, n_swarm)
    feats = candidate_features(lattice, candidates)
    glob = global_features_from_stats(lattice, stats, tables, physics, progress)
    logits = logits_fn(params, feats, glob).astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float64))  # float64: uniform gives log w = 0
    action = jax.random.categorical(k_choice, logits)
    u_clock = jax.random.uniform(k_clock, (), jnp.float64)
    dt = jnp.where(active, waiting_time(lattice.total, u_clock), 0.0)
    event = select_candidate(candidates, action)
    new = apply_event(lattice, tables, event, active)
    new = new.replace(time=lattice.time + dt)
    stats = update_film_stats(stats, event, new, active)
    log_w = step_log_weight(log_probs, action)
    return new, stats, jnp.where(active, log_w, 0.0), jnp.where(active, ess_ratio(log_probs), 1.0)
