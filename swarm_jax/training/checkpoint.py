"""Checkpoints of a training run: orbax-backed, atomic, device-portable.

A checkpoint is one directory holding three items::

    <checkpoint>/
      state/    the training state pytree (StandardSave: params, optimiser state, env state,
                observations, PRNG keys, counters; any pytree of arrays, typed PRNG keys included)
      config/   the run configuration, a JSON-able dict (JsonSave)
      meta/     free-form JSON metadata (JsonSave), e.g. wall time, curriculum stage

:class:`CheckpointStore` keeps the periodic checkpoints of a run in ``<directory>/<step>/``
(``step`` = environment steps done, or any monotone counter) and prunes all but the newest
``max_to_keep``. :func:`save_final` writes a standalone checkpoint such as ``stage1_final/``.
:func:`restore_checkpoint`, :func:`load_params_only` and :func:`read_config` read either kind.

What is guaranteed (orbax 0.12 on a local/POSIX file system, plus what this module adds):

* **Atomic commit.** orbax writes a checkpoint into ``<name>.orbax-checkpoint-tmp-<ts>/`` and
  renames it to ``<name>/`` only after every item is written and flushed; a rename is atomic on
  POSIX file systems. A process killed mid-save therefore leaves at most a
  ``*.orbax-checkpoint-tmp*`` directory, which is never listed as a step, and which
  :class:`CheckpointStore` deletes when it is next opened (synchronously, on process 0).
* **Atomic deletion.** orbax deletes pruned steps with a recursive delete, which a kill can
  interrupt, leaving a step directory with the right name but missing files. The store asks orbax
  to *rename* pruned steps into ``<directory>/.deleted/`` instead (``todelete_subdir``), again an
  atomic rename, and empties that folder itself.
* **Completeness check.** As a second line of defence, a step (or final) directory counts only if
  its orbax metadata files are all present (:func:`is_complete_checkpoint`); when a store is
  opened, incomplete step directories are renamed ``<step>.incomplete`` (kept, not deleted).
* **Blocking saves.** :meth:`CheckpointStore.save` and :func:`save_final` return only after the
  checkpoint is committed (``wait_until_finished``); orbax errors propagate to the caller.

Restoring never depends on the device a checkpoint was written on: the abstract target is built
from a freshly created template pytree with a :class:`~jax.sharding.SingleDeviceSharding` on the
*current* default device (or the ``device`` argument), so a GPU checkpoint restores on a CPU-only
host. A template whose tree structure, shapes or dtypes differ from the checkpoint raises
:class:`CheckpointError` naming the first mismatching leaf, before orbax is asked to read anything.

Multi-host: every process must call :meth:`CheckpointStore.save` (orbax coordinates, the primary
host writes the metadata); the housekeeping done here (emptying ``.deleted/``, swapping
``save_final`` directories) runs on process 0 only.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import SingleDeviceSharding

__all__ = [
    "CheckpointError",
    "CheckpointStore",
    "abstract_target",
    "is_complete_checkpoint",
    "load_params_only",
    "read_config",
    "restore_checkpoint",
    "save_final",
]

STATE, CONFIG, META = "state", "config", "meta"
_TRASH = ".deleted"  # pruned steps are renamed here, then removed
_TMP_MARKER = ".orbax-checkpoint-tmp"
# Files orbax writes last-ish into every committed item; all must exist for a complete checkpoint.
_REQUIRED_FILES = (
    "_CHECKPOINT_METADATA",
    f"{STATE}/_METADATA",
    f"{CONFIG}/metadata",
    f"{META}/metadata",
)


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, or does not match the template it is restored into."""


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _is_primary() -> bool:
    return jax.process_index() == 0


def _default_device(device: jax.Device | None = None) -> jax.Device:
    """The device restored arrays are placed on: ``device``, else JAX's current default device."""
    if device is not None:
        return device
    default = jax.config.jax_default_device
    if isinstance(default, jax.Device):
        return default
    if isinstance(default, str):  # a platform name, e.g. "cpu"
        return jax.devices(default)[0]
    return jax.devices()[0]


def _is_typed_key(x: Any) -> bool:
    return isinstance(x, (jax.Array, jax.ShapeDtypeStruct)) and jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key
    )


def _key_name(k: Any) -> str:
    """One key of a pytree path as the plain string orbax uses in its metadata tree."""
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _norm_path(path: Sequence[Any]) -> tuple[str, ...]:
    return tuple(_key_name(k) for k in path)


