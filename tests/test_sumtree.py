"""The float64 sum tree (swarm_jax/physics/sumtree.py) against plain NumPy."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

import swarm_jax  # noqa: F401  (enables x64)
from swarm_jax.physics import sumtree

pytestmark = pytest.mark.slow  # not in the quick tier: hypothesis properties, each size compiled anew

SIZES = [1, 2, 3, 5, 8, 17, 100]
P_MIN = 1e-6
_update = jax.jit(sumtree.update)


def numpy_tree(leaves: np.ndarray) -> np.ndarray:
    """Reference layout: node 1 root, children 2i and 2i+1, leaf j at P + j, zero padding."""
    n = leaves.shape[0]
    p = 1
    while p < n:
        p *= 2
    tree = np.zeros(2 * p)
    tree[p : p + n] = leaves
    for i in range(p - 1, 0, -1):
        tree[i] = tree[2 * i] + tree[2 * i + 1]
    return tree


def random_leaves(rng, n, zero_fraction=0.3):
    leaves = 10.0 ** rng.uniform(-3, 3, size=n)
    leaves[rng.random(n) < zero_fraction] = 0.0
    if not leaves.any():
        leaves[rng.integers(n)] = 1.0
    return leaves


@pytest.mark.parametrize("n", SIZES)
def test_capacity_and_build(n):
    rng = np.random.default_rng(n)
    leaves = random_leaves(rng, n)
    tree = np.asarray(sumtree.build(jnp.asarray(leaves)))
    p = sumtree.tree_capacity(n)
    assert p >= n and p & (p - 1) == 0 and (p == 1 or p // 2 < n)
    assert tree.shape == (2 * p,) and tree.dtype == np.float64
    np.testing.assert_allclose(tree, numpy_tree(leaves), rtol=1e-15, atol=0)
    assert math.isclose(tree[1], math.fsum(leaves), rel_tol=1e-14)


update_cases = st.tuples(
    st.sampled_from(SIZES),
    st.integers(0, 2**32 - 1),
    st.sampled_from([1, 4, 9]),  # few distinct update lengths: each one is a compilation
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=update_cases, n_updates=st.integers(1, 5))
def test_update_matches_rebuild(case, n_updates):
    """Updates (with duplicate indices carrying the same value, as the engine issues them)
    give exactly the tree built from scratch from the resulting leaves."""
    n, seed, m = case
    rng = np.random.default_rng(seed)
    leaves = random_leaves(rng, n)
    tree = sumtree.build(jnp.asarray(leaves))
    for _ in range(n_updates):
        ids = rng.integers(0, n, size=m)
        ids = np.concatenate([ids, ids[: m // 2]])  # duplicates
        values = random_leaves(rng, n)[ids]  # one value per distinct leaf
        tree = _update(tree, jnp.asarray(ids, jnp.int32), jnp.asarray(values))
        leaves[ids] = values
        np.testing.assert_array_equal(np.asarray(tree), numpy_tree(leaves))


@pytest.mark.parametrize("n", [2, 5, 17])
def test_update_siblings_and_whole_tree(n):
    """Updating a leaf together with its sibling (both on the same path), or every leaf at once,
    gives the tree built from scratch."""
    rng = np.random.default_rng(n)
    leaves = random_leaves(rng, n)
    tree = sumtree.build(jnp.asarray(leaves))
    ids = np.array([0, 1, 1, 0], np.int32)  # siblings, each twice
    values = np.array([2.5, 0.0, 0.0, 2.5])
    tree = _update(tree, jnp.asarray(ids), jnp.asarray(values))
    leaves[ids] = values
    np.testing.assert_array_equal(np.asarray(tree), numpy_tree(leaves))
    new = random_leaves(rng, n)
    tree = _update(tree, jnp.arange(n, dtype=jnp.int32), jnp.asarray(new))
    np.testing.assert_array_equal(np.asarray(tree), numpy_tree(new))


@pytest.mark.parametrize("n", SIZES)
def test_sample_frequencies_and_zero_leaves(n):
    """Samples follow leaf / root (chi-square); zero and padding leaves are never drawn."""
    rng = np.random.default_rng(100 + n)
    leaves = random_leaves(rng, n, zero_fraction=0.4)
    leaves[leaves > 0] = rng.uniform(0.5, 2.0, size=(leaves > 0).sum())  # keep counts testable
    tree = sumtree.build(jnp.asarray(leaves))
    draws = 50_000
    u = jnp.asarray(rng.random(draws))
    picks = np.asarray(jax.jit(jax.vmap(sumtree.sample, in_axes=(None, 0)))(tree, u))
    assert picks.min() >= 0 and picks.max() < n
    counts = np.bincount(picks, minlength=n)
    assert np.all(counts[leaves == 0] == 0)
    nonzero = leaves > 0
    if nonzero.sum() > 1:
        expected = draws * leaves[nonzero] / leaves.sum()
        assert stats.chisquare(counts[nonzero], expected).pvalue > P_MIN


@pytest.mark.parametrize("n", SIZES)
def test_sample_edges_never_hit_zero_leaves(n):
    """u = 0 and u just below 1 land on the first and last leaves with mass, even with zero
    leaves at both ends."""
    leaves = np.zeros(n)
    if n >= 3:
        leaves[1 : n - 1] = np.linspace(1.0, 2.0, n - 2)
        first, last = 1, n - 2
    else:
        leaves[:] = 1.0
        first, last = 0, n - 1
    tree = sumtree.build(jnp.asarray(leaves))
    below_one = np.nextafter(1.0, 0.0)
    assert int(sumtree.sample(tree, jnp.float64(0.0))) == first
    assert int(sumtree.sample(tree, jnp.float64(below_one))) == last


def test_sample_exact_boundaries():
    """With integer leaves the selection intervals are exactly [cum_{j-1}, cum_j) / total."""
    leaves = np.array([3.0, 0.0, 1.0, 4.0, 0.0, 0.0, 2.0])  # total 10
    tree = sumtree.build(jnp.asarray(leaves))
    u = np.array([0.0, 0.29, 0.3, 0.39, 0.4, 0.79, 0.8, 0.99])
    expected = [0, 0, 2, 2, 3, 3, 6, 6]
    picks = jax.vmap(sumtree.sample, in_axes=(None, 0))(tree, jnp.asarray(u))
    np.testing.assert_array_equal(np.asarray(picks), expected)
