"""The Python API rejects what it cannot mean: PhysicsParams/EnvParams at construction, n_swarm,
Gym adapter actions; and the documented action rule of the jitted env (cast to int32, clamp)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swarm_jax.env.tio2_env import EnvParams, TiO2GrowthEnv
from swarm_jax.physics.params import PhysicsParams

pytestmark = pytest.mark.slow  # not in the quick tier: compiles the env and the gym adapter


@pytest.mark.parametrize("kwargs, field, allowed", [
    (dict(temperature=-300), "temperature", "> 0 K"),
    (dict(temperature=0), "temperature", "> 0 K"),
    (dict(temperature=float("nan")), "temperature", "> 0 K"),
    (dict(temperature=np.float64("inf")), "temperature", "> 0 K"),
    (dict(deposition_rate=-1), "deposition_rate", ">= 0 ML/s"),
    (dict(sticking_ti=5), "sticking_ti", "in [0, 1]"),
    (dict(sticking_o=-0.1), "sticking_o", "in [0, 1]"),
    (dict(attempt_frequency=0.0), "attempt_frequency", "> 0 Hz"),
    (dict(e_es=float("nan")), "e_es", "finite"),
    (dict(o_ti_flux_ratio=np.array(-2.0)), "o_ti_flux_ratio", ">= 0"),
])
def test_env_params_create_rejects_bad_physics_with_one_value_error(kwargs, field, allowed):
    with pytest.raises(ValueError) as info:
        EnvParams.create(**kwargs)
    text = str(info.value)
    assert text.startswith(f"PhysicsParams.{field} = ") and allowed in text and "\n" not in text
    with pytest.raises(ValueError, match=f"PhysicsParams.{field}"):
        PhysicsParams(**kwargs)
    with pytest.raises(ValueError, match=f"PhysicsParams.{field}"):
        PhysicsParams().replace(**kwargs)


@pytest.mark.parametrize("steps", [-3, 0, 2.5, 1e30, 2**31, float("nan")])
def test_max_steps_in_episode_must_be_an_int32_integer_ge_1(steps):
    with pytest.raises(ValueError, match=r"EnvParams.max_steps_in_episode = .*\[1, 2147483647\]"):
        EnvParams.create(max_steps_in_episode=steps)
    with pytest.raises(ValueError, match="max_steps_in_episode"):
        TiO2GrowthEnv((5, 5, 4), n_swarm=4, max_steps=steps)


def test_valid_and_traced_values_are_accepted():
    p = EnvParams.create(temperature=600.0, deposition_rate=0.0, sticking_ti=1.0,
                         max_steps_in_episode=np.int64(5), e_es=-0.1)
    assert p.physics.temperature == 600.0 and p.max_steps_in_episode == 5
    # Inside jit/vmap the values are tracers and are not checked (they cannot be).
    temps = jax.vmap(lambda t: EnvParams.create(temperature=t).physics.temperature)(
        jnp.array([100.0, 200.0]))
    np.testing.assert_array_equal(np.asarray(temps), [100.0, 200.0])
    out = jax.jit(lambda t: PhysicsParams(temperature=t).kT)(jnp.float64(300.0))
    assert float(out) > 0
    # pytree operations keep working: leaves that are JAX arrays are not checked
    as_arrays = jax.tree.map(jnp.asarray, PhysicsParams())
    zeros = jax.tree.map(jnp.zeros_like, as_arrays)
    assert float(zeros.temperature) == 0.0
    # pytree rebuilds (tree_map, gradients) are not constructions and are not checked; the
    # constructor and replace() are
    doubled = jax.tree.map(lambda x: x * 2, PhysicsParams())
    assert doubled.sticking_ti == 1.8
    with pytest.raises(ValueError, match="PhysicsParams.sticking_ti = 1.8"):
        PhysicsParams().replace(sticking_ti=1.8)


@pytest.mark.parametrize("n", [2.5, 0, -1, True, "3", None, 2**31])
def test_n_swarm_must_be_an_integer_ge_1(n):
    with pytest.raises(ValueError, match=r"n_swarm = .*: must be an integer in \[1, 2147483647\]"):
        TiO2GrowthEnv((5, 5, 4), n_swarm=n)


def test_n_swarm_accepts_numpy_integers():
    assert TiO2GrowthEnv((5, 5, 4), n_swarm=np.int64(4)).n_swarm == 4


def test_jitted_env_casts_and_clamps_out_of_range_actions():
    """The documented rule: int32 cast (truncation), then clamp to [0, K - 1]."""
    env = TiO2GrowthEnv((5, 5, 4), n_swarm=4)
    params = env.default_params
    key = jax.random.PRNGKey(3)
    _, state = env.reset(key, params)
    step = jax.jit(lambda a: env.step_env(jax.random.PRNGKey(4), state, a, params)[1].lattice)

    def same(a, b):
        for x, y in zip(jax.tree.leaves(step(a)), jax.tree.leaves(step(b))):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    same(jnp.int32(-5), jnp.int32(0))
    same(jnp.int32(4 + 10), jnp.int32(3))
    same(jnp.float32(2.7), jnp.int32(2))


# ---- Gym adapter -------------------------------------------------------------------------------

gymnasium = pytest.importorskip("gymnasium")


@pytest.fixture(scope="module")
def gym_env():
    from swarm_jax.gym import TiO2GrowthGymEnv

    env = TiO2GrowthGymEnv(lattice_size=(5, 5, 4), n_swarm=4, max_steps=10)
    env.reset(seed=0)
    return env


@pytest.mark.parametrize("action, expected", [
    (3.7, "action must be an integer in [0, 4), got 3.7"),
    (np.float32(1.5), "got 1.5"),
    (float("nan"), "got nan"),
    (-1, "must be in [0, 4), got -1"),
    (4, "must be in [0, 4), got 4"),
    (np.int64(99), "got 99"),
    (True, "got dtype bool"),
    ("2", "got dtype <U1"),
    ([1, 2], "expected 1 value(s)"),
])
def test_gym_adapter_refuses_actions_outside_0_k(gym_env, action, expected):
    with pytest.raises(ValueError) as info:
        gym_env.step(action)
    assert expected in str(info.value)


def test_gym_adapter_accepts_integral_actions(gym_env):
    for action in (0, 3, np.int32(2), 1.0, np.array([2])):
        obs, reward, terminated, truncated, info = gym_env.step(action)
        assert np.isfinite(reward)
        if terminated or truncated:
            gym_env.reset()


def test_vec_env_refuses_bad_action_batches():
    from swarm_jax.gym import TiO2GrowthVecEnv

    venv = TiO2GrowthVecEnv(n_envs=2, lattice_size=(5, 5, 4), n_swarm=4, max_steps=10)
    venv.reset()
    for actions, expected in [(np.array([0, 4]), "got 4"), (np.array([0.0, 2.5]), "got 2.5"),
                              (np.array([np.nan, 1.0]), "got nan"), (np.array([1]), "shape")]:
        with pytest.raises(ValueError, match=expected.replace(".", r"\.")):
            venv.step_async(actions)
    venv.step_async(np.array([0, 3]))
    venv.step_wait()
