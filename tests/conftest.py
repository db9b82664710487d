"""Shared test set-up: 64-bit JAX, hypothesis profiles, one compilation cache per test worker.

Profiles: ``ci`` (default; deterministic, bounded example counts, no deadline because the first
call of a jitted function compiles) and ``dev`` (more examples). Select with
``HYPOTHESIS_PROFILE=dev pytest``.
"""

import os
import sys
from pathlib import Path

# The tests never write into the user's compilation cache (~/.cache/swarm_jax/jax): the
# command-line tools they run (train.py, simulate) would otherwise enable it. Subprocesses inherit
# this too. A subprocess that ends normally may use the worker's cache (``jax_cache_env``); one
# that a test kills keeps it off or uses its own folder (JAX writes a cache entry in place, so a
# process killed mid-write could leave a truncated entry behind).
os.environ["SWARM_JAX_CACHE_DIR"] = "off"
# Cache keys without the cache folder's path (by default JAX puts the folder of XLA's GPU-only
# autotuning caches into the compile options, hence into every key): a killed process can then
# be given a private copy of the worker's cache (tests/train_script.cache_copy_env). CPU programs
# and their results are unchanged.
os.environ.setdefault("JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES", "none")

import pytest  # noqa: E402
import swarm_jax  # noqa: E402
from swarm_jax.compile_cache import ENV_CACHE_DIR, enable_compilation_cache  # noqa: E402

from hypothesis import HealthCheck, settings  # noqa: E402

swarm_jax.enable_x64()  # before any test builds arrays (importing the package does not)

# tests/ holds helper modules (reference.py, mock_env.py) imported by the tests.
sys.path.insert(0, str(Path(__file__).parent))

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("dev", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session", autouse=True)
def worker_compilation_cache(tmp_path_factory):
    """JAX's persistent compilation cache in a folder of this test worker's own temporary tree.

    Most of the suite's time is XLA compilation, and many tests compile the same programs (the
    same small env or trainer built afresh); a program compiled once is loaded from here by the
    next test of the same worker. Results do not change: the cache holds the compiled executables
    of identical computations. Each ``pytest-xdist`` worker has its own folder (its own base
    temporary directory), so no two processes write one folder at the same time.
    """
    folder = tmp_path_factory.mktemp("jax_cache")
    enable_compilation_cache(folder)
    import jax

    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)  # skip the trivial ones
    return folder


@pytest.fixture
def jax_cache_env(worker_compilation_cache) -> dict:
    """Environment entries that let a subprocess share the worker's compilation cache.

    Only for subprocesses that run to their end: see the note on ``SWARM_JAX_CACHE_DIR`` above.
    """
    return {ENV_CACHE_DIR: str(worker_compilation_cache)}
