"""Integrity of a checkpoint directory: what makes one complete (its orbax metadata files), its
SHA-256 manifest (:func:`write_manifest`, :func:`verify_checkpoint`), the listing of a store's
complete and verified steps, and the resolution of a path to the checkpoint it names. Read-only
except :func:`write_manifest`; the orbax store that writes checkpoints is
:mod:`swarm_jax.training.checkpoint` (which re-exports these names)."""

from __future__ import annotations

import errno
import hashlib
import re
from pathlib import Path

import orbax.checkpoint as ocp

from swarm_jax.outdir import atomic_write_text

__all__ = ["CONFIG", "MANIFEST", "META", "STATE", "CheckpointError", "CheckpointWriteError",
           "complete_steps", "is_complete_checkpoint", "is_verified_checkpoint",
           "newest_verified_step", "resolve_checkpoint", "verify_checkpoint", "write_manifest"]

STATE, CONFIG, META = "state", "config", "meta"
_TMP_MARKER = ocp.utils.TMP_DIR_SUFFIX  # orbax's name for a save not committed yet
# Files orbax writes last-ish into every committed item; all must exist for a complete checkpoint.
_REQUIRED_FILES = (
    "_CHECKPOINT_METADATA",
    f"{STATE}/_METADATA",
    f"{CONFIG}/metadata",
    f"{META}/metadata",
)


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, or does not match the template it is restored into."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, file-size limit, permissions). The message is
    one line; the checkpoints committed before it are untouched."""



#: The checksum manifest of a checkpoint: one ``<sha256>  <bytes>  <relative path>`` line per file.
MANIFEST = "MANIFEST.sha256"
_MANIFEST_HEADER = "# swarm_jax checkpoint manifest v1: sha256  bytes  path\n"


def is_complete_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a committed checkpoint directory written by this module.

    False for orbax temporary directories (``*.orbax-checkpoint-tmp*``), missing paths, and
    directories lacking any of the metadata files every committed checkpoint has.
    """
    path = Path(path)
    if _TMP_MARKER in path.name or not path.is_dir():
        return False
    return all((path / f).exists() for f in _REQUIRED_FILES)


# --------------------------------------------------------------------------------------------
# Integrity: a SHA-256 manifest of every file, written after the data, checked before a restore
# --------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _data_files(ckpt: Path) -> list[Path]:
    """Every regular file under ``ckpt`` but the manifest (and its temporary copies), sorted."""
    return sorted(p for p in ckpt.rglob("*")
                  if p.is_file() and p.name != MANIFEST
                  and not (p.name.startswith(f".{MANIFEST}.") and p.name.endswith(".tmp")))


def write_manifest(ckpt: str | Path) -> Path:
    """Write ``ckpt/MANIFEST.sha256`` (SHA-256 and size of every file), atomically; return it.

    Called once the checkpoint's files are all written and flushed (by :meth:`CheckpointStore.save`
    and :func:`save_final`); a checkpoint without the manifest is *unverified*.
    """
    ckpt = Path(ckpt)
    lines = [f"{_sha256(f)}  {f.stat().st_size}  {f.relative_to(ckpt).as_posix()}\n"
             for f in _data_files(ckpt)]
    return atomic_write_text(ckpt / MANIFEST, _MANIFEST_HEADER + "".join(lines))


_MANIFEST_LINE = re.compile(r"([0-9a-f]{64})  (\d+)  (.+)")


