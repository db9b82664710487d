"""PPO learner: GAE against NumPy references, rollout wiring, learning, chunking, determinism."""

import math

import chex

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from mock_env import MockSwarmEnv
from swarm_jax.agents.networks import NetworkConfig, log_probs_from_logits
from swarm_jax.agents.ppo import (
    PPOConfig,
    batch_ess_ratio_from_sums,
    compute_gae,
    evaluate,
    make_train,
    resolve_ess_term,
)
from swarm_jax.swarm.weights import batch_ess_ratio, ess_ratio

# ---- GAE ---------------------------------------------------------------------------------------


def gae_reference(r, v, nv, term, trunc, gamma, lam):
    """Plain backward loop over one env's time series."""
    adv, last = np.zeros(len(r)), 0.0
    for t in reversed(range(len(r))):
        if term[t] or trunc[t]:
            last = 0.0  # the next step belongs to another episode
        boot = 0.0 if term[t] else nv[t]
        last = r[t] + gamma * boot - v[t] + gamma * lam * last
        adv[t] = last
    return adv, adv + v


def mc_returns(r, nv, term, trunc, gamma):
    """λ = 1 returns by explicit summation: discounted rewards to the episode's end (or the end of
    the horizon), plus γ^n V(final observation) unless the episode terminated."""
    out = np.zeros(len(r))
    for t in range(len(r)):
        g, disc, s = 0.0, 1.0, t
        while True:
            g += disc * r[s]
            disc *= gamma
            if term[s]:
                break
            if trunc[s] or s == len(r) - 1:
                g += disc * nv[s]
                break
            s += 1
        out[t] = g
    return out


def _random_series(rng, t_len, n_env):
    r = rng.normal(size=(t_len, n_env))
    v = rng.normal(size=(t_len, n_env))
    nv = rng.normal(size=(t_len, n_env))
    term = rng.random((t_len, n_env)) < 0.15
    trunc = (rng.random((t_len, n_env)) < 0.15) & ~term
    # As in a rollout: inside an episode, V(next obs) is the next step's V(obs).
    cont = ~(term | trunc)[:-1]
    nv[:-1][cont] = v[1:][cont]
    return r, v, nv, term, trunc


def _gae(r, v, nv, term, trunc, gamma, lam):
    adv, ret = compute_gae(
        jnp.asarray(r), jnp.asarray(v), jnp.asarray(nv), jnp.asarray(term),
        jnp.asarray(term | trunc), gamma, lam,
    )
    return np.asarray(adv), np.asarray(ret)


