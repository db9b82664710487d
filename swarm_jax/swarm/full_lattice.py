"""Full-lattice SwarmThinkers sampling (docs/physics.md, "Full-lattice mode"): pure, jit/vmap-able.

Instead of K candidates, every event ``e`` of the catalogue (column ``c``, slot ``k``) is proposed
with probability ``q(e) = exp(f_e) Γ_e / Z``, ``Z = Σ_e exp(f_e) Γ_e``, where ``f_e`` is the
actor's per-candidate score (logit) of the event's feature vector. The physical clock advances by
``−ln(1 − u) / Γ_tot`` and the trajectory log-weight by ``log Z − f_e − log Γ_tot``
(``= log p(e) − log q(e)`` with ``p(e) = Γ_e / Γ_tot``), so ``E_physics[A] = E_q[W A]`` exactly.

Data structures (:class:`FullLatticeState`, a flax.struct carry; ``E = 7 + Lz`` slots per
column, ``C = Lx Ly`` columns plus the engine's dummy column):

* ``scores (C + 1, E) float32``: the cached, clipped score ``f`` of every (column, slot);
* ``wtree (R, B) float64``: a second rate tree (:mod:`swarm_jax.physics.sumtree`) whose leaf ``c``
  is ``Σ_k exp(f_ck) Γ_ck``; ``z_total`` is its root ``Z``, kept as its own field like the engine's
  ``Γ_tot`` (reading the root of the updated tree, never of the old one, keeps the tree update in
  place);
* the engine's :class:`~swarm_jax.physics.lattice.LatticeState` (rates, its own rate tree);
* ``log_weight``: ``log W`` so far; ``context``: see below.

A step draws a column from ``wtree`` (O(log C)), then a slot inside it from ``exp(f_ck) Γ_ck``
(fresh rates, cached scores, float64), executes it with the engine's :func:`execute_event`, and
rescores a fixed set of 21 columns around the event column (the **refresh neighbourhood**):

* an event changes heights, species and oxide flags only in the event column ``c`` and columns of
  its cross (hop target, reaction partners), and reaction classes only within the crosses of
  those, i.e. within lattice distance 2 of ``c``;
* the score of slot ``(c', k)`` reads the sites of the NN and second-NN shells and the heights of
  the 8 surrounding columns (the 3 × 3 block around ``c'``), the rate ``Γ_c'k`` (the cross of
  ``c'`` and the reaction class of ``c'`` itself) and the frozen context;
* so ``c'`` needs rescoring iff its 3 × 3 block meets the cross of ``c`` or its reaction classes
  changed: the 5 × 5 block around ``c`` without its four corners (21 columns; duplicates on tiny
  lattices carry identical values, which the tree update allows). No full-lattice pass per event.

**Reaction slots.** A column has ``Lz`` reaction slots but rarely more than one or two reactive
sites (reactions are fast). The network scores the 7 surface slots plus the ``react_slots``
topmost reactive sites of each column (static, default 4; ``>= Lz`` scores every slot); deeper
reactive sites take the score of the deepest scored one (see :func:`score_columns`). This cuts
network rows per event from ``21 (7 + Lz)`` to ``21 (7 + R)`` (1197 -> 231 at Lz = 50).

**Score context.** Besides local information, a score reads global quantities that change with
every event: the global feature vector ``g`` (mean height, roughness, progress, ...), ``Γ_tot``
(feature ``log10 Γ_e / Γ_tot``) and the mean height (feature ``z − mean h``). Cached scores are
only consistent with one value of these, so they are frozen in a :class:`ScoreContext` and
refreshed, together with a full rescoring of the lattice (O(C E) network evaluations, done in
column blocks), by :func:`refresh_context` (the production runner does this every
``refresh_every`` events). Between refreshes the proposal uses the frozen context; the weights
stay exact whatever the context, because they are computed from the very scores sampled from.

**Overflow guard.** Scores are clipped to ``[−F_CLIP, F_CLIP]`` with ``F_CLIP = 30`` (a fixed
clip rather than a running max: leaves stay comparable across the whole tree with no rescaling
pass). Rates lie in ``[~1e-60, 1e13]`` Hz and ``e^30 ≈ 1e13``, so every ``exp(f) Γ`` and every
tree node (≤ C · E · 1e26) is a normal float64 and a positive rate always keeps positive proposal
mass. Trained actors produce |f| of order 1–10 (the policy head is initialised at scale 0.01), so
the clip never binds in practice; when it does, sampling and weights use the clipped score
consistently and stay exact.

With ``f ≡ 0`` every leaf equals the engine's column rate, the draws are those of classical KMC
for the same uniforms, and every step log-weight is ``log Γ_tot − log Γ_tot = 0``
(``tests/test_full_lattice.py``).

A ``score_fn(params, features (M, D) float32, global (G,) float32) -> (M,) float32`` is a static
Python callable (e.g. :meth:`swarm_jax.trained_policy.TrainedPolicy.logits`); ``params`` is traced.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from swarm_jax.physics import sumtree
from swarm_jax.physics.engine import (
    N_SURFACE_EVENTS, Event, column_event_rates, events_per_column, execute_event,
)
from swarm_jax.physics.lattice import LatticeState
from swarm_jax.physics.params import PhysicsParams, RateTables
from swarm_jax.swarm.features import candidate_features, global_features

__all__ = [
    "F_CLIP", "DEFAULT_REACT_SLOTS", "NEIGHBOURHOOD_OFFSETS", "ScoreContext", "FullLatticeState", "ScoreFn",
    "refresh_columns", "make_context", "score_columns", "rescore_all", "init", "refresh_context",
    "step_with_uniforms", "step", "FullLatticeRun", "run_batch", "event_log_probs",
]

F_CLIP = 30.0  # |f| <= F_CLIP (see the module docstring)
DEFAULT_REACT_SLOTS = 4  # reactive sites per column scored by the network (see score_columns)
ROWS_PER_BLOCK = 16384  # network evaluations per block of a full rescoring (bounds memory)

# (dx, dy) of the refresh neighbourhood: |dx|, |dy| <= 2 without the four corners (21 columns).
NEIGHBOURHOOD_OFFSETS = np.array(
    [(dx, dy) for dx in range(-2, 3) for dy in range(-2, 3) if abs(dx) + abs(dy) <= 3], np.int32)

ScoreFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


@struct.dataclass
class ScoreContext:
    """The global inputs of the scores, frozen between refreshes.

    Attributes:
      global_features: (G,) float32, :func:`swarm_jax.swarm.features.global_features`.
      total: () float64 Γ_tot (Hz) used in the ``log10 Γ_e / Γ_tot`` feature.
      deposited, desorbed: (2,) int64 counters giving the mean height of the ``z − mean h``
        feature (atoms in the film / C).
    """

    global_features: jnp.ndarray
    total: jnp.ndarray
    deposited: jnp.ndarray
    desorbed: jnp.ndarray


@struct.dataclass
class FullLatticeState:
    """Carry of the full-lattice sampler (one lattice; vmap for replicas).

    Attributes:
      lattice: the film and the engine's rate tree.
      scores: (C + 1, E) float32 cached clipped scores f (the dummy row holds, in slot 0, the
        score of the last executed event; it is never sampled).
      wtree: (R, B) float64 rate tree of Σ_k exp(f_ck) Γ_ck per column (Hz).
      z_total: () float64 Z, its root (Hz).
      log_weight: () float64 trajectory log importance weight log W.
      context: the frozen :class:`ScoreContext`.
      since_refresh: () int64 enabled steps since the last context refresh (counted whether or
        not the lattice has stopped, so replicas run in lockstep keep equal counters).
    """

    lattice: LatticeState
    scores: jnp.ndarray
    wtree: jnp.ndarray
    z_total: jnp.ndarray
    log_weight: jnp.ndarray
    context: ScoreContext
    since_refresh: jnp.ndarray


# --------------------------------------------------------------------------- scoring


def refresh_columns(column: jnp.ndarray, lx: int, ly: int) -> jnp.ndarray:
    """(..., 21) int32 columns to rescore after an event at ``column`` (...,)."""
    off = jnp.asarray(NEIGHBOURHOOD_OFFSETS)
    x = column[..., None] // ly
    y = column[..., None] % ly
    return (((x + off[:, 0]) % lx) * ly + (y + off[:, 1]) % ly).astype(jnp.int32)


def make_context(lattice: LatticeState, tables: RateTables, physics: PhysicsParams, progress) -> ScoreContext:
    """The context of ``lattice`` now; ``progress`` in [0, 1] is the run's fraction done."""
    return ScoreContext(
        global_features=global_features(lattice, tables, physics, progress),
        total=lattice.total,
        deposited=lattice.deposited,
        desorbed=lattice.desorbed,
    )


