"""Reading checkpoints written by :mod:`swarm_jax.training.checkpoint` on any device: the
``(state, config, meta)`` of a checkpoint restored into a template (:func:`restore_checkpoint`),
its config (:func:`read_config`) and a parameter subtree as host arrays
(:func:`load_params_only`). Every reader checks the files against the manifest first
(:mod:`swarm_jax.training.checkpoint_integrity`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import SingleDeviceSharding

from swarm_jax.agents.params import check_tree_matches, is_typed_key, stored_shape_dtype
from swarm_jax.training.checkpoint_integrity import (
    CONFIG, META, STATE, CheckpointError, _resolve_intact, _short_error,
)

__all__ = ["abstract_target", "default_device", "load_params_only", "read_config",
           "restore_checkpoint"]


def default_device(device: jax.Device | None = None) -> jax.Device:
    """The device restored arrays are placed on: ``device``, else JAX's current default device."""
    if device is not None:
        return device
    default = jax.config.jax_default_device
    if isinstance(default, jax.Device):
        return default
    if isinstance(default, str):  # a platform name, e.g. "cpu"
        return jax.devices(default)[0]
    return jax.devices()[0]


def abstract_target(template: Any, device: jax.Device | None = None) -> Any:
    """The orbax restore target for ``template``: one :class:`jax.ShapeDtypeStruct` per leaf.

    Args:
        template: a freshly created pytree with the structure, shapes and dtypes to restore
            (e.g. a new ``RunnerState`` built with the same config and optimiser chain); its
            values are ignored. Typed PRNG keys stay typed keys.
        device: where restored arrays live; default: JAX's current default device.
    """
    sharding = SingleDeviceSharding(default_device(device))

    def one(leaf):
        if is_typed_key(leaf):
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)
        shape, dtype = stored_shape_dtype(leaf)
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    return jax.tree.map(one, template)


def _state_metadata_tree(state_dir: Path) -> Any:
    """The checkpoint's tree of ``ArrayMetadata`` (nested dicts/lists; typed keys as key data)."""
    meta = ocp.PyTreeCheckpointHandler().metadata(epath.Path(state_dir))
    return getattr(meta, "tree", meta)


# --------------------------------------------------------------------------------------------
# Reading any checkpoint directory
# --------------------------------------------------------------------------------------------


def read_config(path: str | Path) -> tuple[dict, dict]:
    """``(config, meta)`` of a checkpoint (a step or final directory, or a store: latest step).

    JSON turns tuples into lists; nothing else changes.
    """
    ckpt = _resolve_intact(path)
    return _read_json_items(ckpt)


def _read_json_items(ckpt: Path) -> tuple[dict, dict]:
    reader = ocp.Checkpointer(ocp.JsonCheckpointHandler())
    try:
        return reader.restore(epath.Path(ckpt / CONFIG)), reader.restore(epath.Path(ckpt / META))
    except Exception as err:  # noqa: BLE001  (e.g. a truncated JSON file: JSONDecodeError)
        raise CheckpointError(f"could not read the config/metadata of {ckpt}: "
                              f"{_short_error(err)}") from None


def _restore_numpy(state_dir: Path) -> Any:
    """The raw saved tree (nested dicts/lists) with host numpy leaves; keys as uint32 key data."""
    stored = _state_metadata_tree(state_dir)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), stored)
    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler()).restore(
        epath.Path(state_dir), args=ocp.args.PyTreeRestore(restore_args=restore_args)
    )


def restore_checkpoint(
    path: str | Path, target: Any = None, device: jax.Device | None = None
) -> tuple[Any, dict, dict]:
    """Read a checkpoint: ``(state, config, meta)``.

    Args:
        path: a checkpoint directory (a store step ``<dir>/<step>`` or a :func:`save_final`
            directory), or a :class:`CheckpointStore` directory (its latest complete step).
        target: a freshly built template pytree (same structure, shapes and dtypes as the saved
            state); the result has its pytree types (dataclasses, namedtuples, typed keys) and
            jax arrays on ``device``. ``None``: the raw saved tree (nested dicts/lists of host
            numpy arrays, typed keys as their uint32 key data).
        device: device for restored arrays; default: JAX's current default device.

    Raises:
        CheckpointError: no complete checkpoint at ``path``, or ``target`` does not match it
            (the message names the first mismatching leaf and both shapes), or orbax failed.
    """
    ckpt = _resolve_intact(path)
    state_dir = ckpt / STATE
    try:
        if target is None:
            state = _restore_numpy(state_dir)
        else:
            check_tree_matches(_state_metadata_tree(state_dir), target, f"checkpoint {ckpt}",
                               root="state", error=CheckpointError)
            state = ocp.Checkpointer(ocp.StandardCheckpointHandler()).restore(
                epath.Path(state_dir),
                args=ocp.args.StandardRestore(abstract_target(target, device)),
            )
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001  (orbax raises many types; report them uniformly)
        raise CheckpointError(f"could not restore {state_dir}: {_short_error(err)}") from err
    config, meta = _read_json_items(ckpt)
    return state, config, meta


def load_params_only(path: str | Path, subtree: str | Sequence[str] = "params") -> Any:
    """The parameter subtree of a checkpoint as nested dicts of host numpy arrays.

    For transfer between curriculum stages and for production runs: no template is needed.

    Args:
        path: a checkpoint directory or a store directory (latest complete step).
        subtree: where the parameters sit in the saved state, as a dotted path or a sequence of
            keys (field names of dataclasses and dict keys alike), e.g. ``"params"`` or
            ``"train_state.params"``.

    Raises:
        CheckpointError: no checkpoint, or no such subtree (the message lists what exists).
    """
    ckpt = _resolve_intact(path)
    keys = subtree.split(".") if isinstance(subtree, str) else list(subtree)
    try:
        tree = _restore_numpy(ckpt / STATE)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"could not read {ckpt / STATE}: {_short_error(err)}") from err
    node, walked = tree, "state"
    for k in keys:
        if isinstance(node, Mapping) and k in node:
            node = node[k]
        elif isinstance(node, (list, tuple)) and k.isdigit() and int(k) < len(node):
            node = node[int(k)]
        else:
            have = sorted(node) if isinstance(node, Mapping) else type(node).__name__
            raise CheckpointError(f"{ckpt}: {walked} has no entry {k!r} (it has {have})")
        walked += f"[{k!r}]"
    return node


