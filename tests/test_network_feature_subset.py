"""network.candidate_features: a swarm actor that reads a subset of the candidate features."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swarm_jax.agents.networks import NetworkConfig, make_network
from swarm_jax.swarm.features import CANDIDATE_FEATURE_DIM, CANDIDATE_LAYOUT, GLOBAL_FEATURE_DIM
from swarm_jax.trained_policy import network_config_from_dict
from swarm_jax.validation import ConfigError

K = 8
GROUPS = ["z_above_mean", "kind", "relative_heights"]  # deliberately not in layout order


def _obs(key):
    k1, k2 = jax.random.split(key)
    return {"candidates": jax.random.normal(k1, (K, CANDIDATE_FEATURE_DIM)),
            "global": jax.random.normal(k2, (GLOBAL_FEATURE_DIM,))}


def test_subset_is_kept_in_layout_order_and_sizes_the_first_layer():
    cfg = NetworkConfig(hidden_sizes=[16], candidate_features=GROUPS)
    assert cfg.candidate_features == ("relative_heights", "kind", "z_above_mean")
    params = make_network(cfg, K).init(jax.random.key(0), _obs(jax.random.key(1)))
    width = sum(CANDIDATE_LAYOUT[g].stop - CANDIDATE_LAYOUT[g].start for g in GROUPS)
    assert params["params"]["actor_in_candidate"]["kernel"].shape == (width, 16)


def test_logits_depend_only_on_the_selected_features():
    cfg = NetworkConfig(hidden_sizes=[16], candidate_features=GROUPS)
    net = make_network(cfg, K)
    obs = _obs(jax.random.key(2))
    params = net.init(jax.random.key(3), obs)
    # Non-zero head so the logits are not all equal.
    params = jax.tree.map(lambda x: x + 0.3, params)
    apply = jax.jit(net.apply)
    logits, value = apply(params, obs)
    dropped = np.ones(CANDIDATE_FEATURE_DIM, bool)
    for g in GROUPS:
        dropped[CANDIDATE_LAYOUT[g]] = False
    noise = jax.random.normal(jax.random.key(4), (K, CANDIDATE_FEATURE_DIM)) * dropped
    logits2, value2 = apply(params, dict(obs, candidates=obs["candidates"] + noise))
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(logits2))
    np.testing.assert_array_equal(np.asarray(value), np.asarray(value2))
    kept = jnp.zeros(CANDIDATE_FEATURE_DIM).at[CANDIDATE_LAYOUT["z_above_mean"]].set(1.0)
    logits3, _ = apply(params, dict(obs, candidates=obs["candidates"] + kept))
    assert not np.allclose(np.asarray(logits), np.asarray(logits3))


def test_default_reads_every_feature():
    params = make_network(NetworkConfig(hidden_sizes=[16]), K).init(jax.random.key(0), _obs(jax.random.key(1)))
    assert params["params"]["actor_in_candidate"]["kernel"].shape == (CANDIDATE_FEATURE_DIM, 16)


@pytest.mark.parametrize("bad", [[], "kind", ["kind", "kind"], ["heights"], [3]])
def test_bad_subsets_name_the_field(bad):
    with pytest.raises(ConfigError, match=r"network\.candidate_features"):
        NetworkConfig(candidate_features=bad)


def test_flat_network_refuses_a_subset():
    with pytest.raises(ConfigError, match=r"network\.candidate_features"):
        make_network(NetworkConfig(kind="flat_mlp", candidate_features=["kind"]), K)


def test_saved_config_round_trip():
    net_cfg, k = network_config_from_dict({"network": {"kind": "swarm", "hidden_sizes": [16],
                                                       "candidate_features": GROUPS},
                                           "environment": {"n_swarm": 16}})
    assert k == 16 and net_cfg.candidate_features == ("relative_heights", "kind", "z_above_mean")
