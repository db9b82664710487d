"""TiO2GrowthEnv: gymnax API, spaces, observation shapes, info, truncation/termination, auto-reset."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnax.environments import environment, spaces

import swarm_jax
from swarm_jax import EnvParams, RewardConfig, TiO2GrowthEnv
from swarm_jax import compute_reward
from swarm_jax.env.reward import reward_metrics
from swarm_jax.env.tio2_env import EnvState
from swarm_jax.physics import CEILING, NO_EVENTS, RUNNING, PhysicsParams, from_arrays, make_rate_tables
from swarm_jax.physics.engine import Event
from swarm_jax.physics.params import SUBSTRATE, TI
from swarm_jax.swarm.features import CANDIDATE_FEATURE_DIM, GLOBAL_FEATURE_DIM

INFO_KEYS = {"roughness", "coverage", "mean_height", "n_ti", "n_o", "o_ti_ratio", "oxide_fraction", "time",
             "dt", "event_kind", "termination_reason", "terminated", "truncated", "final_observation"}


def _tree_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _tree_close(a, b):
    """Equal up to float rounding (jit fusion may differ between two compiled functions)."""
    return all(np.allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-6)
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_package_exports_and_params():
    assert swarm_jax.TiO2GrowthEnv is TiO2GrowthEnv and swarm_jax.EnvParams is EnvParams
    env = TiO2GrowthEnv((8, 8, 5), n_swarm=16, temperature=600.0, max_steps=77, w_roughness=2.0)
    p = env.default_params
    assert float(p.temperature) == 600.0 and float(p.deposition_rate) == 1.0 and float(p.o_ti_flux_ratio) == 2.0
    assert p.max_steps_in_episode == 77 and p.reward.w_roughness == 2.0 and p.reward.w_coverage == 0.5
    assert env.num_actions == 16
    assert isinstance(env.action_space(p), spaces.Discrete) and env.action_space(p).n == 16
    with pytest.raises(TypeError):
        TiO2GrowthEnv((8, 8, 5), not_a_parameter=1.0)
    with pytest.raises(ValueError):
        RewardConfig(mode="bogus")
    q = EnvParams.create(physics=PhysicsParams(temperature=450.0), deposition_rate=3.0, reward=RewardConfig(mode="delta"))
    assert float(q.temperature) == 450.0 and float(q.deposition_rate) == 3.0 and q.reward.mode == "delta"


@pytest.mark.slow
def test_observation_shapes_and_space_are_independent_of_lattice_size():
    shapes = []
    for size in [(8, 8, 5), (50, 50, 20)]:
        env = TiO2GrowthEnv(size, n_swarm=32)
        p = env.default_params
        obs, state = jax.eval_shape(lambda k: env.reset(k, p), jax.random.key(0))
        out = jax.eval_shape(lambda k, s: env.step(k, s, 0, p), jax.random.key(1), state)
        step_obs = out[0]
        space = env.observation_space(p)
        assert isinstance(space, spaces.Dict) and set(space.spaces) == {"candidates", "global"}
        for name in ("candidates", "global"):
            assert obs[name].shape == step_obs[name].shape == space.spaces[name].shape == env.obs_shapes[name]
            assert obs[name].dtype == step_obs[name].dtype == jnp.float32
        shapes.append({k: v.shape for k, v in obs.items()})
    assert shapes[0] == shapes[1] == {"candidates": (32, CANDIDATE_FEATURE_DIM), "global": (GLOBAL_FEATURE_DIM,)}


@pytest.fixture(scope="module")
def small_env():
    env = TiO2GrowthEnv((6, 5, 6), n_swarm=8, temperature=300.0, max_steps_in_episode=12)
    return env, env.default_params, jax.jit(env.step)


@pytest.mark.slow
def test_episode_step_info_clock_and_truncation(small_env):
    env, p, step = small_env
    obs, state = env.reset(jax.random.key(0), p)
    space = env.observation_space(p)
    assert bool(space.spaces["candidates"].contains(obs["candidates"])) and bool(space.spaces["global"].contains(obs["global"]))
    assert int(state.lattice.n_events) == 0 and int(state.step_count) == 0
    time = 0.0
    for t in range(1, 13):
        prev_state = state
        obs, state, reward, term, trunc, info = step(jax.random.key(t), state, t % 8, p)
        assert INFO_KEYS <= set(info)
        assert all(np.ndim(v) == 0 for k, v in info.items() if k != "final_observation")
        assert reward.dtype == jnp.float32 and np.isfinite(reward)
        assert not bool(term)
        assert float(info["dt"]) > 0
        np.testing.assert_allclose(float(info["time"]), time + float(info["dt"]), rtol=1e-12)
        time = float(info["time"])
        # The executed event is the chosen candidate.
        assert int(info["event_kind"]) == int(prev_state.candidates.kind[t % 8])
        if t < 12:
            assert not bool(trunc) and int(state.step_count) == t and int(state.lattice.n_events) == t
            assert float(state.lattice.time) == time
            assert _tree_equal(info["final_observation"], obs)
            assert bool(space.spaces["candidates"].contains(obs["candidates"]))
    # Step 12 = max_steps_in_episode: truncated and auto-reset to a fresh flat film.
    assert bool(trunc) and int(state.step_count) == 0 and int(state.lattice.n_events) == 0
    assert float(state.lattice.time) == 0.0 and int(state.lattice.heights.max()) == 0
    assert not _tree_equal(info["final_observation"], obs)
    np.testing.assert_allclose(info["final_observation"]["global"][14], 1.0)  # progress at the end
    assert float(obs["global"][14]) == 0.0


@pytest.mark.slow
def test_final_observation_is_the_pre_reset_observation(small_env):
    env, p, step = small_env
    obs, state = env.reset(jax.random.key(3), p)
    state = state.replace(step_count=jnp.int32(p.max_steps_in_episode - 1))
    key = jax.random.key(4)
    obs, new_state, _, term, trunc, info = step(key, state, 2, p)
    assert bool(trunc) and not bool(term)
    key_step, key_reset = jax.random.split(key)
    obs_st, state_st, _, _, _ = jax.jit(env.step_env)(key_step, state, 2, p)
    obs_re, state_re = env.reset(key_reset, p)
    assert _tree_close(info["final_observation"], obs_st)
    assert _tree_close(obs, obs_re) and _tree_close(new_state, state_re)
    assert not _tree_close(obs_st, obs_re)
    assert _tree_close(jax.jit(env.get_obs)(state_st, p), obs_st)
    # Identical to gymnax's own auto-resetting step (ours only skips the reset when not done).
    for s0, key in ((state, key), (state.replace(step_count=jnp.int32(0)), jax.random.key(9))):
        ours = step(key, s0, 2, p)
        theirs = environment.Environment.step(env, key, s0, 2, p)
        assert _tree_close(ours, theirs)
    assert int(info["mean_height"] * 30) == int(state_st.lattice.heights[:30].sum())


@pytest.mark.slow
def test_ceiling_terminates_with_reason_and_auto_resets(small_env):
    env, p, step = small_env
    lx, ly, lz = env.lattice_size
    heights = np.zeros((lx, ly), int)
    heights[2, 3] = lz - 2  # one deposit away from the top layer
    species = np.zeros((lx, ly, lz), np.int8)
    species[..., 0] = SUBSTRATE
    species[2, 3, 1: lz - 1] = TI
    lattice = from_arrays(heights, species, np.zeros_like(species), p.physics)
    assert int(lattice.status) == RUNNING
    col = 2 * ly + 3
    k = env.n_swarm
    tables = make_rate_tables(p.physics)
    # Every candidate deposits an O on the tall column.
    cands = Event(column=jnp.full((k,), col, jnp.int32), slot=jnp.ones((k,), jnp.int32),
                  top_species=jnp.full((k,), TI, jnp.int8), top_oxide=jnp.zeros((k,), jnp.int8),
                  rate=jnp.full((k,), tables.dep[1]))
    metrics = reward_metrics(lattice)
    state = EnvState(lattice=lattice, candidates=cands, step_count=jnp.int32(3), metrics=metrics, prev_metrics=metrics)
    obs, state, reward, term, trunc, info = step(jax.random.key(1), state, 5, p)
    # The full box cuts the episode (a truncation: learners bootstrap it), it does not end it.
    assert bool(trunc) and not bool(term)
    assert int(info["termination_reason"]) == CEILING == 1
    assert int(info["event_kind"]) == 1 and int(info["n_o"]) == 1 and int(info["n_ti"]) == lz - 2
    np.testing.assert_allclose(info["final_observation"]["global"][2], 1.0)  # max height at the ceiling
    assert int(state.lattice.status) == RUNNING and int(state.lattice.n_events) == 0 and int(state.step_count) == 0


@pytest.mark.slow
def test_no_events_terminates_with_reason(small_env):
    env, _, step = small_env
    p = EnvParams.create(deposition_rate=0.0, max_steps_in_episode=12)
    obs, state = env.reset(jax.random.key(0), p)
    assert int(state.lattice.status) == NO_EVENTS
    assert np.all(np.isfinite(obs["candidates"])) and np.all(np.isfinite(obs["global"]))
    obs, state, reward, term, trunc, info = step(jax.random.key(1), state, 0, p)
    assert bool(term) and int(info["termination_reason"]) == NO_EVENTS == 2
    assert int(info["event_kind"]) == -1 and float(info["dt"]) == 0.0 and np.isfinite(reward)


@pytest.mark.slow
def test_jit_vmap_over_thousands_of_envs():
    env = TiO2GrowthEnv((8, 8, 5), n_swarm=32, max_steps_in_episode=5)
    p = env.default_params
    n = 2048
    reset = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))
    step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    obs, state = reset(jax.random.split(jax.random.key(0), n), p)
    actions = jax.random.randint(jax.random.key(1), (n,), 0, 32)
    for t in range(5):
        obs, state, reward, term, trunc, info = step(jax.random.split(jax.random.key(2 + t), n), state, actions, p)
    assert obs["candidates"].shape == (n, 32, CANDIDATE_FEATURE_DIM) and obs["global"].shape == (n, GLOBAL_FEATURE_DIM)
    assert reward.shape == term.shape == trunc.shape == info["roughness"].shape == (n,)
    assert bool(trunc.all()) and int(state.step_count.max()) == 0  # all truncated at step 5 and reset
    assert info["final_observation"]["candidates"].shape == (n, 32, CANDIDATE_FEATURE_DIM)
    # Different envs took different random paths.
    assert len(np.unique(np.asarray(info["time"]))) > n // 2


@pytest.mark.slow
def test_delta_rewards_telescope_over_an_episode():
    cfg = RewardConfig(mode="delta")
    env = TiO2GrowthEnv((6, 5, 6), n_swarm=8, temperature=250.0, max_steps_in_episode=1000, reward=cfg)
    p = env.default_params

    @jax.jit
    def run(key):
        obs, state = env.reset(key, p)

        def body(state, k):
            _, state, r, _, _, _ = env.step(k, state, 3, p)
            return state, r

        final, rewards = jax.lax.scan(body, state, jax.random.split(key, 30))
        return state, final, rewards

    start, final, rewards = run(jax.random.key(5))
    assert int(final.lattice.n_events) == 30 and isinstance(final, EnvState)
    level = RewardConfig()
    level_end, _ = compute_reward(final, level)
    level_start, _ = compute_reward(start, level)
    np.testing.assert_allclose(float(rewards.astype(jnp.float64).sum()), float(level_end - level_start),
                               rtol=1e-4, atol=1e-5)
    # The last reward is the delta over the last step, from the stored previous metrics.
    np.testing.assert_allclose(rewards[-1], compute_reward(final, cfg)[0], rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(rewards).sum()) > 0


def _batched_rollout(env, p, step_fn, state, n_steps: int, seed: int):
    """``n_steps`` random-action steps of a batch under ``lax.scan``; every output stacked.

    ``p`` is an operand, not a constant of the program: envs of one shape with different
    parameters (e.g. ``deposition_rate``) share one compiled program (the compilation cache)."""
    b = state.step_count.shape[0]

    @jax.jit
    def run(state, p):
        def body(state, t):
            k = jax.random.fold_in(jax.random.key(seed), t)
            k_act, k_env = jax.random.split(k)
            action = jax.random.randint(k_act, (b,), 0, env.num_actions)
            out = step_fn(jax.random.split(k_env, b), state, action, p)
            return out[1], out

        return jax.lax.scan(body, state, jnp.arange(n_steps))

    return run(state, p)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["steps", "ceiling", "no_events", "no_events_all_slots"])
def test_step_batch_is_vmap_of_step_bit_for_bit(case):
    """The batched auto-reset (reset only the done rows) gives vmap(step)'s outputs exactly, over
    steps with no env done, a few done (the slots' scatter) and more than the slots (the select)."""
    size, max_steps, b, n_steps, slots, kw = {
        "steps": ((6, 5, 6), 12, 16, 30, 2, {}),                  # step-limit truncations
        "ceiling": ((3, 3, 3), 40, 16, 40, None, {}),             # a column reaches the top
        # every env, every step. The shapes of "ceiling": the same two compiled programs (one,
        # vmap(step), for all slots: a slot per env)
        "no_events": ((3, 3, 3), 40, 16, 40, None, {"deposition_rate": 0.0}),
        "no_events_all_slots": ((3, 3, 3), 40, 16, 40, 16, {"deposition_rate": 0.0}),
    }[case]
    env = TiO2GrowthEnv(size, n_swarm=8, temperature=300.0, max_steps_in_episode=max_steps, **kw)
    p = env.default_params
    _, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.key(0), b), p)
    # Staggered episodes, so that the envs do not all finish on the same step.
    state = state.replace(step_count=jax.random.randint(jax.random.key(1), (b,), 0, max_steps, jnp.int32))
    old_step = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    new_step = partial(env.step_batch, reset_slots=slots)
    old_final, old = _batched_rollout(env, p, old_step, state, n_steps, seed=2)
    new_final, new = _batched_rollout(env, p, new_step, state, n_steps, seed=2)
    assert jax.tree.structure(old) == jax.tree.structure(new)
    # The trajectory (obs, state, reward, terminated, truncated, final_observation and every
    # integer / float32 info entry) is identical bit for bit. The float64 info diagnostics (e.g.
    # reward_level, the float64 sum of the three reward terms) are the same arithmetic fused
    # differently by XLA in the two programs, and may differ in the last bits (measured: 2.2e-16).
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path((old_final, old)),
                            jax.tree.leaves((new_final, new))):
        assert x.dtype == y.dtype and x.shape == y.shape
        x, y = np.asarray(x), np.asarray(y)
        in_info = jax.tree_util.keystr(path).startswith("[1][5]")
        if in_info and x.dtype == np.float64 and "final_observation" not in jax.tree_util.keystr(path):
            np.testing.assert_allclose(x, y, rtol=1e-14, atol=1e-14)
        else:
            np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
    done = np.asarray(old[3] | old[4])
    n_done = done.sum(axis=1)
    reasons = set(np.asarray(old[5]["termination_reason"])[done].tolist())
    n_slots = min(max(4 if slots is None else slots, 1), b)
    if case == "steps":
        assert (n_done == 0).any() and ((n_done > 0) & (n_done <= n_slots)).any() and (n_done > n_slots).any()
        assert reasons == {0}
    elif case == "ceiling":
        assert (n_done == 0).any() and ((n_done > 0) & (n_done <= n_slots)).any() and CEILING in reasons
    else:
        assert (n_done == b).all() and reasons == {NO_EVENTS} and bool(old[3].all())
