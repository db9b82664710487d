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
* **Verified checkpoints.** Once every file of a checkpoint is written, a manifest
  ``MANIFEST.sha256`` (SHA-256 and size of every file, :func:`write_manifest`) is added to it,
  atomically (temporary file + rename). :func:`verify_checkpoint` re-hashes the files; every
  restore (:func:`restore_checkpoint`, :func:`read_config`, :func:`load_params_only`) refuses a
  checkpoint whose files do not match its manifest (a truncated data or metadata file, flipped
  bytes) with one :class:`CheckpointError` line, and :meth:`CheckpointStore.latest_verified_step`
  walks back from the newest step to the newest one that verifies, reporting (and setting aside
  as ``<step>.corrupt``) each bad one. A checkpoint without a manifest (a save killed between
  orbax's commit and the manifest, or written by an older version) is *unverified*: it is
  restored when asked for by name, but never chosen for ``--resume`` nor called good.
  :func:`save_final` writes the manifest before its own atomic rename into place.
* **Saves.** :meth:`CheckpointStore.save` returns once the checkpoint is committed and verified,
  or, with ``async_save=True``, once the state is copied off the device (the write, commit and
  manifest finish in a background thread; the next save, restore, :meth:`~CheckpointStore.wait`
  and :meth:`~CheckpointStore.close` wait for it first). A failed write (disk full, file-size
  limit) raises :class:`CheckpointWriteError` with one line; the half-written step is never
  listed (its directory is set aside as ``<step>.failed``) and earlier checkpoints are intact.

What is orbax's and what is ours. Orbax does the writing, the atomic commit, the pruning and the
recognition of uncommitted saves (:meth:`CheckpointStore` deletes exactly the directories
``ocp.utils.tmp_checkpoints`` returns, synchronously and reporting them, rather than through
``cleanup_tmp_directories``, which runs in the background and only when a manager is created).
The step listing (:func:`complete_steps`, :meth:`CheckpointStore.latest_step`) stays ours because
orbax's (``ocp.utils.checkpoint_steps``, ``CheckpointManager.all_steps``/``latest_step``) counts
every directory with a step-like name that is not temporary, including one whose files a killed
delete left half gone, and orbax has no checksum of a checkpoint's files at all, so the verified
fallback to the newest intact step (:func:`newest_verified_step`) has no orbax counterpart.

Restoring never depends on the device a checkpoint was written on: the abstract target is built
from a freshly created template pytree with a :class:`~jax.sharding.SingleDeviceSharding` on the
*current* default device (or the ``device`` argument), so a GPU checkpoint restores on a CPU-only
host. A template whose tree structure, shapes or dtypes differ from the checkpoint raises
:class:`CheckpointError` naming the first mismatching leaf, before orbax is asked to read anything
(:func:`swarm_jax.agents.params.check_tree_matches`, the check every loader of saved trees uses).

A failed write is one exception for the caller; the echoes orbax, asyncio and TensorStore print
besides it are silenced only when asked (:func:`quiet_orbax_write_failures`, which the command-line
tools call; nothing is installed on import).

The module is the orbax store (:class:`CheckpointStore`, :func:`save_final`); integrity
(completeness, manifest, step listing) lives in :mod:`~swarm_jax.training.checkpoint_integrity`,
reading in :mod:`~swarm_jax.training.checkpoint_read` and the silencing of orbax's echoes in
:mod:`~swarm_jax.training.orbax_quiet`; their public names are re-exported here.

Multi-host: every process must call :meth:`CheckpointStore.save` (orbax coordinates, the primary
host writes the metadata); the housekeeping done here (emptying ``.deleted/``, swapping
``save_final`` directories) runs on process 0 only.
"""

from __future__ import annotations

import math
import shutil
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from swarm_jax.training.checkpoint_integrity import (  # noqa: F401  (re-exported)
    CONFIG,
    MANIFEST,
    META,
    STATE,
    CheckpointError,
    CheckpointWriteError,
    _short_error,
    complete_steps,
    is_complete_checkpoint,
    is_verified_checkpoint,
    newest_verified_step,
    resolve_checkpoint,
    verify_checkpoint,
    write_manifest,
)
from swarm_jax.training.orbax_quiet import (  # noqa: F401  (re-exported)
    quiet_orbax_failures,
    quiet_orbax_write_failures,
)
from swarm_jax.training.checkpoint_read import (  # noqa: F401  (re-exported)
    _state_metadata_tree,
    abstract_target,
    default_device,
    load_params_only,
    read_config,
    restore_checkpoint,
)

__all__ = [
    "quiet_orbax_failures",
    "quiet_orbax_write_failures",
    "CheckpointError",
    "CheckpointStore",
    "CheckpointWriteError",
    "MANIFEST",
    "abstract_target",
    "complete_steps",
    "default_device",
    "resolve_checkpoint",
    "is_complete_checkpoint",
    "is_verified_checkpoint",
    "newest_verified_step",
    "load_params_only",
    "read_config",
    "restore_checkpoint",
    "save_final",
    "verify_checkpoint",
    "write_manifest",
]

_TRASH = ".deleted"  # pruned steps are renamed here, then removed
_TMP_MARKER = ocp.utils.TMP_DIR_SUFFIX  # orbax's name for a save not committed yet



# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _is_primary() -> bool:
    return jax.process_index() == 0


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



def _composite_save_args(state: Any, config: Mapping, metadata: Mapping | None):
    return ocp.args.Composite(
        **{
            STATE: ocp.args.StandardSave(state),
            CONFIG: ocp.args.JsonSave(_to_json(dict(config), "config")),
            META: ocp.args.JsonSave(_to_json(dict(metadata or {}), "metadata")),
        }
    )


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


class CheckpointStore:
    """Periodic checkpoints of one run in ``directory/<step>/``, newest ``max_to_keep`` kept.

    Example::

        store = CheckpointStore("runs/stage1/checkpoints", max_to_keep=3, async_save=True)
        store.save(step, runner_state, config_to_dict(cfg), {"wall_time_s": t})
        ...
        step = store.latest_verified_step(report=print)   # falls back past corrupt ones
        if step is not None:
            runner_state, cfg_dict, meta = store.restore(step, target=fresh_runner_state)

    Args:
        directory: the store folder (created).
        max_to_keep: newest checkpoints kept (``None``: all).
        async_save: :meth:`save` returns once the state is copied off the device; writing,
            committing and the checksum manifest complete in the background. Every later call
            that touches the store (:meth:`save`, :meth:`restore`, :meth:`wait`, :meth:`close`)
            first waits for that save and raises its error, if any.
    """

    def __init__(self, directory: str | Path, max_to_keep: int | None = 3, async_save: bool = False):
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep = {max_to_keep}: must be >= 1 or None (keep all)")
        self.directory = Path(directory).absolute()
        self.max_to_keep = max_to_keep
        self.async_save = bool(async_save)
        self._pending: threading.Thread | None = None
        self._pending_step: int | None = None
        self._pending_error: BaseException | None = None
        self.removed_tmp: list[Path] = self._remove_tmp_dirs()
        self.quarantined: list[Path] = self._quarantine_incomplete()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            todelete_subdir=_TRASH,  # prune by atomic rename, never by partial rmtree
            enable_async_checkpointing=True,
        )
        try:
            self._manager = ocp.CheckpointManager(
                epath.Path(self.directory),
                options=options,
                item_handlers={
                    STATE: ocp.StandardCheckpointHandler(),
                    CONFIG: ocp.JsonCheckpointHandler(),
                    META: ocp.JsonCheckpointHandler(),
                },
            )
        except OSError as err:
            raise CheckpointWriteError(f"cannot use {self.directory} for checkpoints: "
                                       f"{_short_error(err)}") from None
        self._empty_trash()

    # -- housekeeping -------------------------------------------------------------------------

    def _remove_tmp_dirs(self) -> list[Path]:
        """Delete the orbax temporary directories (as orbax itself recognises them:
        ``ocp.utils.tmp_checkpoints``) left by saves that were killed or failed before commit."""
        removed = []
        if _is_primary() and self.directory.is_dir():
            tmp = ocp.utils.tmp_checkpoints(epath.Path(self.directory))  # orbax TemporaryPaths
            for p in sorted(Path(t.get()) for t in tmp):
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
                moved.append(self._set_aside(p, "incomplete"))
        return moved

    @staticmethod
    def _set_aside(p: Path, suffix: str) -> Path:
        dest, n = p.with_name(f"{p.name}.{suffix}"), 0
        while dest.exists():
            n += 1
            dest = p.with_name(f"{p.name}.{suffix}-{n}")
        p.rename(dest)
        return dest

    def _empty_trash(self) -> None:
        if _is_primary():
            shutil.rmtree(self.directory / _TRASH, ignore_errors=True)

    def wait(self) -> Path | None:
        """Wait for a pending asynchronous save; return its directory (``None`` if none was
        pending).

        Raises:
            CheckpointWriteError: the pending save failed (one line; the checkpoints committed
                before it are intact, a half-written one is never listed).
        """
        thread, step = self._pending, self._pending_step
        if thread is None:
            return None
        thread.join()
        self._pending = self._pending_step = None
        err, self._pending_error = self._pending_error, None
        if err is not None:
            self._discard_failed(step)
            raise CheckpointWriteError(
                f"could not write checkpoint {self.step_path(step)}: {_short_error(err)}"
            ) from None
        return self.step_path(step)

    def _discard_failed(self, step: int) -> None:
        """After a failed save: no temporary directory, no unverified step left behind."""
        try:
            self._manager.wait_until_finished()
        except Exception:  # noqa: BLE001  (the error was reported already)
            pass
        self._remove_tmp_dirs()
        path = self.step_path(step)
        if _is_primary() and path.exists() and not is_verified_checkpoint(path):
            self._set_aside(path, "failed")
        try:
            self._manager.reload()
        except Exception:  # noqa: BLE001
            pass

    def close(self) -> None:
        """Wait for pending work and release orbax's threads (a failed pending save raises
        :class:`CheckpointWriteError` after the threads are released)."""
        try:
            self.wait()
        finally:
            try:
                self._manager.close()
            except Exception:  # noqa: BLE001  (a failed save was reported by wait())
                pass

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- queries ------------------------------------------------------------------------------

    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk, ascending (see :meth:`verified_steps`)."""
        return complete_steps(self.directory)

    def latest_step(self) -> int | None:
        """The newest complete step, or ``None`` if there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def verified_steps(self) -> list[int]:
        """Steps whose every file matches its checksum manifest, ascending (reads every file)."""
        return [s for s in self.all_steps() if is_verified_checkpoint(self.step_path(s))]

    def latest_verified_step(self, report: Callable[[str], None] | None = None,
                             set_aside: bool = True) -> int | None:
        """The newest step that passes :func:`verify_checkpoint`, checking from the newest down.

        Every newer step that fails is reported with one line through ``report`` and, with
        ``set_aside`` (process 0), renamed ``<step>.corrupt`` so that the run writes a fresh
        checkpoint in its place; nothing is deleted.
        """
        self.wait()
        bad = []
        found = None
        for step in reversed(self.all_steps()):
            problem = verify_checkpoint(self.step_path(step))
            if problem is None:
                found = step
                break
            bad.append((step, problem))
        for step, problem in bad:
            path = self.step_path(step)
            where = ""
            if set_aside and _is_primary():
                where = f"; set aside as {self._set_aside(path, 'corrupt').name}"
            if report is not None:
                fallback = (f"using {self.step_path(found)}" if found is not None
                            else "no older verified checkpoint")
                report(f"checkpoint {path} is not usable ({problem}){where}; {fallback}")
        if bad and set_aside:
            self._manager.reload()
        return found

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
        """Write checkpoint ``step``; return its directory.

        Synchronous stores return once the checkpoint is committed and verified (its checksum
        manifest written); asynchronous ones once the state is copied off the device (see the
        class docstring). A previous asynchronous save is waited for first.

        Args:
            step: a non-negative integer (e.g. environment steps done).
            state: the training-state pytree (arrays and typed PRNG keys; device or host).
            config: JSON-able run configuration (e.g. ``config_to_dict(cfg)``).
            metadata: optional JSON-able extras, restored verbatim.
            force: replace an existing checkpoint for the same step (otherwise an error).

        Raises:
            CheckpointError: ``step`` exists and not ``force``, or config/metadata not JSON-able.
            CheckpointWriteError: this (synchronous) or the previous (asynchronous) save could
                not be written; one line, earlier checkpoints intact.
        """
        step = int(step)
        if step < 0:
            raise CheckpointError(f"step = {step}: must be >= 0")
        args = _composite_save_args(state, config, metadata)  # validates JSON before any write
        self.wait()
        if step in self._manager.all_steps() or self.step_path(step).exists():
            if not force:
                raise CheckpointError(
                    f"checkpoint for step {step} already exists in {self.directory} "
                    "(pass force=True to replace it)"
                )
            self._manager.delete(step)
            self._manager.wait_until_finished()
            if self.step_path(step).exists():  # not known to orbax (e.g. set aside and back)
                shutil.rmtree(self.step_path(step), ignore_errors=True)
        self._pending_step, self._pending_error = step, None
        try:
            # force=True: save whenever asked (orbax would otherwise skip steps <= its latest).
            saved = self._manager.save(step, args=args, force=True)
            if not saved:  # pragma: no cover - orbax declined without an error
                raise CheckpointError(f"orbax declined to save step {step} in {self.directory}")
        except CheckpointError:
            self._pending_step = None
            raise
        except Exception as err:  # noqa: BLE001  (e.g. a write error in the blocking part)
            self._pending_step = None
            self._discard_failed(step)
            raise CheckpointWriteError(
                f"could not write checkpoint {self.step_path(step)}: {_short_error(err)}"
            ) from None
        self._pending = threading.Thread(target=self._finish, args=(step,),
                                         name=f"checkpoint-{step}", daemon=True)
        self._pending.start()
        if not self.async_save:
            self.wait()
        return self.step_path(step)

    def _finish(self, step: int) -> None:
        """Background part of a save: wait for orbax's commit, write the manifest, prune."""
        try:
            self._manager.wait_until_finished()
            if _is_primary():
                write_manifest(self.step_path(step))
            self._empty_trash()
        except BaseException as err:  # noqa: BLE001  (re-raised by wait())
            self._pending_error = err

    def restore(
        self, step: int | None = None, target: Any = None, device: jax.Device | None = None
    ) -> tuple[Any, dict, dict]:
        """``(state, config, meta)`` of checkpoint ``step`` (default: the latest complete one).

        See :func:`restore_checkpoint` for ``target`` and ``device``; a checkpoint whose files do
        not match its manifest raises :class:`CheckpointError`.
        """
        self.wait()
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

    The checkpoint is written by orbax into ``<directory>.incoming`` (itself committed by an
    atomic rename), its checksum manifest is added, and only then is it renamed into place.
    When ``directory`` already holds a checkpoint and ``overwrite``, the old one is first renamed
    to ``<directory>.replaced``, the new one renamed into place, and the old one deleted: at every
    instant a complete checkpoint exists under one of these names (``directory`` itself except
    between the two renames).

    Raises:
        CheckpointError: ``directory`` exists and not ``overwrite``; config/meta not JSON-able.
        CheckpointWriteError: the checkpoint could not be written (one line); any previous
            ``directory`` is untouched.
    """
    final = Path(directory).absolute()
    args = _composite_save_args(state, config, meta)
    if final.exists() and not overwrite:
        raise CheckpointError(f"{final} already exists (pass overwrite=True to replace it)")
    target = final.with_name(final.name + ".incoming")
    if _is_primary():
        for stale in final.parent.glob(f"{target.name}{_TMP_MARKER}*"):
            shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
        try:
            checkpointer.save(epath.Path(target), args=args)
        finally:
            checkpointer.close()
        if _is_primary():
            write_manifest(target)
    except Exception as err:  # noqa: BLE001  (orbax/TensorStore/OS errors alike)
        if _is_primary():
            shutil.rmtree(target, ignore_errors=True)
            for stale in final.parent.glob(f"{target.name}{_TMP_MARKER}*"):
                shutil.rmtree(stale, ignore_errors=True)
        raise CheckpointWriteError(f"could not write {final}: {_short_error(err)}") from None
    if _is_primary():
        if final.exists():
            replaced = final.with_name(final.name + ".replaced")
            shutil.rmtree(replaced, ignore_errors=True)
            final.rename(replaced)
            target.rename(final)
            shutil.rmtree(replaced, ignore_errors=True)
        else:
            target.rename(final)
    return final

