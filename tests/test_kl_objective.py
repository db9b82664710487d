"""The KL-regularised (trajectory-level) objective of PPO: reward wiring, metrics, optimum, config.

``ppo.objective = "kl"`` adds ``β·log w_t = −β·log(K·π(a_t|s_t))`` to each step's learning reward;
with γ = 1 PPO then maximises ``E_q[R] − β·KL(q‖p)``, whose optimum is ``q* ∝ p·exp(R/β)``
(``swarm_jax.agents.ppo``, "KL objective"). On a one-step bandit (the mock env with every step
terminating, K i.i.d. normal candidates, reward ``c·x_a``) the optimum is known in closed form:
``π*(j) ∝ exp(c·x_j/β)`` over the K candidates.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mock_env import MockSwarmEnv
from swarm_jax.agents.episodes import log_weight_moments
from swarm_jax.agents.losses import kl_reward
from swarm_jax.agents.networks import NetworkConfig, log_probs_from_logits
from swarm_jax.agents.ppo import PPOConfig, make_train, resolve_ess_term
from swarm_jax.training.config import ConfigError, load_config, resolve_config_path, with_overrides

K = 8
NET = NetworkConfig(hidden_sizes=(16, 16))
KL_BASE = dict(objective="kl", gamma=1.0, ess_constraint=False, reward_shaping="none",
               ent_coef=0.0)


def _kl_cfg(**kw) -> PPOConfig:
    return PPOConfig(**{**KL_BASE, **kw})


def _bandit(reward_scale: float):
    """Mock env whose every step terminates: a contextual bandit over K normal candidates."""
    env = MockSwarmEnv(num_candidates=K)
    return env, env.default_params.replace(terminate_threshold=-jnp.inf, reward_scale=reward_scale)


def _sharpened(rs, factor: float):
    """The runner state with the actor head's weights scaled (a policy far from uniform)."""
    p = jax.tree_util.tree_map_with_path(
        lambda path, x: x * factor if "actor_head" in jax.tree_util.keystr(path) else x,
        rs.train_state.params)
    return rs.replace(train_state=rs.train_state.replace(params=p))


# ---- the reward -----------------------------------------------------------------------------

KL_COEF = 0.5


@pytest.fixture(scope="module")
def rollout_trainers():
    """``{objective: trainer}`` for the rollout tests below: the bandit, 4 envs × 12 steps, the
    same settings but the objective (the tests share their compiled init and rollout)."""
    env, params = _bandit(1.0)
    common = dict(gamma=1.0, ess_constraint=False, reward_shaping="none", ent_coef=0.0, w_ess=0.0,
                  kl_coef=KL_COEF, n_envs=4, n_steps=12, batch_size=48, n_epochs=1,
                  normalize_reward=False, stagger_episodes=False, total_timesteps=48)
    return {objective: make_train(PPOConfig(objective=objective, **common), NET, env, params)
            for objective in ("reward", "kl")}


@pytest.mark.slow  # compiles a PPO rollout
def test_learning_reward_is_env_reward_plus_beta_step_log_weight(rollout_trainers):
    trainer = rollout_trainers["kl"]
    rs = _sharpened(trainer.init(jax.random.PRNGKey(3)), 300.0)
    _, tr = trainer.collect_rollout(rs)
    slw = np.asarray(tr.step_log_weight)
    # The rollout's step log-weight is Choice.step_log_weight: −log K − log π_a of the actor.
    np.testing.assert_allclose(slw, -math.log(K) - np.asarray(tr.log_prob), rtol=1e-5, atol=1e-5)
    assert slw.std() > 0.1  # the sharpened policy is far from uniform: the term is exercised
    expected = np.asarray(tr.env_reward, np.float32) + np.float32(KL_COEF) * slw.astype(np.float32)
    np.testing.assert_array_equal(np.asarray(tr.reward), expected)  # exact, float32


@pytest.mark.slow  # compiles a PPO rollout
def test_uniform_policy_adds_no_kl_term(rollout_trainers):
    trainer = rollout_trainers["kl"]
    rs = _sharpened(trainer.init(jax.random.PRNGKey(0)), 0.0)  # zero actor head: uniform π
    _, tr = trainer.collect_rollout(rs)
    np.testing.assert_allclose(tr.step_log_weight, 0.0, atol=1e-6)
    np.testing.assert_allclose(tr.reward, tr.env_reward, atol=2e-6)
    assert float(kl_reward(trainer.config, jnp.zeros(3)).sum()) == 0.0


