"""Shared test set-up: 64-bit JAX (via the package import) and hypothesis profiles.

Profiles: ``ci`` (default; deterministic, bounded example counts, no deadline because the first
call of a jitted function compiles) and ``dev`` (more examples). Select with
``HYPOTHESIS_PROFILE=dev pytest``.
"""

import os
import sys
from pathlib import Path

# The tests never write into the user's compilation cache (~/.cache/swarm_jax/jax): the
# command-line tools they run (train.py, simulate) would otherwise enable it. Subprocesses inherit
# this too. A test that exercises the cache sets its own folder.
os.environ["SWARM_JAX_CACHE_DIR"] = "off"

import swarm_jax  # noqa: E402

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
