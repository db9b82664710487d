"""The one stored-tree-vs-template check (swarm_jax.agents.params) on small synthetic trees."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swarm_jax.agents.networks import NETWORK_KINDS, NetworkConfig, count_params, make_network
from swarm_jax.agents.params import check_tree_matches, network_template, stored_shape_dtype


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class State:
    params: dict
    rng: jax.Array


def template():
    return State(params={"dense": {"kernel": jnp.zeros((3, 4), jnp.float32),
                                   "bias": jnp.zeros((4,), jnp.float32)}},
                 rng=jax.random.key(0))


def stored(**changes):
    """The template as a checkpoint reads it back: nested dicts of numpy, the key as key data."""
    tree = {"params": {"dense": {"kernel": np.zeros((3, 4), np.float32),
                                 "bias": np.zeros((4,), np.float32)}},
            "rng": np.zeros((2,), np.uint32)}
    tree["params"]["dense"].update(changes)
    return tree


class Mismatch(ValueError):
    pass


def check(tree):
    check_tree_matches(tree, template(), "checkpoint /runs/7", root="state", error=Mismatch,
                       hint="(changed?)")


def test_matching_tree_passes():
    check(stored())


def test_shape_mismatch_names_leaf_both_shapes_and_file():
    with pytest.raises(Mismatch) as info:
        check(stored(bias=np.zeros((6,), np.float32)))
    assert str(info.value) == (
        "checkpoint /runs/7 does not match the template (shape differs) at leaf "
        "state.params['dense']['bias']: checkpoint has shape (6,) float32, template has shape "
        "(4,) float32 (changed?)")


def test_dtype_mismatch():
    with pytest.raises(Mismatch, match=r"\(dtype differs\) at leaf state\.params\['dense'\]"
                                       r"\['kernel'\]: checkpoint has shape \(3, 4\) float64"):
        check(stored(kernel=np.zeros((3, 4), np.float64)))


def test_missing_and_extra_leaves():
    missing = stored()
    del missing["params"]["dense"]["bias"]
    with pytest.raises(Mismatch, match=r"leaf state\.params\['dense'\]\['bias'\] \(shape \(4,\) "
                                       r"float32\) is missing from the checkpoint"):
        check(missing)
    with pytest.raises(Mismatch, match=r"leaf state\['params'\]\['dense'\]\['scale'\] \(shape "
                                       r"\(2,\)\) is in the checkpoint but not in the template "
                                       r"\(1 such leaves\)"):
        check(stored(scale=np.ones((2,), np.float32)))


def test_typed_key_is_compared_as_its_key_data():
    assert stored_shape_dtype(jax.random.key(0)) == ((2,), np.dtype(np.uint32))
    bad = stored()
    bad["rng"] = np.zeros((4,), np.uint32)
    with pytest.raises(Mismatch, match=r"state\.rng.*typed PRNG key, stored as key data"):
        check(bad)


@pytest.mark.slow
def test_network_template_is_the_init_tree():
    net = make_network(NetworkConfig(hidden_sizes=(8,)), 5)
    obs = {"candidates": (5, 3), "global": (2,)}
    spec = network_template(net, obs)
    real = net.init(jax.random.key(1), {k: jnp.zeros(s, jnp.float32) for k, s in obs.items()})
    check_tree_matches(real, spec, "a fresh init")
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(spec))


@pytest.mark.slow
@pytest.mark.parametrize("kind", NETWORK_KINDS)
def test_memory_estimate_counts_exactly_the_networks_parameters(kind):
    """The trainer's memory check counts the parameters of an abstract init (jax.eval_shape): the
    same number as a real init, and for an absurd width (nothing allocated) the closed form of the
    dense layers (D candidate features, G global ones, K candidates)."""
    from swarm_jax.swarm.features import CANDIDATE_FEATURE_DIM as D
    from swarm_jax.swarm.features import GLOBAL_FEATURE_DIM as G
    from swarm_jax.training.config import TrainConfig
    from swarm_jax.training.trainer import estimate_network_params, make_env

    cfg = TrainConfig(network={"kind": kind, "hidden_sizes": [16, 8]}, environment={"n_swarm": 4})
    env = make_env(cfg)
    obs = {k: jnp.zeros(shape, jnp.float32) for k, shape in env.obs_shapes.items()}
    real = make_network(cfg.network, env.num_actions).init(jax.random.key(0), obs)
    assert estimate_network_params(cfg) == count_params(real)

    def mlp(sizes):
        return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))

    h, k = 2**31 - 1, 4
    huge = TrainConfig(network={"kind": kind, "hidden_sizes": [h]}, environment={"n_swarm": k})
    expected = (mlp([k * D + G, h, k]) + mlp([k * D + G, h, 1]) if kind == "flat_mlp"
                else mlp([D + G, h, 1]) + mlp([2 * D + G, h, 1]))
    assert estimate_network_params(huge) == expected > 2**32
