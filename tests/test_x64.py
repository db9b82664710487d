"""64-bit mode is turned on by an explicit call, never by importing the package.

``import swarm_jax`` leaves JAX's ``jax_enable_x64`` as it was (a user's own float32 code keeps
its dtype); the constructors that need float64 refuse with one line while it is off, and work
after :func:`swarm_jax.enable_x64` (or inside a ``jax.enable_x64(True)`` scope). Each case runs
in a fresh interpreter: this test process already has the mode on (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_CHILD = textwrap.dedent("""
    import json, jax, jax.numpy as jnp
    import swarm_jax
    from swarm_jax import physics
    from swarm_jax.validation import X64Error

    out = {"after_import": bool(jax.config.jax_enable_x64), "user_dtype": str(jnp.zeros(3).dtype)}
    params = physics.PhysicsParams()
    builders = {
        "make_rate_tables": lambda: physics.make_rate_tables(params),
        "init_flat": lambda: physics.init_flat((4, 4, 3), params),
        "from_arrays": lambda: physics.from_arrays(
            jnp.zeros((4, 4), int), jnp.zeros((4, 4, 3), int), jnp.zeros((4, 4, 3), bool), params),
        "TiO2GrowthEnv": lambda: swarm_jax.TiO2GrowthEnv((4, 4, 3), n_swarm=4),
    }
    refusals = {}
    for name, build in builders.items():
        try:
            build()
            refusals[name] = None
        except X64Error as err:
            refusals[name] = str(err)
    out["refusals"] = refusals
    with jax.enable_x64(True):
        out["scoped_total_dtype"] = str(physics.init_flat((4, 4, 3), params).total.dtype)
    swarm_jax.enable_x64()
    out["after_call"] = bool(jax.config.jax_enable_x64)
    out["total_dtype"] = str(physics.init_flat((4, 4, 3), params).total.dtype)
    out["env_built"] = swarm_jax.TiO2GrowthEnv((4, 4, 3), n_swarm=4).num_actions == 4
    print("RESULT " + json.dumps(out))
""")


def test_import_leaves_64_bit_mode_off_and_constructors_refuse_until_enable_x64():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("JAX_ENABLE_X64", None)
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=900)  # hang guard only
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    out = json.loads(line[len("RESULT "):])
    assert out["after_import"] is False and out["user_dtype"] == "float32"
    for name, message in out["refusals"].items():
        assert message is not None, f"{name} built with 64-bit mode off"
        assert message.startswith("64-bit mode is off: call swarm_jax.enable_x64() before building ")
        assert "\n" not in message
    assert out["scoped_total_dtype"] == "float64"
    assert out["after_call"] is True and out["total_dtype"] == "float64" and out["env_built"]
