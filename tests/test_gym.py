"""Gymnasium / SB3 adapters: check_env, rendering, transition parity with the JAX env, VecEnv
semantics (terminal_observation, TimeLimit.truncated, auto-reset, seeding), SubprocVecEnv, and the
SB3 callbacks beside CheckpointCallback.

Everything but the import-isolation tests needs the ``[parity]`` extra (skipped without it). A
small lattice (4×4×3, K = 4) keeps compilation and torch cheap; its ceiling (a column of height
2) ends episodes after a handful of depositions at 180 K, so short runs see terminations as well
as truncations.
"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

import swarm_jax  # noqa: F401  (64-bit mode: tests/conftest.py)

ROOT = Path(__file__).resolve().parents[1]
SIZE, K = (4, 4, 3), 4
ENV_KW = dict(temperature=180.0, deposition_rate=0.1)
MORPHOLOGY = ("roughness", "coverage", "mean_height", "o_ti_ratio", "oxide_fraction", "fill_fraction",
              "n_ti", "n_o", "time")


# ---- without the extra -------------------------------------------------------------------------


def test_only_the_adapters_import_the_optional_dependencies():
    pattern = re.compile(r"^\s*(import|from)\s+(gymnasium|stable_baselines3|torch)\b", re.M)
    allowed = {ROOT / "swarm_jax" / "parity.py"} | set((ROOT / "swarm_jax" / "gym").glob("*.py"))
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "swarm_jax").rglob("*.py")
                 if p not in allowed and pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_missing_extra_gives_a_clear_import_error():
    code = (
        "import sys; sys.modules['stable_baselines3'] = None  # as if the extra were missing\n"
        "import swarm_jax.gym, swarm_jax.agents, swarm_jax.env\n"
        "try:\n"
        "    from swarm_jax.gym import TiO2GrowthVecEnv\n"
        "except ImportError as e:\n"
        "    print('MSG', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)}, timeout=1800)
    assert out.returncode == 0, out.stderr
    assert "MSG" in out.stdout and "pip install 'swarm_jax[parity]'" in out.stdout


# ---- with the extra ----------------------------------------------------------------------------

sb3 = pytest.importorskip("stable_baselines3")
pytestmark = [pytest.mark.parity, pytest.mark.slow]  # slow: the SB3/gymnasium adapters compile the env per test

from stable_baselines3.common.env_checker import check_env  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402

from swarm_jax.env import TiO2GrowthEnv  # noqa: E402
from swarm_jax.gym import (  # noqa: E402
    ESSMonitorCallback,
    MorphologyLoggerCallback,
    TiO2GrowthGymEnv,
    TiO2GrowthVecEnv,
    flatten_observation,
    unflatten_observation,
)


def make_gym(max_steps=7, **kw):
    return TiO2GrowthGymEnv(SIZE, K, max_steps=max_steps, **ENV_KW, **kw)


def test_check_env_passes_without_warnings():
    env = make_gym(render_mode="rgb_array")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, warn=True, skip_render_check=False)
    assert [str(w.message) for w in caught] == []
    obs, info = env.reset(seed=1)
    assert obs.dtype == np.float32 and obs.shape == (K * 116 + 15,) and env.observation_space.contains(obs)
    assert set(MORPHOLOGY) <= set(info)
    obs, reward, term, trunc, info = env.step(env.action_space.sample())
    assert type(reward) is float and type(term) is bool and type(trunc) is bool
    assert set(MORPHOLOGY) <= set(info) and all(not isinstance(v, np.ndarray) for v in info.values())
    with pytest.raises(ValueError):
        env.step(K)


def test_render_gives_the_height_map_as_rgb():
    env = make_gym(render_mode="rgb_array", render_cell_px=5)
    env.reset(seed=0)
    flat = env.render()
    assert flat.dtype == np.uint8 and flat.shape == (SIZE[0] * 5, SIZE[1] * 5, 3)
    assert (flat == flat[0, 0]).all()  # bare substrate: one colour
    env.step(0)  # at 180 K the first event is a deposition: one column rises
    heights = np.asarray(env.state.lattice.heights[:-1]).reshape(SIZE[:2])
    img = env.render()
    assert heights.max() == 1
    x, y = np.argwhere(heights == 1)[0]
    assert not np.array_equal(img[x * 5, y * 5], flat[0, 0])
    assert np.array_equal(img[5 * x:5 * x + 5, 5 * y:5 * y + 5], np.broadcast_to(img[x * 5, y * 5], (5, 5, 3)))
    with pytest.warns(UserWarning):
        assert make_gym().render() is None


def _jax_reference(seed, actions, max_steps):
    """TiO2GrowthEnv driven directly with the documented key stream (auto-resetting)."""
    env = TiO2GrowthEnv(SIZE, K, max_steps=max_steps, **ENV_KW)
    params = env.default_params
    reset, step = jax.jit(env.reset), jax.jit(env.step)
    key = jax.random.key(seed)
    key, k = jax.random.split(key)
    obs, state = reset(k, params)
    out = [np.asarray(flatten_observation(obs))]
    for a in actions:
        key, k = jax.random.split(key)
        obs, state, r, term, trunc, info = step(k, state, a, params)
        out.append(dict(obs=np.asarray(flatten_observation(obs)),
                        final=np.asarray(flatten_observation(info["final_observation"])),
                        reward=float(r), term=bool(term), trunc=bool(trunc),
                        heights=np.asarray(state.lattice.heights), species=np.asarray(state.lattice.species),
                        info={k_: np.asarray(info[k_]).item() for k_ in MORPHOLOGY}))
    return out


def _close(a, b):
    """Equal up to float32 rounding: XLA may fuse a vmapped computation differently (1 ulp)."""
    return np.allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-6, atol=1e-6)


def _infos_close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        _close(a[k], b[k]) if isinstance(a[k], (float, np.ndarray)) else a[k] == b[k] for k in a)


def test_transition_parity_jax_gym_vecenv():
    """The Gymnasium env reproduces TiO2GrowthEnv bit for bit (same kernels, same keys); the
    vmapped VecEnv reproduces the same events and films exactly and the float features and
    rewards up to float32 rounding, and equals a DummyVecEnv of Gymnasium envs."""
    seed, n_steps, max_steps = 11, 40, 7
    actions = np.random.default_rng(0).integers(K, size=n_steps)
    ref = _jax_reference(seed, actions, max_steps)

    # Gymnasium env, SB3-style loop (reset() after every episode end).
    env = make_gym(max_steps)
    obs, _ = env.reset(seed=seed)
    assert np.array_equal(obs, ref[0])
    n_term = n_trunc = 0
    for t, a in enumerate(actions):
        r = ref[t + 1]
        obs, reward, term, trunc, info = env.step(a)
        assert (term, trunc, reward) == (r["term"], r["trunc"], r["reward"]), t
        assert np.array_equal(obs, r["final"]), t
        assert {k: info[k] for k in MORPHOLOGY} == r["info"], t
        if term or trunc:
            obs, _ = env.reset()
            ceiling = info["termination_reason"] == 1  # a full column: a truncation too
            n_term += trunc and ceiling
            n_trunc += trunc and not ceiling
        assert np.array_equal(obs, r["obs"]), t
    assert n_term > 0 and n_trunc > 0  # both episode ends (ceiling, step limit) were exercised

    # VecEnv (env i seeded with seed + i) and a DummyVecEnv of Gymnasium envs.
    vec = TiO2GrowthVecEnv(2, SIZE, K, max_steps=max_steps, **ENV_KW)
    dummy = DummyVecEnv([lambda: make_gym(max_steps), lambda: make_gym(max_steps)])
    vec.seed(seed)
    dummy.seed(seed)
    v_obs, d_obs = vec.reset(), dummy.reset()
    assert np.array_equal(v_obs[0], ref[0]) and np.array_equal(v_obs, d_obs)
    other = np.random.default_rng(1).integers(K, size=n_steps)
    for t, a in enumerate(actions):
        r = ref[t + 1]
        batch = np.array([a, other[t]])
        v_obs, v_rew, v_done, v_info = vec.step(batch)
        d_obs, d_rew, d_done, d_info = dummy.step(batch)
        assert v_done[0] == (r["term"] or r["trunc"]) and np.array_equal(v_done, d_done), t
        assert np.array_equal(np.asarray(vec.states.lattice.heights[0]), r["heights"]), t
        assert np.array_equal(np.asarray(vec.states.lattice.species[0]), r["species"]), t
        assert _close(v_obs[0], r["obs"]) and _close(v_rew[0], r["reward"]), t
        assert _close(v_obs, d_obs) and _close(v_rew, d_rew), t
        assert all(_infos_close(vi, di) for vi, di in zip(v_info, d_info)), t
        if v_done[0]:
            assert _close(v_info[0]["terminal_observation"], r["final"])
        assert all(_infos_close(a, b) for a, b in zip(vec.reset_infos, dummy.reset_infos))


def test_vec_env_episode_end_semantics_and_seeding():
    max_steps = 3
    vec = TiO2GrowthVecEnv(2, SIZE, K, max_steps=max_steps, **ENV_KW)  # n = 2: kernels shared
    vec.seed(5)
    obs0 = vec.reset()
    assert obs0.shape == (2, K * 116 + 15) and obs0.dtype == np.float32
    vec.seed(5)
    assert np.array_equal(vec.reset(), obs0)  # seeding is deterministic
    vec.seed(6)
    obs6 = vec.reset()
    assert np.array_equal(obs6[:1], obs0[1:])  # env i gets seed + i
    assert not np.array_equal(vec.reset(), obs6)  # an unseeded reset continues the streams

    vec.seed(5)
    vec.reset()
    steps = np.zeros(2, int)
    seen_trunc = False
    for _ in range(16):
        obs, rew, dones, infos = vec.step(np.zeros(2, int))
        assert rew.dtype == np.float32 and dones.dtype == bool
        steps += 1
        for i, info in enumerate(infos):
            assert ("terminal_observation" in info) == bool(dones[i])
            if dones[i]:
                # The step limit and the ceiling (a full column) are truncations; only a film
                # with no possible event terminates (SB3 then does not bootstrap).
                term = info["termination_reason"] == 2
                ceiling = info["termination_reason"] == 1
                assert info["TimeLimit.truncated"] == ((steps[i] == max_steps or ceiling)
                                                       and not term)
                seen_trunc |= info["TimeLimit.truncated"]
                assert not np.array_equal(info["terminal_observation"], obs[i])
                assert vec.reset_infos[i]["mean_height"] == 0.0  # the returned obs is a fresh film
                steps[i] = 0
            else:
                assert info["TimeLimit.truncated"] is False
        assert (steps < max_steps).all()
    assert seen_trunc
    with pytest.raises(ValueError):
        vec.step(np.full(2, K))
    assert vec.get_attr("n_swarm") == [K] * 2 and vec.env_is_wrapped(DummyVecEnv) == [False] * 2
    vec_r = TiO2GrowthVecEnv(2, SIZE, K, render_mode="rgb_array", render_cell_px=3, **ENV_KW)
    vec_r.reset()
    images = vec_r.get_images()
    assert len(images) == 2 and images[0].shape == (12, 12, 3) and images[0].dtype == np.uint8


def test_flatten_roundtrip_matches_the_flat_mlp_layout():
    env = TiO2GrowthEnv(SIZE, K, **ENV_KW)
    obs, _ = env.reset(jax.random.key(0), env.default_params)
    flat = np.asarray(flatten_observation(obs))
    assert np.array_equal(flat[: K * 116], np.asarray(obs["candidates"]).reshape(-1))
    assert np.array_equal(flat[K * 116:], np.asarray(obs["global"]))
    back = unflatten_observation(flat[None], K)
    assert np.array_equal(np.asarray(back["candidates"])[0], np.asarray(obs["candidates"]))


@pytest.mark.slow
def test_make_vec_env_with_subproc_spawn_matches_dummy():
    """JAX does not survive fork: SubprocVecEnv must use "spawn" (or "forkserver")."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import SubprocVecEnv

    def factory():
        return TiO2GrowthGymEnv(SIZE, K, max_steps=5, temperature=180.0, deposition_rate=0.1)

    sub = make_vec_env(factory, n_envs=2, seed=3, vec_env_cls=SubprocVecEnv,
                       vec_env_kwargs=dict(start_method="spawn"))
    dummy = make_vec_env(factory, n_envs=2, seed=3, vec_env_cls=DummyVecEnv)
    try:
        assert np.array_equal(sub.reset(), dummy.reset())
        for t in range(8):
            a = np.array([t % K, (t * 3) % K])
            s_out, d_out = sub.step(a), dummy.step(a)
            for x, y in zip(s_out[:3], d_out[:3]):
                assert np.array_equal(x, y), t
            assert [i.get("roughness") for i in s_out[3]] == [i.get("roughness") for i in d_out[3]]
    finally:
        sub.close()
        dummy.close()


