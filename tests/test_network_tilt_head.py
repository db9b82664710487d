"""network.tilt_head: the swarm actor with the exponential tilt as a learned term of its logits.

Off (the default) is today's network; on, with the strength at 0 and a zero MLP head it is the
uniform policy (classical KMC), and with strength s it is exactly the hand-made tilt
``swarm.rollout.tilt_logits`` at s, through the checkpoint loader and the sampler rollout too.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swarm_jax.agents.networks import TILT_STRENGTH_SCALE, NetworkConfig, make_network
from swarm_jax.physics import PhysicsParams, engine, init_flat, make_rate_tables
from swarm_jax.physics.lattice import DEPOSIT_O, DEPOSIT_TI
from swarm_jax.swarm.candidates import draw_candidates
from swarm_jax.swarm.features import (
    CANDIDATE_FEATURE_DIM as D, GLOBAL_FEATURE_DIM as G, candidate_features, global_features)
from swarm_jax.swarm.rollout import GrowthSpec, grow_sampler, tilt_logits
from swarm_jax.trained_policy import load_policy, network_config_from_dict
from swarm_jax.training.config import TrainConfig, config_from_dict, config_to_dict
from swarm_jax.validation import ConfigError

K = 16
GROUPS = ["relative_heights", "kind", "z_above_mean"]
TODAY_PARAMS = {"actor_in_candidate", "actor_in_global", "actor_head", "critic_mlp",  # [16]: no actor_mlp
                "critic_head"}


def _state_obs(seed=1, k=K):
    """Features of K candidates of a grown film (heights differ) and its global features."""
    physics = PhysicsParams(temperature=300.0, deposition_rate=1.0)
    tables = make_rate_tables(physics)
    lattice = engine.run(init_flat((5, 5, 8), physics), tables, jax.random.key(seed), 60)
    cands = draw_candidates(lattice, tables, jax.random.key(seed + 1), k)
    kind = np.asarray(cands.kind)
    dep = (kind == DEPOSIT_TI) | (kind == DEPOSIT_O)
    assert dep.any() and (~dep).any()
    return {"candidates": candidate_features(lattice, cands),
            "global": global_features(lattice, tables, physics, 0.5)}


def _with(params, **leaves):
    """A copy of flax variables with ``params[name] = value`` (nested dicts as given)."""
    inner = dict(params["params"], **leaves)
    return {"params": inner}


def _zero_head(params):
    head = params["params"]["actor_head"]
    return _with(params, actor_head=jax.tree.map(jnp.zeros_like, head))


@pytest.mark.parametrize("off", [{}, {"tilt_head": "none"}, {"tilt_head": False}])
def test_default_off_is_todays_network(off):
    obs = _state_obs()
    base = make_network(NetworkConfig(hidden_sizes=[16], candidate_features=GROUPS), K)
    net = make_network(NetworkConfig(hidden_sizes=[16], candidate_features=GROUPS, **off), K)
    assert net == base  # the same module: same parameters and outputs for every seed
    params = net.init(jax.random.key(0), obs)
    assert set(params["params"]) == TODAY_PARAMS
    ref = base.init(jax.random.key(0), obs)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), params, ref))
    out, ref_out = net.apply(params, obs), base.apply(ref, obs)
    for a, b in zip(out, ref_out):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("mode", ["scalar", "global"])
def test_head_adds_only_the_tilt_term_and_starts_at_zero(mode):
    """Same MLP weights with and without the head: at initialisation (strength 0) the logits and
    the value are today's, and the tilt only adds ``s·d`` to the logits."""
    obs = _state_obs()
    cfg = dict(hidden_sizes=[16], candidate_features=GROUPS)
    on = make_network(NetworkConfig(tilt_head=mode, **cfg), K)
    off = make_network(NetworkConfig(**cfg), K)
    params = on.init(jax.random.key(0), obs)
    assert set(params["params"]) == TODAY_PARAMS | {"tilt_strength"}
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(params["params"]["tilt_strength"]))
    today = {"params": {k: v for k, v in params["params"].items() if k != "tilt_strength"}}
    for a, b in zip(on.apply(params, obs), off.apply(today, obs)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_zero_strength_and_zero_mlp_head_is_the_uniform_policy():
    obs = _state_obs()
    net = make_network(NetworkConfig(hidden_sizes=[16], candidate_features=GROUPS, tilt_head=True), K)
    params = _zero_head(net.init(jax.random.key(0), obs))
    logits, _ = net.apply(params, obs)
    np.testing.assert_array_equal(np.asarray(logits), 0.0)
    np.testing.assert_allclose(np.asarray(jax.nn.softmax(logits)), 1.0 / K, rtol=1e-6)


@pytest.mark.parametrize("s", [0.2, -0.35, 1.5])
def test_strength_s_with_a_zero_mlp_is_exactly_the_hand_made_tilt(s):
    obs = _state_obs()
    net = make_network(NetworkConfig(hidden_sizes=[16], candidate_features=GROUPS, tilt_head="scalar"), K)
    theta = jnp.float32(s / TILT_STRENGTH_SCALE)
    params = _with(_zero_head(net.init(jax.random.key(0), obs)), tilt_strength={"theta": theta})
    logits, _ = jax.jit(net.apply)(params, obs)
    strength = jnp.float32(TILT_STRENGTH_SCALE) * theta
    expected = jax.jit(tilt_logits)(strength, obs["candidates"], obs["global"])
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(expected))
    assert np.any(np.asarray(expected) != 0)
    # Batched observations score each state alike.
    batch = jax.tree.map(lambda x: jnp.stack([x, x]), obs)
    np.testing.assert_array_equal(np.asarray(net.apply(params, batch)[0]),
                                  np.stack([np.asarray(expected)] * 2))


