"""A flat float64 rate structure: a shallow B-ary sum tree (B = :data:`BRANCHING`).

Layout (``B`` children per node, ``n`` leaves, depth ``D`` = number of stored levels, the
smallest with ``B**D >= n``; ``D = 3`` up to 32 768 leaves at ``B = 32``): a 2-D array of shape
``(R, B)``; row ``r`` holds the ``B`` children of one node. Level ``D`` (the leaves) has
``ceil(n / B)`` rows, level ``d - 1`` has one row per ``B`` rows of level ``d``, and level 1 is a
single row (the children of the root). Rows are stored top-down: level 1 first, the leaves last,
so node ``i`` of level ``d`` sits at flat position ``offset(d) * B + i`` and its children fill row
``offset(d + 1) + i``. Padding slots hold 0. The root (``Γ_tot``) is not stored: :func:`root` sums
row 0.

Sums are *recomputed* from the children, never updated by adding deltas, so no rounding drift
accumulates over billions of events and duplicate indices in an update are harmless. Every sum
of a row uses the same fixed pairwise order (:func:`block_sum`), in :func:`build` and
:func:`update` alike, so an updated tree equals a rebuilt one bit for bit.

An update after an event touches ``D`` rows per changed leaf: per level, one scatter of the new
values, one gather of the rows holding them and one vectorised sum (only the written buffer is
read, so XLA updates it in place).

The 2-D shape also tells this structure apart from the binary tree of older checkpoints
(a 1-D ``(2P,)`` array); :func:`from_binary` converts one.
"""

from __future__ import annotations

from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np

BRANCHING = 32  # children per node (a power of two)


