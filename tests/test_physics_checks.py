"""Textbook and exact checks of the KMC engine (docs/physics.md, Clock and selection; Validation).

Statistical tests use fixed seeds and tolerances derived from the sample (5 sigma, or a p-value
of 1e-6 for chi-square / Kolmogorov-Smirnov tests), never hand-tuned margins.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import swarm_jax  # noqa: F401  (64-bit mode: tests/conftest.py)
from swarm_jax.physics import (
    RUNNING, PhysicsParams, from_arrays, init_flat, make_rate_tables, run,
    sample_events, trace,
)
from swarm_jax.physics import sumtree
from swarm_jax.physics.engine import select_in_column
from reference import K_B, O, SUBSTRATE, TI, ReferenceLattice, slot_kind

pytestmark = pytest.mark.slow  # not in the quick tier: statistical checks of the engine (many events per check)

N_SIGMA = 5.0
P_MIN = 1e-6  # smallest acceptable p-value of a goodness-of-fit test (about 5 sigma)
TEMPERATURES = (180.0, 300.0, 600.0)
# Hop and desorption barriers far out of reach: the frozen (random deposition) regime, exactly.
FROZEN = dict(e_diff_ti=100.0, e_diff_o=100.0, e_des_ti=100.0, e_des_o=100.0)
NO_REACTIONS = dict(e_react_base=100.0)


# Shared shapes, replica counts and run lengths: every distinct combination is one more XLA
# compilation (seconds each), so the tests below reuse them.
FILM_SHAPE = (4, 5, 6)  # films built with from_arrays
TRACE_REPLICAS, TRACE_EVENTS = 1000, 100  # vmapped traces on FILM_SHAPE
GROWTH_SHAPE, GROWTH_REPLICAS, GROWTH_CHUNK = (8, 8, 24), 256, 64  # vmapped runs from a bare substrate


def _broadcast(state, n):
    """A batch of n copies of one state (leading axis n)."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), state)


def _stack(states):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


_run_batch = jax.jit(jax.vmap(run, in_axes=(0, None, 0, None)), static_argnums=3)
_trace_batch = jax.jit(jax.vmap(trace, in_axes=(0, None, 0, None)), static_argnums=3)


def _keys(seed, n):
    return jax.random.split(jax.random.key(seed), n)


def _assert_mean_close(samples, expected, what):
    """|mean - expected| <= N_SIGMA standard errors, the error estimated from the sample."""
    samples = np.asarray(samples, np.float64)
    mean = samples.mean()
    sem = samples.std(ddof=1) / math.sqrt(samples.size)
    assert abs(mean - expected) <= N_SIGMA * sem, f"{what}: mean {mean} vs {expected} (sem {sem})"