def test_global_strength_is_affine_in_the_global_features():
    obs = _state_obs()
    net = make_network(NetworkConfig(hidden_sizes=[16], tilt_head="global"), K)
    params = _zero_head(net.init(jax.random.key(0), obs))
    w = jnp.linspace(-0.05, 0.05, G, dtype=jnp.float32)[:, None]
    b = jnp.full((1,), 0.02, jnp.float32)
    params = _with(params, tilt_strength={"affine": {"kernel": w, "bias": b}})
    logits, _ = net.apply(params, obs)
    strength = jnp.float32(TILT_STRENGTH_SCALE) * (obs["global"].astype(jnp.float32) @ w[:, 0] + b[0])
    np.testing.assert_allclose(np.asarray(logits),
                               np.asarray(tilt_logits(strength, obs["candidates"], None)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad, match", [
    ({"tilt_head": "yes"}, "network.tilt_head = 'yes'"),
    ({"tilt_head": 1}, "network.tilt_head = 1"),
    ({"tilt_head": None}, "network.tilt_head = None"),
    ({"tilt_head": "scalar", "kind": "flat_mlp"}, "flat_mlp"),
    ({"tilt_head": True, "candidate_features": ["relative_heights", "kind"]}, "missing: z_above_mean"),
    ({"tilt_head": "global", "candidate_features": ["sites"]}, "missing: kind, z_above_mean"),
])
def test_bad_values_are_refused_in_one_line(bad, match):
    with pytest.raises(ConfigError, match=match) as err:
        NetworkConfig(**bad)
    assert "\n" not in str(err.value) and err.value.field == "network.tilt_head"


def test_training_config_and_saved_config_round_trip():
    cfg = config_from_dict({"network": {"hidden_sizes": [16], "candidate_features": GROUPS,
                                        "tilt_head": True}})
    assert cfg.network.tilt_head == "scalar"
    saved = config_to_dict(cfg)
    assert saved["network"]["tilt_head"] == "scalar" and config_from_dict(saved) == cfg
    saved["environment"]["n_swarm"] = K
    assert network_config_from_dict(saved)[0] == cfg.network
    # A checkpoint saved before the key existed loads as today's network.
    old = config_to_dict(TrainConfig())
    del old["network"]["tilt_head"]
    assert network_config_from_dict(old)[0].tilt_head == "none"