@lru_cache(maxsize=None)
def level_rows(n_leaves: int, branching: int = BRANCHING) -> tuple[int, ...]:
    """Rows per stored level, top (level 1) to bottom (leaves), for ``n_leaves`` leaves."""
    if n_leaves < 1:
        raise ValueError(f"n_leaves must be >= 1, got {n_leaves}")
    rows = [-(-n_leaves // branching)]
    while rows[-1] > 1:
        rows.append(-(-rows[-1] // branching))
    return tuple(rows[::-1])


@lru_cache(maxsize=None)
def _layout_of_rows(n_rows: int, branching: int) -> tuple[int, ...]:
    """Inverse of ``sum(level_rows(n))``: the level structure of a tree with ``n_rows`` rows."""
    lo, hi = 1, n_rows * branching  # sum(level_rows) is non-decreasing in the number of leaves
    while lo < hi:
        mid = (lo + hi) // 2
        if sum(level_rows(mid, branching)) < n_rows:
            lo = mid + 1
        else:
            hi = mid
    rows = level_rows(lo, branching)
    if sum(rows) != n_rows:
        raise ValueError(f"no {branching}-ary sum tree has {n_rows} rows")
    return rows


def tree_shape(n_leaves: int, branching: int = BRANCHING) -> tuple[int, int]:
    """Shape ``(R, B)`` of the tree over ``n_leaves`` leaves."""
    return (sum(level_rows(n_leaves, branching)), branching)


def capacity(tree: jnp.ndarray) -> int:
    """Number of leaf slots (``B`` times the number of leaf rows; static)."""
    rows = _layout_of_rows(tree.shape[0], tree.shape[1])
    return rows[-1] * tree.shape[1]


def tree_depth(tree: jnp.ndarray) -> int:
    """Number of stored levels below the root (static)."""
    return len(_layout_of_rows(tree.shape[0], tree.shape[1]))


def _offsets(tree) -> tuple[tuple[int, ...], tuple[int, ...]]:
    rows = _layout_of_rows(tree.shape[0], tree.shape[1])
    return rows, tuple(int(v) for v in np.cumsum((0,) + rows[:-1]))


def block_sum(x: jnp.ndarray) -> jnp.ndarray:
    """Sum over the last axis (length a power of two) in a fixed pairwise order.

    Explicit halving adds, not a reduction: XLA may reorder a reduction, and then a parent built
    here would differ by an ulp from the same parent recomputed in :func:`update`.
    """
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    return x[..., 0]


def build(leaves: jnp.ndarray, branching: int = BRANCHING) -> jnp.ndarray:
    """The tree over ``leaves`` (n,) (any n >= 1), in O(n). For initialisation and rebuilds."""
    n = leaves.shape[0]
    level = leaves.astype(jnp.float64)
    blocks = []
    for r in level_rows(n, branching)[::-1]:  # bottom up
        block = jnp.zeros((r * branching,), jnp.float64).at[: level.shape[0]].set(level)
        block = block.reshape(r, branching)
        blocks.append(block)
        level = block_sum(block)
    return jnp.concatenate(blocks[::-1], axis=0)


def root(tree: jnp.ndarray) -> jnp.ndarray:
    """The total of all leaves (float64 scalar): the sum of row 0."""
    return block_sum(tree[0])


def leaves(tree: jnp.ndarray, n_leaves: int) -> jnp.ndarray:
    """The first ``n_leaves`` leaf values (n_leaves,)."""
    rows, off = _offsets(tree)
    return tree[off[-1]:].reshape(-1)[:n_leaves]


def update(tree: jnp.ndarray, leaf_ids: jnp.ndarray, values: jnp.ndarray) -> jnp.ndarray:
    """Sets leaves ``leaf_ids`` (M,) to ``values`` (M,) and recomputes their ancestors.

    Bottom up, per level: one scatter of the level's new values, then one gather of the rows
    that hold them (M, B) from the just-written tree and their sums are the parents' new values.
    Only the written tree is read, so XLA updates it in place. Duplicate leaf ids must carry
    identical values (they then write identical values).
    """
    b = tree.shape[1]
    _, off = _offsets(tree)
    nodes = leaf_ids.astype(jnp.int32)
    vals = values.astype(tree.dtype)
    flat = tree.reshape(-1)
    for d in range(len(off) - 1, -1, -1):  # leaves first, level 1 last
        flat = flat.at[off[d] * b + nodes].set(vals)
        if d == 0:
            break
        nodes = nodes // b  # the parents, at level d - 1
        vals = block_sum(flat.reshape(tree.shape)[off[d] + nodes])
    return flat.reshape(tree.shape)


def _pick(children: jnp.ndarray, target: jnp.ndarray):
    """Child k of a row with cum_{k-1} <= target < cum_k, never a zero child (falls back to the
    last child with mass when rounding pushes ``target`` past the row's sum). Returns
    ``(k, target - cum_{k-1})``."""
    b = children.shape[-1]
    cum = jnp.cumsum(children)
    k = jnp.minimum(jnp.sum(cum <= target), b - 1)
    last_nonzero = jnp.max(jnp.where(children > 0, jnp.arange(b), 0))
    k = jnp.where(children[k] > 0, k, last_nonzero).astype(jnp.int32)
    before = jnp.where(k > 0, cum[jnp.maximum(k - 1, 0)], 0.0)
    return k, target - before


def sample(tree: jnp.ndarray, u: jnp.ndarray, total=None) -> jnp.ndarray:
    """Returns the leaf j drawn with probability leaf_j / root, for a uniform ``u`` in [0, 1).

    ``total`` defaults to :func:`root`. A branch with zero mass is never entered. One row
    gather and one prefix sum per level, in a ``fori_loop``: the loop is a boundary XLA does
    not fuse across, so the descent's reads of the tree all happen before a caller's update
    of it (otherwise XLA duplicates them into later consumers and copies the tree).
    """
    b = tree.shape[1]
    _, off = _offsets(tree)
    offsets = np.asarray(off, np.int32)
    target = u * (root(tree) if total is None else total)

    def descend(d, carry):
        node, target = carry
        k, target = _pick(tree[jnp.asarray(offsets)[d] + node], target)
        return node * b + k, target

    node, _ = jax.lax.fori_loop(0, len(off), descend, (jnp.int32(0), target))
    return node


def from_binary(old: jnp.ndarray, n_leaves: int, branching: int = BRANCHING) -> jnp.ndarray:
    """This structure from the binary sum tree of older checkpoints (``(2P,)``, leaf j at
    ``P + j``): the same leaf values, every sum recomputed."""
    p = old.shape[0] // 2
    return build(old[p : p + n_leaves], branching)


def is_tree_shape(shape) -> bool:
    """Whether the trailing dims of ``shape`` are those of a rate tree (``(R, BRANCHING)`` with
    ``R`` a valid row count)."""
    if len(shape) < 2 or shape[-1] != BRANCHING:
        return False
    try:
        _layout_of_rows(int(shape[-2]), BRANCHING)
    except ValueError:
        return False
    return True


def legacy_shape(shape, n_leaves: int) -> tuple[int, ...]:
    """The shape ``(..., 2P)`` the binary tree of older checkpoints had over ``n_leaves`` leaves
    where this structure has ``shape`` (..., R, B); P is the power of two >= ``n_leaves``."""
    return tuple(shape[:-2]) + (2 * (1 << max(0, (n_leaves - 1).bit_length())),)


def upgrade_legacy(stored, shape) -> np.ndarray:
    """A binary tree ``stored`` (..., 2P) (host array) as this structure of ``shape`` (..., R, B)."""
    stored = np.asarray(stored, np.float64)
    rows = _layout_of_rows(int(shape[-2]), int(shape[-1]))
    capacity_ = rows[-1] * shape[-1]
    p = stored.shape[-1] // 2
    flat = stored.reshape(-1, stored.shape[-1])
    leaves = np.zeros((flat.shape[0], capacity_))
    n = min(p, capacity_)
    leaves[:, :n] = flat[:, p : p + n]
    out = np.stack([np.asarray(build(jnp.asarray(row), int(shape[-1]))) for row in leaves])
    return out.reshape(tuple(shape))