def _scored_slots(rates: jnp.ndarray, react_slots: int):
    """Which slots of each column the network scores: the 7 surface slots and the reaction slots
    of the ``react_slots`` topmost sites with a non-zero reaction rate.

    Returns ``(slots (M, 7 + R) int32, scored (M, R) bool)``; a reaction entry with ``scored``
    False (fewer reactive sites than R) points at slot 7 and is ignored.
    """
    m, n_slots = rates.shape
    n_surface = N_SURFACE_EVENTS
    reactive = rates[:, n_surface:] > 0  # (M, Lz)
    rank = jnp.cumsum(reactive[:, ::-1], axis=1)[:, ::-1]  # reactive sites at or above z
    j = jnp.arange(1, react_slots + 1)
    hit = reactive[:, None, :] & (rank[:, None, :] == j[None, :, None])  # (M, R, Lz)
    z_sel = jnp.argmax(hit, axis=-1).astype(jnp.int32)
    surface = jnp.broadcast_to(jnp.arange(n_surface, dtype=jnp.int32), (m, n_surface))
    return jnp.concatenate([surface, n_surface + z_sel], axis=1), hit.any(axis=-1)


def score_columns(lattice: LatticeState, tables: RateTables, context: ScoreContext, cols: jnp.ndarray,
                  score_fn: ScoreFn, params, react_slots: int = DEFAULT_REACT_SLOTS):
    """Scores and rates of every slot of columns ``cols`` (M,).

    The network scores the 7 surface slots and the reaction slots of the ``react_slots`` topmost
    reactive sites of each column (all slots when ``react_slots >= Lz``). Reactive sites below
    those (rare: reactions are fast, so reactive sites seldom pile up in one column) take the
    score of the deepest scored one; slots with zero rate get 0 (their score is never used: a
    rate only changes when its column is rescored). The rule is column-local, so incremental and
    from-scratch scores agree, and sampling and weights stay exact whatever it gives.

    Returns ``(scores (M, E) float32 clipped, rates (M, E) float64 Hz, top_species (M,),
    top_oxide (M,))``. Candidate features are computed with the context's Γ_tot and mean height.
    """
    m = cols.shape[0]
    lz = lattice.lz
    n_slots = events_per_column(lz)
    rates, top_sp, top_ox = column_event_rates(lattice, tables, cols)
    compact = react_slots < lz
    if compact:
        slots, scored = _scored_slots(rates, react_slots)
    else:
        slots = jnp.broadcast_to(jnp.arange(n_slots, dtype=jnp.int32), (m, n_slots))
    per_col = slots.shape[1]
    events = Event(
        column=jnp.repeat(cols.astype(jnp.int32), per_col),
        slot=slots.reshape(-1),
        top_species=jnp.repeat(top_sp, per_col),
        top_oxide=jnp.repeat(top_ox, per_col),
        rate=jnp.take_along_axis(rates, slots, axis=1).reshape(-1),
    )
    frozen = lattice.replace(total=context.total, deposited=context.deposited, desorbed=context.desorbed)
    feats = candidate_features(frozen, events)
    f = score_fn(params, feats, context.global_features).astype(jnp.float32)
    f = jnp.clip(jnp.nan_to_num(f, nan=0.0), -F_CLIP, F_CLIP).reshape(m, per_col)
    if compact:
        n_surface = N_SURFACE_EVENTS
        f_react = f[:, n_surface:]  # (M, R)
        n_scored = jnp.sum(scored, axis=1)
        deepest = jnp.take_along_axis(f_react, jnp.maximum(n_scored - 1, 0)[:, None], axis=1)  # (M, 1)
        react = jnp.where(rates[:, n_surface:] > 0, deepest, 0.0)  # (M, Lz)
        z = jnp.arange(lz)
        for j in range(react_slots):  # static, small
            here = scored[:, j, None] & (z[None, :] == slots[:, n_surface + j, None] - n_surface)
            react = jnp.where(here, f_react[:, j, None], react)
        f = jnp.concatenate([f[:, :n_surface], react.astype(jnp.float32)], axis=1)
    return f, rates, top_sp, top_ox