def _small_ppo(env, tmp_path, **kw):
    from stable_baselines3 import PPO
    from stable_baselines3.common.logger import configure

    model = PPO("MlpPolicy", env, n_steps=16, batch_size=32, n_epochs=1, seed=0, device="cpu", **kw)
    model.set_logger(configure(str(tmp_path / "log"), ["csv"]))
    return model


def test_callbacks_beside_checkpoint_callback(tmp_path):
    import csv

    from stable_baselines3.common.callbacks import CheckpointCallback

    vec = TiO2GrowthVecEnv(2, SIZE, K, max_steps=20, **ENV_KW)
    model = _small_ppo(vec, tmp_path)
    ess_cb, morph_cb = ESSMonitorCallback(), MorphologyLoggerCallback()
    ckpt = CheckpointCallback(save_freq=16, save_path=str(tmp_path / "ckpt"))
    model.learn(total_timesteps=96, callback=[ckpt, ess_cb, morph_cb])
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("*.zip")) == [
        f"rl_model_{n}_steps.zip" for n in (32, 64, 96)]
    rows = list(csv.DictReader(open(tmp_path / "log" / "progress.csv")))
    assert len(rows) == 3 and len(ess_cb.history) == 3
    for row in rows:
        for key in ("custom/ess_ratio", "custom/roughness", "custom/coverage", "custom/o_ti_ratio"):
            assert row[key] != "", key
        # orthogonal init with gain 0.01 on the policy head: near-uniform, ESS ratio ~ 1
        assert 0.95 < float(row["custom/ess_ratio"]) <= 1.0 + 1e-9
        assert 0.0 <= float(row["custom/coverage"]) <= 1.0 and float(row["custom/roughness"]) >= 0.0


