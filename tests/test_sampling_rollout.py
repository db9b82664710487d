"""swarm_jax.swarm.rollout: thickness-ended replicas, the ceiling counted, the tilt's logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swarm_jax.physics import PhysicsParams, engine, init_flat, make_rate_tables
from swarm_jax.physics.lattice import DEPOSIT_O, DEPOSIT_TI, deposit_target
from swarm_jax.swarm.candidates import draw_candidates
from swarm_jax.swarm.features import candidate_features
from swarm_jax.swarm.policy import film_stats
from swarm_jax.swarm.rollout import GrowthSpec, flat_film_stats, grow_classical, grow_sampler, tilt_logits

pytestmark = pytest.mark.slow  # not in the quick tier: rollouts compiled per shape

WARM = PhysicsParams(temperature=400.0, deposition_rate=1.0)  # hops and reactions compete


def _uniform(params, feats, glob):
    return jnp.zeros(feats.shape[0], jnp.float32)


@pytest.mark.parametrize("grow", ["classical", "uniform"])
def test_replicas_stop_at_the_deposit_that_reaches_the_target(grow):
    spec = GrowthSpec((4, 4, 10), deposit_target(16, 1.5), 16, chunk=7)
    key = jax.random.key(3)
    if grow == "classical":
        r = jax.jit(lambda k: grow_classical(spec, WARM, k))(key)
    else:
        r = jax.jit(lambda k: grow_sampler(spec, WARM, _uniform, None, 4, k))(key)
    assert np.all(np.asarray(r.deposited) == spec.target) and np.all(np.asarray(r.reached))
    assert not np.any(np.asarray(r.ceiling))
    np.testing.assert_array_equal(np.asarray(r.log_weight), 0.0)  # uniform choice is classical KMC
    assert np.all(np.asarray(r.steps) >= spec.target)  # hops/reactions add steps, never deposits
    np.testing.assert_allclose(np.asarray(r.mean_height), np.asarray(r.sum_h) / 16)


def test_classical_rollout_equals_the_engine_run_up_to_the_target():
    """Same uniforms, one replica: the rollout's final state is the engine's state at the step that
    made the target-th deposit (no step after it)."""
    spec = GrowthSpec((4, 4, 10), 20, 1, chunk=8)
    key = jax.random.key(5)
    r = jax.jit(lambda k: grow_classical(spec, WARM, k))(key)
    tables = make_rate_tables(WARM)
    state = init_flat((4, 4, 10), WARM)
    step = jax.jit(lambda s, u: engine.step_with_uniforms(s, tables, u)[0])
    u = np.concatenate([np.asarray(jax.random.uniform(jax.random.fold_in(key, c), (8, 1, 3), jnp.float64))[:, 0]
                        for c in range(int(r.steps[0]) // 8 + 1)])
    i = 0
    while int(jnp.sum(state.deposited)) < 20:
        state = step(state, u[i])
        i += 1
    assert int(r.steps[0]) == i == int(state.n_events)
    h = np.asarray(state.heights[:16], np.int64)
    assert int(r.sum_h2[0]) == int((h * h).sum())
    assert float(r.time[0]) == pytest.approx(float(state.time), rel=1e-12)


def test_ceiling_before_the_target_is_flagged_not_dropped():
    spec = GrowthSpec((3, 3, 3), deposit_target(9, 3.0), 32)  # 27 atoms cannot fit 2 layers
    physics = PhysicsParams(temperature=180.0, deposition_rate=0.1)
    r = jax.jit(lambda k: grow_classical(spec, physics, k))(jax.random.key(0))
    assert np.all(np.asarray(r.ceiling)) and not np.any(np.asarray(r.reached))
    assert np.all(np.asarray(r.deposited) < spec.target)


def test_tilt_logits_are_minus_s_times_height_above_mean_for_depositions():
    params = PhysicsParams(temperature=300.0, deposition_rate=1.0)
    tables = make_rate_tables(params)
    lattice = engine.run(init_flat((5, 5, 8), params), tables, jax.random.key(1), 60)
    s = 0.7

    @jax.jit
    def score(lattice, key):
        cands = draw_candidates(lattice, tables, key, 64)
        return cands, tilt_logits(s, candidate_features(lattice, cands), None)

    cands, logits = score(lattice, jax.random.key(2))
    logits = np.asarray(logits)
    h = np.asarray(lattice.heights[cands.column], np.float64)
    mean_h = float(np.asarray(jnp.sum(lattice.deposited - lattice.desorbed))) / 25
    kind = np.asarray(cands.kind)
    dep = (kind == DEPOSIT_TI) | (kind == DEPOSIT_O)
    assert dep.any() and (~dep).any()
    np.testing.assert_allclose(logits[dep], -s * (h[dep] - mean_h), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(logits[~dep], 0.0)


def test_tilted_weights_are_exact_per_step():
    """log W = Σ −log(K π_a): for one deposition-only step from a flat film every candidate has the
    same height, so the tilt is uniform and the weight is exactly 1."""
    spec = GrowthSpec((3, 3, 6), 1, 8)
    physics = PhysicsParams(temperature=180.0, deposition_rate=0.1)
    r = jax.jit(lambda k: grow_sampler(spec, physics, tilt_logits, 2.0, 6, k))(jax.random.key(9))
    np.testing.assert_allclose(np.asarray(r.log_weight), 0.0, atol=1e-12)
    assert np.all(np.asarray(r.steps) == 1)


def test_flat_film_stats_equal_film_stats_of_a_flat_substrate():
    spec = GrowthSpec((3, 4, 5), 3, 2)
    closed = flat_film_stats(spec)
    direct = film_stats(init_flat((3, 4, 5), WARM))
    for i in range(2):
        np.testing.assert_array_equal(np.asarray(closed.height_counts[i]), np.asarray(direct.height_counts))
        assert int(closed.n_oxide[i]) == int(direct.n_oxide)


def test_growth_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="GrowthSpec.target"):
        GrowthSpec((3, 3, 4), 0, 4)
    with pytest.raises(ValueError, match="GrowthSpec.n_replicas"):
        GrowthSpec((3, 3, 4), 5, 1.5)
