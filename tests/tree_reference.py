"""An independent NumPy model of the flat rate structure (swarm_jax/physics/sumtree.py).

Layout: ``B`` children per row; the leaves fill ``ceil(n / B)`` rows, each level above has one
node per row below, stored ``ceil(nodes / B)`` rows wide, up to a single top row; rows are
stored top level first. A node is the pairwise (halving) sum of its row, the same fixed order
the engine uses, so an engine tree must equal this one bit for bit.
"""

from __future__ import annotations

import numpy as np


def pairwise_row_sums(rows: np.ndarray) -> np.ndarray:
    """(r, B) -> (r,): x[:, :B/2] + x[:, B/2:], repeated (B a power of two)."""
    x = np.array(rows, np.float64)
    while x.shape[1] > 1:
        half = x.shape[1] // 2
        x = x[:, :half] + x[:, half:]
    return x[:, 0]


def build_levels(leaves, branching: int) -> list[np.ndarray]:
    """Stored levels bottom-up, each a (rows, B) array, from the leaf values (n,)."""
    level = np.asarray(leaves, np.float64)
    levels = []
    while True:
        rows = -(-level.shape[0] // branching)
        block = np.zeros(rows * branching)
        block[: level.shape[0]] = level
        block = block.reshape(rows, branching)
        levels.append(block)
        if rows == 1:
            return levels
        level = pairwise_row_sums(block)


def rate_tree(leaves, branching: int) -> np.ndarray:
    """The whole (R, B) array, top level first."""
    return np.concatenate(build_levels(leaves, branching)[::-1], axis=0)


def tree_leaves(tree: np.ndarray, n_leaves: int) -> np.ndarray:
    """The leaf values (n,) of an (R, B) tree with ``n_leaves`` leaves (the bottom rows)."""
    branching = tree.shape[1]
    rows = -(-n_leaves // branching)
    return np.asarray(tree)[-rows:].reshape(-1)[:n_leaves]


def tree_total(tree: np.ndarray) -> float:
    """The root: the pairwise sum of the top row."""
    return float(pairwise_row_sums(np.asarray(tree)[:1])[0])


def sample(tree: np.ndarray, n_leaves: int, u: float) -> int:
    """The leaf drawn for a uniform u by the exact sequential rule on the leaves: the first j
    with u * total < cum_j (cumulated left to right), skipping zero leaves."""
    leaves = tree_leaves(tree, n_leaves)
    cum = np.cumsum(leaves)
    j = int(np.searchsorted(cum, u * cum[-1], side="right"))
    j = min(j, n_leaves - 1)
    if leaves[j] == 0:
        j = int(np.nonzero(leaves)[0][-1])
    return j