@pytest.mark.slow  # compiles a PPO rollout
def test_reward_objective_rollout_has_no_kl_term_and_differs_from_kl_only_by_it(rollout_trainers):
    """Same key, same settings: the reward objective's learning reward is the env reward minus the
    ESS term (today's learner, unchanged); the KL objective's adds exactly β·log w_t."""
    out = {}
    for objective, trainer in rollout_trainers.items():
        out[objective] = trainer.collect_rollout(_sharpened(trainer.init(jax.random.PRNGKey(5)), 50.0))[1]
    base, kl = out["reward"], out["kl"]
    np.testing.assert_array_equal(base.action, kl.action)
    np.testing.assert_array_equal(base.reward, base.env_reward)
    np.testing.assert_array_equal(kl.reward, base.reward + np.float32(KL_COEF) * base.step_log_weight)
    assert PPOConfig().objective == "reward"


def test_log_weight_moments_from_sums():
    x = np.array([-3.0, -1.0, 0.5, 2.0, -7.25])
    mean, var = log_weight_moments(jnp.asarray(x.sum()), jnp.asarray((x**2).sum()), len(x))
    assert float(mean) == pytest.approx(x.mean()) and float(var) == pytest.approx(x.var())
    assert all(np.isnan(float(v)) for v in log_weight_moments(jnp.zeros(()), jnp.zeros(()), 0))


# ---- the optimum on a bandit ------------------------------------------------------------------


def _train_bandit(reward_scale: float, kl_coef: float, seed: int = 0):
    env, params = _bandit(reward_scale)
    cfg = _kl_cfg(kl_coef=kl_coef, n_envs=16, n_steps=16, batch_size=64, n_epochs=4,
                  learning_rate=3e-3, stagger_episodes=False, total_timesteps=16 * 16 * 60)
    trainer = make_train(cfg, NET, env, params)
    rs, metrics = trainer.train(jax.random.PRNGKey(seed))
    return trainer, rs, metrics


def _policy_vs_optimum(trainer, rs, slope: float):
    """Mean KL(π_θ‖π*) and KL(uniform‖π*) over fresh candidate sets, π* ∝ exp(slope·x_0), and
    the least-squares slope of the learned logits on x_0 within each set."""
    x = jax.random.normal(jax.random.PRNGKey(99), (2048, K, 4), jnp.float32)
    glob = jnp.zeros((2048, 3), jnp.float32).at[:, -1].set(1.0)
    logits, _ = trainer.network.apply(rs.train_state.params, {"candidates": x, "global": glob})
    lp = np.asarray(log_probs_from_logits(logits), np.float64)
    x0 = np.asarray(x[..., 0], np.float64)
    lp_opt = slope * x0 - np.log(np.exp(slope * x0).sum(-1, keepdims=True))
    kl_learned = float(np.mean(np.sum(np.exp(lp) * (lp - lp_opt), -1)))
    lp_uni = -math.log(K)
    kl_uniform = float(np.mean(np.sum(np.exp(lp_uni) * (lp_uni - lp_opt), -1)))
    xc = x0 - x0.mean(-1, keepdims=True)
    fitted = float(np.sum(xc * (lp - lp.mean(-1, keepdims=True))) / np.sum(xc**2))
    return kl_learned, kl_uniform, fitted


@pytest.mark.slow
def test_kl_ppo_moves_to_the_tilted_optimum_and_not_beyond():
    """Reward c·x_a, β = 1: the optimum is the softmax of c·x over the candidates (logit slope
    c/β = 1). The trained policy ends much closer to it than uniform and with a slope near 1 (the
    reward objective's optimum, argmax, has an unbounded slope)."""
    trainer, rs, metrics = _train_bandit(reward_scale=1.0, kl_coef=1.0)
    kl_learned, kl_uniform, slope = _policy_vs_optimum(trainer, rs, 1.0)
    assert kl_learned < 0.2 * kl_uniform, (kl_learned, kl_uniform)
    assert 0.6 < slope < 1.4, slope
    # The metrics: per-step KL of the optimum E_π*[log(K π*)] is ≈ 0.31 nats for K = 8, c = 1.
    assert 0.05 < float(metrics["kl_per_step"]) < 1.0, metrics
    # One-step episodes: the trajectory log-weight is the step's, its mean −KL.
    assert float(metrics["traj_log_weight_mean"]) == pytest.approx(
        -float(metrics["kl_per_step"]), abs=0.1)
    assert float(metrics["traj_log_weight_var"]) > 0
    assert 0 < float(metrics["batch_ess"]) < 1


