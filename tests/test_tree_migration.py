"""Checkpoints written with the binary rate tree (a (2P,) array per lattice) still resume: the
production restore converts every tree to the flat structure (same leaves, sums recomputed)."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import swarm_jax  # noqa: F401  (64-bit mode: tests/conftest.py)
from swarm_jax.physics import PhysicsParams, engine, init_flat, make_rate_tables, sumtree
from swarm_jax.production.run import RunProgress, _Checkpointer


def binary_tree(leaves: np.ndarray) -> np.ndarray:
    """The old layout: node 1 root, children 2i and 2i + 1, leaf j at P + j, zero padding."""
    n = leaves.shape[0]
    p = 1 << max(0, (n - 1).bit_length())
    tree = np.zeros(2 * p)
    tree[p : p + n] = leaves
    for i in range(p - 1, 0, -1):
        tree[i] = tree[2 * i] + tree[2 * i + 1]
    return tree


@pytest.mark.slow  # compiles a production restore
def test_upgrade_legacy_batched_and_shapes():
    rng = np.random.default_rng(0)
    for n in (9, 16, 17, 64, 2500):
        leaves = rng.random((3, n))
        shape = (3,) + sumtree.tree_shape(n)
        old = np.stack([binary_tree(row) for row in leaves])
        assert sumtree.legacy_shape(shape, n) == old.shape
        assert sumtree.is_tree_shape(shape) and old.ndim == len(shape) - 1
        new = sumtree.upgrade_legacy(old, shape)
        for row, tree in zip(leaves, new):
            np.testing.assert_array_equal(tree, np.asarray(sumtree.build(jnp.asarray(row))))


@pytest.mark.slow  # compiles a production restore
def test_production_restore_converts_a_binary_tree_checkpoint(tmp_path):
    params = PhysicsParams(temperature=300.0)
    tables = make_rate_tables(params)
    one = engine.run(init_flat((5, 4, 6), params), tables, jax.random.key(0), 60)
    carry = jax.tree.map(lambda x: jnp.stack([x, x]), one)  # two replicas, as production batches
    leaves = np.asarray(sumtree.leaves(one.tree, one.n_columns))
    legacy = carry.replace(tree=jnp.asarray(np.stack([binary_tree(leaves)] * 2)))
    config = types.SimpleNamespace(out_dir=str(tmp_path), checkpoint_every=None, checkpoint_minutes=0,
                                   command=["simulate"])
    writer = _Checkpointer(config)
    writer.save(legacy, RunProgress(done=60, chunk=1))
    writer.close()

    reader = _Checkpointer(config)
    restored, progress, _ = reader.restore(carry)
    reader.close()
    assert progress.done == 60
    assert restored.tree.shape == carry.tree.shape
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(carry)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # The run goes on from the converted state exactly as from the original.
    step = jax.jit(lambda s: engine.run(s, tables, jax.random.key(1), 50))
    a, b = step(jax.tree.map(lambda x: x[0], restored)), step(one)
    for got, want in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
