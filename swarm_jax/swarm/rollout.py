"""Growing a batch of replicas from a flat substrate to a deposited amount (thickness-ended runs).

An episode is defined by physics, not by the box: each replica runs until it has deposited
exactly ``target`` atoms (:func:`swarm_jax.physics.lattice.deposited_atoms`, the one definition
of a deposited amount; ``target = deposit_target(C, θ)`` for θ ML). The step that executes the
deposit reaching the target is the replica's last; later steps of the batch are masked (the
replica is unchanged). A replica whose box fills first (status ``CEILING``) or that runs out of
events stops there *before* the target: it is never dropped silently, :class:`GrowthResult`
flags it (``ceiling``, ``reached``) so callers count it.

Two ways to grow:

* :func:`grow_classical`: classical KMC through the plain engine
  (:func:`swarm_jax.physics.engine.step_with_uniforms`, vmapped over replicas, uniforms drawn per
  chunk of steps): the fastest way a user has, and the reference every sampler is judged against.
* :func:`grow_sampler`: the SwarmThinkers decision (:func:`swarm_jax.swarm.policy.candidates_step`)
  with any ``logits_fn(params, candidate features (K, D), global (G,)) -> (K,)``: a trained actor
  (:meth:`swarm_jax.trained_policy.TrainedPolicy.logits`) or a hand-made one such as
  :func:`tilt_logits`. The trajectory log-weight ``log W = Σ_t −log(K π_{a_t})`` is accumulated
  in float64, so ``E_physics[A] = E_sampler[W·A]`` (docs/physics.md, SwarmThinkers).

The sampler's "progress" global feature is ``clip(deposited_atoms / target, 0, 1)``, the
definition thickness-ended training episodes use, so a learned policy sees the features it was
trained on.

Everything here is pure and jit-able; loops over steps are ``lax`` loops (a ``while_loop`` over
chunks, stopping when no replica is left running or after ``max_chunks`` chunks).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from flax import struct

from swarm_jax.physics.engine import step_with_uniforms
from swarm_jax.physics.film_observables import FilmStats, height_stats
from swarm_jax.physics.lattice import CEILING, RUNNING, deposited_atoms, init_flat
from swarm_jax.physics.params import PhysicsParams, make_rate_tables
from swarm_jax.swarm.features import CANDIDATE_LAYOUT
from swarm_jax.swarm.policy import CandidatePolicy, candidate_carry, candidates_step

__all__ = ["GrowthSpec", "GrowthResult", "flat_film_stats", "grow_classical", "grow_sampler", "tilt_logits"]

LogitsFn = Callable[..., jnp.ndarray]


@dataclasses.dataclass(frozen=True)
class GrowthSpec:
    """What to grow (static: one compiled program per spec).

    Attributes:
      lattice_size: (Lx, Ly, Lz) sites of the box.
      target: atoms to deposit per replica (``deposit_target(Lx·Ly, θ)``), >= 1.
      n_replicas: replicas grown together (vmapped), >= 1.
      chunk: steps per ``while_loop`` iteration (uniforms / keys are drawn per chunk).
      max_chunks: hard bound on the chunks run (a replica still running after it has
        ``reached = False`` and ``ceiling = False``: counted as truncated).
    """

    lattice_size: tuple
    target: int
    n_replicas: int
    chunk: int = 64
    max_chunks: int = 1_000_000

    def __post_init__(self):
        for name in ("target", "n_replicas", "chunk", "max_chunks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GrowthSpec.{name} = {value!r}: must be an integer >= 1")
        object.__setattr__(self, "lattice_size", tuple(int(v) for v in self.lattice_size))


@struct.dataclass
class GrowthResult:
    """Final state of each replica (leading axis n = replicas).

    Attributes:
      roughness: (n,) float64 W = sqrt(mean((h − mean h)²)) in layers.
      mean_height: (n,) float64 mean column height, ML.
      sum_h: (n,) int64 Σ_c h_c (atoms present).
      sum_h2: (n,) int64 Σ_c h_c² (with ``sum_h``, W² = Σh²/C − (Σh/C)² exactly).
      log_weight: (n,) float64 trajectory log importance weight log W (0 for classical).
      steps: (n,) int64 events executed.
      deposited: (n,) int64 atoms deposited (Ti + O, gross).
      reached: (n,) bool the replica deposited ``target`` atoms.
      ceiling: (n,) bool the replica's box filled (status CEILING) before the target.
      time: (n,) float64 physical time at the end, s.
    """

    roughness: jnp.ndarray
    mean_height: jnp.ndarray
    sum_h: jnp.ndarray
    sum_h2: jnp.ndarray
    log_weight: jnp.ndarray
    steps: jnp.ndarray
    deposited: jnp.ndarray
    reached: jnp.ndarray
    ceiling: jnp.ndarray
    time: jnp.ndarray


def _replicas(spec: GrowthSpec, physics: PhysicsParams):
    one = init_flat(spec.lattice_size, physics)
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (spec.n_replicas,) + x.shape), one)


def _running(lattice, target: int) -> jnp.ndarray:
    """(n,) bool: replicas that still step (running and below the target)."""
    return (lattice.status == RUNNING) & (jax.vmap(deposited_atoms)(lattice) < target)


def _result(lattice, log_weight, target: int) -> GrowthResult:
    c = lattice.lx * lattice.ly
    h = lattice.heights[:, :c].astype(jnp.int64)
    heights = jax.vmap(height_stats)(lattice)
    deposited = jax.vmap(deposited_atoms)(lattice)
    reached = deposited >= target
    return GrowthResult(
        roughness=heights["roughness"], mean_height=heights["mean_height"],
        sum_h=h.sum(axis=1), sum_h2=(h * h).sum(axis=1),
        log_weight=log_weight, steps=lattice.n_events, deposited=deposited, reached=reached,
        ceiling=(lattice.status == CEILING) & ~reached, time=lattice.time)


def _chunked(spec: GrowthSpec, carry, chunk_fn, lattice_of):
    """Runs ``chunk_fn(i, carry) -> carry`` until no replica runs or ``max_chunks`` is reached.
    ``lattice_of(carry)`` is the batched lattice."""

    def cond(state):
        i, carry = state
        return (i < spec.max_chunks) & jnp.any(_running(lattice_of(carry), spec.target))

    def body(state):
        i, carry = state
        return i + 1, chunk_fn(i, carry)

    return jax.lax.while_loop(cond, body, (jnp.asarray(0, jnp.int64), carry))[1]


def grow_classical(spec: GrowthSpec, physics: PhysicsParams, key: jax.Array) -> GrowthResult:
    """Classical KMC replicas grown to ``spec.target`` deposited atoms through the plain engine.

    Each chunk draws ``(chunk, n, 3)`` float64 uniforms and applies ``chunk`` vmapped
    :func:`~swarm_jax.physics.engine.step_with_uniforms` steps, each enabled only for replicas
    still below the target. ``log_weight`` is 0 (the physical dynamics).
    """
    tables = make_rate_tables(physics)
    step = jax.vmap(lambda s, u, on: step_with_uniforms(s, tables, u, on)[0])

    def chunk_fn(i, carry):
        u = jax.random.uniform(jax.random.fold_in(key, i), (spec.chunk, spec.n_replicas, 3), jnp.float64)

        def one(j, lattice):
            return step(lattice, u[j], _running(lattice, spec.target))

        return jax.lax.fori_loop(0, spec.chunk, one, carry)

    lattice = _chunked(spec, _replicas(spec, physics), chunk_fn, lambda lattice: lattice)
    return _result(lattice, jnp.zeros((spec.n_replicas,), jnp.float64), spec.target)


def flat_film_stats(spec: GrowthSpec) -> FilmStats:
    """``film_stats`` of ``n_replicas`` flat substrates in closed form (all C columns at h = 0, no
    oxide): no scatter over a constant lattice for XLA to fold at compile time."""
    lz, n = spec.lattice_size[2], spec.n_replicas
    c = spec.lattice_size[0] * spec.lattice_size[1]
    counts = jnp.concatenate([jnp.full((n, 1), c, jnp.int64), jnp.zeros((n, lz - 1), jnp.int64)], axis=1)
    return FilmStats(height_counts=counts, n_oxide=jnp.zeros((n,), jnp.int64))


def grow_sampler(spec: GrowthSpec, physics: PhysicsParams, logits_fn: LogitsFn, params, n_swarm: int,
                 key: jax.Array) -> GrowthResult:
    """Replicas grown to ``spec.target`` atoms by the SwarmThinkers decision with ``logits_fn``.

    Each step is :func:`~swarm_jax.swarm.policy.candidates_step` (``n_swarm`` candidates drawn
    from physics, one chosen by ``softmax(logits_fn(params, feats, glob))``), enabled only for
    replicas below the target, with progress ``clip(deposited / target, 0, 1)``. The returned
    ``log_weight`` is ``Σ_t −log(K π_{a_t})`` in float64 (0 for a uniform ``logits_fn``).
    """
    policy = CandidatePolicy(tables=make_rate_tables(physics), physics=physics, params=params,
                             logits_fn=logits_fn, n_swarm=n_swarm)

    def one_replica(carry, k, on):
        progress = jnp.clip(deposited_atoms(carry.lattice) / spec.target, 0.0, 1.0)
        return candidates_step(carry, policy, k, progress, on)

    step = jax.vmap(one_replica)

    def chunk_fn(i, carry):
        keys = jax.random.split(jax.random.fold_in(key, i), (spec.chunk, spec.n_replicas))

        def one(j, carry):
            return step(carry, keys[j], _running(carry.lattice, spec.target))

        return jax.lax.fori_loop(0, spec.chunk, one, carry)

    carry = candidate_carry(_replicas(spec, physics), flat_film_stats(spec))
    carry = _chunked(spec, carry, chunk_fn, lambda carry: carry.lattice)
    return _result(carry.lattice, carry.log_weight, spec.target)


_KIND = CANDIDATE_LAYOUT["kind"]
_Z_ABOVE_MEAN = CANDIDATE_LAYOUT["z_above_mean"].start
#: The feature ``z_above_mean`` is ``clip(z − mean h, −8, 8) / 4``; for a deposition z = h + 1.
Z_ABOVE_MEAN_SCALE = 4.0


def tilt_logits(s, cand_feats: jnp.ndarray, glob: jnp.ndarray) -> jnp.ndarray:
    """The hand-made exponential tilt: logit ``−s·(h_j − mean h)`` for a deposition candidate on a
    column of height ``h_j``, 0 for every other kind, so ``π(j) ∝ exp(−s·(h_j − mean h))`` over the
    depositions (weight 1 for the other kinds); ``s > 0`` favours low columns (smooth films).

    Read from the candidate features (``logits_fn`` signature, ``params = s``): the landing site
    is z = h_j + 1 and the feature holds ``clip(z − mean h, −8, 8) / 4``, so ``h_j − mean h`` is
    recovered exactly for ``|h_j + 1 − mean h| ≤ 8`` layers and saturates beyond (the tilt then
    treats all columns further than 8 layers from the mean alike; the weights stay exact).

    Args:
      s: tilt strength, 1/layer (a traced scalar is fine).
      cand_feats: (K, D) candidate features. glob: (G,) global features (unused).

    Returns:
      (K,) float32 logits.
    """
    del glob
    kind = cand_feats[:, _KIND]
    is_dep = kind[:, 0] + kind[:, 1]  # deposit Ti, deposit O one-hot
    h_minus_mean = cand_feats[:, _Z_ABOVE_MEAN] * Z_ABOVE_MEAN_SCALE - 1.0
    return (is_dep * (-jnp.asarray(s, jnp.float32) * h_minus_mean)).astype(jnp.float32)

