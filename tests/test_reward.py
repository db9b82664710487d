"""Reward formulas on hand-built films (level and delta modes, ESS term)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import swarm_jax
from swarm_jax import RewardConfig, compute_reward
from swarm_jax.env.reward import ess_penalty
from swarm_jax.physics import from_arrays
from swarm_jax.physics.params import O, SUBSTRATE, TI, PhysicsParams

pytestmark = pytest.mark.slow  # not in the quick tier: hypothesis properties over lattices (a compilation per shape)

PARAMS = PhysicsParams()


def film(heights, ti_sites=()):
    """A film of O atoms with the given (Lx, Ly) heights, Ti at the listed (x, y, z) sites."""
    heights = np.asarray(heights)
    lx, ly = heights.shape
    lz = 5
    species = np.zeros((lx, ly, lz), np.int8)
    species[..., 0] = SUBSTRATE
    for x in range(lx):
        for y in range(ly):
            species[x, y, 1: heights[x, y] + 1] = O
    for x, y, z in ti_sites:
        species[x, y, z] = TI
    return from_arrays(heights, species, np.zeros_like(species), PARAMS)


# Film A: heights [[0, 1, 2], [1, 1, 3], [0, 0, 1]] (9 atoms), 3 Ti and 6 O -> O/Ti = 2.
HEIGHTS_A = [[0, 1, 2], [1, 1, 3], [0, 0, 1]]
TI_A = [(0, 1, 1), (1, 2, 3), (2, 2, 1)]
# Film B: flat 3x3 at height 1, 2 Ti and 7 O -> W = 0, mean h = 1, O/Ti = 3.5.
HEIGHTS_B = [[1, 1, 1], [1, 1, 1], [1, 1, 1]]
TI_B = [(0, 0, 1), (1, 1, 1)]


def test_level_reward_by_hand():
    state = film(HEIGHTS_A, TI_A)
    h = np.array(HEIGHTS_A, float)
    w, mean_h = h.std(), h.mean()  # population std: sqrt(mean((h - mean)^2))
    assert mean_h == 1.0 and np.isclose(w, np.sqrt(8 / 9))
    cfg = RewardConfig()
    r, info = compute_reward(state, cfg)
    np.testing.assert_allclose(r, -1.0 * w + 0.5 * mean_h - 0.2 * 0.0, rtol=1e-12)
    np.testing.assert_allclose(info["roughness"], w, rtol=1e-12)
    assert float(info["mean_height"]) == 1.0 and float(info["o_ti_ratio"]) == 2.0
    assert int(info["n_ti"]) == 3 and int(info["n_o"]) == 6
    np.testing.assert_allclose(info["coverage"], 6 / 9, rtol=1e-6)
    np.testing.assert_allclose(
        info["reward_roughness"] + info["reward_coverage"] + info["reward_ratio"] + info["reward_ess"], r, rtol=1e-12
    )
    # Other weights and a non-stoichiometric film.
    cfg2 = RewardConfig(w_roughness=2.0, w_coverage=0.1, w_ratio=1.5, w_ess=0.7)
    r2, _ = compute_reward(film(HEIGHTS_B, TI_B), cfg2)
    np.testing.assert_allclose(r2, -2.0 * 0.0 + 0.1 * 1.0 - 1.5 * abs(3.5 - 2.0), rtol=1e-12)


def test_ess_term():
    state = film(HEIGHTS_A, TI_A)
    cfg = RewardConfig()
    base, _ = compute_reward(state, cfg)
    low, info = compute_reward(state, cfg, ess_ratio=0.2)
    high, _ = compute_reward(state, cfg, ess_ratio=0.8)
    np.testing.assert_allclose(low - base, -0.3 * (0.5 - 0.2), rtol=1e-12)
    np.testing.assert_allclose(info["reward_ess"], -0.09, rtol=1e-12)
    assert float(high) == float(base)
    np.testing.assert_allclose(ess_penalty(jnp.array([0.0, 0.5, 1.0]), cfg), [-0.15, 0.0, 0.0], atol=1e-15)


def test_delta_reward_by_hand():
    a, b = film(HEIGHTS_A, TI_A), film(HEIGHTS_B, TI_B)
    cfg = RewardConfig(mode="delta")
    r, info = compute_reward(b, cfg, prev_state=a)
    level = RewardConfig()
    la, _ = compute_reward(a, level)
    lb, _ = compute_reward(b, level)
    np.testing.assert_allclose(r, lb - la, rtol=1e-12)
    np.testing.assert_allclose(r, (0.0 - np.sqrt(8 / 9)) * -1.0 + 0.5 * 0.0 - 0.2 * (1.5 - 0.0), rtol=1e-12)
    r_ess, _ = compute_reward(b, cfg, ess_ratio=0.1, prev_state=a)
    np.testing.assert_allclose(r_ess - r, -0.3 * 0.4, rtol=1e-12)
    assert float(compute_reward(a, cfg, prev_state=a)[0]) == 0.0
    with pytest.raises(ValueError):
        compute_reward(b, cfg)  # a bare lattice carries no previous metrics


def test_empty_film_ratio_convention_and_units():
    state = swarm_jax.physics.init_flat((4, 4, 3), PARAMS)
    r, info = compute_reward(state, RewardConfig())
    # No Ti: O/Ti is 0 by convention, so the stoichiometry term is -w_ratio * 2.
    np.testing.assert_allclose(r, -0.2 * 2.0, rtol=1e-12)
    assert float(info["roughness"]) == 0.0 and float(info["mean_height"]) == 0.0


def test_compute_reward_jits_and_vmaps_with_config_as_argument():
    a, b = film(HEIGHTS_A, TI_A), film(HEIGHTS_B, TI_B)
    batch = jax.tree.map(lambda x, y: jnp.stack([x, y]), a, b)
    fn = jax.jit(jax.vmap(lambda s, c, e: compute_reward(s, c, e)[0], in_axes=(0, None, 0)))
    cfg = RewardConfig(w_roughness=0.5)
    out = fn(batch, cfg, jnp.array([1.0, 0.0]))
    np.testing.assert_allclose(out[0], compute_reward(a, cfg)[0], rtol=1e-12)
    np.testing.assert_allclose(out[1], compute_reward(b, cfg, ess_ratio=0.0)[0], rtol=1e-12)
    leaves, treedef = jax.tree.flatten(cfg)
    assert len(leaves) == 6 and jax.tree.unflatten(treedef, leaves).mode == "level"