def _stored_shape_dtype(leaf: Any) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype a template leaf has on disk (typed PRNG keys are stored as key data)."""
    if _is_typed_key(leaf):
        raw = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(leaf.shape, leaf.dtype))
        return tuple(raw.shape), np.dtype(raw.dtype)
    if isinstance(leaf, (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct)):
        return tuple(leaf.shape), np.dtype(leaf.dtype)
    arr = np.asarray(leaf)
    return tuple(arr.shape), np.dtype(jax.dtypes.canonicalize_dtype(arr.dtype))


def _to_json(obj: Any, where: str = "config") -> Any:
    """``obj`` as plain JSON types (tuples -> lists, numpy scalars -> Python numbers, Path -> str).

    Raises:
        CheckpointError: for a value JSON cannot represent, naming where it sits.
    """
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise CheckpointError(f"{where}: key {k!r} is not a string (JSON keys must be)")
            out[k] = _to_json(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [_to_json(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise CheckpointError(f"{where} = {obj}: non-finite floats are not valid JSON")
        return obj
    if isinstance(obj, np.generic) or (isinstance(obj, np.ndarray) and obj.ndim == 0):
        return _to_json(obj.item(), where)
    if isinstance(obj, Path):
        return str(obj)
    raise CheckpointError(f"{where} = {obj!r}: type {type(obj).__name__} is not JSON-able")


def is_complete_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a committed checkpoint directory written by this module.

    False for orbax temporary directories (``*.orbax-checkpoint-tmp*``), missing paths, and
    directories lacking any of the metadata files every committed checkpoint has.
    """
    path = Path(path)
    if _TMP_MARKER in path.name or not path.is_dir():
        return False
    return all((path / f).exists() for f in _REQUIRED_FILES)


def abstract_target(template: Any, device: jax.Device | None = None) -> Any:
    """The orbax restore target for ``template``: one :class:`jax.ShapeDtypeStruct` per leaf.

    Args:
        template: a freshly created pytree with the structure, shapes and dtypes to restore
            (e.g. a new ``RunnerState`` built with the same config and optimiser chain); its
            values are ignored. Typed PRNG keys stay typed keys.
        device: where restored arrays live; default: JAX's current default device.
    """
    sharding = SingleDeviceSharding(_default_device(device))

    def one(leaf):
        if _is_typed_key(leaf):
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)
        shape, dtype = _stored_shape_dtype(leaf)
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    return jax.tree.map(one, template)


def _state_metadata_tree(state_dir: Path) -> Any:
    """The checkpoint's tree of ``ArrayMetadata`` (nested dicts/lists; typed keys as key data)."""
    meta = ocp.PyTreeCheckpointHandler().metadata(epath.Path(state_dir))
    return getattr(meta, "tree", meta)