def _leaf_values(scores: jnp.ndarray, rates: jnp.ndarray) -> jnp.ndarray:
    """(M,) float64 Σ_k exp(f_k) Γ_k."""
    return jnp.sum(jnp.exp(scores.astype(jnp.float64)) * rates, axis=-1)


def rescore_all(lattice: LatticeState, tables: RateTables, context: ScoreContext, score_fn: ScoreFn, params,
                react_slots: int = DEFAULT_REACT_SLOTS):
    """Scores of every (column, slot) and the weight tree, from scratch (O(C E) evaluations, in
    blocks of about ``ROWS_PER_BLOCK`` network rows). Returns ``(scores (C + 1, E), wtree)``."""
    c = lattice.n_columns
    n_slots = events_per_column(lattice.lz)
    block = max(1, min(c, ROWS_PER_BLOCK // n_slots))
    n_blocks = -(-c // block)
    cols = jnp.minimum(jnp.arange(n_blocks * block, dtype=jnp.int32), c - 1).reshape(n_blocks, block)

    def one_block(block_cols):
        f, rates, _, _ = score_columns(lattice, tables, context, block_cols, score_fn, params, react_slots)
        return f, _leaf_values(f, rates)

    f, leaves = jax.lax.map(one_block, cols)
    f = f.reshape(n_blocks * block, n_slots)[:c]
    leaves = leaves.reshape(-1)[:c]
    scores = jnp.zeros((c + 1, n_slots), jnp.float32).at[:c].set(f)
    return scores, sumtree.build(leaves)


def init(lattice: LatticeState, tables: RateTables, physics: PhysicsParams, score_fn: ScoreFn, params,
         progress=0.0, react_slots: int = DEFAULT_REACT_SLOTS) -> FullLatticeState:
    """The sampler's carry for ``lattice``: context now, every score computed, log W = 0."""
    context = make_context(lattice, tables, physics, progress)
    scores, wtree = rescore_all(lattice, tables, context, score_fn, params, react_slots)
    return FullLatticeState(
        lattice=lattice, scores=scores, wtree=wtree, z_total=sumtree.root(wtree),
        log_weight=jnp.zeros((), jnp.float64), context=context,
        since_refresh=jnp.zeros((), jnp.int64),
    )


def refresh_context(carry: FullLatticeState, tables: RateTables, physics: PhysicsParams, score_fn: ScoreFn,
                    params, progress, react_slots: int = DEFAULT_REACT_SLOTS) -> FullLatticeState:
    """A new context from the current film and a full rescoring (log W is kept)."""
    context = make_context(carry.lattice, tables, physics, progress)
    scores, wtree = rescore_all(carry.lattice, tables, context, score_fn, params, react_slots)
    return carry.replace(scores=scores, wtree=wtree, z_total=sumtree.root(wtree), context=context,
                         since_refresh=jnp.zeros_like(carry.since_refresh))


# --------------------------------------------------------------------------- sampling


def _select_slot(weights: jnp.ndarray, u) -> jnp.ndarray:
    """Slot k with probability weights_k / Σ weights (float64, never a zero-weight slot)."""
    cum = jnp.cumsum(weights)
    n = weights.shape[0]
    k = jnp.minimum(jnp.sum(cum <= u * cum[-1]), n - 1)
    last_nonzero = jnp.max(jnp.where(weights > 0, jnp.arange(n), 0))
    return jnp.where(weights[k] > 0, k, last_nonzero).astype(jnp.int32)


def step_with_uniforms(carry: FullLatticeState, tables: RateTables, score_fn: ScoreFn, params, u: jnp.ndarray,
                       enabled=True, react_slots: int = DEFAULT_REACT_SLOTS):
    """One full-lattice event for uniforms ``u = (u_column, u_slot, u_clock)`` in [0, 1).

    Returns ``(carry, StepInfo)``; a stopped lattice (or ``enabled`` False) is left unchanged.
    """
    lat = carry.lattice
    col = jnp.minimum(sumtree.sample(carry.wtree, u[0], carry.z_total), lat.n_columns - 1).astype(jnp.int32)
    rates, top_sp, top_ox = column_event_rates(lat, tables, col[None])
    f_col = carry.scores[col]
    k = _select_slot(jnp.exp(f_col.astype(jnp.float64)) * rates[0], u[1])
    event = Event(column=col, slot=k, top_species=top_sp[0], top_oxide=top_ox[0], rate=rates[0, k])
    new, info = execute_event(lat, tables, event, u[2], enabled)
    cols = refresh_columns(col, lat.lx, lat.ly)
    f, new_rates, _, _ = score_columns(new, tables, carry.context, cols, score_fn, params, react_slots)
    # In-place discipline (see swarm_jax.physics.engine): the log weight needs f_e from the old
    # score cache, and XLA duplicates small gathers (and the slot draw before them) into each
    # consumer, so reading it for the weight would copy the cache, or the lattice, on every event
    # (docs/engine.md, "The full-lattice sampler"). Instead f_e rides along in the scatter, in the
    # unused dummy row, and the weight reads it back from the new buffer.
    rows = jnp.concatenate([cols, jnp.full((1,), lat.dummy_column, jnp.int32)])
    f_e_row = jnp.zeros((1, f.shape[1]), jnp.float32).at[0, 0].set(f_col[k])
    scores = carry.scores.at[rows].set(jnp.concatenate([f, f_e_row]))
    f_e = scores[lat.dummy_column, 0].astype(jnp.float64)
    step_log_w = jnp.log(carry.z_total) - f_e - jnp.log(lat.total)
    wtree = sumtree.update(carry.wtree, cols, _leaf_values(f, new_rates))
    carry = carry.replace(
        lattice=new, scores=scores, wtree=wtree, z_total=sumtree.root(wtree),
        log_weight=carry.log_weight + jnp.where(info.active, step_log_w, 0.0),
        since_refresh=carry.since_refresh + jnp.asarray(enabled).astype(jnp.int64),
    )
    return carry, info


def step(carry: FullLatticeState, tables: RateTables, score_fn: ScoreFn, params, key: jax.Array,
         react_slots: int = DEFAULT_REACT_SLOTS):
    """One full-lattice event from a PRNG key. Returns ``(carry, StepInfo)``."""
    u = jax.random.uniform(key, (3,), jnp.float64)
    return step_with_uniforms(carry, tables, score_fn, params, u, True, react_slots)


def event_log_probs(carry: FullLatticeState, tables: RateTables) -> jnp.ndarray:
    """(C, E) log q(e) of every event from the cached scores and fresh rates (O(C E); for tests)."""
    lat = carry.lattice
    rates, _, _ = column_event_rates(lat, tables, jnp.arange(lat.n_columns, dtype=jnp.int32))
    w = jnp.exp(carry.scores[: lat.n_columns].astype(jnp.float64)) * rates
    return jnp.log(w) - jnp.log(jnp.sum(w))


# --------------------------------------------------------------------------- batched runs


@struct.dataclass
class FullLatticeRun:
    """What a full-lattice batch run needs besides the carry (unbatched; shared by every replica).

    Attributes:
      tables: the rate tables the lattices' sum trees were built with.
      physics: the physics parameters (global features).
      params: the scoring function's parameters (traced).
      refresh_every: int (traced): a full rescoring before an event once this many events ran
        since the last one.
      progress_scale: float (traced): progress = events done × ``progress_scale`` (1 / the run's
        expected events), capped at 1.
      score_fn: ``score_fn(params, features (M, D), global (G,)) -> (M,)`` (static).
      react_slots: reaction slots per lattice (static).
    """

    tables: RateTables
    physics: PhysicsParams
    params: Any
    refresh_every: Any
    progress_scale: Any
    score_fn: ScoreFn = struct.field(pytree_node=False)
    react_slots: int = struct.field(pytree_node=False, default=DEFAULT_REACT_SLOTS)


@partial(jax.jit, static_argnames=("n_events", "chunk"))
def run_batch(carry: FullLatticeState, run: FullLatticeRun, keys: jax.Array, n_events: int,
              chunk: int = 1024):
    """Advances a batch of lattices (every leaf of ``carry`` with a leading (R,) axis) by
    ``n_events`` events each.

    The context is refreshed (a full rescoring) before an event whenever ``run.refresh_every``
    events have run since the last refresh; all replicas run in lockstep, so the decision is
    taken once for the batch (replica 0's counter) and stays a real ``lax.cond`` under the
    replica ``vmap``. ``keys``: (R,) PRNG keys; uniforms are drawn in blocks of ``chunk`` events,
    block ``i`` from ``fold_in(key, i)``.
    """
    tables, physics, params, score_fn = run.tables, run.physics, run.params, run.score_fn
    react_slots, refresh_every, progress_scale = run.react_slots, run.refresh_every, run.progress_scale
    chunk = max(1, min(chunk, n_events))
    n_chunks = -(-n_events // chunk)
    v_step = jax.vmap(partial(step_with_uniforms, react_slots=react_slots), in_axes=(0, None, None, None, 0, None))

    def refresh(c):
        progress = jnp.minimum(c.lattice.n_events.astype(jnp.float64) * progress_scale, 1.0)
        return jax.vmap(partial(refresh_context, react_slots=react_slots), in_axes=(0, None, None, None, None, 0))(
            c, tables, physics, score_fn, params, progress)

    def chunk_body(i, c):
        u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, i), (chunk, 3), jnp.float64))(keys)

        def event_body(j, c):
            c = jax.lax.cond(c.since_refresh[0] >= refresh_every, refresh, lambda c: c, c)
            c, _ = v_step(c, tables, score_fn, params, u[:, j], i * chunk + j < n_events)
            return c

        return jax.lax.fori_loop(0, chunk, event_body, c)

    return jax.lax.fori_loop(0, n_chunks, chunk_body, carry)
