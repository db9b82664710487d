"""Checking a stored parameter (or state) tree against the template it is loaded into.

One check serves every reader of saved trees: the checkpoint restore of a whole training state
(:mod:`swarm_jax.training.checkpoint`), the parameter hand-over between curriculum stages
(:mod:`swarm_jax.training.curriculum`) and the loading of a trained policy
(:mod:`swarm_jax.trained_policy`). :func:`check_tree_matches` compares the two trees leaf by leaf
(same leaf paths, shapes and dtypes) and raises one line naming the first mismatching leaf, both
shapes and dtypes, and the file. Leaf paths are compared by their key names, so a template of
dataclasses or namedtuples matches the nested dicts/lists a checkpoint is read back as.

:func:`network_template` is the template of a network's variables: ``jax.ShapeDtypeStruct``
leaves from ``jax.eval_shape`` of its ``init`` (nothing is computed or compiled).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["check_tree_matches", "is_typed_key", "network_template", "stored_shape_dtype"]


def is_typed_key(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct)) and jax.dtypes.issubdtype(
        leaf.dtype, jax.dtypes.prng_key)


def stored_shape_dtype(leaf: Any) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` of ``leaf`` as it is saved: a typed PRNG key as its key data (e.g. a
    scalar threefry key is ``(2,) uint32``), a Python number as its canonical jax dtype."""
    if is_typed_key(leaf):
        raw = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(leaf.shape, leaf.dtype))
        return tuple(raw.shape), np.dtype(raw.dtype)
    if isinstance(leaf, (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct)):
        return tuple(leaf.shape), np.dtype(leaf.dtype)
    arr = np.asarray(leaf)
    return tuple(arr.shape), np.dtype(jax.dtypes.canonicalize_dtype(arr.dtype))


def _key_name(key: Any) -> str:
    """One key of a pytree path as a plain string (dict key, attribute name or list index)."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _leaves_by_name(tree: Any) -> dict[tuple[str, ...], tuple[str, Any]]:
    """{key names of a leaf's path: (its path as jax writes it, the leaf)}, in tree order."""
    return {tuple(_key_name(k) for k in path): (jax.tree_util.keystr(path), leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _describe(leaf: Any) -> str:
    shape, dtype = stored_shape_dtype(leaf)
    return f"shape {shape} {dtype}" + (" (typed PRNG key, stored as key data)"
                                       if is_typed_key(leaf) else "")


def check_tree_matches(stored: Any, template: Any, source: str, *, root: str = "",
                       error: type[Exception] = ValueError, hint: str = "") -> None:
    """Raise ``error`` unless ``stored`` has exactly the leaves of ``template``.

    Args:
        stored: the tree read from disk (nested dicts/lists of arrays or of anything with
            ``shape`` and ``dtype``, e.g. orbax ``ArrayMetadata``; Python numbers are read as
            numpy reads them).
        template: the tree it is loaded into (arrays, ``jax.ShapeDtypeStruct``, typed PRNG keys
            compared as their stored key data); dataclass fields match dict keys of that name.
        source: what ``stored`` came from, leading the message (e.g. ``"checkpoint /runs/3"``).
        root: prefix of the leaf names in the message (e.g. ``"state"``: ``state.params[...]``).
        error: the exception type raised (a caller's own ``ValueError`` subclass).
        hint: appended to the message, e.g. a likely cause.

    Raises:
        error: one line, at the first template leaf (in tree order) that is missing from
            ``stored`` or differs in shape or dtype, else at the first leaf only ``stored`` has:
            ``"<source> does not match the template (shape differs) at leaf state['w']:
            checkpoint has shape (4,) float32, template has shape (6,) float32"``.
    """
    have = _leaves_by_name(stored)
    suffix = f" {hint}" if hint else ""
    for key, (name, leaf) in _leaves_by_name(template).items():
        if key not in have:
            raise error(f"{source} does not match the template: leaf {root}{name} "
                        f"({_describe(leaf)}) is missing from the checkpoint{suffix}")
        got = have.pop(key)[1]
        got_shape = tuple(np.shape(got))
        got_dtype = np.dtype(got.dtype) if hasattr(got, "dtype") else np.asarray(got).dtype
        want_shape, want_dtype = stored_shape_dtype(leaf)
        if (got_shape, got_dtype) != (want_shape, want_dtype):
            kind = "shape" if got_shape != want_shape else "dtype"
            raise error(f"{source} does not match the template ({kind} differs) at leaf "
                        f"{root}{name}: checkpoint has shape {got_shape} {got_dtype}, template "
                        f"has {_describe(leaf)}{suffix}")
    if have:
        name, leaf = next(iter(have.values()))
        raise error(f"{source} does not match the template: leaf {root}{name} (shape "
                    f"{tuple(np.shape(leaf))}) is in the checkpoint but not in the template "
                    f"({len(have)} such leaves){suffix}")


def network_template(network: nn.Module, obs_shapes: Mapping[str, tuple[int, ...]]) -> Any:
    """The variables tree of ``network`` (``{"params": {...}}``) as ``jax.ShapeDtypeStruct``
    leaves, for float32 observations of the given shapes (e.g. ``{"candidates": (K, D),
    "global": (G,)}``); nothing is computed."""
    obs = {k: jax.ShapeDtypeStruct(tuple(shape), jnp.float32) for k, shape in obs_shapes.items()}
    return jax.eval_shape(network.init, jax.random.key(0), obs)