def _assert_two_sample_close(a, b, what):
    """Welch comparison of two sample means at N_SIGMA."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    se = math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    assert abs(a.mean() - b.mean()) <= N_SIGMA * se, f"{what}: {a.mean()} vs {b.mean()} (se {se})"


# --------------------------------------------------------------------------- random deposition


@pytest.mark.slow
@pytest.mark.parametrize("reactions", [False, True], ids=["no_reactions", "reactions"])
def test_random_deposition_roughness(reactions):
    """Frozen regime: <W^2> = theta (1 - 1/N) exactly, given the deposited coverage theta."""
    extra = dict(FROZEN) if reactions else dict(FROZEN, **NO_REACTIONS)
    params = PhysicsParams(temperature=180.0, **extra)
    tables = make_rate_tables(params)
    shape, replicas = GROWTH_SHAPE, GROWTH_REPLICAS
    n = shape[0] * shape[1]
    assert n == GROWTH_CHUNK  # one chunk deposits (at most) one monolayer
    states = _broadcast(init_flat(shape, params), replicas)
    checked = []
    for chunk in range(8 if reactions else 4):
        states = _run_batch(states, tables, _keys(100 * reactions + chunk, replicas), n)
        assert np.all(np.asarray(states.status) == RUNNING)
        h = np.asarray(states.heights)[:, :n].astype(np.float64)
        theta = h.mean(axis=1)  # deposited monolayers (no desorption in this regime)
        w2 = h.var(axis=1)
        if not reactions:
            counts = np.asarray(states.event_counts)
            assert np.all(counts[:, 0] + counts[:, 1] == (chunk + 1) * n)  # every event a deposition
            np.testing.assert_allclose(theta, chunk + 1)
        # E[W^2 | theta] = theta (1 - 1/N) for multinomial heights.
        _assert_mean_close(w2 - theta * (1.0 - 1.0 / n), 0.0, f"W^2 after chunk {chunk}")
        checked.append(theta.mean())
    if reactions:
        counts = np.asarray(states.event_counts)
        assert counts[:, 4].sum() > 0  # reactions did happen, and did not change the heights law
    assert checked[-1] >= 2.0


# --------------------------------------------------------------------------- adatom diffusion


def _single_adatom(shape, params, species=TI):
    lx, ly, lz = shape
    heights = np.zeros((lx, ly), np.int64)
    heights[lx // 2, ly // 2] = 1
    sp = np.zeros(shape, np.int8)
    sp[..., 0] = SUBSTRATE
    sp[lx // 2, ly // 2, 1] = species
    return from_arrays(heights, sp, np.zeros_like(sp), params)


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [300.0, 600.0])
def test_adatom_diffusion(temperature):
    """One Ti adatom on a flat substrate without deposition: <r^2(t)> = 4 Gamma_hop a^2 t."""
    params = PhysicsParams(temperature=temperature, deposition_rate=0.0)
    tables = make_rate_tables(params)
    gamma_hop = params.attempt_frequency * math.exp(-params.e_diff_ti / (K_B * temperature))
    state = _single_adatom(FILM_SHAPE, params)
    states = _broadcast(state, TRACE_REPLICAS)
    _, info = _trace_batch(states, tables, _keys(int(temperature), TRACE_REPLICAS), TRACE_EVENTS)
    kind = np.asarray(info.kind)
    assert np.all(kind == 2), "an isolated adatom only hops (desorption is ~1e-20 of the rate)"
    np.testing.assert_allclose(np.asarray(info.total_before), 4 * gamma_hop, rtol=1e-12)
    slot = np.asarray(info.event.slot)
    dx = np.cumsum((slot == 2).astype(int) - (slot == 3), axis=1)
    dy = np.cumsum((slot == 4).astype(int) - (slot == 5), axis=1)
    r2 = (dx**2 + dy**2).astype(np.float64)
    times = np.cumsum(np.asarray(info.dt), axis=1)  # time after each hop, s
    for expected_hops in (5.0, 20.0, 40.0):
        t = expected_hops / (4 * gamma_hop)
        assert np.all(times[:, -1] > t), "trace too short for this time"
        n_done = (times <= t).sum(axis=1)  # hops completed by time t
        r2_t = np.where(n_done > 0, r2[np.arange(len(r2)), np.maximum(n_done - 1, 0)], 0.0)
        _assert_mean_close(r2_t, 4 * gamma_hop * t, f"<r^2> at 4 Gamma t = {expected_hops}")


# --------------------------------------------------------------------------- event statistics


def _random_film(shape, seed, max_height):
    rng = np.random.default_rng(seed)
    lx, ly, lz = shape
    heights = rng.integers(0, max_height + 1, size=(lx, ly))
    z = np.arange(lz)[None, None, :]
    filled = (z >= 1) & (z <= heights[..., None])
    species = np.where(filled, rng.choice([TI, O], size=shape), 0).astype(np.int8)
    species[..., 0] = SUBSTRATE
    oxide = np.where(filled, rng.random(shape) < 0.3, 0).astype(np.int8)
    return heights, species, oxide


# Params in which deposition, hops, desorption and reactions all have sizeable shares.
BALANCED = dict(temperature=300.0, deposition_rate=2000.0, e_des_ti=0.6, e_des_o=0.6, e_react_scale=0.6)


def test_event_frequencies_follow_rates():
    """Chi-square: events drawn by sample_events occur with frequency Gamma_e / Gamma_tot."""
    params = PhysicsParams(**BALANCED)
    tables = make_rate_tables(params)
    film = _random_film(FILM_SHAPE, seed=7, max_height=3)
    state = from_arrays(*film, params)
    p = ReferenceLattice(*film, params).all_rates().ravel()
    p = p / p.sum()
    n_draws = 200_000
    rng = np.random.default_rng(11)
    events = jax.jit(sample_events)(state, tables, jnp.asarray(rng.random(n_draws)), jnp.asarray(rng.random(n_draws)))
    index = np.asarray(events.column) * (7 + state.lz) + np.asarray(events.slot)
    observed = np.bincount(index, minlength=p.size)
    assert np.all(observed[p == 0.0] == 0), "an impossible event was drawn"
    expected = p * n_draws
    big = expected >= 5.0
    assert big.sum() >= 20
    f_obs = np.append(observed[big], observed[~big].sum())
    f_exp = np.append(expected[big], expected[~big].sum())
    kinds = {slot_kind(s) for s in range(7 + state.lz) for c in range(state.n_columns)
             if p[c * (7 + state.lz) + s] * n_draws >= 5.0}
    assert kinds == {0, 1, 2, 3, 4}, "the fixed state should give every kind a sizeable share"
    assert stats.chisquare(f_obs, f_exp).pvalue > P_MIN


def test_waiting_times_exponential():
    """dt * Gamma_tot(before) is Exp(1) (KS test, mean and variance), over varied states."""
    params = PhysicsParams(**dict(BALANCED, deposition_rate=20.0))  # slow filling: few ceilings
    tables = make_rate_tables(params)
    states = _stack([from_arrays(*_random_film(FILM_SHAPE, seed, max_height=2), params) for seed in range(5)])
    states = jax.tree.map(lambda x: jnp.tile(x, (TRACE_REPLICAS // 5,) + (1,) * (x.ndim - 1)), states)
    _, info = _trace_batch(states, tables, _keys(5, TRACE_REPLICAS), TRACE_EVENTS)
    active = np.asarray(info.active)
    x = (np.asarray(info.dt) * np.asarray(info.total_before))[active]
    assert x.size > 50_000
    assert np.all(np.isfinite(x)) and np.all(x >= 0.0)
    assert np.all(np.asarray(info.dt)[~active] == 0.0)
    assert stats.kstest(x, "expon").pvalue > P_MIN
    _assert_mean_close(x, 1.0, "mean of dt * Gamma_tot")
    _assert_mean_close((x - 1.0) ** 2, 1.0, "variance of dt * Gamma_tot")


# --------------------------------------------------------------------------- engine vs reference


@pytest.mark.slow
def test_engine_matches_reference_statistics():
    """8x8x5, 300 K, 1 ML/s, 400 events from a bare substrate: event counts and elapsed time of
    the engine and of the from-scratch reference agree (two-sample, 5 sigma)."""
    params = PhysicsParams(temperature=300.0, deposition_rate=1.0)
    tables = make_rate_tables(params)
    shape, n_events = (8, 8, 5), 400
    engine_replicas, reference_replicas = 256, 24
    out = _run_batch(_broadcast(init_flat(shape, params), engine_replicas), tables,
                     _keys(2024, engine_replicas), n_events)
    counts = np.asarray(out.event_counts)
    engine = dict(deposits=counts[:, 0] + counts[:, 1], deposit_ti=counts[:, 0], hops=counts[:, 2],
                  reactions=counts[:, 4], time=np.asarray(out.time), n_events=np.asarray(out.n_events))
    rows = []
    for seed in range(reference_replicas):
        ref = ReferenceLattice.flat(shape, params)
        ref.run(np.random.default_rng(seed), n_events)
        c = ref.event_counts
        rows.append((c[0] + c[1], c[0], c[2], c[4], ref.time, ref.n_events))
    reference = dict(zip(engine, np.array(rows, np.float64).T))
    for name in engine:
        _assert_two_sample_close(engine[name], reference[name], name)


# --------------------------------------------------------------------------- precision

ULP_1 = 2.0**-52  # float64 spacing just below 1: the resolution of a uniform u


def _selection_boundaries(select, n_outcomes):
    """For a monotone map ``select(u) -> outcome`` on float64 u in [0, 1), the smallest u with
    ``select(u) >= j`` for j = 0..n_outcomes (1.0 for j = n_outcomes), by exact bisection over
    the bit patterns of float64 (positive floats order like their int64 bits)."""
    one_bits = np.array(1.0).view(np.int64)

    def smallest(j):
        def body(_, lo_hi):
            lo, hi = lo_hi  # invariant: select(hi) >= j (hi = 1.0 counts as n_outcomes)
            mid = lo + (hi - lo) // 2
            ok = select(jax.lax.bitcast_convert_type(mid, jnp.float64)) >= j
            return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

        lo, hi = jax.lax.fori_loop(0, 64, body, (jnp.int64(0), jnp.int64(one_bits)))
        return jax.lax.bitcast_convert_type(hi, jnp.float64)

    return np.asarray(jax.jit(jax.vmap(smallest))(jnp.arange(n_outcomes + 1)))


def _assert_interval_widths(boundaries, weights, what):
    """Each outcome's u-interval has width weight / sum(weights) to 1e-6 relative, up to the
    float64 resolution of u (a few ulps of 1)."""
    widths = np.diff(boundaries)
    p = np.asarray(weights, np.float64) / math.fsum(weights)
    assert np.all(widths[p == 0.0] == 0.0), f"{what}: a zero-weight outcome can be selected"
    err = np.abs(widths - p)
    tol = 1e-6 * p + 4 * ULP_1
    bad = np.nonzero(err > tol)[0]
    assert bad.size == 0, f"{what}: outcomes {bad} have widths {widths[bad]} vs {p[bad]}"
    return p


def test_sumtree_selection_exact_over_twelve_decades():
    """Synthetic rates 1e-3 .. 1e9 Hz (plus zeros): every leaf's selection probability is exact,
    including leaves with per-step probability ~1e-12 and below."""
    rng = np.random.default_rng(3)
    leaves = 10.0 ** rng.uniform(-3, 9, size=45)
    leaves[rng.choice(45, 6, replace=False)] = 0.0
    leaves[[0, 10, 44]] = [1e-3, 2e-3, 1e-3]  # rarest leaves at the start, middle and end
    leaves[1] = 1e9
    tree = sumtree.build(jnp.asarray(leaves))
    bounds = _selection_boundaries(lambda u: sumtree.sample(tree, u), leaves.size)
    p = _assert_interval_widths(bounds, leaves, "sum tree")
    assert p[p > 0].min() < 1e-12
    # The rarest leaf at the start of the order is resolved to 1e-6 relative, not just to an ulp.
    np.testing.assert_allclose(np.diff(bounds)[0], p[0], rtol=1e-6)


def test_hierarchical_draw_exact_for_rare_events():
    """600 K, a single hopping Ti adatom and a tiny flux: per-step probabilities of deposition
    are ~1e-12, and both stages of the draw (tree, then within the column) reproduce them."""
    params = PhysicsParams(temperature=600.0, deposition_rate=1e-3)
    tables = make_rate_tables(params)
    state = _single_adatom(FILM_SHAPE, params)
    rates = ReferenceLattice.from_engine(state, params).all_rates()
    column_rates = rates.sum(axis=1)

    # Stage 1: the column, from the tree.
    bounds = _selection_boundaries(
        lambda u: jnp.minimum(sumtree.sample(state.tree, u), state.n_columns - 1), state.n_columns
    )
    p_col = _assert_interval_widths(bounds, column_rates, "columns")
    assert p_col.min() < 1e-11

    # Stage 2: the slot, within the adatom's column (and within a bare column).
    for column in (int(np.argmax(column_rates)), 0):
        def select(u, column=column):
            return select_in_column(state, tables, jnp.array([column]), u[None]).slot[0]

        bounds = _selection_boundaries(select, rates.shape[1])
        p_slot = _assert_interval_widths(bounds, rates[column], f"slots of column {column}")
        if column == int(np.argmax(column_rates)):
            assert 0.0 < p_slot[0] < 1e-11  # deposition on the adatom's column


# --------------------------------------------------------------------------- deposition clock


@pytest.mark.slow
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_deposited_atoms_match_flux(temperature):
    """N_dep(T) - R_dep T is a martingale with variance R_dep E[T] (Poisson deposition), whatever
    else happens, at frozen, intermediate and diffusion-dominated temperatures."""
    params = PhysicsParams(temperature=temperature)
    tables = make_rate_tables(params)
    shape, replicas = GROWTH_SHAPE, GROWTH_REPLICAS
    out = _broadcast(init_flat(shape, params), replicas)
    for chunk in range(16):  # 1024 events
        out = _run_batch(out, tables, _keys(1000 * int(temperature) + chunk, replicas), GROWTH_CHUNK)
    # A run stops when a column fills; R_dep is constant up to that (stopping) time, so the
    # martingale argument below holds for stopped runs too.
    ref = ReferenceLattice.flat(shape, params)
    r_dep = shape[0] * shape[1] * sum(ref.deposition_rates())  # Hz, constant while no column is full
    deposited = np.asarray(out.deposited).sum(axis=1)
    elapsed = np.asarray(out.time)
    assert deposited.sum() > 50
    z = (deposited.sum() - r_dep * elapsed.sum()) / math.sqrt(r_dep * elapsed.sum())
    assert abs(z) < N_SIGMA, f"deposited {deposited.sum()} vs R_dep t = {r_dep * elapsed.sum()}"
    # Heights account for every deposited atom (no desorption is expected at these barriers).
    np.testing.assert_array_equal(np.asarray(out.heights)[:, : shape[0] * shape[1]].sum(axis=1),
                                  deposited - np.asarray(out.desorbed).sum(axis=1))
