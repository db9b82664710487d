"""Reads and writes of a few elements of a large state array that XLA's CPU backend keeps in
one thread.

XLA's CPU compiler splits a loop fusion into parallel tasks (``outer_dimension_partitions``
in the compiled HLO) when its cost model says the fusion touches at least two "L2 sizes" of
256 KiB. For a fusion that *gathers* from or *scatters* into an array the model counts the
whole array, however few elements are touched; a fusion that reads through ``dynamic-slice``
or writes through an in-place ``dynamic-update-slice`` is counted by the slice. A split
kernel is dispatched to the intra-op thread pool and waits for it, which costs far more than
the few elements it touches (docs/engine.md, "What was O(N) per event"). So for arrays of at
least :data:`SPLIT_BYTES`, :func:`take` and :func:`put` touch each element through its own
dynamic slice; smaller arrays, and index sets too large to unroll, use gather and scatter.

Indices must be in range (``0 <= i < dim``): negative indices are not wrapped as in NumPy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

#: Arrays of at least this many bytes are read and written element by element (half the
#: 512 KiB at which XLA's CPU cost model splits a fusion that reads and writes the array).
SPLIT_BYTES = 256 * 1024
#: Most elements read through dynamic slices by one :func:`take`: XLA's CPU backend fuses a
#: concatenation of at most 8 slices into one kernel (more become one kernel per slice, which
#: costs more than the split gather they replace); larger index sets use a gather.
MAX_TAKEN = 8
#: Most elements written through dynamic-update-slices by one :func:`put` (one kernel each).
MAX_PUT = 64


def _sliced(arr: jnp.ndarray, n_indices: int, limit: int) -> bool:
    return arr.size * arr.dtype.itemsize >= SPLIT_BYTES and n_indices <= limit


def _starts(idx, j: int, arr: jnp.ndarray) -> list:
    return [i[j] for i in idx] + [jnp.int32(0)] * (arr.ndim - len(idx))


def take(arr: jnp.ndarray, *idx: jnp.ndarray) -> jnp.ndarray:
    """``arr[idx]`` for integer index arrays ``idx`` of one shape ``S`` (one per leading axis).

    Returns shape ``S + arr.shape[len(idx):]`` (whole trailing rows when fewer indices than axes).
    """
    idx = [jnp.asarray(i, jnp.int32) for i in idx]
    shape = idx[0].shape
    n = idx[0].size
    if not _sliced(arr, n, MAX_TAKEN):
        return arr[tuple(idx)]
    flat = [i.reshape(-1) for i in idx]
    size = (1,) * len(idx) + arr.shape[len(idx):]
    parts = [jax.lax.dynamic_slice(arr, _starts(flat, j, arr), size) for j in range(n)]
    return jnp.concatenate(parts, axis=0).reshape(shape + arr.shape[len(idx):])


def put(arr: jnp.ndarray, idx, values: jnp.ndarray, add: bool = False) -> jnp.ndarray:
    """``arr.at[idx].set(values)`` (or ``.add`` with ``add``) for index arrays ``idx`` of one
    shape ``S`` and ``values`` of shape ``S`` (one element per index).

    Duplicate indices must carry identical values with ``set``; with ``add`` they accumulate.
    """
    idx = [jnp.asarray(i, jnp.int32) for i in idx]
    n = idx[0].size
    if not _sliced(arr, n, MAX_PUT):
        ref = arr.at[tuple(idx)]
        return ref.add(values) if add else ref.set(values)
    flat = [i.reshape(-1) for i in idx]
    vals = jnp.asarray(values, arr.dtype).reshape(-1)
    block = (1,) * arr.ndim
    for j in range(n):
        starts = _starts(flat, j, arr)
        v = vals[j]
        if add:
            v = jax.lax.dynamic_slice(arr, starts, block).reshape(()) + v
        arr = jax.lax.dynamic_update_slice(arr, v.reshape(block), starts)
    return arr
