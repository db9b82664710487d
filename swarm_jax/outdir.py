"""Output folders with one owner, and files that are written whole or not at all.

Every command that writes results (``train.py``, ``python -m swarm_jax.simulate``,
``python -m swarm_jax.analyze``) claims its ``--out`` folder with :func:`claim_output_dir` before
it compiles anything, and writes each result file with one of the ``atomic_write_*`` helpers:

* **One owner.** The claim takes an exclusive ``fcntl`` lock on ``<out>/.swarm_jax.lock`` (the
  file records the owner's pid, host and command). A second run into a live folder is refused with
  one line naming the owner. The lock dies with its process (also on SIGKILL), so a killed run's
  folder can be claimed again (to ``--resume`` it) without clean-up.
* **A usable folder or one clear line.** An empty path, a path that is a file, a folder under a
  file, or a folder that cannot be written is refused before any work starts
  (:class:`OutputDirError`, whose message is meant to be printed as it is).
* **Whole files.** ``atomic_write_*`` write to a temporary file in the same folder, flush and
  ``fsync`` it, then ``os.replace`` it over the target: a reader (or a run killed at any moment,
  or a full disk) sees either the previous complete file or the new complete file, never a
  truncated one. A failed write removes its temporary file and raises :class:`OutputWriteError`
  with one line.

This module imports nothing from the rest of the package (it sits beside the layers, used by the
training loop and the command-line tools alike).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

__all__ = [
    "LOCK_NAME",
    "OutputDirError",
    "OutputLock",
    "OutputWriteError",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_writer",
    "check_output_dir",
    "claim_output_dir",
]

#: Name of the lock file inside a claimed output folder.
LOCK_NAME = ".swarm_jax.lock"


class OutputDirError(ValueError):
    """The output folder cannot be used (bad path, not writable, or owned by a live run)."""


class OutputWriteError(OSError):
    """A result file could not be written; the previous version of it (if any) is intact."""


def _describe_os_error(err: OSError) -> str:
    name = errno.errorcode.get(err.errno or 0, "")
    text = err.strerror or str(err)
    return f"{text} ({name})" if name else text


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Validate an output folder path without creating or locking anything.

    Args:
        path: the folder (need not exist yet).
        flag: the option name used in messages.

    Returns:
        The path as a :class:`~pathlib.Path`.

    Raises:
        OutputDirError: the path is empty, is (or lies under) an existing non-folder, or the
            nearest existing ancestor cannot be written.
    """
    text = os.fspath(path)
    if not str(text).strip():
        raise OutputDirError(f"{flag}: an empty path is not an output folder; give a folder name")
    p = Path(text)
    if p.exists() and not p.is_dir():
        raise OutputDirError(f"{flag} {text}: exists and is not a folder")
    ancestor = p
    while not ancestor.exists():
        parent = ancestor.parent
        if parent == ancestor:
            break
        ancestor = parent
    if ancestor.exists() and not ancestor.is_dir():
        raise OutputDirError(f"{flag} {text}: {ancestor} is a file, so no folder can be made under it")
    if ancestor.exists() and not os.access(ancestor, os.W_OK | os.X_OK):
        where = "is" if ancestor == p else f"lies under {ancestor}, which is"
        raise OutputDirError(f"{flag} {text}: {where} not writable")
    return p


class OutputLock:
    """An exclusive claim on an output folder (see :func:`claim_output_dir`).

    Use as a context manager or call :meth:`release`; the claim also ends with the process.

    Attributes:
        path: the claimed folder.
    """

    def __init__(self, path: Path, fd: int):
        self.path = path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Give up the claim (idempotent). The lock file stays; it is harmless when unlocked."""
        if self._fd is None:
            return
        import fcntl

        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "OutputLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):  # pragma: no cover - best effort at interpreter exit
        try:
            self.release()
        except Exception:
            pass


def _owner_line() -> str:
    cmd = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:200]
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": cmd})


def claim_output_dir(path: str | os.PathLike, flag: str = "--out") -> OutputLock:
    """Validate, create and exclusively lock an output folder.

    Args:
        path: the folder; created (with parents) if missing.
        flag: the option name used in messages.

    Returns:
        An :class:`OutputLock`; keep it alive for as long as the run writes into the folder.

    Raises:
        OutputDirError: as :func:`check_output_dir`, or the folder cannot be created, or another
            live process holds it (the message names that process's pid and command).
    """
    p = check_output_dir(path, flag)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputDirError(f"{flag} {os.fspath(path)}: cannot create it: "
                             f"{_describe_os_error(err)}") from None
    lock_path = p / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise OutputDirError(f"{flag} {os.fspath(path)}: cannot write in it: "
                             f"{_describe_os_error(err)}") from None
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            owner = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
        except (OSError, ValueError):
            owner = {}
        os.close(fd)
        who = (f"process {owner.get('pid', '?')} on {owner.get('host', '?')} "
               f"({owner.get('command', '?')})") if owner else "another process"
        raise OutputDirError(
            f"{flag} {os.fspath(path)}: already in use by {who}; wait for it to finish or "
            f"choose another folder") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, _owner_line().encode(), 0)
    except OSError:
        pass  # the lock itself is what matters; the owner note is informative only
    return OutputLock(p, fd)


def atomic_writer(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write ``path`` whole or not at all: ``write(fileobj)`` into a temporary sibling, fsync, rename.

    Args:
        path: the target file; its folder must exist.
        write: called once with the open temporary file (opened with ``mode``).
        mode: ``"wb"`` or ``"w"`` (text, UTF-8, ``newline=""`` so CSV writers control line ends).

    Returns:
        The target path.

    Raises:
        OutputWriteError: the write, flush, fsync or rename failed (disk full, file-size limit,
            permissions); the temporary file is removed and any previous target is untouched.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        kwargs = {"encoding": "utf-8", "newline": ""} if "b" not in mode else {}
        with os.fdopen(fd, mode, **kwargs) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as err:
        _unlink_quietly(tmp)
        raise OutputWriteError(err.errno, f"could not write {target}: "
                               f"{_describe_os_error(err)}") from None
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return target


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_writer`)."""
    return atomic_writer(path, lambda fh: fh.write(data), "wb")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_writer`)."""
    return atomic_writer(path, lambda fh: fh.write(text), "w")


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON (NaN allowed, sorted keys off) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")