def _check_matches(template: Any, stored: Any, path: Path) -> None:
    """Raise :class:`CheckpointError` naming the first leaf where template and checkpoint differ."""
    stored_leaves = {
        _norm_path(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(stored)[0]
    }
    seen = set()
    for p, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
        key = _norm_path(p)
        name = f"state{jax.tree_util.keystr(p)}"
        if key not in stored_leaves:
            raise CheckpointError(
                f"checkpoint {path} does not match the template: leaf {name} "
                f"(shape {_stored_shape_dtype(leaf)[0]}) is missing from the checkpoint"
            )
        seen.add(key)
        want_shape, want_dtype = _stored_shape_dtype(leaf)
        got = stored_leaves[key]
        got_shape, got_dtype = tuple(got.shape), np.dtype(got.dtype)
        if want_shape != got_shape or want_dtype != got_dtype:
            kind = "shape" if want_shape != got_shape else "dtype"
            raise CheckpointError(
                f"checkpoint {path} does not match the template ({kind} differs) at leaf {name}: "
                f"checkpoint has shape {got_shape} {got_dtype}, template has shape {want_shape} "
                f"{want_dtype}" + (" (typed PRNG key, stored as key data)" if _is_typed_key(leaf)
                                   else "")
            )
    extra = [k for k in stored_leaves if k not in seen]
    if extra:
        name = "state" + "".join(f"[{k!r}]" for k in extra[0])
        raise CheckpointError(
            f"checkpoint {path} does not match the template: leaf {name} "
            f"(shape {tuple(stored_leaves[extra[0]].shape)}) is in the checkpoint but not in the "
            f"template ({len(extra)} such leaves)"
        )


def _resolve(path: str | Path) -> Path:
    """A checkpoint directory from ``path``: itself, or the latest complete step of a store."""
    path = Path(path).absolute()  # orbax wants absolute paths; users give relative ones
    if is_complete_checkpoint(path):
        return path
    if path.is_dir():
        steps = _complete_steps(path)
        if steps:
            return path / str(steps[-1])
    raise CheckpointError(
        f"{path} is neither a complete checkpoint nor a checkpoint directory holding one"
    )


def _complete_steps(directory: Path) -> list[int]:
    if not directory.is_dir():
        return []
    return sorted(
        int(p.name) for p in directory.iterdir() if p.name.isdigit() and is_complete_checkpoint(p)
    )


def _composite_save_args(state: Any, config: Mapping, metadata: Mapping | None):
    return ocp.args.Composite(
        **{
            STATE: ocp.args.StandardSave(state),
            CONFIG: ocp.args.JsonSave(_to_json(dict(config), "config")),
            META: ocp.args.JsonSave(_to_json(dict(metadata or {}), "metadata")),
        }
    )


# --------------------------------------------------------------------------------------------
# Reading any checkpoint directory
# --------------------------------------------------------------------------------------------


def read_config(path: str | Path) -> tuple[dict, dict]:
    """``(config, meta)`` of a checkpoint (a step or final directory, or a store: latest step).

    JSON turns tuples into lists; nothing else changes.
    """
    ckpt = _resolve(path)
    reader = ocp.Checkpointer(ocp.JsonCheckpointHandler())
    return reader.restore(epath.Path(ckpt / CONFIG)), reader.restore(epath.Path(ckpt / META))


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
    ckpt = _resolve(path)
    state_dir = ckpt / STATE
    try:
        if target is None:
            state = _restore_numpy(state_dir)
        else:
            _check_matches(target, _state_metadata_tree(state_dir), ckpt)
            state = ocp.Checkpointer(ocp.StandardCheckpointHandler()).restore(
                epath.Path(state_dir),
                args=ocp.args.StandardRestore(abstract_target(target, device)),
            )
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001  (orbax raises many types; report them uniformly)
        raise CheckpointError(
            f"could not restore {state_dir}: {type(err).__name__}: {err}"
        ) from err
    config, meta = read_config(ckpt)
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
    ckpt = _resolve(path)
    keys = subtree.split(".") if isinstance(subtree, str) else list(subtree)
    try:
        tree = _restore_numpy(ckpt / STATE)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(
            f"could not read {ckpt / STATE}: {type(err).__name__}: {err}"
        ) from err
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


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


class CheckpointStore:
    """Periodic checkpoints of one run in ``directory/<step>/``, newest ``max_to_keep`` kept.

    Example::

        store = CheckpointStore("runs/stage1/checkpoints", max_to_keep=3)
        store.save(step, runner_state, config_to_dict(cfg), {"wall_time_s": t})
        ...
        if store.latest_step() is not None:
            runner_state, cfg_dict, meta = store.restore(target=fresh_runner_state)
    """

    def __init__(self, directory: str | Path, max_to_keep: int | None = 3):
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep = {max_to_keep}: must be >= 1 or None (keep all)")
        self.directory = Path(directory).absolute()
        self.max_to_keep = max_to_keep
        self.removed_tmp: list[Path] = self._remove_tmp_dirs()
        self.quarantined: list[Path] = self._quarantine_incomplete()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            todelete_subdir=_TRASH,  # prune by atomic rename, never by partial rmtree
        )
        self._manager = ocp.CheckpointManager(
            epath.Path(self.directory),
            options=options,
            item_handlers={
                STATE: ocp.StandardCheckpointHandler(),
                CONFIG: ocp.JsonCheckpointHandler(),
                META: ocp.JsonCheckpointHandler(),
            },
        )
        self._empty_trash()

    # -- housekeeping -------------------------------------------------------------------------

    def _remove_tmp_dirs(self) -> list[Path]:
        """Delete orbax temporary directories left by saves that were killed before commit."""
        removed = []
        if _is_primary() and self.directory.is_dir():
            for p in sorted(self.directory.glob(f"*{_TMP_MARKER}*")):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        return removed

    def _quarantine_incomplete(self) -> list[Path]:
        """Rename step directories that are not complete to ``<step>.incomplete[-n]``.

        orbax would otherwise count them as steps (and could prune good checkpoints in their
        favour). Nothing is deleted: the files stay for inspection.
        """
        moved = []
        if not (_is_primary() and self.directory.is_dir()):
            return moved
        for p in sorted(self.directory.iterdir()):
            if p.name.isdigit() and p.is_dir() and not is_complete_checkpoint(p):
                dest, n = p.with_name(f"{p.name}.incomplete"), 0
                while dest.exists():
                    n += 1
                    dest = p.with_name(f"{p.name}.incomplete-{n}")
                p.rename(dest)
                moved.append(dest)
        return moved

    def _empty_trash(self) -> None:
        if _is_primary():
            shutil.rmtree(self.directory / _TRASH, ignore_errors=True)

    def close(self) -> None:
        """Wait for pending work and release orbax's threads (errors are raised)."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- queries ------------------------------------------------------------------------------

    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk, ascending."""
        return _complete_steps(self.directory)

    def latest_step(self) -> int | None:
        """The newest complete step, or ``None`` if there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def step_path(self, step: int) -> Path:
        return self.directory / str(int(step))

    # -- save / restore -----------------------------------------------------------------------

    def save(
        self,
        step: int,
        state: Any,
        config: Mapping[str, Any],
        metadata: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> Path:
        """Write checkpoint ``step`` and return its directory once it is committed.

        Args:
            step: a non-negative integer (e.g. environment steps done).
            state: the training-state pytree (arrays and typed PRNG keys; device or host).
            config: JSON-able run configuration (e.g. ``config_to_dict(cfg)``).
            metadata: optional JSON-able extras, restored verbatim.
            force: replace an existing checkpoint for the same step (otherwise an error).

        Raises:
            CheckpointError: ``step`` exists and not ``force``, or config/metadata not JSON-able.
            Exception: whatever orbax raises while writing (never swallowed).
        """
        step = int(step)
        if step < 0:
            raise CheckpointError(f"step = {step}: must be >= 0")
        args = _composite_save_args(state, config, metadata)  # validates JSON before any write
        if step in self._manager.all_steps() or self.step_path(step).exists():
            if not force:
                raise CheckpointError(
                    f"checkpoint for step {step} already exists in {self.directory} "
                    "(pass force=True to replace it)"
                )
            self._manager.delete(step)
            self._manager.wait_until_finished()
        # force=True: save whenever asked (orbax would otherwise skip steps <= its latest step).
        saved = self._manager.save(step, args=args, force=True)
        self._manager.wait_until_finished()
        if not saved:  # pragma: no cover - orbax declined without an error
            raise CheckpointError(f"orbax declined to save step {step} in {self.directory}")
        self._empty_trash()
        return self.step_path(step)

    def restore(
        self, step: int | None = None, target: Any = None, device: jax.Device | None = None
    ) -> tuple[Any, dict, dict]:
        """``(state, config, meta)`` of checkpoint ``step`` (default: the latest complete one).

        See :func:`restore_checkpoint` for ``target`` and ``device``.
        """
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointError(f"no complete checkpoint in {self.directory}")
        path = self.step_path(step)
        if not is_complete_checkpoint(path):
            raise CheckpointError(
                f"no complete checkpoint for step {step} in {self.directory} "
                f"(complete steps: {self.all_steps()})"
            )
        return restore_checkpoint(path, target=target, device=device)


def save_final(
    directory: str | Path,
    state: Any,
    config: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write a standalone checkpoint (e.g. ``results/stage1_final``) atomically; return its path.

    The checkpoint is written by orbax into a temporary directory and renamed into place. When
    ``directory`` already holds a checkpoint and ``overwrite``, the new one is first committed
    as ``<directory>.incoming``, then the old one is renamed to ``<directory>.replaced``, the new
    one renamed into place, and the old one deleted: at every instant a complete checkpoint
    exists under one of these names (``directory`` itself except between the two renames).

    Raises:
        CheckpointError: ``directory`` exists and not ``overwrite``; config/meta not JSON-able.
    """
    final = Path(directory).absolute()
    args = _composite_save_args(state, config, meta)
    if final.exists() and not overwrite:
        raise CheckpointError(f"{final} already exists (pass overwrite=True to replace it)")
    target = final.with_name(final.name + ".incoming") if final.exists() else final
    if _is_primary():
        for stale in final.parent.glob(f"{target.name}{_TMP_MARKER}*"):
            shutil.rmtree(stale, ignore_errors=True)
        if target != final:
            shutil.rmtree(target, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    try:
        checkpointer.save(epath.Path(target), args=args)
    finally:
        checkpointer.close()
    if target != final and _is_primary():
        replaced = final.with_name(final.name + ".replaced")
        shutil.rmtree(replaced, ignore_errors=True)
        final.rename(replaced)
        target.rename(final)
        shutil.rmtree(replaced, ignore_errors=True)
    return final
