"""Episodes defined by physics: a deposited amount (``episode_ml``) or a physical time ends them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swarm_jax.env.tio2_env import END_THICKNESS, END_TIME, EnvParams, TiO2GrowthEnv, batched_step
from swarm_jax.physics.lattice import CEILING, deposit_target, deposit_target_traced

pytestmark = pytest.mark.slow  # not in the quick tier: whole episodes stepped from the host

FROZEN = dict(temperature=180.0, deposition_rate=0.1)


def _roll_until_done(env, params, key, n_envs, max_steps):
    """Steps a batch with uniform actions; returns the info of each env's first finished step."""
    keys = jax.random.split(key, n_envs)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
    step = jax.jit(batched_step(env))
    first = {}
    for t in range(max_steps):
        key, k_a, k_s = jax.random.split(key, 3)
        action = jax.random.randint(k_a, (n_envs,), 0, env.n_swarm)
        obs, state, _, term, trunc, info = step(jax.random.split(k_s, n_envs), state, action, params)
        done = np.asarray(term | trunc)
        for i in np.flatnonzero(done):
            if i not in first:
                first[i] = {k: np.asarray(info[k])[i] for k in ("termination_reason", "mean_height",
                                                                  "time", "n_ti", "n_o")}
                first[i]["terminated"] = bool(np.asarray(term)[i])
                first[i]["progress"] = float(np.asarray(info["final_observation"]["global"])[i, -1])
        if len(first) == n_envs:
            return first
    raise AssertionError(f"only {len(first)} of {n_envs} episodes ended within {max_steps} steps")


def test_thickness_episode_holds_exactly_the_target_deposits():
    lx, ly, lz, ml = 4, 4, 10, 1.5
    env = TiO2GrowthEnv((lx, ly, lz), 8, episode_ml=ml, max_steps=10_000, **FROZEN)
    ends = _roll_until_done(env, env.default_params, jax.random.key(0), 6, 2_000)
    target = deposit_target(lx * ly, ml)
    for end in ends.values():
        assert end["termination_reason"] == END_THICKNESS and end["terminated"]
        # Frozen regime: nothing desorbs, so the film holds every deposited atom.
        assert end["n_ti"] + end["n_o"] == target
        assert end["mean_height"] == pytest.approx(target / (lx * ly))
        assert end["progress"] == 1.0


def test_time_episode_ends_at_the_first_event_past_the_limit():
    env = TiO2GrowthEnv((4, 4, 10), 8, episode_time=2.0, max_steps=10_000, **FROZEN)
    # 6 envs of the thickness test's shape: its compiled step (the params are an operand)
    ends = _roll_until_done(env, env.default_params, jax.random.key(1), 6, 2_000)
    for end in ends.values():
        assert end["termination_reason"] == END_TIME and end["terminated"]
        assert end["time"] >= 2.0


def test_ceiling_before_the_target_truncates_and_is_reported():
    env = TiO2GrowthEnv((3, 3, 3), 4, episode_ml=50.0, max_steps=10_000, **FROZEN)
    ends = _roll_until_done(env, env.default_params, jax.random.key(2), 3, 500)
    for end in ends.values():
        assert end["termination_reason"] == CEILING and not end["terminated"]


@pytest.mark.parametrize("ml", [0.1, 0.5, 1.0, 1.0 / 3.0, 2.7, 12.25])
@pytest.mark.parametrize("columns", [9, 64, 400, 2500])
def test_traced_target_equals_the_host_definition(ml, columns):
    assert int(deposit_target_traced(ml, columns)) == deposit_target(columns, ml)
    assert int(jax.jit(deposit_target_traced, static_argnums=1)(jnp.float64(ml), columns)) \
        == deposit_target(columns, ml)


@pytest.mark.parametrize("field", ["episode_ml", "episode_time"])
@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_episode_limits_are_refused(field, bad):
    with pytest.raises(ValueError, match=field):
        EnvParams.create(**{field: bad})