@pytest.mark.slow
def test_gae_hand_made_truncation_and_termination():
    gamma, lam = 0.9, 0.8
    r = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    v = np.array([0.5, 1.5, -1.0, 2.0, 0.3, 0.7, 1.1])
    nv = np.array([1.5, 10.0, 2.0, 0.3, 99.0, 1.1, 4.0])  # nv[1]: V(final obs) of the truncated ep
    term = np.array([0, 0, 0, 0, 1, 0, 0], bool)
    trunc = np.array([0, 1, 0, 0, 0, 0, 0], bool)
    adv, ret = _gae(r, v, nv, term, trunc, gamma, lam)
    # Truncated at t=1: bootstrapped with V(final obs) = 10, chain cut.
    assert ret[1] == pytest.approx(2.0 + gamma * 10.0)
    # Terminated at t=4: no bootstrap (nv[4] = 99 must be ignored), chain cut.
    assert ret[4] == pytest.approx(5.0)
    # Last step of the horizon, episode running: bootstrapped with nv[6].
    assert ret[6] == pytest.approx(7.0 + gamma * 4.0)
    # t=3 sees t=4 through the chain: δ_3 + γλ δ_4.
    d3, d4 = 4.0 + gamma * 0.3 - 2.0, 5.0 - 0.3
    assert adv[3] == pytest.approx(d3 + gamma * lam * d4)
    ref_adv, ref_ret = gae_reference(r, v, nv, term, trunc, gamma, lam)
    np.testing.assert_allclose(adv, ref_adv, rtol=1e-12)
    np.testing.assert_allclose(ret, ref_ret, rtol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("lam", [0.0, 0.95, 1.0])
def test_gae_matches_numpy_reference_batched(lam):
    gamma = 0.97
    r, v, nv, term, trunc = _random_series(np.random.default_rng(0), 40, 5)
    adv, ret = _gae(r, v, nv, term, trunc, gamma, lam)
    for e in range(5):
        ref_adv, ref_ret = gae_reference(r[:, e], v[:, e], nv[:, e], term[:, e], trunc[:, e], gamma, lam)
        np.testing.assert_allclose(adv[:, e], ref_adv, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(ret[:, e], ref_ret, rtol=1e-10, atol=1e-12)
        if lam == 1.0:  # an independent algorithm: explicit discounted sums
            np.testing.assert_allclose(
                ret[:, e], mc_returns(r[:, e], nv[:, e], term[:, e], trunc[:, e], gamma), rtol=1e-10
            )
        if lam == 0.0:  # one-step TD targets
            np.testing.assert_allclose(ret[:, e], r[:, e] + gamma * nv[:, e] * ~term[:, e], rtol=1e-10)


# ---- small pieces ------------------------------------------------------------------------------


@pytest.mark.slow
def test_batch_ess_ratio_from_sums_matches_weights_module():
    lw = jax.random.normal(jax.random.PRNGKey(0), (50,)) * 3.0
    mask = jax.random.uniform(jax.random.PRNGKey(1), (50,)) < 0.4
    lse = jax.nn.logsumexp(jnp.where(mask, lw, -jnp.inf))
    lse2 = jax.nn.logsumexp(jnp.where(mask, 2 * lw, -jnp.inf))
    got = batch_ess_ratio_from_sums(lse, lse2, mask.sum().astype(jnp.float32))
    np.testing.assert_allclose(got, batch_ess_ratio(lw[np.asarray(mask)]), rtol=1e-10)
    assert np.isnan(batch_ess_ratio_from_sums(-jnp.inf, -jnp.inf, jnp.float32(0)))


def test_config_validation_and_derived_sizes():
    cfg = PPOConfig(n_envs=4, n_steps=32, batch_size=64, n_epochs=4, learning_rate=2.5e-4,
                    anneal_lr=True, total_timesteps=4 * 32 * 10 + 5)
    assert (cfg.rollout_size, cfg.n_minibatches, cfg.num_updates) == (128, 2, 10)
    assert float(cfg.learning_rate_at(0)) == pytest.approx(cfg.learning_rate)
    assert float(cfg.learning_rate_at(5)) == pytest.approx(cfg.learning_rate / 2, rel=1e-6)
    with pytest.raises(ValueError, match="divide"):
        PPOConfig(n_envs=4, n_steps=32, batch_size=48)
    with pytest.raises(ValueError, match="less than one rollout"):
        PPOConfig(n_envs=4, n_steps=32, batch_size=64, total_timesteps=100)
    hash(cfg)  # closed over by jit: must be hashable


def test_ess_term_defaults_come_from_env_reward_config():
    class Reward:
        w_ess, ess_target = 0.7, 0.4

    class Params:
        reward = Reward()

    assert resolve_ess_term(PPOConfig(ess_target=None), Params()) == (0.7, 0.4)
    assert resolve_ess_term(PPOConfig(w_ess=0.0, ess_target=0.6), Params()) == (0.0, 0.6)
    assert resolve_ess_term(PPOConfig(ess_target=None), object()) == (0.3, 0.5)


# ---- the trainer on the mock env ---------------------------------------------------------------

K = 8


def expected_max_of_normals(k):
    """E[max of k i.i.d. N(0,1)] by quadrature."""
    f = lambda x: x * k * stats.norm.pdf(x) * stats.norm.cdf(x) ** (k - 1)  # noqa: E731
    return integrate.quad(f, -np.inf, np.inf)[0]


LEARN_CFG = PPOConfig(
    n_envs=8, n_steps=64, batch_size=128, n_epochs=4, learning_rate=1e-3, anneal_lr=True,
    ent_coef=0.01, w_ess=0.0, ess_constraint=False, total_timesteps=8 * 64 * 20,
)


@pytest.fixture(scope="module")
def learned():
    env = MockSwarmEnv(num_candidates=K)
    trainer = make_train(LEARN_CFG, NetworkConfig(), env)
    runner_state, metrics = trainer.train(jax.random.PRNGKey(42))
    return trainer, runner_state, metrics


@pytest.mark.slow
def test_ppo_learns_mock_task_and_beats_uniform(learned):
    trainer, runner_state, metrics = learned
    assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
    assert int(runner_state.update_step) == LEARN_CFG.num_updates == 20
    assert int(runner_state.env_steps) == LEARN_CFG.num_updates * LEARN_CFG.rollout_size
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(runner_state.train_state.params))
    assert all(
        x.dtype in (jnp.float32, jnp.int32)
        for x in jax.tree.leaves(runner_state.train_state.opt_state)
    )
    # The LR of the last update of an annealed run is lr / num_updates.
    assert float(metrics["learning_rate"]) == pytest.approx(1e-3 / 20, rel=1e-5)

    n_envs, n_steps = 32, 64
    n = n_envs * n_steps
    kw = dict(network=trainer.network, env=trainer.env, env_params=None,
              key=jax.random.PRNGKey(7), n_envs=n_envs, n_steps=n_steps)
    params = runner_state.train_state.params
    uni = evaluate(params, policy="uniform", **kw)
    trained = evaluate(params, policy="trained", **kw)
    # Uniform choice: each step's reward is an exact N(0, 1) draw; importance weights are 1.
    assert abs(uni["reward_per_step"]) < 5.0 / math.sqrt(n)
    assert uni["ess_ratio"] == pytest.approx(1.0) and uni["batch_ess"] == pytest.approx(1.0)
    # Trained: at least half of the best achievable per-step gain E[max of K normals] ≈ 1.42.
    assert trained["reward_per_step"] > 0.5 * expected_max_of_normals(K), trained
    assert trained["ep_rew_mean"] > uni["ep_rew_mean"]
    assert 0.0 < trained["ess_ratio"] < 1.0 and 0.0 < trained["batch_ess"] <= 1.0
    greedy = evaluate(params, policy="greedy", **kw)
    assert greedy["ess_ratio"] == 0.0 and np.isnan(greedy["batch_ess"])
    for key in ("roughness", "coverage", "o_ti_ratio", "final_coverage"):
        assert np.isfinite(trained[key])


@pytest.mark.slow
def test_chunked_training_equals_one_call_and_is_deterministic(learned):
    trainer, full_state, _ = learned
    key = jax.random.PRNGKey(42)
    rs = trainer.init(key)
    for _ in range(2):
        rs, metrics = trainer.train_chunk(rs, 10)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    leaves_a = jax.tree.leaves((full_state.train_state, full_state.env_state, full_state.rng))
    leaves_b = jax.tree.leaves((rs.train_state, rs.env_state, rs.rng))
    for a, b in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(full_state.traj_log_weight, rs.traj_log_weight)
    assert int(rs.env_steps) == int(full_state.env_steps)
    # Same seed -> identical params; another seed -> different ones.
    again, _ = trainer.train(key)
    for a, b in zip(jax.tree.leaves(full_state.train_state.params),
                    jax.tree.leaves(again.train_state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other = trainer.init(jax.random.PRNGKey(43))
    assert not np.array_equal(
        np.asarray(jax.tree.leaves(other.train_state.params)[0]),
        np.asarray(jax.tree.leaves(full_state.train_state.params)[0]),
    )
    # Compiled once per chunk size: 20 (train) and 10, whatever the number of calls.
    assert trainer._chunk_fn._cache_size() == 2


@pytest.mark.slow
def test_rollout_wiring_reward_ess_and_final_observation_values():
    env = MockSwarmEnv(num_candidates=K)
    params = env.default_params.replace(max_steps_in_episode=4)
    cfg = PPOConfig(n_envs=4, n_steps=12, batch_size=48, n_epochs=1, learning_rate=2.5e-4,
                    anneal_lr=True, w_ess=0.8, ess_target=0.999,
                    normalize_reward=False, total_timesteps=48)
    trainer = make_train(cfg, NetworkConfig(hidden_sizes=(16, 16)), env, params)
    rs = trainer.init(jax.random.PRNGKey(3))
    # Perturb the policy head so the ESS ratio is well below 1 and the penalty is active.
    p = jax.tree_util.tree_map_with_path(
        lambda path, x: x * 300.0 if "actor_head" in jax.tree_util.keystr(path) else x,
        rs.train_state.params,
    )
    rs = rs.replace(train_state=rs.train_state.replace(params=p))
    new_rs, tr = trainer.collect_rollout(rs)
    assert tr.reward.shape == (12, 4) and tr.obs["candidates"].shape == (12, 4, K, 4)
    assert int(new_rs.env_steps) == 48

    logits, values = jax.jit(trainer.network.apply)(p, tr.obs)
    lp = log_probs_from_logits(logits)
    np.testing.assert_allclose(tr.ess_ratio, ess_ratio(lp), rtol=1e-5)
    np.testing.assert_allclose(tr.value, values, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        tr.reward, tr.env_reward - 0.8 * np.maximum(0.0, 0.999 - np.asarray(tr.ess_ratio)), rtol=1e-5, atol=1e-6
    )
    assert np.all(np.asarray(tr.reward) < np.asarray(tr.env_reward))
    # Episodes last at most 4 steps (truncation), so each env ends at least 3 in 12 steps.
    done = np.asarray(tr.done)
    assert (done.sum(axis=0) >= 3).all()
    # Where the episode goes on, V(final observation) is V of the next step's observation; where
    # it ended, it is the value of the pre-reset observation, not of the reset one.
    nxt, cur = np.asarray(tr.next_value[:-1]), np.asarray(tr.value[1:])
    np.testing.assert_allclose(nxt[~done[:-1]], cur[~done[:-1]], rtol=1e-5, atol=1e-6)
    assert np.all(nxt[done[:-1]] != cur[done[:-1]])


@pytest.mark.slow
def test_truncated_episodes_are_bootstrapped():
    """Reward 1 per step, never terminates, truncated every 5 steps, γ = 0.9. Bootstrapping the
    truncation makes every state worth 1/(1−γ) = 10; treating truncation as termination (the
    PureJaxRL gap) would cap values at the 5-step return Σ γ^t = 4.10. The critic must end up
    closer to the former."""
    env = MockSwarmEnv(num_candidates=4)
    params = env.default_params.replace(
        max_steps_in_episode=5, terminate_threshold=jnp.inf, reward_scale=0.0, reward_offset=1.0
    )
    cfg = PPOConfig(n_envs=8, n_steps=20, batch_size=80, n_epochs=8, learning_rate=3e-3,
                    anneal_lr=False, gamma=0.9, gae_lambda=0.95, ent_coef=0.0, vf_coef=1.0,
                    max_grad_norm=10.0, w_ess=0.0, ess_constraint=False, normalize_reward=False,
                    stagger_episodes=False, total_timesteps=8 * 20 * 40)
    trainer = make_train(cfg, NetworkConfig(hidden_sizes=(32, 32)), env, params)
    rs, metrics = trainer.train(jax.random.PRNGKey(0))
    assert np.isfinite(float(metrics["value_loss"]))
    assert float(metrics["n_episodes"]) == cfg.total_timesteps / 5  # truncations only
    _, tr = trainer.collect_rollout(rs)
    finite_horizon = sum(0.9**t for t in range(5))
    midpoint = 0.5 * (finite_horizon + 10.0)
    assert float(np.mean(tr.value)) > midpoint, float(np.mean(tr.value))


# ---- the real environment ----------------------------------------------------------------------

# One TiO2 trainer for the module (one compile of init, of a 1-update chunk and of a rollout):
# staggered episodes of at most 12 steps over 8 envs, so that a rollout step ends none, one or
# several episodes (the three paths of TiO2GrowthEnv.step_batch's auto-reset).
TIO2_ENV = dict(lattice_size=(4, 4, 3), n_swarm=8, max_steps_in_episode=12)
TIO2_CFG = PPOConfig(n_envs=8, n_steps=16, batch_size=64, n_epochs=2, learning_rate=2.5e-4,
                     anneal_lr=True, total_timesteps=8 * 16 * 3)
TIO2_NET = NetworkConfig(hidden_sizes=(16, 16))


@pytest.fixture(scope="module")
def tio2_run():
    """The trainer and the runner states before and after each of 3 one-update chunks, with
    each chunk's metrics."""
    from swarm_jax.env.tio2_env import TiO2GrowthEnv

    trainer = make_train(TIO2_CFG, TIO2_NET, TiO2GrowthEnv(**TIO2_ENV))
    states, metrics = [trainer.init(jax.random.PRNGKey(0))], []
    for _ in range(3):
        rs, m = trainer.train_chunk(states[-1], 1)
        states.append(rs)
        metrics.append(m)
    return trainer, states, metrics


@pytest.mark.slow
def test_trains_end_to_end_on_tio2_env(tio2_run):
    _, states, metrics = tio2_run
    rs0, rs = states[0], states[-1]
    assert int(rs.env_steps) == 3 * TIO2_CFG.rollout_size and int(rs.update_step) == 3
    for m in metrics:
        for key in ("policy_loss", "value_loss", "entropy", "ess_ratio", "batch_ess",
                    "roughness", "coverage", "o_ti_ratio"):
            assert np.isfinite(float(m[key])), (key, m)
        assert 0.0 < float(m["ess_ratio"]) <= 1.0
    # 48 steps per env, episodes of at most 12 (the first one staggered): at least 3 per env.
    assert sum(float(m["n_episodes"]) for m in metrics) >= 3 * TIO2_CFG.n_envs
    changed = [not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(rs0.train_state.params), jax.tree.leaves(rs.train_state.params))]
    assert all(changed)


@pytest.mark.slow
def test_batched_auto_reset_leaves_training_unchanged(tio2_run):
    """The rollout steps through TiO2GrowthEnv.step_batch (reset only the done envs); with the
    plain vmap of env.step instead, the initial (staggered) state and every rollout of the
    training run above -- from the runner state before each of its updates -- are the same, bit
    for bit (runner state and Transition batch; staggered episodes: some steps end none, one or
    several episodes). The env enters training only through these (an update learns from the
    rollout's Transition batch and runner state alone), so the training is unchanged."""
    from swarm_jax.env.tio2_env import TiO2GrowthEnv

    class PlainVmapEnv(TiO2GrowthEnv):
        step_batch = None  # batched_step falls back to jax.vmap(env.step)

    trainer, states, _ = tio2_run
    plain = make_train(TIO2_CFG, TIO2_NET, PlainVmapEnv(**TIO2_ENV))

    def assert_same(a, b):
        paths_a, paths_b = (jax.tree_util.tree_leaves_with_path(t) for t in (a, b))
        assert [p for p, _ in paths_a] == [p for p, _ in paths_b]  # (apply_fn is static)
        for (path, x), (_, y) in zip(paths_a, paths_b):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                          err_msg=jax.tree_util.keystr(path))

    assert_same(states[0], plain.init(jax.random.PRNGKey(0)))
    n_done = []
    for rs in states[:-1]:
        out = trainer.collect_rollout(rs)
        assert_same(out, plain.collect_rollout(rs))
        n_done.append(np.asarray(out[1].done).sum(axis=1))
    n_done = np.concatenate(n_done)
    assert (n_done == 0).any() and (n_done == 1).any() and (n_done >= 2).any(), n_done
    assert n_done.sum() >= 3 * TIO2_CFG.n_envs


# ---- the ESS constraint ------------------------------------------------------------------------


def _mock_ess_after_training(ess_constraint: bool) -> tuple[float, float, float]:
    """(per-step ESS ratio, reward per step, final λ) of a policy trained on the mock task, with
    the ESS constraint on or off, evaluated on held-out keys."""
    cfg = PPOConfig(n_envs=8, n_steps=64, batch_size=128, n_epochs=4, learning_rate=1e-3,
                    anneal_lr=False, ent_coef=0.0, w_ess=0.0, ess_target=0.5,
                    ess_constraint=ess_constraint, total_timesteps=8 * 64 * 30)
    env = MockSwarmEnv(num_candidates=K)
    trainer = make_train(cfg, NetworkConfig(hidden_sizes=(32, 32)), env)
    rs, _ = trainer.train(jax.random.PRNGKey(0))
    ev = evaluate(rs.train_state.params, trainer.network, env, None, jax.random.PRNGKey(9),
                  n_envs=32, n_steps=64)
    return ev["ess_ratio"], ev["reward_per_step"], float(rs.ess_lambda)


@pytest.mark.slow
def test_ess_constraint_holds_the_target_where_unconstrained_ppo_collapses():
    """The mock task rewards sharp choices, so unconstrained PPO drives the per-step ESS ratio to
    a few percent; with the constraint in the loss the trained policy stays at the 0.5 target
    and still earns a large part of the achievable reward."""
    ess_free, reward_free, lam_free = _mock_ess_after_training(False)
    ess_con, reward_con, _ = _mock_ess_after_training(True)
    assert ess_free < 0.3, ess_free
    assert lam_free == 0.0
    assert ess_con >= 0.5 - 0.05, ess_con
    assert ess_con <= 0.5 + 0.15, ess_con  # the constraint binds: no needless return to uniform
    assert reward_con > 0.3 * expected_max_of_normals(K), reward_con
    assert reward_free > reward_con


@pytest.mark.slow
def test_episode_window_keeps_the_last_finished_episodes_over_all_envs():
    from swarm_jax.agents.ppo import EpisodeWindow

    win = EpisodeWindow.empty(n_envs=2, size=4)
    assert np.isnan(float(win.mean(win.returns)))
    # (T=3, N=2): episodes finish at (t=0, n=1), (t=2, n=0), (t=2, n=1).
    ret = jnp.array([[9.0, 1.0], [9.0, 9.0], [2.0, 3.0]])
    fin = jnp.array([[False, True], [False, False], [True, True]])
    win = win.push(ret, ret, fin, jnp.int64(0))
    assert float(win.mean(win.returns)) == pytest.approx(2.0)  # (1 + 2 + 3) / 3
    win = win.push(jnp.array([[4.0, 5.0]]), jnp.array([[4.0, 5.0]]), jnp.array([[True, True]]),
                   jnp.int64(6))
    assert float(win.mean(win.returns)) == pytest.approx(3.5)  # the oldest (1.0) dropped
    # One env finishing many episodes while the other finishes none: still the global last 4.
    many = jnp.array([[10.0, 0.0], [11.0, 0.0], [12.0, 0.0], [13.0, 0.0], [14.0, 0.0]])
    win = win.push(many, many, jnp.array([[True, False]] * 5), jnp.int64(8))
    assert float(win.mean(win.returns)) == pytest.approx((11 + 12 + 13 + 14) / 4)


@pytest.mark.slow
def test_episode_window_matches_a_plain_fifo():
    """Against an obviously-correct list of the last 100 episodes, over random finish patterns."""
    from swarm_jax.agents.ppo import EpisodeWindow

    rng = np.random.default_rng(3)
    n_envs, t_len = 7, 9
    win, fifo, stamp = EpisodeWindow.empty(n_envs), [], 0
    push = jax.jit(EpisodeWindow.push)
    for _ in range(40):
        ret = rng.normal(size=(t_len, n_envs)).astype(np.float32)
        fin = rng.random((t_len, n_envs)) < rng.uniform(0.05, 0.9)
        win = push(win, jnp.asarray(ret), jnp.asarray(ret), jnp.asarray(fin), jnp.int64(stamp))
        fifo = (fifo + [float(ret[t, n]) for t, n in zip(*np.nonzero(fin))])[-100:]
        stamp += t_len * n_envs
        assert float(win.mean(win.returns)) == pytest.approx(np.mean(fifo), rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_reward_normaliser_matches_numpy_running_variance():
    from swarm_jax.agents.ppo import RewardNormState

    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(50, 6)).astype(np.float32) * 3.0
    dones = rng.random((50, 6)) < 0.1
    state = RewardNormState.create(6)
    g, seen = np.zeros(6), []
    for r, d in zip(rewards, dones):
        state = state.update(jnp.asarray(r), jnp.asarray(d), 0.9)
        g = 0.9 * g + r
        seen.append(g.copy())
        g = np.where(d, 0.0, g)
    seen = np.concatenate(seen)
    assert float(state.var) == pytest.approx(seen.var(), rel=1e-3)
    assert float(state.mean) == pytest.approx(seen.mean(), rel=1e-3, abs=1e-4)
    np.testing.assert_allclose(np.asarray(state.returns), g, rtol=1e-5)


def test_potential_shaping_keeps_action_preferences_of_the_level_reward():
    """r' = r + (γ L(s') − L(s))/(1 − γ) with r = L(s') telescopes: the shaped return from s_t is
    the level return minus L(s_t)/(1 − γ), a function of the state alone."""
    gamma = 0.9
    levels = np.random.default_rng(1).normal(size=200)  # L(s_0), L(s_1), ...
    r = levels[1:]  # level reward of step t: L(s_{t+1})
    shaped = r + (gamma * levels[1:] - levels[:-1]) / (1 - gamma)
    disc = gamma ** np.arange(len(r))
    g_level, g_shaped = np.sum(disc * r), np.sum(disc * shaped)
    tail = gamma ** len(r) * levels[-1] / (1 - gamma)  # the bootstrap the truncation leaves
    assert g_shaped == pytest.approx(g_level - levels[0] / (1 - gamma) + tail, rel=1e-9)


@pytest.mark.slow
def test_staggered_starts_spread_episode_ends():
    env = MockSwarmEnv(num_candidates=4)
    params = env.default_params.replace(max_steps_in_episode=16, terminate_threshold=jnp.inf)
    base = dict(n_envs=16, n_steps=16, batch_size=64, n_epochs=1, learning_rate=2.5e-4,
                anneal_lr=True, total_timesteps=16 * 16 * 2)
    for stagger in (False, True):
        trainer = make_train(PPOConfig(stagger_episodes=stagger, **base),
                             NetworkConfig(hidden_sizes=(8,)), env, params)
        rs = trainer.init(jax.random.PRNGKey(0))
        _, tr = trainer.collect_rollout(rs)
        end_steps = {int(t) for t, n in zip(*np.nonzero(np.asarray(tr.done)))}
        if stagger:
            assert len(end_steps) >= 8, end_steps  # ends spread over the 16 steps
            assert bool(np.asarray(rs.ep_partial).any())
        else:
            assert end_steps == {15}  # every env truncates at the same step
            assert not bool(np.asarray(rs.ep_partial).any())


class PureLearningPiecesUnderJit(chex.TestCase):
    """The pure pieces of the update give the same answers with and without ``jit``."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_episode_advance(self):
        from swarm_jax.agents import episodes as ep

        advance = self.variant(ep.advance)
        running = ep.RunningEpisodes.zeros(3, partial=jnp.array([True, False, False]))
        running, rec = advance(running, jnp.array([1.0, 2.0, 3.0]), jnp.array([0.1, 0.2, 0.3]),
                               jnp.array([True, False, True]))
        chex.assert_shape([rec["ep_return"], rec["traj_log_weight"]], (3,))
        chex.assert_trees_all_close(rec["ep_return"], jnp.array([1.0, 2.0, 3.0]))
        assert np.asarray(rec["counted"]).tolist() == [False, False, True]  # env 0 was partial
        chex.assert_trees_all_close(running.ret, jnp.array([0.0, 2.0, 0.0]))
        assert np.asarray(running.partial).tolist() == [False, False, False]

    @chex.variants(with_jit=True, without_jit=True)
    def test_learning_reward_shaping_and_penalty(self):
        from swarm_jax.agents.losses import learning_reward

        cfg = PPOConfig(gamma=0.5)
        info = {"reward_level": jnp.array([2.0, 2.0]), "reward_level_before": jnp.array([1.0, 1.0])}
        fn = self.variant(lambda r, i, t, e: learning_reward(cfg, r, i, t, e, 0.3, 0.5, True))
        learn, penalty = fn(jnp.array([2.0, 2.0]), info, jnp.array([False, True]),
                            jnp.array([1.0, 0.1]))
        # (L' − L)/(1 − γ) = 2 without termination; after one, L' counts as 0: 2 − 1/0.5 = 0.
        chex.assert_trees_all_close(penalty, jnp.array([0.0, 0.3 * 0.4]), atol=1e-6)
        chex.assert_trees_all_close(learn, jnp.array([2.0, 0.0]) - penalty, atol=1e-6)