@pytest.mark.slow
def test_kl_ppo_without_reward_stays_uniform_and_is_deterministic():
    """w = 0: the optimum is classical KMC itself (uniform); the KL term keeps the policy there."""
    trainer, rs, metrics = _train_bandit(reward_scale=0.0, kl_coef=1.0)
    assert float(metrics["kl_per_step"]) < 0.01, metrics
    kl_learned, _, _ = _policy_vs_optimum(trainer, rs, 0.0)
    assert kl_learned < 0.01
    assert float(metrics["batch_ess"]) > 0.98
    again = trainer.train(jax.random.PRNGKey(0))[0]
    for a, b in zip(jax.tree.leaves(rs.train_state.params), jax.tree.leaves(again.train_state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_kl_objective_trains_on_a_thickness_ended_tio2_episode():
    """5x5 film, episodes ended by 1 ML deposited (terminated), γ = 1, delta roughness reward."""
    from swarm_jax.env.reward import RewardConfig
    from swarm_jax.env.tio2_env import TiO2GrowthEnv

    env = TiO2GrowthEnv(lattice_size=(5, 5, 6), n_swarm=8, max_steps_in_episode=200,
                        reward=RewardConfig(w_roughness=5.0, w_coverage=0.0, w_ratio=0.0,
                                            w_ess=0.0, mode="delta"))
    params = env.default_params.replace(episode_ml=1.0)
    cfg = _kl_cfg(kl_coef=1.0, n_envs=4, n_steps=32, batch_size=64, n_epochs=2,
                  stagger_episodes=False, total_timesteps=4 * 32 * 3)
    trainer = make_train(cfg, NET, env, params)
    rs, metrics = trainer.train_chunk(trainer.init(jax.random.PRNGKey(0)), 3)
    assert float(metrics["n_episodes"]) >= 1, metrics  # 180 K: adatom hops outnumber deposits
    for key in ("kl_per_step", "traj_log_weight_mean", "traj_log_weight_var", "batch_ess",
                "value_loss"):
        assert np.isfinite(float(metrics[key])), (key, metrics)
    # A sample mean of log(K·π_a): near 0 for the barely trained (near-uniform) policy.
    assert abs(float(metrics["kl_per_step"])) < 0.05
    assert float(metrics["traj_log_weight_var"]) >= 0


# ---- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize("kw, field, text", [
    (dict(objective="soft"), "ppo.objective", "'reward', 'kl'"),
    (dict(kl_coef=0.0), "ppo.kl_coef", "(0, "),
    (dict(kl_coef=-1.0), "ppo.kl_coef", "(0, "),
    (dict(gamma=0.99), "ppo.gamma", "must be 1"),
    (dict(ess_constraint=True), "ppo.ess_constraint", "must be false"),
    (dict(reward_shaping="potential"), "ppo.reward_shaping", "must be 'none'"),
    (dict(ent_coef=0.01), "ppo.ent_coef", "must be 0"),
    (dict(w_ess=0.3), "ppo.w_ess", "must be 0"),
])
def test_kl_objective_config_errors(kw, field, text):
    with pytest.raises(ConfigError) as info:
        _kl_cfg(**kw)
    msg = str(info.value)
    assert info.value.field == field and msg.startswith(field) and text in msg
    assert "\n" not in msg


def test_kl_objective_valid_settings_and_ess_term():
    cfg = _kl_cfg(kl_coef="0.5")
    assert cfg.kl_coef == 0.5 and cfg.objective == "kl"
    assert resolve_ess_term(cfg, object()) == (0.0, 0.5)  # no ESS reward term by default
    PPOConfig(gamma=1.0, reward_shaping="none")  # gamma = 1 is a valid setting of the reward objective too
    PPOConfig(kl_coef=3.0)  # kl_coef is not read by the reward objective


@pytest.mark.parametrize("name", ["sampler_8x8", "sampler_20x20"])
def test_sampler_configs_load_and_reject_an_ess_reward(name):
    cfg = load_config(resolve_config_path(name))
    assert cfg.ppo.objective == "kl" and cfg.ppo.gamma == 1.0 and cfg.reward.mode == "delta"
    assert cfg.environment.episode_ml > 0
    assert cfg.reward.w_coverage == cfg.reward.w_ratio == cfg.reward.w_ess == 0
    stage = load_config(resolve_config_path("stage1_small"))
    if name == "sampler_8x8":
        assert cfg.network == stage.network  # curricula and checkpoints compose
    else:  # its own small actor on the features a roughness tilt needs (docs/sampling.md, tuning)
        assert cfg.network.kind == "swarm" and "z_above_mean" in cfg.network.candidate_features
    with pytest.raises(ConfigError, match=r"^reward.w_ess = 0.3: must be 0 with ppo.objective"):
        with_overrides(cfg, {"reward.w_ess": 0.3})
