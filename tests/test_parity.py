"""The parity study (``python -m swarm_jax.parity``): helpers, the SB3 → Flax weight copy, and a
tiny end-to-end run of the CLI (small lattice, two seeds, two updates each)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import swarm_jax  # noqa: F401  (64-bit mode: tests/conftest.py)

pytest.importorskip("stable_baselines3")
pytestmark = pytest.mark.parity

from swarm_jax import parity  # noqa: E402

SIZE, K = (4, 4, 3), 4


def test_mean_stderr():
    m, se = parity.mean_stderr([1.0, 2.0, 3.0, 6.0])
    assert m == 3.0 and se == pytest.approx(np.std([1, 2, 3, 6], ddof=1) / 2.0)
    m, se = parity.mean_stderr([2.5, float("nan")])
    assert m == 2.5 and math.isnan(se)


def test_stage1_environment_comes_from_the_config():
    kw = parity.stage_env_kwargs("stage1_small")
    assert kw["lattice_size"] == (8, 8, 5) and kw["n_swarm"] == 32 and kw["max_steps"] == 1000
    assert kw["temperature"] == 180.0 and kw["deposition_rate"] == 0.1


@pytest.mark.slow
def test_sb3_mlp_policy_is_our_flat_mlp():
    """Copying SB3's MlpPolicy weights into FlatActorCritic gives the same distribution and value
    on real observations: same architecture, same flattening of the observation."""
    import torch as th
    from stable_baselines3 import PPO

    from swarm_jax.agents import NetworkConfig, make_network
    from swarm_jax.gym import TiO2GrowthVecEnv

    vec = TiO2GrowthVecEnv(2, SIZE, K, temperature=180.0, deposition_rate=0.1)
    model = PPO("MlpPolicy", vec, seed=1, device="cpu",
                policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[64, 64]), activation_fn=th.nn.Tanh))
    with th.no_grad():  # move the heads away from their near-zero init so the check has teeth
        for p in (*model.policy.action_net.parameters(), *model.policy.value_net.parameters()):
            p.normal_(0.0, 1.0)
    vec.seed(0)
    obs = np.concatenate([vec.reset(), vec.step(np.array([0, 1]))[0]])
    network = make_network(NetworkConfig(kind="flat_mlp", hidden_sizes=(64, 64)), K)
    check = parity.architecture_check(model.policy, network, obs, K)
    assert check["max_abs_diff_log_probs"] < 1e-4 and check["max_abs_diff_values"] < 1e-4
    params = parity.sb3_to_flax_params(model.policy)["params"]
    assert params["pi_mlp"]["Dense_0"]["kernel"].shape == (K * 116 + 15, 64)


@pytest.mark.slow
def test_parity_cli_tiny_run(tmp_path):
    out = tmp_path / "parity"
    result = parity.main([
        "--budget", "128", "--seeds", "2", "--n-envs", "2", "--n-steps", "32", "--batch-size", "32",
        "--n-epochs", "2", "--lattice-size", *map(str, SIZE), "--n-swarm", str(K), "--max-steps", "50",
        "--eval-envs", "4", "--eval-steps", "30", "--sb3-dummy-steps", "0", "--out", str(out),
    ])
    data = json.loads((out / "parity.json").read_text())
    assert (out / "parity_learning_curve.png").stat().st_size > 0
    for key in ("machine", "hyperparameters", "per_seed", "ours", "sb3", "parity_holds", "speedup",
                "rollout_speedup", "architecture_check", "sb3_dummy_vec_env", "evaluation"):
        assert key in data, key
    assert data["hyperparameters"]["total_env_steps"] == 128 and len(data["per_seed"]) == 2
    for run in data["per_seed"]:
        assert run["ours"]["env_steps"] == 128 and run["sb3"]["env_steps"] == 128
        assert len(run["ours"]["curve"]) == len(run["sb3"]["curve"]) == 2
        assert run["ours"]["curve_steps"] == run["sb3"]["curve_steps"] == [64, 128]
    returns = [r["ours"]["eval"]["ep_rew_mean"] for r in data["per_seed"]]
    assert data["ours"]["mean_return"] == pytest.approx(np.mean(returns), rel=1e-6)
    assert data["ours"]["stderr"] == pytest.approx(np.std(returns, ddof=1) / np.sqrt(2), rel=1e-6)
    assert isinstance(data["parity_holds"], bool)
    diff, se = data["return_difference"], data["return_difference_stderr"]
    assert data["parity_holds"] == (diff >= -2 * se)
    assert data["speedup"] == pytest.approx(data["ours"]["sps"] / data["sb3"]["sps"])
    assert data["ours"]["sps"] > 0 and data["sb3"]["sps"] > 0 and data["sb3_dummy_vec_env"] is None
    assert data["architecture_check"]["max_abs_diff_log_probs"] < 1e-4
    assert result["parity_holds"] == data["parity_holds"]
