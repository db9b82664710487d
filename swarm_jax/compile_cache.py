"""JAX's persistent compilation cache, on by default for the command-line tools.

The first start of ``train.py --stage 1`` spends most of its time compiling the PPO update; with
the cache on, a second start of the same configuration (same shapes, same JAX version, same
backend) loads the compiled executables from disk instead.

Where the cache lives (first match wins):

1. the ``path`` argument of :func:`enable_compilation_cache`;
2. the environment variable ``SWARM_JAX_CACHE_DIR`` (``off``, ``0``, ``none``, ``false`` or an
   empty value disable the cache);
3. ``$XDG_CACHE_HOME/swarm_jax/jax``, else ``~/.cache/swarm_jax/jax``.

``train.py --no-compile-cache`` disables it for one run. The cache only stores compiled XLA
executables keyed by the computation, its shapes and the compiler options; it never changes what
a run computes (results are bitwise the same with and without it).

This module imports nothing from the rest of the package (it sits beside the layers).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ENV_CACHE_DIR", "default_cache_dir", "enable_compilation_cache"]

#: Environment variable that moves (a path) or disables (``off``) the cache.
ENV_CACHE_DIR = "SWARM_JAX_CACHE_DIR"
_OFF = {"off", "0", "none", "false", "no", "disable", "disabled"}


def default_cache_dir() -> Path | None:
    """The cache folder from the environment: ``SWARM_JAX_CACHE_DIR``, else the user's cache
    directory; ``None`` when the variable disables the cache."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env is not None:
        if env.strip().lower() in _OFF or not env.strip():
            return None
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "swarm_jax" / "jax"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache; return its folder (``None``: left off).

    Args:
        path: cache folder; default :func:`default_cache_dir` (which honours
            ``SWARM_JAX_CACHE_DIR``).

    The cache is left off, silently, when it is disabled by the environment or its folder cannot
    be created or written (a read-only home directory must not stop a run). Every compiled
    computation is cached (no minimum compile time), so the small helper functions are not
    recompiled either. Safe to call more than once and before or after other JAX calls.
    """
    folder = Path(path).expanduser() if path is not None else default_cache_dir()
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            return None
    except OSError:
        return None
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    # JAX initialises the cache once per process, on the first compilation; if something was
    # compiled before this call, reset it so the folder set here is used (public API:
    # https://docs.jax.dev/en/latest/jax.experimental.compilation_cache.html).
    compilation_cache.reset_cache()
    compilation_cache.set_cache_dir(str(folder))
    return folder
