"""The float64 B-ary rate tree (swarm_jax/physics/sumtree.py) against an independent NumPy model
(tests/tree_reference.py)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

import swarm_jax  # noqa: F401  (64-bit mode: tests/conftest.py)
from swarm_jax.physics import sumtree
from tree_reference import rate_tree, sample as reference_sample

pytestmark = pytest.mark.slow  # not in the quick tier: hypothesis properties, each size compiled anew

# With a small branching factor the same code paths are exercised at depths 1 to 4 on small
# sizes; the default B = 32 is covered by the sizes above 32.
B_SMALL = 4
SIZES = [1, 2, 3, 5, 8, 17, 100]
CASES = [(n, b) for n in SIZES for b in (B_SMALL, sumtree.BRANCHING)] + [(1100, sumtree.BRANCHING)]
P_MIN = 1e-6
_update = jax.jit(sumtree.update)


def random_leaves(rng, n, zero_fraction=0.3):
    leaves = 10.0 ** rng.uniform(-3, 3, size=n)
    leaves[rng.random(n) < zero_fraction] = 0.0
    if not leaves.any():
        leaves[rng.integers(n)] = 1.0
    return leaves


@pytest.mark.parametrize("n,b", CASES)
def test_capacity_and_build(n, b):
    rng = np.random.default_rng(n)
    leaves = random_leaves(rng, n)
    tree = np.asarray(sumtree.build(jnp.asarray(leaves), b))
    rows = sumtree.level_rows(n, b)
    assert rows[0] == 1 and b ** len(rows) >= n and (len(rows) == 1 or b ** (len(rows) - 1) < n)
    assert tree.shape == sumtree.tree_shape(n, b) == (sum(rows), b) and tree.dtype == np.float64
    assert sumtree.tree_depth(tree) == len(rows) and sumtree.capacity(tree) >= n
    np.testing.assert_array_equal(tree, rate_tree(leaves, b))
    np.testing.assert_array_equal(np.asarray(sumtree.leaves(jnp.asarray(tree), n)), leaves)
    assert math.isclose(float(sumtree.root(jnp.asarray(tree))), math.fsum(leaves), rel_tol=1e-14)


def test_depth_is_shallow_at_production_sizes():
    """The point of the flat structure: at most 4 levels up to 10^6 columns."""
    assert sumtree.tree_depth(jnp.zeros(sumtree.tree_shape(2500))) == 3
    assert sumtree.tree_depth(jnp.zeros(sumtree.tree_shape(40_000))) == 4
    assert len(sumtree.level_rows(10**6)) == 4


def test_from_binary_keeps_the_leaves():
    """Older checkpoints hold a binary tree (2P,) with leaf j at P + j: converting it gives the
    tree built from the same leaves."""
    rng = np.random.default_rng(7)
    leaves = random_leaves(rng, 37)
    binary = np.zeros(128)
    binary[64 : 64 + 37] = leaves
    for i in range(63, 0, -1):
        binary[i] = binary[2 * i] + binary[2 * i + 1]
    np.testing.assert_array_equal(np.asarray(sumtree.from_binary(jnp.asarray(binary), 37)),
                                  rate_tree(leaves, sumtree.BRANCHING))


update_cases = st.tuples(
    st.sampled_from(CASES),
    st.integers(0, 2**32 - 1),
    st.sampled_from([1, 4, 9]),  # few distinct update lengths: each one is a compilation
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=update_cases, n_updates=st.integers(1, 5))
def test_update_matches_rebuild(case, n_updates):
    """Updates (with duplicate indices carrying the same value, as the engine issues them)
    give exactly the tree built from scratch from the resulting leaves."""
    (n, b), seed, m = case
    rng = np.random.default_rng(seed)
    leaves = random_leaves(rng, n)
    tree = sumtree.build(jnp.asarray(leaves), b)
    for _ in range(n_updates):
        ids = rng.integers(0, n, size=m)
        ids = np.concatenate([ids, ids[: m // 2]])  # duplicates
        values = random_leaves(rng, n)[ids]  # one value per distinct leaf
        tree = _update(tree, jnp.asarray(ids, jnp.int32), jnp.asarray(values))
        leaves[ids] = values
        np.testing.assert_array_equal(np.asarray(tree), rate_tree(leaves, b))


@pytest.mark.parametrize("n,b", [(2, B_SMALL), (5, B_SMALL), (17, B_SMALL), (17, 32), (100, 32)])
def test_update_siblings_and_whole_tree(n, b):
    """Updating a leaf together with its sibling (both on the same path), or every leaf at once,
    gives the tree built from scratch."""
    rng = np.random.default_rng(n)
    leaves = random_leaves(rng, n)
    tree = sumtree.build(jnp.asarray(leaves), b)
    ids = np.array([0, 1, 1, 0], np.int32)  # siblings, each twice
    values = np.array([2.5, 0.0, 0.0, 2.5])
    tree = _update(tree, jnp.asarray(ids), jnp.asarray(values))
    leaves[ids] = values
    np.testing.assert_array_equal(np.asarray(tree), rate_tree(leaves, b))
    new = random_leaves(rng, n)
    tree = _update(tree, jnp.arange(n, dtype=jnp.int32), jnp.asarray(new))
    np.testing.assert_array_equal(np.asarray(tree), rate_tree(new, b))


@pytest.mark.parametrize("n,b", CASES)
def test_sample_frequencies_and_zero_leaves(n, b):
    """Samples follow leaf / root (chi-square); zero and padding leaves are never drawn."""
    rng = np.random.default_rng(100 + n)
    leaves = random_leaves(rng, n, zero_fraction=0.4)
    leaves[leaves > 0] = rng.uniform(0.5, 2.0, size=(leaves > 0).sum())  # keep counts testable
    tree = sumtree.build(jnp.asarray(leaves), b)
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


@pytest.mark.parametrize("n,b", CASES)
def test_sample_edges_never_hit_zero_leaves(n, b):
    """u = 0 and u just below 1 land on the first and last leaves with mass, even with zero
    leaves at both ends."""
    leaves = np.zeros(n)
    if n >= 3:
        leaves[1 : n - 1] = np.linspace(1.0, 2.0, n - 2)
        first, last = 1, n - 2
    else:
        leaves[:] = 1.0
        first, last = 0, n - 1
    tree = sumtree.build(jnp.asarray(leaves), b)
    below_one = np.nextafter(1.0, 0.0)
    assert int(sumtree.sample(tree, jnp.float64(0.0))) == first
    assert int(sumtree.sample(tree, jnp.float64(below_one))) == last


@pytest.mark.parametrize("b", [2, B_SMALL, sumtree.BRANCHING])
def test_sample_exact_boundaries(b):
    """With integer leaves the selection intervals are exactly [cum_{j-1}, cum_j) / total."""
    leaves = np.array([3.0, 0.0, 1.0, 4.0, 0.0, 0.0, 2.0])  # total 10
    tree = sumtree.build(jnp.asarray(leaves), b)
    u = np.array([0.0, 0.29, 0.3, 0.39, 0.4, 0.79, 0.8, 0.99])
    expected = [0, 0, 2, 2, 3, 3, 6, 6]
    picks = jax.vmap(sumtree.sample, in_axes=(None, 0))(tree, jnp.asarray(u))
    np.testing.assert_array_equal(np.asarray(picks), expected)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(CASES), seed=st.integers(0, 2**32 - 1),
       u=st.lists(st.floats(0.0, 1.0, exclude_max=True, allow_nan=False), min_size=16, max_size=16))
def test_sample_matches_sequential_rule(case, seed, u):
    """With integer leaves (every partial sum exact) the hierarchical descent picks exactly the
    leaf of the flat sequential rule (first j with u * total < cum_j), zero leaves never."""
    n, b = case
    rng = np.random.default_rng(seed)
    leaves = rng.integers(0, 4, size=n).astype(np.float64)
    if not leaves.any():
        leaves[rng.integers(n)] = 1.0
    tree = sumtree.build(jnp.asarray(leaves), b)
    picks = np.asarray(_sample_many(tree, jnp.asarray(u)))
    expected = [reference_sample(np.asarray(tree), n, x) for x in u]
    np.testing.assert_array_equal(picks, expected)
    assert np.all(leaves[picks] > 0)


_sample_many = jax.jit(jax.vmap(sumtree.sample, in_axes=(None, 0)))