def verify_checkpoint(path: str | Path) -> str | None:
    """``None`` when ``path`` is a complete checkpoint whose files all match its manifest; else
    the first problem found, as a short phrase (e.g. ``"state/d/3f2a... fails its SHA-256
    check"``, ``"no checksum manifest"``)."""
    path = Path(path)
    if not is_complete_checkpoint(path):
        return "incomplete (orbax metadata files missing)"
    manifest = path / MANIFEST
    if not manifest.is_file():
        return "no checksum manifest (the save was interrupted before it was verified, or it " \
               "was written by an older version)"
    try:
        text = manifest.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return f"unreadable checksum manifest ({type(err).__name__})"
    if not text.startswith(_MANIFEST_HEADER):
        return "malformed checksum manifest"
    entries = text[len(_MANIFEST_HEADER):].splitlines()
    if not entries:
        return "empty checksum manifest"
    for line in entries:
        m = _MANIFEST_LINE.fullmatch(line)
        if m is None:
            return "malformed checksum manifest"
        digest, size, rel = m.group(1), int(m.group(2)), m.group(3)
        f = path / rel
        if not f.is_file():
            return f"file {rel} is missing"
        got = f.stat().st_size
        if got != size:
            return f"file {rel} has {got} bytes, {size} were written (truncated or overwritten)"
        if _sha256(f) != digest:
            return f"file {rel} fails its SHA-256 check (corrupted)"
    return None


def newest_verified_step(directory: str | Path) -> int | None:
    """The newest step of a store directory that passes :func:`verify_checkpoint` (read-only:
    nothing is reported or renamed; see :meth:`CheckpointStore.latest_verified_step`)."""
    directory = Path(directory)
    return next((s for s in reversed(complete_steps(directory))
                 if verify_checkpoint(directory / str(s)) is None), None)


def is_verified_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is complete and every file matches its checksum manifest."""
    return verify_checkpoint(path) is None


def _check_integrity(ckpt: Path) -> None:
    """Raise :class:`CheckpointError` when ``ckpt`` has a manifest that its files do not match.

    A checkpoint without a manifest (written before manifests existed) is read as it is.
    """
    if (ckpt / MANIFEST).exists():
        problem = verify_checkpoint(ckpt)
        if problem is not None:
            raise CheckpointError(f"checkpoint {ckpt} is corrupt: {problem}")



def _short_error(err: BaseException) -> str:
    """One short line for an exception from a write (orbax/TensorStore messages run to 1000s of
    characters): the OS error when one can be recognised, else the first line, shortened."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:  # an OSError anywhere in the chain
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno:
            return f"{e.strerror or errno.errorcode.get(e.errno, e.errno)} ({errno.errorcode.get(e.errno, '')})"
        e = e.__cause__ or e.__context__
    text = str(err)
    for code, words in (("EFBIG", "File too large"), ("ENOSPC", "No space left on device"),
                        ("EDQUOT", "Disk quota exceeded"), ("EACCES", "Permission denied"),
                        ("EROFS", "Read-only file system")):
        if words.lower() in text.lower() or code in text:
            return f"{words} ({code})"
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return f"{type(err).__name__}: {first[:200]}"


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from ``path``: itself, or a store's newest verified complete step
    (an unverified one only if none verifies); :class:`CheckpointError` if there is none."""
    return _resolve(path)[0]


def _resolve(path: str | Path) -> tuple[Path, bool]:
    """:func:`resolve_checkpoint` and whether it already verified the checkpoint it chose."""
    path = Path(path).absolute()  # orbax wants absolute paths; users give relative ones
    if is_complete_checkpoint(path):
        return path, False
    if path.is_dir():
        step = newest_verified_step(path)  # checked from the newest down: older ones not hashed
        if step is not None:
            return path / str(step), True
        steps = complete_steps(path)  # an unverified step only if none verifies
        if steps:
            return path / str(steps[-1]), False
    raise CheckpointError(
        f"{path} is neither a complete checkpoint nor a checkpoint directory holding one"
    )


def _resolve_intact(path: str | Path) -> Path:
    """The checkpoint of ``path`` (see :func:`resolve_checkpoint`), its files checked against
    their manifest once: :class:`CheckpointError` if they do not match."""
    ckpt, verified = _resolve(path)
    if not verified:
        _check_integrity(ckpt)
    return ckpt


def complete_steps(directory: str | Path) -> list[int]:
    """Steps of the complete checkpoints in a store directory, ascending (read-only)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(
        int(p.name) for p in directory.iterdir() if p.name.isdigit() and is_complete_checkpoint(p)
    )


