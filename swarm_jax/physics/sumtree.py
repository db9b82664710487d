"""A float64 binary sum tree over per-column rates: O(log N) selection and O(log N) updates.

Layout: a flat array of length ``2P`` where ``P`` is the smallest power of two ``>= n_leaves``.
Node 1 is the root, node ``i`` has children ``2i`` and ``2i + 1``, leaf ``j`` sits at ``P + j``;
node 0 and the padding leaves hold 0. Parents are always *recomputed* as the sum of their
children (never updated by adding deltas), so no rounding drift accumulates over billions of
events, and duplicate indices in an update are harmless.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def tree_capacity(n_leaves: int) -> int:
    """Number of leaf slots P (a power of two >= n_leaves)."""
    return 1 << max(0, (n_leaves - 1).bit_length())


def tree_depth(tree: jnp.ndarray) -> int:
    """Number of levels below the root (static)."""
    return (tree.shape[0] // 2).bit_length() - 1


def build(leaves: jnp.ndarray) -> jnp.ndarray:
    """Builds the tree from all leaf values (n_leaves,) in O(P). Used at initialisation only."""
    p = tree_capacity(leaves.shape[0])
    level = jnp.zeros((p,), jnp.float64).at[: leaves.shape[0]].set(leaves.astype(jnp.float64))
    levels = [level]
    while level.shape[0] > 1:
        # Explicit pairwise adds, not a reduction: XLA may fuse nested reductions into one with
        # another summation order, and then a parent would differ (by an ulp) from
        # ``left + right`` as :func:`update` computes it.
        level = level[0::2] + level[1::2]
        levels.append(level)
    # levels[-1] is the root; node numbering puts the root at index 1, then each level in order.
    return jnp.concatenate([jnp.zeros((1,), jnp.float64)] + levels[::-1])


def update(tree: jnp.ndarray, leaf_ids: jnp.ndarray, values: jnp.ndarray) -> jnp.ndarray:
    """Sets leaves ``leaf_ids`` (M,) to ``values`` (M,) and recomputes their ancestors.

    All new node values are computed first, from the *old* tree (an untouched sibling keeps its
    old value; a sibling that is itself on an updated path takes its new value from the small
    (M,) working set), and then written with a single scatter. Because every read of the old
    buffer feeds that scatter, XLA updates the tree in place: no O(N) copy per event. Duplicate
    leaf ids must carry identical values (they then write identical values).
    """
    p = tree.shape[0] // 2
    nodes = leaf_ids.astype(jnp.int32) + p
    vals = values.astype(tree.dtype)
    all_nodes = [nodes]
    all_vals = [vals]
    for _ in range(tree_depth(tree)):
        sibling = nodes ^ 1
        match = nodes[None, :] == sibling[:, None]  # (M, M): sibling i is updated node j
        sibling_new = jnp.max(jnp.where(match, vals[None, :], -jnp.inf), axis=1)
        sibling_val = jnp.where(match.any(axis=1), sibling_new, tree[sibling])
        vals = vals + sibling_val  # IEEE addition is commutative: equals left + right exactly
        nodes = nodes >> 1
        all_nodes.append(nodes)
        all_vals.append(vals)
    return tree.at[jnp.concatenate(all_nodes)].set(jnp.concatenate(all_vals))


def sample(tree: jnp.ndarray, u: jnp.ndarray) -> jnp.ndarray:
    """Returns the leaf j drawn with probability leaf_j / root, for a uniform ``u`` in [0, 1).

    A branch with zero mass is never entered, even when rounding pushes the target past the
    left subtree's sum.
    """
    p = tree.shape[0] // 2
    target = u * tree[1]

    def descend(_, carry):
        node, target = carry
        left = tree[2 * node]
        right = tree[2 * node + 1]
        go_right = ((target >= left) & (right > 0)) | (left <= 0)
        target = jnp.where(go_right, target - left, target)
        return 2 * node + go_right.astype(node.dtype), target

    node, _ = jax.lax.fori_loop(0, tree_depth(tree), descend, (jnp.int32(1), target))
    return node - p
