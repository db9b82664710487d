"""``train.py`` (a script at the repository root, not a package module) loaded once for the tests
that call its ``main``/``build_parser`` in-process, and the check of its one-line errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny_test.yaml"

_spec = importlib.util.spec_from_file_location("train_cli", REPO / "train.py")
train_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_cli)


def one_error_line(capsys) -> str:
    """The one line ``train.py`` wrote to stderr (``train.py: error: ...``); fails otherwise."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("train.py: error: "), err
    return err[0]


def cache_copy_env(source: Path, folder: Path, leave_out: str | None = None) -> dict:
    """Environment entries for a subprocess that a test kills or signals: its own compilation
    cache ``folder``, a complete copy of the filled cache ``source`` (the worker's
    ``worker_compilation_cache`` in conftest.py, or a module's own) made before the process
    starts, so a kill can only damage the copy. Entries whose name contains ``leave_out`` are not
    copied (the process then compiles those programs itself).

    A copy is found only where JAX's cache keys do not hold the cache folder's path: with
    ``JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES=none`` in the environment (conftest.py sets it). By
    default the key holds it (through a GPU-only XLA option), a copy in another folder would never
    hit, and the process gets no cache entry here (``{}``: the caller's setting stays).
    """
    import shutil

    import jax

    if (jax.config.jax_persistent_cache_enable_xla_caches or "none") != "none":
        return {}
    shutil.copytree(source, folder, ignore=lambda _, names: [
        n for n in names if leave_out is not None and leave_out in n])
    return {"SWARM_JAX_CACHE_DIR": str(folder)}
