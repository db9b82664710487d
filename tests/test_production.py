"""The library interface of production runs: the ``(init_fn, step_fn)`` pair of
:mod:`swarm_jax.production.runners` is the command line's run.

Uses the 8x8x16 lattice and chunk lengths of 300 and 100 events of tests/test_simulate*.py.
"""

import jax
import numpy as np
import pytest

from swarm_jax import simulate
from swarm_jax.physics import film_arrays
from swarm_jax.production import (
    fold_keys, lattice_of, next_chunk_events, simulator, SimulationConfig,
)

pytestmark = pytest.mark.slow  # not in the quick tier: end-to-end production runs


def _argv(out):
    return ["--policy", "classical", "--lattice-size", "8", "8", "16", "--temperature", "300",
            "--deposition-rate", "1.0", "--events", "1000", "--log-every", "300", "--seed", "3",
            "--replicas", "2", "--out", str(out), "--quiet"]


def test_init_step_pair_reproduces_the_command_line(tmp_path):
    """Stepping by hand with the CLI's keys and chunk lengths gives its films bit for bit."""
    out = tmp_path / "cli"
    assert simulate.main(_argv(out)) == 0
    config = simulate.parse_config(_argv(tmp_path / "lib"))
    assert isinstance(config, SimulationConfig)
    init_fn, step_fn = simulator(config)
    carry = init_fn()
    replica_keys = jax.random.split(jax.random.key(config.seed), config.replicas)
    done, chunk = 0, 0
    while done < config.events:
        n = next_chunk_events(done, config)
        carry = step_fn(carry, fold_keys(replica_keys, chunk), n)
        done, chunk = done + n, chunk + 1
    assert chunk == 4  # 300, 300, 300, 100
    heights, species, oxide = (np.asarray(a) for a in jax.device_get(
        jax.vmap(film_arrays)(lattice_of(carry))))
    with np.load(out / "final_state.npz") as ref:
        np.testing.assert_array_equal(heights, ref["heights"])
        np.testing.assert_array_equal(species, ref["species"])
        np.testing.assert_array_equal(oxide, ref["oxide"])
