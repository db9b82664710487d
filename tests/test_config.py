"""Tests of swarm_jax.training.config: the stage YAMLs, the original project's flat layout, overrides and the
validation of malformed configs (a table of hand-written cases plus hypothesis-generated ones)."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import pickle
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm_jax.agents.networks import ACTIVATIONS, NetworkConfig
from swarm_jax.agents.ppo_config import PPOConfig
from swarm_jax.env.reward import RewardConfig
from swarm_jax.training.config import (
    FLAT_KEYS,
    ConfigError,
    TrainConfig,
    TrainingSection,
    apply_cpu_overrides,
    config_from_dict,
    config_to_dict,
    for_backend,
    load_config,
    physics_field_names,
    resolve_config_path,
    stage_config_path,
    with_overrides,
)

REPO = Path(__file__).resolve().parents[1]
STAGE_LATTICES = {1: (8, 8, 5), 2: (20, 20, 10), 3: (50, 50, 20)}
# Accelerator budgets (seconds to minutes on one GPU) and the CPU overrides' budgets (minutes on
# two cores; stage 1 keeps the original project's 100k).
STAGE_BUDGETS = {1: 2_000_000, 2: 10_000_000, 3: 50_000_000}
CPU_BUDGETS = {1: 100_000, 2: 200_000, 3: 200_000}

# The example config of the original project's README, verbatim (flat layout; `3e-4` is a string to PyYAML).
SEED_YAML = """\
# Environment
lattice_size: [8, 8, 5]
temperature: 180.0
deposition_rate: 0.1
max_steps: 1000

# Training
n_envs: 8
total_timesteps: 100000
checkpoint_freq: 10000

# PPO Hyperparameters
learning_rate: 3e-4
n_steps: 2048
batch_size: 64
n_epochs: 10
gamma: 0.99
gae_lambda: 0.95
clip_range: 0.2
ent_coef: 0.01