def test_ess_callback_value_and_early_stop(tmp_path):
    import torch as th

    from swarm_jax.gym.callbacks import policy_log_probs

    vec = TiO2GrowthVecEnv(2, SIZE, K, max_steps=20, **ENV_KW)
    model = _small_ppo(vec, tmp_path)
    with th.no_grad():  # a sharp, known policy: zero weights, logits = the action-head bias
        model.policy.action_net.weight.zero_()
        model.policy.action_net.bias.copy_(th.tensor([0.0, 1.0, 2.0, 3.0]))
    vec.seed(0)
    obs = vec.reset()
    logp = policy_log_probs(model.policy, obs)
    pi = np.exp(np.array([0.0, 1.0, 2.0, 3.0]) - np.log(np.exp([0.0, 1.0, 2.0, 3.0]).sum()))
    assert np.allclose(logp, np.log(pi)[None], atol=1e-6)
    expected_ess = K**2 / np.sum(1.0 / pi)

    cb = ESSMonitorCallback(threshold=0.9, patience=2)
    model.learn(total_timesteps=10_000, callback=cb)
    # PPO updates move the policy slightly: the first rollout's ESS is the hand-computed one.
    assert cb.history[0] == pytest.approx(expected_ess, rel=1e-6)
    assert all(h < 0.9 for h in cb.history) and len(cb.history) == 2 and cb.stopped
    # stopped at the first step of the third rollout
    assert model.num_timesteps == 2 * 16 * 2 + 2
    with pytest.raises(ValueError):
        ESSMonitorCallback(threshold=0.5, patience=0)
