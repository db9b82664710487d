"""Production stepping with a scoring function: the candidate-mode decision of a trained actor.

A decision draws K candidates i.i.d. from ``Γ_e / Γ_tot`` (``swarm_jax.swarm.candidates``), scores
them with ``logits_fn(params, candidate features, global features)``, chooses one through the
decision kernel shared with training (:func:`swarm_jax.swarm.decision.choose_candidate`) and
executes it (``docs/physics.md``, SwarmThinkers). :class:`~swarm_jax.physics.film_observables.FilmStats`
keeps the global features' statistics up to date per event so a decision costs O(Lz + K)
instead of an O(N) pass over the lattice.

:func:`candidates_step` is the one step of every candidate-mode loop: the production runner
(:func:`swarm_jax.production.runners.candidates_chunk`) and the sampling benchmark's
:func:`swarm_jax.swarm.rollout.grow_sampler` differ only in how they derive keys and progress.
The scoring function comes from :mod:`swarm_jax.trained_policy` (a trained actor loaded from a
checkpoint) or from anywhere else: this module knows nothing of networks or checkpoints.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from swarm_jax.physics.film_observables import FilmStats, film_stats, height_stats_from_counts, update_film_stats
from swarm_jax.physics.lattice import LatticeState
from swarm_jax.physics.params import PhysicsParams, RateTables
from swarm_jax.swarm.candidates import draw_candidates, execute_candidate
from swarm_jax.swarm.decision import choose_candidate
from swarm_jax.swarm.features import assemble_global_features, candidate_features

__all__ = ["FilmStats", "film_stats", "update_film_stats", "global_features_from_stats",
           "CandidatePolicy", "CandidateCarry", "candidate_carry", "candidates_step"]


def global_features_from_stats(lattice, stats: FilmStats, tables, physics, progress) -> jnp.ndarray:
    """:func:`swarm_jax.swarm.features.global_features` in O(Lz) from :class:`FilmStats` (same
    layout and values up to float64 rounding; ``tests/test_simulate_trained.py`` checks it)."""
    return assemble_global_features(
        lattice, tables, physics, progress,
        heights=height_stats_from_counts(stats.height_counts, lattice.n_columns),
        n_oxide=stats.n_oxide,
        n_open=lattice.n_columns - stats.height_counts[lattice.lz - 1],
    )


@struct.dataclass
class CandidatePolicy:
    """What a candidate-mode decision needs besides the film (unbatched; closed over by loops).

    Attributes:
      tables: the rate tables the lattices' sum trees were built with.
      physics: the physics parameters (global features).
      params: the scoring function's parameters (traced).
      logits_fn: ``logits_fn(params, features (K, D), global (G,)) -> (K,)`` (static).
      n_swarm: K, candidates per decision (static).
    """

    tables: RateTables
    physics: PhysicsParams
    params: Any
    logits_fn: Callable = struct.field(pytree_node=False)
    n_swarm: int = struct.field(pytree_node=False)


@struct.dataclass
class CandidateCarry:
    """Candidate-mode carry of one lattice (a batch has a leading (R,) axis on every leaf).

    Attributes:
      lattice: the film.
      log_weight: () float64 trajectory log importance weight ``Σ_t −log(K π_j)``.
      step_ess_sum: () float64 sum over executed events of the per-step ESS ratio.
      stats: :class:`FilmStats` of the film (global features in O(Lz)).
    """

    lattice: LatticeState
    log_weight: jnp.ndarray
    step_ess_sum: jnp.ndarray
    stats: FilmStats


def candidate_carry(lattice: LatticeState, stats: FilmStats | None = None) -> CandidateCarry:
    """The carry of a fresh run of ``lattice`` (log weight 0); ``stats`` default to
    :func:`film_stats` of it. Works on one lattice or, with ``stats`` given, on a batch."""
    shape = lattice.status.shape
    # Two arrays, not one shared: a production chunk donates the carry, every leaf its own buffer.
    return CandidateCarry(lattice=lattice, log_weight=jnp.zeros(shape, jnp.float64),
                          step_ess_sum=jnp.zeros(shape, jnp.float64),
                          stats=film_stats(lattice) if stats is None else stats)


def candidates_step(carry: CandidateCarry, policy: CandidatePolicy, key: jax.Array, progress,
                    enabled=True) -> CandidateCarry:
    """One SwarmThinkers decision in candidate mode (the environment's path, docs/physics.md, SwarmThinkers).

    Draws ``n_swarm`` candidates i.i.d. from ``Γ_e / Γ_tot``
    (:func:`~swarm_jax.swarm.candidates.draw_candidates`), scores them with ``policy.logits_fn``,
    chooses ``j ~ softmax`` (:func:`~swarm_jax.swarm.decision.choose_candidate`, log-weights in
    float64) and executes it with the physical clock
    (:func:`~swarm_jax.swarm.candidates.execute_candidate`), as the environment's step does. The
    global features come from ``carry.stats`` (O(Lz)), which are updated too.

    Args:
      carry: one lattice's :class:`CandidateCarry`.
      policy: the :class:`CandidatePolicy`.
      key: this decision's PRNG key.
      progress: the run's fraction done in [0, 1] (the global "progress" feature).
      enabled: False leaves everything unchanged (padding steps of a chunk).

    Returns:
      The carry after the decision: ``log_weight`` grows by ``−log(K π_j)`` and ``step_ess_sum``
      by the step's ESS ratio ``K² / Σ_j 1/π_j``, both only when an event was executed.
    """
    k_cand, k_choice, k_clock = jax.random.split(key, 3)
    lattice = carry.lattice
    candidates = draw_candidates(lattice, policy.tables, k_cand, policy.n_swarm)
    feats = candidate_features(lattice, candidates)
    glob = global_features_from_stats(lattice, carry.stats, policy.tables, policy.physics, progress)
    decision = choose_candidate(policy.logits_fn(policy.params, feats, glob), k_choice, jnp.float64)
    u_clock = jax.random.uniform(k_clock, (), jnp.float64)
    new, info = execute_candidate(lattice, policy.tables, candidates, decision.action, u_clock, enabled)
    return CandidateCarry(
        lattice=new,
        log_weight=carry.log_weight + jnp.where(info.active, decision.step_log_weight, 0.0),
        step_ess_sum=carry.step_ess_sum + jnp.where(info.active, decision.ess, 0.0),
        stats=update_film_stats(carry.stats, info.event, new, info.active),
    )