# Reward Weights
w_roughness: 1.0
w_coverage: 0.5
w_ratio: 0.2
w_ess: 0.3
"""


# ------------------------------------------------------------------------------------------------
# Shipped YAML files.


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_stage_yaml_loads_with_seed_values(stage):
    path = stage_config_path(stage)
    assert path == REPO / "configs" / path.name
    cfg = load_config(path)
    assert cfg.stage == stage
    assert cfg.environment.lattice_size == STAGE_LATTICES[stage]
    env, ppo, rew = cfg.environment, cfg.ppo, cfg.reward
    assert (env.temperature, env.deposition_rate, env.max_steps) == (180.0, 0.1, 1000)
    assert (ppo.learning_rate, ppo.gamma, ppo.gae_lambda, ppo.clip_range, ppo.ent_coef,
            ppo.n_epochs) == (3e-4, 0.99, 0.95, 0.2, 0.01, 10)
    assert (rew.w_roughness, rew.w_coverage, rew.w_ratio, rew.w_ess) == (1.0, 0.5, 0.2, 0.3)
    assert cfg.ppo.total_timesteps == STAGE_BUDGETS[stage]
    assert apply_cpu_overrides(cfg).ppo.total_timesteps == CPU_BUDGETS[stage]
    # Periodic checkpoints about every 100-300 updates on an accelerator, at most once a minute.
    assert cfg.training.checkpoint_freq >= 90 * cfg.rollout_size
    assert cfg.training.checkpoint_every_s == 60
    for c in (cfg, apply_cpu_overrides(cfg)):
        assert c.rollout_size % 2048 == 0
        assert c.rollout_size == c.n_minibatches * c.ppo.batch_size
        assert 4 <= c.n_minibatches <= 64
        assert c.num_updates >= 40
    cpu = apply_cpu_overrides(cfg)
    assert cpu.ppo.n_envs < cfg.ppo.n_envs
    if stage in (1, 2):
        assert 32 <= cpu.ppo.n_envs <= 64
    if stage == 3:
        assert 1024 <= cfg.ppo.n_envs <= 4096


def test_stages_share_the_network_shape():
    """Curriculum transfer needs identical networks in every stage."""
    networks = {load_config(stage_config_path(s)).network for s in (1, 2, 3)}
    assert len(networks) == 1


def test_tiny_test_yaml():
    path = resolve_config_path("tiny_test")
    assert path == REPO / "configs" / "tiny_test.yaml"
    cfg = load_config(path)
    assert cfg.environment.lattice_size == (5, 5, 4)
    assert (cfg.ppo.n_envs, cfg.ppo.n_steps, cfg.ppo.batch_size, cfg.ppo.n_epochs) == (4, 8, 8, 2)
    assert cfg.network.hidden_sizes == (32, 32)
    assert cfg.ppo.total_timesteps == 256
    assert (cfg.rollout_size, cfg.n_minibatches, cfg.num_updates) == (32, 4, 8)


def test_stage_config_path_rejects_unknown_stage():
    for bad in (0, 4, True, "1"):
        with pytest.raises(ConfigError, match="stage"):
            stage_config_path(bad)


@pytest.mark.parametrize("name", ["stage1_small", "stage2_medium", "stage3_large", "tiny_test"])
def test_round_trip_through_json(name):
    cfg = load_config(resolve_config_path(name))
    d = config_to_dict(cfg)
    again = config_from_dict(json.loads(json.dumps(d)))
    assert again == cfg
    assert hash(again) == hash(cfg)
    assert config_to_dict(again) == d
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert cfg.name == name


# ------------------------------------------------------------------------------------------------
# Layouts, coercion, overrides.


def test_seed_flat_layout(tmp_path):
    path = tmp_path / "seed.yaml"
    path.write_text(SEED_YAML)
    cfg = load_config(path)
    assert cfg.name == "seed"  # file stem when the file names none
    assert cfg.ppo.learning_rate == 3e-4 and isinstance(cfg.ppo.learning_rate, float)
    assert cfg.environment.lattice_size == (8, 8, 5)
    assert (cfg.ppo.n_envs, cfg.ppo.n_steps, cfg.ppo.batch_size) == (8, 2048, 64)
    assert cfg.rollout_size == 16384 and cfg.n_minibatches == 256 and cfg.num_updates == 6
    assert (cfg.reward.w_roughness, cfg.reward.w_ess) == (1.0, 0.3)


def test_flat_and_nested_mix_and_agree():
    flat = config_from_dict({"temperature": 250, "n_envs": 4, "ppo": {"n_steps": 512}})
    nested = config_from_dict({"environment": {"temperature": 250.0},
                               "training": {"n_envs": 4}, "ppo": {"n_steps": 512}})
    assert flat == nested
    assert flat.environment.temperature == 250.0


@pytest.mark.parametrize("order", ["flat_first", "section_first"])
def test_key_given_flat_and_nested_is_an_error(order):
    items = [("learning_rate", 1e-3), ("ppo", {"learning_rate": 2e-3})]
    if order == "section_first":
        items.reverse()
    with pytest.raises(ConfigError, match=r"ppo\.learning_rate: given twice"):
        config_from_dict(dict(items))


def test_numeric_strings_accepted():
    cfg = config_from_dict({"learning_rate": "3e-4", "temperature": " 2.5e2 ",
                            "total_timesteps": "1e5", "environment": {"physics": {"e_es": "0.2"}}})
    assert cfg.ppo.learning_rate == 3e-4
    assert cfg.environment.temperature == 250.0
    assert cfg.ppo.total_timesteps == 100_000 and isinstance(cfg.ppo.total_timesteps, int)
    assert cfg.environment.physics["e_es"] == 0.2


def test_exact_message_format():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"environment": {"temperature": -5.0}})
    assert str(info.value) == "environment.temperature = -5.0: must be a number > 0 K"
    assert info.value.field == "environment.temperature"
    assert isinstance(info.value, ValueError)


def test_with_overrides():
    base = load_config(stage_config_path(1))
    new = with_overrides(base, {"training.n_envs": 8, "ppo.learning_rate": 1e-4, "ppo.n_steps": 256,
                                "environment.physics.e_es": 0.25, "name": "tweaked",
                                "training.cpu_overrides.n_envs": 16})
    assert new.ppo.n_envs == 8 and new.ppo.learning_rate == 1e-4
    assert new.environment.physics["e_es"] == 0.25 and new.name == "tweaked"
    assert new.training.cpu_overrides["training.n_envs"] == 16
    assert new.rollout_size == 2048
    # Everything else is unchanged, and the original is untouched (frozen).
    assert new.reward == base.reward and new.network == base.network
    assert base.ppo.n_envs == 128
    # Flat keys and whole sections work too.
    assert with_overrides(base, {"gamma": 0.9}).ppo.gamma == 0.9
    assert with_overrides(base, {"reward": {"mode": "delta"}}).reward.mode == "delta"
    assert with_overrides(base, {}) == base


def test_with_overrides_is_validated():
    base = load_config(stage_config_path(1))
    with pytest.raises(ConfigError, match=r"ppo\.batch_size"):
        with_overrides(base, {"training.n_envs": 3})  # rollout 48 < batch 256
    with pytest.raises(ConfigError, match=r"did you mean 'training\.n_envs'"):
        with_overrides(base, {"training.n_env": 8})
    with pytest.raises(ConfigError, match=r"ppo\.gamma"):
        with_overrides(base, {"ppo.gamma": 1.5})
    with pytest.raises(ConfigError, match=r"ppo\.gamma\.x"):
        with_overrides(base, {"ppo.gamma.x": 1})


def test_cpu_overrides():
    cfg = config_from_dict({"training": {"n_envs": 64, "cpu_overrides": {
        "n_envs": "16", "ppo.learning_rate": "1e-4", "training.seed": 7}}})
    # Stored dotted and coerced, so the config round-trips exactly.
    assert dict(cfg.training.cpu_overrides) == {
        "training.n_envs": 16, "ppo.learning_rate": 1e-4, "training.seed": 7}
    cpu = apply_cpu_overrides(cfg)
    assert (cpu.ppo.n_envs, cpu.ppo.learning_rate, cpu.training.seed) == (16, 1e-4, 7)
    assert apply_cpu_overrides(cpu) == cpu
    assert for_backend(cfg, "cpu") == cpu
    assert for_backend(cfg, "gpu") == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_dataclasses_replace_revalidates():
    cfg = TrainConfig()
    with pytest.raises(ConfigError, match=r"environment\.n_swarm"):
        dataclasses.replace(cfg.environment, n_swarm=0)
    with pytest.raises(ConfigError, match=r"ppo\.batch_size"):
        dataclasses.replace(cfg, ppo=dataclasses.replace(cfg.ppo, batch_size=3))


def test_physics_params():
    cfg = config_from_dict({"temperature": 300, "deposition_rate": 2.0,
                            "environment": {"physics": {"e_es": 0.25, "sticking_o": 1.0}}})
    params = cfg.environment.physics_params()
    assert (params.temperature, params.deposition_rate, params.o_ti_flux_ratio) == (300.0, 2.0, 2.0)
    assert (params.e_es, params.sticking_o) == (0.25, 1.0)
    assert "e_es" in physics_field_names() and "temperature" in physics_field_names()


# ------------------------------------------------------------------------------------------------
# File errors.


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml.*not found"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path)  # a directory
    with pytest.raises(ConfigError, match="not found"):
        resolve_config_path("no_such_config")


@pytest.mark.parametrize("text, line, what", [
    ("temperature: 180\nppo: [1, 2\n", 3, "invalid YAML"),
    ("temperature: 180\n  bad: indent: here\n", 2, "invalid YAML"),
    ("ppo:\n  gamma: 0.9\n  gamma: 0.8\n", 3, "duplicate key 'gamma'"),
])
def test_invalid_yaml_reports_line(tmp_path, text, line, what):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "bad.yaml" in msg and what in msg and f"line {line}" in msg


@pytest.mark.parametrize("text, match", [
    ("", "empty"),
    ("- 1\n- 2\n", "top level must be a mapping"),
    ("environment:\n  temperature: -3\n", r"environment\.temperature = -3"),
])
def test_bad_file_content(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_sections_are_the_lower_layer_classes_kept_in_sync():
    cfg = load_config(stage_config_path(1))
    assert (type(cfg.ppo), type(cfg.network), type(cfg.reward)) == (PPOConfig, NetworkConfig,
                                                                     RewardConfig)
    assert cfg.ppo.w_ess is None and cfg.ppo.ess_target is None and cfg.reward.ess_target == 0.5
    wider = dataclasses.replace(cfg, ppo=dataclasses.replace(cfg.ppo, n_envs=64))
    assert wider.ppo.n_envs == 64 and wider.rollout_size == 64 * cfg.ppo.n_steps
    with pytest.raises(ConfigError, match=r"^ppo.batch_size = 256: must be <= the rollout size"):
        dataclasses.replace(cfg, ppo=dataclasses.replace(cfg.ppo, n_envs=2))
    with pytest.raises(ConfigError, match="reward.w_ess"):
        dataclasses.replace(cfg, ppo=dataclasses.replace(cfg.ppo, w_ess=0.0))
    with pytest.raises(ConfigError, match=r"^reward.w_roughness = -1.0: must be a number >= 0"):
        dataclasses.replace(cfg, reward=RewardConfig(w_roughness=-1.0))
    target = with_overrides(cfg, {"ppo.ess_target": 0.4})
    assert target.reward.ess_target == 0.4


def test_n_envs_and_total_timesteps_have_one_home_and_keep_their_yaml_keys():
    """``training.n_envs``/``total_timesteps`` are written in the training section and stored
    once, in PPOConfig: no field of TrainingSection holds them, the dict form writes them back
    where the user wrote them, overrides and CPU overrides reach them by the same keys."""
    field_names = {f.name for f in dataclasses.fields(TrainingSection)}
    assert not field_names & {"n_envs", "total_timesteps"}
    cfg = config_from_dict({"training": {"n_envs": 4, "total_timesteps": 4096},
                            "ppo": {"n_steps": 16, "batch_size": 16}})
    assert (cfg.ppo.n_envs, cfg.ppo.total_timesteps) == (4, 4096)
    d = config_to_dict(cfg)
    assert (d["training"]["n_envs"], d["training"]["total_timesteps"]) == (4, 4096)
    assert "n_envs" not in d["ppo"] and config_from_dict(d) == cfg
    assert with_overrides(cfg, {"training.n_envs": 8}).ppo.n_envs == 8
    assert with_overrides(cfg, {"n_envs": 2}).ppo.n_envs == 2
    cpu = apply_cpu_overrides(with_overrides(cfg, {"training.cpu_overrides.n_envs": 2}))
    assert cpu.ppo.n_envs == 2 and cpu.training.cpu_overrides == {"training.n_envs": 2}


# ------------------------------------------------------------------------------------------------
# Table of malformed configs: (id, patch deep-merged into a valid base, dotted field, extra text).

BASE = {
    "name": "base",
    "stage": None,
    "environment": {"lattice_size": [8, 8, 5], "temperature": 180.0, "deposition_rate": 0.1,
                    "o_ti_flux_ratio": 2.0, "max_steps": 100, "n_swarm": 8, "physics": {}},
    "reward": {"w_roughness": 1.0, "w_coverage": 0.5, "w_ratio": 0.2, "w_ess": 0.3, "mode": "level"},
    "ppo": {"learning_rate": 3e-4, "anneal_lr": False, "n_steps": 16, "batch_size": 32,
            "n_epochs": 4, "gamma": 0.99, "gae_lambda": 0.95, "clip_range": 0.2, "ent_coef": 0.01,
            "vf_coef": 0.5, "max_grad_norm": 0.5},
    "network": {"kind": "swarm", "hidden_sizes": [64, 64], "activation": "tanh"},
    "training": {"n_envs": 8, "total_timesteps": 1024, "checkpoint_freq": 256, "keep_checkpoints": 3,
                 "log_every": 1, "seed": 0, "ess_threshold": None, "ess_patience": 1,
                 "cpu_overrides": {"n_envs": 4}},
}
_REPLACE = object()  # marker: a patch value wrapped as (_REPLACE, v) replaces instead of merging


def merged(base, patch):
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, tuple) and len(value) == 2 and value[0] is _REPLACE:
            out[key] = value[1]
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def env(**kw):
    return {"environment": kw}


def ppo(**kw):
    return {"ppo": kw}


def training(**kw):
    return {"training": kw}


def reward(**kw):
    return {"reward": kw}


def network(**kw):
    return {"network": kw}


MALFORMED = [
    # environment
    ("temp_negative", env(temperature=-5.0), "environment.temperature", "> 0 K"),
    ("temp_zero", env(temperature=0), "environment.temperature", "> 0 K"),
    ("temp_text", env(temperature="hot"), "environment.temperature", "'hot'"),
    ("temp_bool", env(temperature=True), "environment.temperature", "True"),
    ("temp_nan", env(temperature=float("nan")), "environment.temperature", "nan"),
    ("temp_inf_string", env(temperature="inf"), "environment.temperature", "'inf'"),
    ("temp_none", env(temperature=None), "environment.temperature", "None"),
    ("temp_list", env(temperature=[180]), "environment.temperature", "[180]"),
    ("dep_zero", env(deposition_rate=0), "environment.deposition_rate", "> 0 ML/s"),
    ("dep_negative", env(deposition_rate=-0.1), "environment.deposition_rate", "-0.1"),
    ("ratio_negative", env(o_ti_flux_ratio=-1), "environment.o_ti_flux_ratio", ">= 0"),
    ("lattice_lx", env(lattice_size=[2, 8, 5]), "environment.lattice_size", "Lx, Ly >= 3"),
    ("lattice_ly", env(lattice_size=[8, 2, 5]), "environment.lattice_size", "[8, 2, 5]"),
    ("lattice_lz", env(lattice_size=[8, 8, 1]), "environment.lattice_size", "Lz >= 2"),
    ("lattice_short", env(lattice_size=[8, 8]), "environment.lattice_size", "3 integers"),
    ("lattice_long", env(lattice_size=[8, 8, 5, 1]), "environment.lattice_size", "3 integers"),
    ("lattice_string", env(lattice_size="8x8x5"), "environment.lattice_size", "'8x8x5'"),
    ("lattice_float", env(lattice_size=[8.5, 8, 5]), "environment.lattice_size", "8.5"),
    ("lattice_bool", env(lattice_size=[True, 8, 5]), "environment.lattice_size", "True"),
    ("lattice_scalar", env(lattice_size=8), "environment.lattice_size", "3 integers"),
    ("lattice_negative", env(lattice_size=[-8, 8, 5]), "environment.lattice_size", "-8"),
    ("max_steps_zero", env(max_steps=0), "environment.max_steps", ">= 1"),
    ("max_steps_fraction", env(max_steps=1.5), "environment.max_steps", "integer"),
    ("max_steps_bool", env(max_steps=True), "environment.max_steps", "integer"),
    ("n_swarm_zero", env(n_swarm=0), "environment.n_swarm", ">= 1"),
    ("n_swarm_negative", env(n_swarm=-3), "environment.n_swarm", "-3"),
    ("physics_unknown", env(physics={"e_ess": 0.1}), "environment.physics.e_ess",
     "did you mean 'e_es'"),
    ("physics_env_field", env(physics={"temperature": 300}), "environment.physics.temperature",
     "environment.temperature"),
    ("physics_sticking", env(physics={"sticking_ti": 1.5}), "environment.physics.sticking_ti",
     "[0, 1]"),
    ("physics_nu", env(physics={"attempt_frequency": 0}), "environment.physics.attempt_frequency",
     "> 0"),
    ("physics_text", env(physics={"e_es": "abc"}), "environment.physics.e_es", "'abc'"),
    ("physics_list", env(physics=(_REPLACE, [1, 2])), "environment.physics", "mapping"),
    ("env_unknown", env(temprature=300), "environment.temprature", "did you mean 'temperature'"),
    ("env_not_mapping", {"environment": (_REPLACE, [1, 2])}, "environment", "mapping"),
    # reward
    ("w_roughness_negative", reward(w_roughness=-1), "reward.w_roughness", ">= 0"),
    ("w_ess_text", reward(w_ess="x"), "reward.w_ess", "'x'"),
    ("mode_typo", reward(mode="levels"), "reward.mode", "did you mean 'level'"),
    ("mode_int", reward(mode=3), "reward.mode", "'level', 'delta'"),
    ("reward_unknown", reward(w_rough=1), "reward.w_rough", "did you mean 'w_roughness'"),
    # ppo
    ("lr_zero", ppo(learning_rate=0), "ppo.learning_rate", "> 0"),
    ("lr_negative", ppo(learning_rate="-1e-3"), "ppo.learning_rate", "'-1e-3'"),
    ("lr_text", ppo(learning_rate="fast"), "ppo.learning_rate", "number"),
    ("anneal_text", ppo(anneal_lr="yes"), "ppo.anneal_lr", "true or false"),
    ("anneal_int", ppo(anneal_lr=1), "ppo.anneal_lr", "true or false"),
    ("n_steps_zero", ppo(n_steps=0), "ppo.n_steps", ">= 1"),
    ("batch_zero", ppo(batch_size=0), "ppo.batch_size", ">= 1"),
    ("batch_not_dividing", ppo(batch_size=48), "ppo.batch_size", "divide"),
    ("batch_too_big", ppo(batch_size=256), "ppo.batch_size", "<= the rollout size"),
    ("n_epochs_zero", ppo(n_epochs=0), "ppo.n_epochs", ">= 1"),
    ("gamma_high", ppo(gamma=1.1), "ppo.gamma", "[0, 1]"),
    ("gamma_negative", ppo(gamma=-0.1), "ppo.gamma", "[0, 1]"),
    ("lambda_high", ppo(gae_lambda=2), "ppo.gae_lambda", "[0, 1]"),
    ("clip_zero", ppo(clip_range=0), "ppo.clip_range", "> 0"),
    ("clip_negative", ppo(clip_range=-0.2), "ppo.clip_range", "> 0"),
    ("ent_negative", ppo(ent_coef=-0.01), "ppo.ent_coef", ">= 0"),
    ("vf_negative", ppo(vf_coef=-1), "ppo.vf_coef", ">= 0"),
    ("grad_norm_zero", ppo(max_grad_norm=0), "ppo.max_grad_norm", "> 0"),
    ("ppo_unknown", ppo(learning_rte=1e-3), "ppo.learning_rte", "did you mean 'learning_rate'"),
    ("ppo_unknown_clip", ppo(clip_rang=0.1), "ppo.clip_rang", "did you mean 'clip_range'"),
    # network
    ("kind_unknown", network(kind="transformer"), "network.kind", "'swarm', 'flat_mlp'"),
    ("kind_typo", network(kind="swarms"), "network.kind", "did you mean 'swarm'"),
    ("hidden_empty", network(hidden_sizes=[]), "network.hidden_sizes", "non-empty"),
    ("hidden_zero", network(hidden_sizes=[64, 0]), "network.hidden_sizes", ">= 1"),
    ("hidden_negative", network(hidden_sizes=[64, -1]), "network.hidden_sizes", "-1"),
    ("hidden_scalar", network(hidden_sizes=64), "network.hidden_sizes", "list"),
    ("hidden_text", network(hidden_sizes=[64, "a"]), "network.hidden_sizes", "'a'"),
    ("activation_unknown", network(activation="sigmoid"), "network.activation", "'tanh', 'relu', 'gelu'"),
    ("activation_case", network(activation="Tanh"), "network.activation", "did you mean 'tanh'"),
    ("network_unknown", network(hidden=[4]), "network.hidden", "unknown key"),
    # training
    ("n_envs_zero", training(n_envs=0), "training.n_envs", ">= 1"),
    ("n_envs_bool", training(n_envs=True), "training.n_envs", "integer"),
    ("n_envs_text", training(n_envs="many"), "training.n_envs", "'many'"),
    ("total_below_rollout", training(total_timesteps=100), "training.total_timesteps", "one rollout"),
    ("total_zero", training(total_timesteps=0), "training.total_timesteps", ">= 1"),
    ("checkpoint_zero", training(checkpoint_freq=0), "training.checkpoint_freq", ">= 1"),
    ("keep_zero", training(keep_checkpoints=0), "training.keep_checkpoints", ">= 1"),
    ("log_every_zero", training(log_every=0), "training.log_every", ">= 1"),
    ("seed_negative", training(seed=-1), "training.seed", "[0, 4294967295]"),
    ("seed_too_big", training(seed=2**32), "training.seed", "[0, 4294967295]"),
    ("ess_zero", training(ess_threshold=0), "training.ess_threshold", "(0, 1]"),
    ("ess_high", training(ess_threshold=1.5), "training.ess_threshold", "(0, 1]"),
    ("ess_negative", training(ess_threshold=-0.1), "training.ess_threshold", "(0, 1]"),
    ("ess_patience_zero", training(ess_patience=0), "training.ess_patience", ">= 1"),
    ("cpu_unknown", training(cpu_overrides={"n_env": 4}), "training.cpu_overrides.n_env",
     "did you mean 'n_envs'"),
    ("cpu_env_key", training(cpu_overrides={"temperature": 300}),
     "training.cpu_overrides.temperature", "unknown key"),
    ("cpu_bad_value", training(cpu_overrides={"n_envs": 0}), "training.cpu_overrides",
     "training.n_envs = 0"),
    ("cpu_bad_batch", training(cpu_overrides={"n_envs": 3}), "training.cpu_overrides",
     "ppo.batch_size"),
    ("cpu_list_value", training(cpu_overrides={"n_envs": [1, 2]}), "training.cpu_overrides.n_envs",
     "scalar"),
    ("cpu_not_mapping", training(cpu_overrides=(_REPLACE, [1])), "training.cpu_overrides", "mapping"),
    ("cpu_twice", training(cpu_overrides={"n_envs": 4, "training.n_envs": 2}),
     "training.cpu_overrides.training.n_envs", "twice"),
    # top level and flat layout
    ("stage_four", {"stage": 4}, "stage", "1, 2, 3 or null"),
    ("stage_bool", {"stage": True}, "stage", "1, 2, 3 or null"),
    ("stage_text", {"stage": "one"}, "stage", "'one'"),
    ("name_empty", {"name": ""}, "name", "non-empty string"),
    ("name_int", {"name": 5}, "name", "non-empty string"),
    ("top_unknown", {"learning_rte": 1e-3}, "learning_rte", "did you mean 'learning_rate'"),
    ("top_unknown_section", {"enviroment": {}}, "enviroment", "did you mean 'environment'"),
    ("section_not_mapping", {"ppo": (_REPLACE, [1, 2])}, "ppo", "mapping"),
    ("flat_twice", {"temperature": 200.0}, "environment.temperature", "given twice"),
    ("flat_temperature", {"environment": (_REPLACE, {}), "temperature": -5}, "environment.temperature",
     "> 0 K"),
    ("flat_n_envs", {"training": (_REPLACE, {}), "n_envs": 0}, "training.n_envs", ">= 1"),
    ("flat_gamma", {"ppo": (_REPLACE, {}), "gamma": 2}, "ppo.gamma", "[0, 1]"),
    ("flat_w_ratio", {"reward": (_REPLACE, {}), "w_ratio": -1}, "reward.w_ratio", ">= 0"),
    ("flat_lattice", {"environment": (_REPLACE, {}), "lattice_size": [8, 8]},
     "environment.lattice_size", "3 integers"),
]


def test_malformed_table_is_large_and_ids_unique():
    assert len(MALFORMED) >= 60
    assert len({case[0] for case in MALFORMED}) == len(MALFORMED)
    config_from_dict(BASE)  # the base itself is valid


@pytest.mark.parametrize("case_id, patch, field, extra", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_config_raises(case_id, patch, field, extra):
    d = merged(BASE, patch)
    with pytest.raises(ConfigError) as info:
        config_from_dict(d)
    msg = str(info.value)
    assert field in msg
    assert info.value.field == field
    assert extra in msg, msg


# ------------------------------------------------------------------------------------------------
# Hypothesis: random valid configs validate; random invalid mutations raise ConfigError only.

_finite = dict(allow_nan=False, allow_infinity=False)
_PHYSICS_FREE = ["e_diff_ti", "e_diff_o", "e_es", "eps_ti_o", "eps_ti_ti", "eps_o_o", "e_des_ti",
                 "e_des_o", "e_react_scale", "e_react_base", "e_react_slope"]


def _maybe_text(value_strategy):
    """Floats sometimes given as numeric strings (PyYAML reads '3e-4' as one)."""
    return st.one_of(value_strategy, value_strategy.map(repr))


def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def valid_configs(draw):
    """(dict, expectations) for a random valid config, with some keys moved to the flat layout."""
    batch = draw(st.integers(1, 64))
    n_mb = draw(st.integers(1, 16))
    rollout = batch * n_mb
    n_envs = draw(st.sampled_from(_divisors(rollout)))
    n_updates = draw(st.integers(1, 50))
    total = rollout * n_updates + draw(st.integers(0, rollout - 1))
    cpu = {}
    if draw(st.booleans()):
        cpu_envs = draw(st.sampled_from(_divisors(rollout)))
        cpu = {"n_envs": cpu_envs, "ppo.n_steps": rollout // cpu_envs}
    physics = draw(st.dictionaries(st.sampled_from(_PHYSICS_FREE), st.floats(-10, 10, **_finite),
                                   max_size=3))
    if draw(st.booleans()):
        physics["sticking_o"] = draw(st.floats(0, 1))
    d = {
        "name": draw(st.text(alphabet="abcxyz_-0123", min_size=1, max_size=12)),
        "stage": draw(st.sampled_from([None, 1, 2, 3])),
        "environment": {
            "lattice_size": [draw(st.integers(3, 64)), draw(st.integers(3, 64)), draw(st.integers(2, 32))],
            "temperature": draw(_maybe_text(st.floats(1e-3, 5000, **_finite))),
            "deposition_rate": draw(_maybe_text(st.floats(1e-6, 100, **_finite))),
            "o_ti_flux_ratio": draw(st.floats(0, 10, **_finite)),
            "max_steps": draw(st.integers(1, 10**6)),
            "n_swarm": draw(st.integers(1, 256)),
            "physics": physics,
        },
        "reward": {k: draw(st.floats(0, 10, **_finite))
                   for k in ("w_roughness", "w_coverage", "w_ratio", "w_ess")}
                  | {"mode": draw(st.sampled_from(["level", "delta"]))},
        "ppo": {
            "learning_rate": draw(_maybe_text(st.floats(1e-6, 1.0, **_finite))),
            "anneal_lr": draw(st.booleans()),
            "n_steps": rollout // n_envs,
            "batch_size": batch,
            "n_epochs": draw(st.integers(1, 20)),
            "gamma": (gamma := draw(st.floats(0, 1))),
            "gae_lambda": draw(st.floats(0, 1)),
            "clip_range": draw(st.floats(1e-3, 1, **_finite)),
            "ent_coef": draw(st.floats(0, 1)),
            "vf_coef": draw(st.floats(0, 2)),
            "max_grad_norm": draw(st.floats(1e-3, 10, **_finite)),
            "ess_constraint": draw(st.booleans()),
            "ess_target": draw(st.floats(0, 1)),
            "ess_lambda_init": draw(st.floats(0, 100)),
            "ess_lambda_lr": draw(st.floats(0, 100)),
            "ess_penalty_coef": draw(st.floats(0, 1e4)),
            # potential shaping needs gamma < 1 (its potential is L / (1 - gamma))
            "reward_shaping": draw(st.sampled_from(["potential", "none"])) if gamma < 1 else "none",
            "normalize_reward": draw(st.booleans()),
            "stagger_episodes": draw(st.booleans()),
        },
        "network": {
            "kind": draw(st.sampled_from(["swarm", "flat_mlp"])),
            "hidden_sizes": draw(st.lists(st.integers(1, 512), min_size=1, max_size=4)),
            "activation": draw(st.sampled_from(["tanh", "relu", "gelu"])),
        },
        "training": {
            "n_envs": n_envs,
            "total_timesteps": total,
            "checkpoint_freq": draw(st.integers(1, 10**6)),
            "checkpoint_every_s": draw(st.floats(0, 1e4, **_finite)),
            "keep_checkpoints": draw(st.integers(1, 10)),
            "log_every": draw(st.integers(1, 100)),
            "seed": draw(st.integers(0, 2**32 - 1)),
            "ess_threshold": draw(st.none() | st.floats(0, 1, exclude_min=True)),
            "ess_patience": draw(st.integers(1, 10)),
            "cpu_overrides": cpu,
        },
    }
    # Move some fields to the flat layout of the original project (optional keys this sample leaves out stay out).
    given = sorted(k for k, section in FLAT_KEYS.items() if k in d[section])
    for key in draw(st.sets(st.sampled_from(given))):
        d[key] = d[FLAT_KEYS[key]].pop(key)
    return d, (rollout, n_mb, n_updates)


@pytest.mark.slow
@settings(max_examples=max(60, settings.default.max_examples))
@given(valid_configs())
def test_random_valid_configs(sample):
    d, (rollout, n_mb, n_updates) = sample
    cfg = config_from_dict(d)
    assert (cfg.rollout_size, cfg.n_minibatches, cfg.num_updates) == (rollout, n_mb, n_updates)
    assert isinstance(cfg.environment.temperature, float) and cfg.environment.temperature > 0
    flat_lr = d.get("learning_rate", d["ppo"].get("learning_rate"))
    assert cfg.ppo.learning_rate == float(flat_lr)
    d2 = json.loads(json.dumps(config_to_dict(cfg)))
    assert config_from_dict(d2) == cfg
    cpu = apply_cpu_overrides(cfg)
    assert cpu.rollout_size == rollout and apply_cpu_overrides(cpu) == cpu


_letters = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)
_non_number = st.one_of(st.booleans(), st.none(), st.lists(st.integers(), max_size=2), _letters,
                        st.sampled_from([float("nan"), float("inf"), -float("inf"), "nan", "-inf"]))


def _above(x):
    return st.floats(min_value=x, exclude_min=True, allow_nan=False)


def _below(x, exclude=True):
    return st.floats(max_value=x, exclude_max=exclude, allow_nan=False)


def _ints_below(x):
    return st.integers(max_value=x - 1)


INVALID = {
    ("environment", "temperature"): _below(0, exclude=False) | _non_number,
    ("environment", "deposition_rate"): _below(0, exclude=False) | _non_number,
    ("environment", "o_ti_flux_ratio"): _below(0) | _non_number,
    ("environment", "max_steps"): _ints_below(1) | _non_number | st.floats(0.1, 0.9),
    ("environment", "n_swarm"): _ints_below(1) | _non_number,
    ("environment", "lattice_size"): st.one_of(
        st.tuples(_ints_below(3), st.integers(3, 9), st.integers(2, 9)).map(list),
        st.tuples(st.integers(3, 9), _ints_below(3), st.integers(2, 9)).map(list),
        st.tuples(st.integers(3, 9), st.integers(3, 9), _ints_below(2)).map(list),
        st.lists(st.integers(3, 9), max_size=2), st.lists(st.integers(3, 9), min_size=4, max_size=6),
        _non_number),
    ("reward", "w_coverage"): _below(0) | _non_number,
    ("reward", "mode"): _letters.filter(lambda s: s not in ("level", "delta")) | st.integers(),
    ("ppo", "learning_rate"): _below(0, exclude=False) | _non_number,
    ("ppo", "anneal_lr"): st.integers() | _letters | st.none(),
    ("ppo", "n_epochs"): _ints_below(1) | _non_number,
    ("ppo", "gamma"): _above(1) | _below(0) | _non_number,
    ("ppo", "gae_lambda"): _above(1) | _below(0) | _non_number,
    ("ppo", "clip_range"): _below(0, exclude=False) | _non_number,
    ("ppo", "ent_coef"): _below(0) | _non_number,
    ("ppo", "max_grad_norm"): _below(0, exclude=False) | _non_number,
    ("ppo", "ess_target"): _above(1) | _below(0) | _non_number,
    ("ppo", "ess_penalty_coef"): _below(0) | _non_number,
    ("ppo", "reward_shaping"): _letters.filter(lambda s: s not in ("potential", "none")),
    ("ppo", "stagger_episodes"): st.integers() | _letters | st.none(),
    ("ppo", "objective"): _letters.filter(lambda s: s not in ("reward", "kl")) | st.integers(),
    ("ppo", "kl_coef"): _below(0, exclude=False) | _above(1e6) | _non_number,
    ("network", "kind"): _letters.filter(lambda s: s not in ("swarm", "flat_mlp")),
    ("network", "hidden_sizes"): st.one_of(
        st.just([]), st.lists(_ints_below(1), min_size=1, max_size=3),
        # (a drawn list of positive ints, e.g. [1], is a valid hidden_sizes: not a mutation)
        _non_number.filter(lambda v: not (isinstance(v, list) and v and all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in v)))),
    ("network", "activation"): _letters.filter(lambda s: s not in ACTIVATIONS),
    ("training", "checkpoint_freq"): _ints_below(1) | _non_number,
    ("training", "keep_checkpoints"): _ints_below(1) | _non_number,
    ("training", "seed"): _ints_below(0) | st.integers(min_value=2**32) | _non_number,
    ("training", "ess_threshold"): _above(1) | _below(0, exclude=False) | st.booleans() | _letters,
    ("training", "ess_patience"): _ints_below(1) | _non_number,
}


@pytest.mark.slow
@settings(max_examples=max(120, settings.default.max_examples))
@given(valid_configs(), st.sampled_from(sorted(INVALID)), st.data())
def test_random_invalid_mutation_raises_config_error(sample, target, data):
    d, _ = sample
    section, name = target
    bad = data.draw(INVALID[target], label="bad value")
    if name in d:  # the drawn config gave this field flat
        d[name] = bad
    else:
        d[section][name] = bad
    with pytest.raises(ConfigError) as info:
        config_from_dict(d)
    assert info.value.field == f"{section}.{name}"
    assert f"{section}.{name}" in str(info.value)


_junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


@pytest.mark.slow
@settings(max_examples=max(80, settings.default.max_examples))
@given(valid_configs(), st.data())
def test_random_junk_never_raises_another_exception(sample, data):
    """Any value for a real field (or a random key): a valid config or a ConfigError, nothing else."""
    d, _ = sample
    real = st.sampled_from(sorted(FLAT_KEYS.items()))
    section, key = data.draw(real | st.tuples(st.sampled_from(["top"] + list(BASE)),
                                               st.text(max_size=5) | st.integers()), label="where")
    value = data.draw(_junk, label="value")
    if section == "top" or key in d or not isinstance(d.get(section), dict):
        d[key] = value
    elif data.draw(st.booleans(), label="flat") and section in FLAT_KEYS.values():
        d[section].pop(key, None)
        d[key] = value
    else:
        d[section][key] = value
    try:
        cfg = config_from_dict(d)
    except ConfigError as err:
        assert str(err)
        return
    assert isinstance(cfg, TrainConfig)
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert all(math.isfinite(x) for x in (cfg.environment.temperature, cfg.ppo.learning_rate))
