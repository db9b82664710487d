"""The decision kernel (swarm.decision) and the film observables (physics.film_observables)
against NumPy, and training's acting.choose against the kernel."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm_jax.agents.acting import choose
from swarm_jax.physics import PhysicsParams, init_flat
from swarm_jax.physics.film_observables import height_stats, height_stats_from_counts, observables
from swarm_jax.swarm.decision import choose_candidate, decision_of

_choose32 = jax.jit(choose_candidate)
_choose64 = jax.jit(lambda logits, key: choose_candidate(logits, key, jnp.float64))


@settings(max_examples=12, deadline=None)
@given(st.lists(st.floats(-20, 20, width=32), min_size=1, max_size=12), st.integers(0, 2**31 - 1))
def test_choice_fields_equal_numpy(logits, seed):
    logits = np.asarray(logits, np.float32)
    k = logits.size
    key = jax.random.key(seed)
    d32, d64 = _choose32(logits, key), _choose64(logits, key)
    assert int(d32.action) == int(d64.action)  # the draw does not depend on the weights' dtype
    a = int(d64.action)
    x = logits.astype(np.float64)
    log_p = x - (x.max() + np.log(np.sum(np.exp(x - x.max()))))
    assert 0 <= a < k
    np.testing.assert_allclose(float(d64.log_prob), log_p[a], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(float(d64.step_log_weight), -np.log(k) - log_p[a], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(float(d64.ess), k**2 / np.sum(np.exp(-log_p)), rtol=1e-9)
    np.testing.assert_allclose(float(d32.step_log_weight), -np.log(k) - log_p[a], rtol=1e-4, atol=1e-4)


def test_uniform_logits_give_weight_zero_and_frequencies_one_over_k():
    k, n = 8, 40000
    d = jax.jit(jax.vmap(lambda key: choose_candidate(jnp.zeros(k), key, jnp.float64)))(
        jax.random.split(jax.random.key(0), n))
    assert np.all(np.asarray(d.step_log_weight) == 0.0) and np.allclose(np.asarray(d.ess), 1.0)
    freq = np.bincount(np.asarray(d.action), minlength=k) / n
    assert np.all(np.abs(freq - 1 / k) < 5 * np.sqrt(1 / k / n))


def test_training_choose_is_the_kernel_on_the_network_logits():
    class Net:  # a stand-in actor-critic: fixed logits per observation
        @staticmethod
        def apply(params, obs):
            return obs["candidates"][..., 0] * params, jnp.zeros(obs["candidates"].shape[:-2])

    obs = {"candidates": jax.random.normal(jax.random.key(1), (5, 6, 3)), "global": jnp.zeros((5, 2))}
    key = jax.random.key(2)
    c = choose(Net, 3.0, obs, key, "trained", 6)
    d = choose_candidate(obs["candidates"][..., 0] * 3.0, key)
    for field in ("action", "log_prob", "step_log_weight", "ess"):
        np.testing.assert_array_equal(np.asarray(getattr(c, field)), np.asarray(getattr(d, field)))
    g = choose(Net, 3.0, obs, key, "greedy", 6)
    np.testing.assert_array_equal(np.asarray(g.action), np.argmax(np.asarray(obs["candidates"][..., 0]), -1))
    assert np.all(np.asarray(g.ess) == 0.0)
    u = decision_of(jnp.full((5, 6), -np.log(6), jnp.float32), jnp.arange(5))
    assert np.all(np.asarray(u.step_log_weight) == 0.0)


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_height_statistics_equal_numpy_and_the_histogram_form(seed):
    lx, ly, lz = 4, 5, 7
    rng = np.random.default_rng(seed)
    h = rng.integers(0, lz, size=lx * ly)
    state = init_flat((lx, ly, lz), PhysicsParams())
    state = state.replace(heights=state.heights.at[: lx * ly].set(jnp.asarray(h, jnp.int32)))
    hs = height_stats(state)
    counts = jnp.asarray(np.bincount(h, minlength=lz), jnp.int64)
    from_counts = height_stats_from_counts(counts, lx * ly)
    want = dict(mean_height=h.mean(), roughness=h.std(), coverage=np.mean(h > 0), h_max=h.max(), h_min=h.min())
    for name, value in want.items():
        np.testing.assert_allclose(float(hs[name]), value, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(float(from_counts[name]), value, rtol=1e-9, atol=1e-12)
    obs = observables(state, hs)
    assert float(obs["roughness"]) == float(observables(state)["roughness"])
    assert float(obs["o_ti_ratio"]) == 0.0 and float(obs["oxide_fraction"]) == 0.0
