"""Actor-critic networks: shapes, float32, symmetry, initial scales, SB3-parity layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swarm_jax.agents.networks import (
    FlatActorCritic,
    NetworkConfig,
    SwarmActorCritic,
    count_params,
    entropy_from_log_probs,
    log_probs_from_logits,
    make_network,
    select_log_prob,
)

pytestmark = pytest.mark.slow  # not in the quick tier: hypothesis properties over network shapes (a compilation per shape)

D, G = 6, 5


def _obs(key, batch, k, dtype=jnp.float64):
    k1, k2 = jax.random.split(key)
    return {
        "candidates": jax.random.normal(k1, batch + (k, D), dtype=dtype),
        "global": jax.random.normal(k2, batch + (G,), dtype=dtype),
    }


@pytest.fixture(scope="module")
def swarm():
    net = make_network(NetworkConfig(kind="swarm", hidden_sizes=(32, 32)), num_actions=8)
    params = jax.jit(net.init)(jax.random.PRNGKey(0), _obs(jax.random.PRNGKey(1), (), 8))
    return net, params


def test_swarm_same_params_any_k_and_float32(swarm):
    net, params = swarm
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    for k in (8, 32):
        for batch in ((), (2, 3)):
            # float64 observations (the package runs with x64 on) are cast to float32.
            logits, value = jax.jit(net.apply)(params, _obs(jax.random.PRNGKey(k), batch, k))
            assert logits.shape == batch + (k,) and value.shape == batch
            assert logits.dtype == jnp.float32 and value.dtype == jnp.float32
            assert np.all(np.isfinite(logits)) and np.all(np.isfinite(value))


def test_swarm_actor_equivariant_critic_invariant(swarm):
    net, params = swarm
    obs = _obs(jax.random.PRNGKey(2), (4,), 32)
    perm = np.asarray(jax.random.permutation(jax.random.PRNGKey(3), 32))
    permuted = {"candidates": obs["candidates"][:, perm], "global": obs["global"]}
    apply = jax.jit(net.apply)
    logits, value = apply(params, obs)
    logits_p, value_p = apply(params, permuted)
    np.testing.assert_allclose(logits_p, logits[:, perm], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(value_p, value, rtol=1e-5, atol=1e-5)


def test_swarm_actor_scores_each_candidate_independently(swarm):
    """Changing one candidate's features changes only its own logit (shared per-candidate MLP)."""
    net, params = swarm
    obs = _obs(jax.random.PRNGKey(4), (), 8)
    changed = dict(obs, candidates=obs["candidates"].at[5].add(1.0))
    apply = jax.jit(net.apply)
    l0, _ = apply(params, obs)
    l1, _ = apply(params, changed)
    others = np.arange(8) != 5
    np.testing.assert_array_equal(np.asarray(l0)[others], np.asarray(l1)[others])
    assert l0[5] != l1[5]


def test_initial_policy_near_uniform():
    """Policy head is orthogonal with gain 0.01 and zero bias: |logit| <= 0.01 * ||h|| <= 0.01 * sqrt(H)
    because tanh features are bounded by 1. So the initial policy is (almost) classical KMC."""
    h = 64
    for kind in ("swarm", "flat_mlp"):
        net = make_network(NetworkConfig(kind=kind, hidden_sizes=(h, h)), num_actions=16)
        obs = _obs(jax.random.PRNGKey(5), (10,), 16)
        params = jax.jit(net.init)(jax.random.PRNGKey(6), obs)
        logits, _ = jax.jit(net.apply)(params, obs)
        assert np.max(np.abs(logits)) <= 0.01 * np.sqrt(h) * (1 + 1e-5)


def test_orthogonal_init_gains(swarm):
    _, params = swarm
    p = params["params"]
    w = np.asarray(p["actor_mlp"]["Dense_0"]["kernel"])  # second actor layer: square 32x32, gain sqrt(2)
    np.testing.assert_allclose(w.T @ w, 2.0 * np.eye(32), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(p["actor_head"]["kernel"]), 0.01, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(p["critic_head"]["kernel"]), 1.0, rtol=1e-5)
    assert all(np.all(np.asarray(b) == 0) for b in jax.tree.leaves(params) if b.ndim == 1)


def test_flat_mlp_shapes_and_sb3_layout():
    k, h = 8, 64
    net = make_network(NetworkConfig(kind="flat_mlp"), num_actions=k)
    assert isinstance(net, FlatActorCritic) and tuple(net.hidden_sizes) == (64, 64)
    obs = _obs(jax.random.PRNGKey(7), (3,), k)
    params = jax.jit(net.init)(jax.random.PRNGKey(8), obs)
    logits, value = jax.jit(net.apply)(params, obs)
    assert logits.shape == (3, k) and value.shape == (3,)
    assert logits.dtype == jnp.float32 and value.dtype == jnp.float32
    # SB3 MlpPolicy: separate pi and vf nets of 2x64 on the flat input, heads K and 1.
    f = k * D + G
    trunk = (f * h + h) + (h * h + h)
    assert count_params(params) == 2 * trunk + (h * k + k) + (h + 1)
    # The value depends on the vf net only, the logits on the pi net only.
    g_v = jax.jit(jax.grad(lambda p: net.apply(p, obs)[1].sum()))(params)["params"]
    g_pi = jax.jit(jax.grad(lambda p: net.apply(p, obs)[0].sum()))(params)["params"]
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves((g_v["pi_mlp"], g_v["pi_head"])))
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves((g_pi["vf_mlp"], g_pi["vf_head"])))
    with pytest.raises(ValueError, match="K=8"):
        jax.eval_shape(net.apply, params, _obs(jax.random.PRNGKey(9), (3,), 16))


def test_network_config_validation_and_hashable():
    cfg = NetworkConfig(kind="swarm", hidden_sizes=[128, 128], activation="relu")
    assert cfg.hidden_sizes == (128, 128) and hash(cfg) == hash(NetworkConfig("swarm", (128, 128), "relu"))
    assert isinstance(make_network(cfg, 4), SwarmActorCritic)
    with pytest.raises(ValueError):
        NetworkConfig(kind="transformer")
    with pytest.raises(ValueError):
        NetworkConfig(activation="sigmoidal")
    with pytest.raises(ValueError):
        NetworkConfig(hidden_sizes=())


def test_categorical_helpers():
    logits = jnp.array([[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, -10.0, 3.0]], jnp.float32)
    lp = log_probs_from_logits(logits)
    np.testing.assert_allclose(np.exp(lp).sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(entropy_from_log_probs(lp)[0], np.log(4.0), rtol=1e-6)
    p = np.exp(np.asarray(lp[1], np.float64))
    np.testing.assert_allclose(entropy_from_log_probs(lp)[1], -(p * np.log(p)).sum(), rtol=1e-5)
    np.testing.assert_allclose(select_log_prob(lp, jnp.array([2, 3])), [lp[0, 2], lp[1, 3]])