@pytest.mark.slow  # compiles two sampler rollouts and writes a checkpoint
def test_loaded_checkpoint_samples_exactly_like_the_tilt(tmp_path):
    """Through the production loader (load_policy) and the sampler rollout: a checkpoint whose
    strength is s and whose MLP head is zero grows the same trajectories with the same weights as
    the hand-made tilt at s."""
    from swarm_jax.training.checkpoint import save_final

    k = 8
    cfg = config_to_dict(config_from_dict({"network": {"hidden_sizes": [8], "tilt_head": "scalar",
                                                       "candidate_features": GROUPS}}))
    cfg["environment"]["n_swarm"] = k
    net = make_network(network_config_from_dict(cfg)[0], k)
    theta = jnp.float32(0.5 / TILT_STRENGTH_SCALE)
    params = _with(_zero_head(net.init(jax.random.key(0), {"candidates": jnp.zeros((k, D)),
                                                           "global": jnp.zeros((G,))})),
                   tilt_strength={"theta": theta})
    path = save_final(tmp_path / "final", {"train_state": {"params": params}}, cfg)
    policy = load_policy(path)
    assert policy.network_config.tilt_head == "scalar"
    spec = GrowthSpec((4, 4, 8), 16, 8, chunk=8)
    physics = PhysicsParams(temperature=180.0, deposition_rate=0.1)
    key = jax.random.key(4)
    learned = jax.jit(lambda key: grow_sampler(spec, physics, policy.logits, policy.params, k, key))(key)
    strength = jnp.float32(TILT_STRENGTH_SCALE) * theta
    tilt = jax.jit(lambda key: grow_sampler(spec, physics, tilt_logits, strength, k, key))(key)
    for field in ("sum_h2", "steps", "log_weight"):
        np.testing.assert_array_equal(np.asarray(getattr(learned, field)), np.asarray(getattr(tilt, field)))
    assert np.any(np.asarray(tilt.log_weight) != 0)


@pytest.mark.slow  # compiles a PPO rollout on the TiO2 env
def test_kl_ppo_learns_a_smoothing_strength_on_a_tio2_episode():
    """The head trains through PPO on the env (KL objective, 1 ML episodes, reward −s_W·ΔW): the
    strength leaves 0 towards smoothing (s > 0: low columns favoured) and the metrics are finite."""
    from swarm_jax.agents.ppo import PPOConfig, make_train
    from swarm_jax.env.reward import RewardConfig
    from swarm_jax.env.tio2_env import TiO2GrowthEnv

    env = TiO2GrowthEnv(lattice_size=(5, 5, 6), n_swarm=8, max_steps_in_episode=200,
                        reward=RewardConfig(w_roughness=30.0, w_coverage=0.0, w_ratio=0.0,
                                            w_ess=0.0, mode="delta"))
    params = env.default_params.replace(episode_ml=1.0)
    cfg = PPOConfig(objective="kl", gamma=1.0, ess_constraint=False, reward_shaping="none",
                    ent_coef=0.0, kl_coef=1.0, n_envs=8, n_steps=32, batch_size=64, n_epochs=2,
                    learning_rate=1e-3, stagger_episodes=False, total_timesteps=8 * 32 * 4)
    net = NetworkConfig(hidden_sizes=[8], candidate_features=GROUPS, tilt_head="scalar")
    trainer = make_train(cfg, net, env, params)
    rs, metrics = trainer.train_chunk(trainer.init(jax.random.PRNGKey(0)), 4)
    for key in ("kl_per_step", "traj_log_weight_mean", "batch_ess", "value_loss"):
        assert np.isfinite(float(metrics[key])), (key, metrics)
    strength = TILT_STRENGTH_SCALE * float(rs.train_state.params["params"]["tilt_strength"]["theta"])
    assert strength > 0.02, strength  # 32 Adam steps of 1e-3 move it by at most 0.32
