"""SwarmThinkers layer: candidate draws, features, importance weights; uniform = classical KMC;
importance weighting makes a biased policy's estimates unbiased (docs/physics.md, SwarmThinkers)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from swarm_jax import TiO2GrowthEnv
from swarm_jax.physics import engine, from_arrays, init_flat, make_rate_tables, observables
from swarm_jax.physics.engine import Event, column_event_rates
from swarm_jax.physics.params import O, SUBSTRATE, TI, VACANT, PhysicsParams
from swarm_jax.swarm import candidates as cand
from swarm_jax.swarm import features as F
from swarm_jax.swarm import weights as W

pytestmark = pytest.mark.slow  # not in the quick tier: hypothesis properties over lattices (a compilation per shape)


def random_film(rng, lx, ly, lz, max_h=None):
    """A random valid SOS film (heights <= max_h), random Ti/O, random oxide flags."""
    max_h = lz - 2 if max_h is None else max_h
    heights = rng.integers(0, max_h + 1, size=(lx, ly))
    z = np.arange(lz)[None, None, :]
    filled = (z >= 1) & (z <= heights[..., None])
    species = np.where(filled, rng.choice([TI, O], size=(lx, ly, lz)), VACANT).astype(np.int8)
    species[..., 0] = SUBSTRATE
    oxide = (filled & (rng.random((lx, ly, lz)) < 0.2)).astype(np.int8)
    return heights, species, oxide


# --------------------------------------------------------------------------- weights


def test_uniform_policy_has_unit_weights_and_ess():
    k = 32
    log_probs = jnp.full((7, k), -jnp.log(k))
    actions = jnp.arange(7) % k
    np.testing.assert_allclose(W.step_log_weight(log_probs, actions), 0.0, atol=1e-12)
    np.testing.assert_allclose(W.ess_ratio(log_probs), 1.0, rtol=1e-12)
    np.testing.assert_allclose(W.batch_ess_ratio(jnp.zeros(100)), 1.0, rtol=1e-12)


def test_step_weight_and_ess_match_their_definitions():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 16)) * 2.0
    pi = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    log_probs = jax.nn.log_softmax(jnp.asarray(logits))
    actions = rng.integers(0, 16, size=5)
    expected_w = 1.0 / (16 * pi[np.arange(5), actions])
    np.testing.assert_allclose(np.exp(W.step_log_weight(log_probs, jnp.asarray(actions))), expected_w, rtol=1e-10)
    w = 1.0 / (16 * pi)
    ess_def = (pi * w).sum(-1) ** 2 / (pi * w**2).sum(-1)
    np.testing.assert_allclose(W.ess_ratio(log_probs), ess_def, rtol=1e-10)
    np.testing.assert_allclose(W.ess_ratio_from_logits(jnp.asarray(logits)), ess_def, rtol=1e-10)
    assert np.all(ess_def < 1.0)


def test_ess_and_weights_stay_finite_for_extremely_sharp_policies():
    logits = jnp.array([0.0, -750.0, 0.0, 0.0])  # 1/π_1 ~ e^750 overflows float64 outside log-space
    ess = float(W.ess_ratio_from_logits(logits))
    assert np.isfinite(ess) and 0.0 <= ess < 1e-300
    lw = W.step_log_weight(jax.nn.log_softmax(logits), jnp.array(1))
    np.testing.assert_allclose(lw, -np.log(4) + 750.0 + np.log(3.0), rtol=1e-12)
    np.testing.assert_allclose(W.ess_ratio_from_logits(jnp.array([0.0, 0.0, -2.0])),
                               9 / (2 * (2 + np.exp(-2)) + (2 + np.exp(-2)) * np.exp(2)), rtol=1e-12)


def test_batch_ess_definition_and_stability():
    rng = np.random.default_rng(1)
    lw = rng.normal(size=200) * 1.5
    wts = np.exp(lw)
    expected = wts.sum() ** 2 / (200 * (wts**2).sum())
    np.testing.assert_allclose(W.batch_ess_ratio(jnp.asarray(lw)), expected, rtol=1e-10)
    # Invariant under a common shift, even one that overflows exp().
    np.testing.assert_allclose(W.batch_ess_ratio(jnp.asarray(lw + 5000.0)), expected, rtol=1e-8)
    np.testing.assert_allclose(W.batch_ess_ratio(jnp.array([0.0, -1e4, -1e4, -1e4])), 0.25, rtol=1e-10)


def test_accumulate_log_weight_resets_at_episode_ends():
    steps = jnp.array([0.5, -0.2, 1.0, 0.3, 0.1])
    dones = jnp.array([False, True, False, False, True])

    def body(carry, x):
        return W.accumulate_log_weight(carry, *x)

    carry, per_step = jax.lax.scan(body, jnp.zeros(()), (steps, dones))
    np.testing.assert_allclose(per_step, [0.5, 0.3, 1.0, 1.3, 1.4], rtol=1e-12)
    assert float(carry) == 0.0
    np.testing.assert_allclose(W.trajectory_log_weight(steps), steps.sum())


def test_weighted_mean_matches_numpy():
    rng = np.random.default_rng(2)
    a = rng.normal(size=50)
    lw = rng.normal(size=50)
    p = np.exp(lw) / np.exp(lw).sum()
    est, se = W.weighted_mean(jnp.asarray(a), jnp.asarray(lw))
    np.testing.assert_allclose(est, (p * a).sum(), rtol=1e-10)
    np.testing.assert_allclose(se, np.sqrt((p**2 * (a - (p * a).sum()) ** 2).sum()), rtol=1e-10)


# --------------------------------------------------------------------------- candidates


@pytest.mark.slow
def test_candidates_are_iid_draws_from_the_physical_distribution():
    """Chi-square of (column, slot) frequencies of many candidates against Γ_e / Γ_tot."""
    # A rate set where depositions, hops, desorptions and reactions all have visible shares.
    params = PhysicsParams(temperature=800.0, bond_scale=0.03, deposition_rate=1e7, e_react_scale=1.0,
                           e_des_ti=1.2, e_des_o=1.3)
    tables = make_rate_tables(params)
    film = random_film(np.random.default_rng(3), 4, 4, 5)
    state = from_arrays(*film, params)
    n = 20_000
    c = jax.jit(cand.draw_candidates, static_argnums=3)(state, tables, jax.random.key(4), n)
    rates, _, _ = jax.jit(column_event_rates)(state, tables, jnp.arange(16))
    p = np.asarray(rates / rates.sum()).ravel()
    n_slots = rates.shape[1]
    counts = np.bincount(np.asarray(c.column) * n_slots + np.asarray(c.slot), minlength=p.size)
    assert counts[p == 0].sum() == 0, "a zero-rate event was drawn"
    np.testing.assert_allclose(np.asarray(c.rate), np.asarray(rates)[np.asarray(c.column), np.asarray(c.slot)])
    big = p * n >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(p[big] * n, p[~big].sum() * n)
    keep = exp > 0
    chi2 = stats.chisquare(obs[keep], exp[keep])
    assert big.sum() > 40
    drawn_slots = np.asarray(c.slot)
    assert (drawn_slots == 6).any() and (drawn_slots >= 7).any()  # desorptions and reactions drawn
    assert chi2.pvalue > 1e-4, chi2


@pytest.mark.slow
def test_execute_candidate_equals_engine_step_with_the_same_uniforms():
    params = PhysicsParams(temperature=350.0)
    tables = make_rate_tables(params)
    state = from_arrays(*random_film(np.random.default_rng(5), 5, 4, 6), params)
    rng = np.random.default_rng(6)
    sample = jax.jit(engine.sample_events)
    execute = jax.jit(cand.execute_candidate)
    reference = jax.jit(engine.step_with_uniforms)
    for _ in range(4):
        u = rng.random((3, 8))
        cands = sample(state, tables, jnp.asarray(u[0]), jnp.asarray(u[1]))
        a = int(rng.integers(0, 8))
        new, info = execute(state, tables, cands, a, u[2, 0])
        ref, ref_info = reference(state, tables, jnp.asarray([u[0, a], u[1, a], u[2, 0]]))
        for x, y in zip(jax.tree.leaves(new), jax.tree.leaves(ref)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert int(info.kind) == int(ref_info.kind)
        assert float(info.dt) == float(ref_info.dt) > 0
        state = new


# --------------------------------------------------------------------------- features

# The layout of the features.py docstring, restated independently.
_SITES = [(0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1),
          (1, 1, 0), (1, -1, 0), (-1, 1, 0), (-1, -1, 0), (1, 0, 1), (-1, 0, 1), (0, 1, 1), (0, -1, 1),
          (1, 0, -1), (-1, 0, -1), (0, 1, -1), (0, -1, -1)]
_COLS = [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1)]


def _expected_features(heights, species, oxide, col, slot, rate, total):
    lx, ly, lz = species.shape
    x, y = divmod(col, ly)
    h = heights[x, y]
    kind = 0 if slot == 0 else 1 if slot == 1 else 2 if slot < 6 else 3 if slot == 6 else 4
    z = h + 1 if kind in (0, 1) else (slot - 7 if kind == 4 else h)
    out = []
    for dx, dy, dz in _SITES:
        zz = z + dz
        if zz < 0:
            s, o = SUBSTRATE, 0
        elif zz >= lz:
            s, o = VACANT, 0
        else:
            s, o = species[(x + dx) % lx, (y + dy) % ly, zz], oxide[(x + dx) % lx, (y + dy) % ly, zz]
        out += [float(s == VACANT), float(s == TI), float(s == O), float(s == SUBSTRATE), float(o)]
    for dx, dy in _COLS:
        out.append(np.clip(heights[(x + dx) % lx, (y + dy) % ly] - h, -4, 4) / 4)
    out += [float(kind == k) for k in range(5)]
    out += [float(kind == 2 and slot - 2 == d) for d in range(4)]
    mean_h = heights.mean()
    out += [np.clip(np.log10(rate / total), -30, 0) / 10, np.clip(np.log10(rate), -40, 20) / 10,
            z / lz, np.clip(z - mean_h, -8, 8) / 4]
    return np.array(out)


def test_candidate_features_follow_the_documented_layout():
    params = PhysicsParams(temperature=500.0)
    tables = make_rate_tables(params)
    heights, species, oxide = random_film(np.random.default_rng(7), 5, 4, 6)
    state = from_arrays(heights, species, oxide, params)
    cols = jnp.arange(20)
    rates, top_sp, top_ox = jax.jit(column_event_rates)(state, tables, cols)
    rates = np.asarray(rates)
    # Every possible event of the film, as candidates.
    ci, si = np.nonzero(rates > 0)
    ev = Event(column=jnp.asarray(ci, jnp.int32), slot=jnp.asarray(si, jnp.int32),
               top_species=top_sp[ci], top_oxide=top_ox[ci], rate=jnp.asarray(rates[ci, si]))
    feats = np.asarray(jax.jit(F.candidate_features)(state, ev))
    assert feats.shape == (len(ci), F.CANDIDATE_FEATURE_DIM) and feats.dtype == np.float32
    assert set(si) >= {0, 1, 2, 6}, "the film should offer depositions, hops and desorptions"
    total = float(state.total)
    for row, (c, s) in enumerate(zip(ci, si)):
        np.testing.assert_allclose(feats[row], _expected_features(heights, species, oxide, c, s, rates[c, s], total),
                                   rtol=1e-5, atol=1e-6, err_msg=f"column {c} slot {s}")
    assert np.all(feats >= F.CANDIDATE_FEATURE_LOW) and np.all(feats <= F.CANDIDATE_FEATURE_HIGH)


def test_feature_sizes_do_not_depend_on_the_lattice():
    params = PhysicsParams()
    tables = make_rate_tables(params)
    def features(size):
        s = init_flat(size, params)
        c = cand.draw_candidates(s, tables, jax.random.key(0), 32)
        return F.candidate_features(s, c), F.global_features(s, tables, params, 0.0)

    shapes = set()
    for size in [(8, 8, 5), (50, 50, 20), (3, 7, 2)]:
        cf, gf = jax.eval_shape(lambda: features(size))
        shapes.add((cf.shape, cf.dtype, gf.shape, gf.dtype))
    assert shapes == {((32, F.CANDIDATE_FEATURE_DIM), np.dtype(np.float32), (F.GLOBAL_FEATURE_DIM,), np.dtype(np.float32))}


def test_global_features_on_a_hand_built_film():
    params = PhysicsParams(temperature=400.0, deposition_rate=10.0, o_ti_flux_ratio=2.0)
    tables = make_rate_tables(params)
    lx, ly, lz = 3, 3, 5
    heights = np.array([[0, 1, 2], [1, 1, 3], [0, 0, 1]])
    species = np.zeros((lx, ly, lz), np.int8)
    species[..., 0] = SUBSTRATE
    for x in range(lx):
        for y in range(ly):
            species[x, y, 1: heights[x, y] + 1] = O
    species[0, 2, 1] = TI
    species[1, 2, 2] = TI
    oxide = np.zeros_like(species)
    state = from_arrays(heights, species, oxide, params)
    g = np.asarray(jax.jit(F.global_features)(state, tables, params, 0.25))
    names = F.GLOBAL_FEATURE_NAMES
    h = heights.astype(float)
    n_ti, n_o = 2, 9 - 2
    expected = {
        "mean_height": h.mean() / 10, "fill_fraction": h.mean() / 4, "max_fill": 3 / 4, "min_fill": 0.0,
        "roughness": h.std() / 2, "coverage": 6 / 9, "ti_fraction": n_ti / 9, "o_ti_ratio": n_o / n_ti / 2,
        "oxide_fraction": 0.0, "temperature": 0.4, "log_deposition_rate": 1 / 3, "o_ti_flux_ratio": 1.0,
        "progress": 0.25,
        "log_total_rate_per_column": np.log10(float(state.total) / 9) / 10,
        "log_deposition_share": np.log10(9 * float(tables.dep.sum()) / float(state.total)) / 10,
    }
    assert h.sum() == 9
    for name, val in expected.items():
        np.testing.assert_allclose(g[names.index(name)], val, rtol=1e-5, atol=1e-7, err_msg=name)


# --------------------------------------------------------------------------- statistics through the env

LATTICE = (8, 8, 8)
TEMPERATURE = 300.0
N_STEPS = 40
N_ENVS = 2000
K = 32
DEPOSIT_BONUS = 1.5  # logit bonus of the biased policy for deposition candidates


@pytest.fixture(scope="module")
def env_rollout():
    """Jitted rollout of N_ENVS envs for N_STEPS events under softmax(bonus · [deposit]).

    Returns per-env final observables, kind counts and trajectory log weights.
    """
    env = TiO2GrowthEnv(LATTICE, n_swarm=K, temperature=TEMPERATURE, max_steps_in_episode=10**9)
    params = env.default_params
    kind = F.CANDIDATE_LAYOUT["kind"]
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    @jax.jit
    def rollout(key, bonus):
        key_reset, key_run = jax.random.split(key)
        obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key_reset, N_ENVS), params)

        def body(carry, k):
            obs, state, log_w, counts, done = carry
            k_act, k_env = jax.random.split(k)
            is_dep = obs["candidates"][..., kind][..., :2].sum(-1)
            logits = (bonus * is_dep).astype(jnp.float64)
            action = jax.random.categorical(k_act, logits)
            log_w = log_w + W.step_log_weight(jax.nn.log_softmax(logits), action)
            obs, state, _, term, trunc, info = step(jax.random.split(k_env, N_ENVS), state, action, params)
            counts = counts + (info["event_kind"][:, None] == jnp.arange(5))
            return (obs, state, log_w, counts, done | term | trunc), info

        init = (obs, state, jnp.zeros(N_ENVS), jnp.zeros((N_ENVS, 5), jnp.int32), jnp.zeros(N_ENVS, bool))
        (_, _, log_w, counts, done), info = jax.lax.scan(body, init, jax.random.split(key_run, N_STEPS))
        last = jax.tree.map(lambda x: x[-1], info)
        return dict(log_w=log_w, counts=counts, done=done, mean_height=last["mean_height"],
                    roughness=last["roughness"], coverage=last["coverage"], time=last["time"])

    return lambda seed, bonus: jax.tree.map(np.asarray, rollout(jax.random.key(seed), bonus))


@pytest.fixture(scope="module")
def classical():
    """The classical engine (engine.run) from the same flat start: N_ENVS runs of N_STEPS events."""
    params = PhysicsParams(temperature=TEMPERATURE)
    tables = make_rate_tables(params)
    s0 = init_flat(LATTICE, params)

    @jax.jit
    def go(key):
        s = jax.vmap(lambda k: engine.run(s0, tables, k, N_STEPS))(jax.random.split(key, N_ENVS))
        out = {k: v for k, v in jax.vmap(observables)(s).items()}
        out["counts"] = s.event_counts
        out["n_events"] = s.n_events
        return out

    return jax.tree.map(np.asarray, go(jax.random.key(123)))


def _z(m1, se1, m2, se2):
    return (m1 - m2) / np.hypot(se1, se2)


def _mean_se(a):
    return a.mean(), a.std(ddof=1) / np.sqrt(a.size)


@pytest.mark.slow
def test_uniform_choice_through_env_reproduces_classical_engine(env_rollout, classical):
    env = env_rollout(11, 0.0)
    assert not env["done"].any()
    assert np.all(classical["n_events"] == N_STEPS)
    np.testing.assert_allclose(env["log_w"], 0.0, atol=1e-9)
    assert np.all(env["counts"].sum(1) == N_STEPS)
    # Event-kind mix: mean per-trajectory count of each kind (two-sample z at 5 sigma).
    for k in range(5):
        a, b = env["counts"][:, k].astype(float), classical["counts"][:, k].astype(float)
        if a.std() == 0 and b.std() == 0:
            assert a.mean() == b.mean()
            continue
        z = _z(*_mean_se(a), *_mean_se(b))
        assert abs(z) < 5, (k, a.mean(), b.mean(), z)
    assert env["counts"][:, 2].mean() > 5 and env["counts"][:, 0].mean() > 1  # hops and depositions both present
    # Distributions of morphology and of the physical clock after N_STEPS events.
    for name in ("roughness", "coverage", "mean_height", "time"):
        res = stats.ks_2samp(env[name], classical[name])
        assert res.pvalue > 1e-4, (name, res)


@pytest.mark.slow
def test_importance_weights_make_a_biased_policy_unbiased(env_rollout, classical):
    env = env_rollout(12, DEPOSIT_BONUS)
    assert not env["done"].any()
    log_w = env["log_w"]
    ess = float(W.batch_ess_ratio(jnp.asarray(log_w)))
    assert 0.02 < ess < 0.9, ess  # a real bias, yet enough effective samples
    for name in ("mean_height", "roughness"):
        ref_m, ref_se = _mean_se(classical[name])
        est, se = W.weighted_mean(jnp.asarray(env[name]), jnp.asarray(log_w))
        z_weighted = _z(float(est), float(se), ref_m, ref_se)
        z_plain = _z(*_mean_se(env[name]), ref_m, ref_se)
        assert abs(z_weighted) < 5, (name, float(est), ref_m, z_weighted)
        assert z_plain > 5, (name, env[name].mean(), ref_m, z_plain)
