"""Full-lattice SwarmThinkers sampler (swarm_jax.swarm.full_lattice).

* the incremental score cache and weight tree equal a from-scratch rescoring after random event
  sequences (seeded loops, with a deterministic linear scorer and with a real actor network);
* with f = 0 it is classical KMC: the same events for the same uniforms, every log weight 0;
* events are drawn from exp(f) Γ / Z (chi-square against exact enumeration) and the one-step
  importance weight has mean 1 under the proposal.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from swarm_jax.agents.networks import NetworkConfig, make_network
from swarm_jax.physics import PhysicsParams, from_arrays, init_flat, make_rate_tables, rebuild_rates
from swarm_jax.physics import engine, sumtree
from swarm_jax.physics.params import O, SUBSTRATE, TI
from swarm_jax.swarm import full_lattice as FL
from swarm_jax.swarm.features import CANDIDATE_FEATURE_DIM, GLOBAL_FEATURE_DIM

PHYS = PhysicsParams(temperature=300.0)
TABLES = make_rate_tables(PHYS)


def _random_film(seed, size=(5, 4, 7), max_h=3):
    """A valid SOS film with random heights and Ti/O species (no oxide)."""
    rng = np.random.default_rng(seed)
    lx, ly, lz = size
    heights = rng.integers(0, max_h + 1, (lx, ly))
    species = np.zeros(size, np.int8)
    species[..., 0] = SUBSTRATE
    z = np.arange(lz)[None, None, :]
    filled = (z >= 1) & (z <= heights[..., None])
    species[filled] = rng.choice([TI, O], size=int(filled.sum()), p=[0.4, 0.6])
    return from_arrays(heights, species, np.zeros(size, np.int8), PHYS)


def _linear_params(seed, scale=0.25):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(0, scale, CANDIDATE_FEATURE_DIM), jnp.float32),
            jnp.asarray(rng.normal(0, scale, GLOBAL_FEATURE_DIM), jnp.float32))


def _linear_scorer(params, feats, glob):
    """A deterministic elementwise score f = Σ_d w_d x_d + Σ_g v_g g_g (no matmul), float32."""
    w, v = params
    return jnp.sum(feats * w, axis=-1) + jnp.sum(glob * v)


def _zero_scorer(params, feats, glob):
    return jnp.zeros(feats.shape[:-1], jnp.float32)


def _network_scorer():
    net = make_network(NetworkConfig(hidden_sizes=(16, 16)), 4)
    obs = {"candidates": jnp.zeros((4, CANDIDATE_FEATURE_DIM), jnp.float32),
           "global": jnp.zeros((GLOBAL_FEATURE_DIM,), jnp.float32)}
    params = net.init(jax.random.key(3), obs)
    # Sharpen the 0.01-scale policy head so scores spread over several units.
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: x * 300.0 if "actor_head" in jax.tree_util.keystr(p) else x, params)

    def score(params, feats, glob):
        return net.apply(params, {"candidates": feats, "global": glob})[0]

    return score, params


def _run(carry, score_fn, params, key, n, react_slots):
    def body(c, k):
        c, info = FL.step(c, TABLES, score_fn, params, k, react_slots=react_slots)
        return c, info.active

    return jax.lax.scan(body, carry, jax.random.split(key, n))


REACT_SLOTS = 2
_init = jax.jit(lambda lat, p: FL.init(lat, TABLES, PHYS, _linear_scorer, p, 0.0, REACT_SLOTS))
_run_linear = jax.jit(lambda c, p, k: _run(c, _linear_scorer, p, k, 120, REACT_SLOTS))
_rescore = jax.jit(lambda c, p: FL.rescore_all(c.lattice, TABLES, c.context, _linear_scorer, p, REACT_SLOTS))


@pytest.mark.slow
def test_incremental_cache_equals_from_scratch_rescoring():
    """Seeded random films and event sequences (the reaction-slot compaction is exercised: up
    to 2 reactive sites per column are scored, deeper ones take the deepest scored score)."""
    for seed in (1, 2):  # (seed 0 freezes into deposition only and soon hits the ceiling)
        params = _linear_params(seed)
        carry = _init(_random_film(seed, size=(5, 4, 16)), params)
        for i in range(2):
            carry, active = _run_linear(carry, params, jax.random.key(100 * seed + i))
            assert bool(active.all())
            scores, wtree = _rescore(carry, params)
            c = carry.lattice.n_columns  # (the dummy row holds the last event's score)
            np.testing.assert_array_equal(np.asarray(carry.scores[:c]), np.asarray(scores[:c]))
            np.testing.assert_allclose(np.asarray(carry.wtree), np.asarray(wtree), rtol=1e-12, atol=0)
            assert float(carry.z_total) == float(sumtree.root(carry.wtree))
            # The engine's own incremental rates stay exact alongside.
            rebuilt = rebuild_rates(carry.lattice, TABLES)
            np.testing.assert_allclose(np.asarray(carry.lattice.tree), np.asarray(rebuilt.tree),
                                       rtol=1e-12)
        assert np.isfinite(float(carry.log_weight)) and float(carry.log_weight) != 0.0
        assert int(carry.lattice.n_events) == 240


@pytest.mark.slow
def test_incremental_cache_with_an_actor_network():
    lattice = _random_film(7, size=(4, 6, 10))
    score_fn, params = _network_scorer()
    carry = jax.jit(lambda lat, p: FL.init(lat, TABLES, PHYS, score_fn, p, 0.0, 2))(lattice, params)
    assert float(jnp.std(carry.scores)) > 0.3  # scores really differ between events
    carry, _ = jax.jit(lambda c, p, k: _run(c, score_fn, p, k, 200, 2))(carry, params, jax.random.key(5))
    scores, wtree = jax.jit(lambda c, p: FL.rescore_all(c.lattice, TABLES, c.context, score_fn, p, 2))(
        carry, params)
    # Matrix products of different batch shapes may round differently in the last float32 bit.
    c = lattice.n_columns
    np.testing.assert_allclose(np.asarray(carry.scores[:c]), np.asarray(scores[:c]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(carry.wtree), np.asarray(wtree), rtol=1e-4)


def test_refresh_neighbourhood_is_the_5x5_block_without_corners():
    cols = np.asarray(FL.refresh_columns(jnp.int32(2 * 7 + 3), 9, 7))
    xy = {(c // 7, c % 7) for c in cols}
    expected = {((2 + dx) % 9, (3 + dy) % 7) for dx in range(-2, 3) for dy in range(-2, 3)
                if abs(dx) + abs(dy) <= 3}
    assert len(cols) == 21 and xy == expected


@pytest.mark.slow
def test_zero_scores_are_classical_kmc():
    lattice = init_flat((6, 5, 8), PHYS)
    carry = FL.init(lattice, TABLES, PHYS, _zero_scorer, None, react_slots=lattice.lz)  # all slots
    u = jax.random.uniform(jax.random.key(11), (400, 3), jnp.float64)

    def body(c, u_t):
        fl, lat = c
        fl, info_f = FL.step_with_uniforms(fl, TABLES, _zero_scorer, None, u_t, react_slots=lattice.lz)
        lat, info_e = engine.step_with_uniforms(lat, TABLES, u_t)
        same = (info_f.event.column == info_e.event.column) & (info_f.event.slot == info_e.event.slot)
        return (fl, lat), (same, fl.log_weight)

    (fl, lat), (same, log_w) = jax.jit(lambda c, u: jax.lax.scan(body, c, u))((carry, lattice), u)
    assert bool(same.all())
    np.testing.assert_array_equal(np.asarray(fl.lattice.heights), np.asarray(lat.heights))
    np.testing.assert_array_equal(np.asarray(fl.lattice.species), np.asarray(lat.species))
    np.testing.assert_array_equal(np.asarray(fl.lattice.oxide), np.asarray(lat.oxide))
    assert float(fl.lattice.time) == float(lat.time)
    np.testing.assert_allclose(np.asarray(log_w), 0.0, atol=1e-12)
    # The weight tree is the engine's rate tree.
    np.testing.assert_allclose(np.asarray(fl.wtree), np.asarray(lat.tree), rtol=1e-13)
    assert int(fl.lattice.event_counts[2]) > 0  # hops happened: not only depositions


@pytest.mark.slow
def test_events_follow_exp_f_gamma_and_weights_average_to_one():
    lattice = _random_film(4, size=(3, 4, 5), max_h=2)
    score_fn = _linear_scorer
    w, v = _linear_params(4, scale=0.1)
    # f ≈ -0.9 ln Γ_e (feature 113 is log10(Γ_e / Hz) / 10) flattens the rates over 20 decades, so
    # many events get visible mass; very rare events push f into the clip at +30.
    w = w.at[113].set(jnp.float32(-0.9 * 10.0 * np.log(10.0)))
    params = (w, v)
    carry = FL.init(lattice, TABLES, PHYS, score_fn, params, 0.0, 1)
    log_q = np.asarray(FL.event_log_probs(carry, TABLES)).reshape(-1)
    q = np.exp(log_q)
    assert np.isclose(q.sum(), 1.0)
    assert (q * 20000 >= 5).sum() >= 20  # a real multi-cell test
    assert float(jnp.max(carry.scores)) == FL.F_CLIP  # the clip is exercised

    n = 20000
    u = jax.random.uniform(jax.random.key(2), (n, 3), jnp.float64)
    one = jax.jit(jax.vmap(lambda u_t: FL.step_with_uniforms(carry, TABLES, score_fn, params, u_t,
                                                             react_slots=1)))
    new, info = one(u)
    e = np.asarray(info.event.column) * engine.events_per_column(lattice.lz) + np.asarray(info.event.slot)
    counts = np.bincount(e, minlength=q.size)
    assert counts[q == 0].sum() == 0
    keep = q * n >= 5
    observed = np.append(counts[keep], counts[~keep].sum())
    expected = np.append(q[keep] * n, q[~keep].sum() * n)
    chi2 = ((observed - expected) ** 2 / np.maximum(expected, 1e-300)).sum()
    assert stats.chi2.sf(chi2, observed.size - 1) > 1e-5
    # One-step weight w = p / q: E_q[w] = Σ p = 1 (5 standard errors), and w matches p/q exactly.
    w = np.exp(np.asarray(new.log_weight))
    assert abs(w.mean() - 1.0) < 5 * w.std() / np.sqrt(n)
    rates, _, _ = engine.column_event_rates(lattice, TABLES, jnp.arange(lattice.n_columns, dtype=jnp.int32))
    p = np.asarray(rates).reshape(-1) / float(lattice.total)
    np.testing.assert_allclose(w, p[e] / q[e], rtol=1e-9)
