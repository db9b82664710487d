"""``python -m swarm_jax.bench evaluate`` and ``bench learning`` at equal deposited thickness.

One tiny training run per module (configs/tiny_test.yaml, two PPO updates, through
``bench learning`` itself, which retrains with ``run_stage``) gives the learning rows and a
checkpoint (``seed0/stage1_final``) that ``bench evaluate`` then reads in another box.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from swarm_jax.agents.evaluation import END_STEP_CAP, evaluate_episodes
from swarm_jax.bench.__main__ import main
from swarm_jax.bench.learning import eval_config
from swarm_jax.training.config import for_backend, load_config, resolve_config_path, with_overrides
from swarm_jax.training.factories import make_trainer
from swarm_jax.env.tio2_env import END_THICKNESS
from swarm_jax.physics.lattice import CEILING, deposit_target

pytestmark = pytest.mark.slow

THETA = 0.3
BOX = ("6", "6", "7")  # 36 columns: 11 atoms at 0.3 ML, room for them without the ceiling


@pytest.fixture(scope="module")
def learning(tmp_path_factory):
    """``bench learning`` on tiny_test: 2 seeds × 64 env steps, 6 evaluation episodes each."""
    tmp = tmp_path_factory.mktemp("learning")
    out = tmp / "json" / "learning.json"
    rc = main(["learning", "--config", "tiny_test", "--seeds", "2", "--total-timesteps", "64",
               "--eval-envs", "6", "--eval-monolayers", str(THETA), "--eval-lz", "7",
               "--out", str(tmp / "runs"), "--json", str(out)])
    assert rc == 0
    return tmp, json.loads(out.read_text())


@pytest.fixture(scope="module")
def evaluated(learning):
    tmp, _ = learning
    ckpt = tmp / "runs" / "seed0" / "stage1_final"
    out = tmp / "json" / "evaluate.json"
    rc = main(["evaluate", "--checkpoint", str(ckpt), "--episodes", "6", "--monolayers",
               str(THETA), "--lattice", *BOX, "--temperature", "180", "250", "--flux", "1.0",
               "--flux-ratio", "2.0", "--max-steps", "400", "--seed", "3", "--json", str(out)])
    assert rc == 0
    return json.loads(out.read_text())


def test_learning_rows_compare_equal_thickness(learning):
    _, payload = learning
    rows = payload["rows"]
    assert [r["seed"] for r in rows] == [0, 1, "mean ± s.e."]
    target = deposit_target(25, THETA)  # tiny_test's 5x5 columns, in a box of height 7
    for r in rows[:2]:
        assert r["eval_monolayers"] == THETA and r["eval_target_atoms"] == target
        assert r["eval_lattice"] == "5x5x7"
        for p in ("trained", "uniform"):
            assert r[f"{p}_n_reached"] + r[f"{p}_n_ceiling"] + r[f"{p}_n_cap"] <= 6
            for k in ("ep_rew", "final_roughness", "final_mean_height", "final_coverage",
                      "final_o_ti_ratio", "time_to_theta", "events"):
                assert f"{p}_{k}" in r
        for k in ("ess_ratio", "batch_ess", "batch_ess_ratio", "khat", "reliable",
                  "mean_weight", "mean_weight_se", "improvement", "ess_lambda"):
            assert k in r
        assert 1.0 <= r["batch_ess"] <= 6.0 + 1e-9
        assert r["improvement"] == pytest.approx(r["trained_ep_rew"] - r["uniform_ep_rew"])
    assert "z" in rows[-1]


def test_evaluate_json_fields_and_uniform_is_exactly_classical(evaluated):
    rows = evaluated["rows"]
    assert len(rows) == 4  # 2 temperatures × {trained, uniform}
    assert [r["temperature"] for r in rows] == [180.0, 180.0, 250.0, 250.0]
    assert [r["policy"] for r in rows] == ["trained", "uniform"] * 2
    target = deposit_target(36, THETA)
    for r in rows:
        assert r["lattice"] == "6x6x7" and r["flux"] == 1.0 and r["monolayers"] == THETA
        assert r["target_atoms"] == target and r["max_steps"] == 400 and r["episodes"] == 6
        assert r["n_reached"] + r["n_ceiling"] + r["n_cap"] + r["n_other_end"] == 6
        assert (r["note"] == "") == (r["n_reached"] == 6)  # every early end is said in words
        for k in ("ess_ratio", "batch_ess", "batch_ess_ratio", "khat", "reliable", "mean_weight",
                  "mean_weight_se", "roughness", "roughness_se", "mean_height", "o_ti_ratio",
                  "coverage", "time", "time_se", "length", "ep_return"):
            assert k in r, k
        if r["n_reached"]:  # at θ: exactly the target, whichever policy deposited it
            assert r["deposited_at_theta_min"] == r["deposited_at_theta_max"] == target
    for r in rows[1::2]:
        assert r["log_weight_min"] == r["log_weight_max"] == 0.0
        assert r["batch_ess"] == 6 and r["batch_ess_ratio"] == 1.0
        assert r["mean_weight"] == 1.0 and r["mean_weight_se"] == 0.0
        assert r["ess_ratio"] == 1.0 and r["reliable"] is True
        assert r["mean_weight_consistent"] is True


def test_episodes_end_at_equal_deposited_amount():
    """Direct: every episode that reached θ holds exactly deposit_target atoms, for both policies;
    an episode never reports θ reached when the ceiling or the cap ended it."""
    # The env and network of the ``learning`` fixture's evaluation (tiny_test in a 5x5x7 box, 6
    # envs), so that this test runs its compiled episodes (the env parameters are an operand):
    # here 250 K, F = 1 ML/s, episodes of 0.6 ML capped at 60 steps, a freshly initialised net.
    base = with_overrides(for_backend(load_config(resolve_config_path("tiny_test"))),
                          {"training.total_timesteps": 64})
    trainer = make_trainer(eval_config(base, THETA, int(BOX[2]), None)[0])
    env, net = trainer.env, trainer.network
    p = env.default_params
    p = p.replace(physics=p.physics.replace(temperature=250.0, deposition_rate=1.0),
                  episode_ml=0.6, max_steps_in_episode=60)
    obs, _ = env.reset(jax.random.key(0), p)
    params = net.init(jax.random.key(1), jax.tree.map(lambda x: x[None], obs))
    target = deposit_target(25, 0.6)
    for policy in ("trained", "uniform"):
        recs = [evaluate_episodes(params, net, env, p, jax.random.key(k), 6, policy) for k in (2, 3)]
        rec = {k: np.concatenate([r[k] for r in recs]) for k in recs[0]}  # 12 episodes
        deposits = rec["kinds"][:, 0] + rec["kinds"][:, 1]
        reached = rec["end"] == END_THICKNESS
        assert set(np.unique(rec["end"])) <= {END_THICKNESS, CEILING, END_STEP_CAP}
        assert np.all(deposits[reached] == target)
        assert np.all(deposits[~reached] <= target)
        assert np.all(rec["length"][rec["end"] == END_STEP_CAP] == 60)
        assert np.all(rec["length"] >= deposits)
        if policy == "uniform":
            assert np.all(rec["log_weight"] == 0.0)
            assert np.all(rec["ess_sum"] == rec["length"])


@pytest.mark.parametrize("argv, field", [
    (["--episodes", "0"], "--episodes"),
    (["--monolayers", "-1"], "--monolayers"),
    (["--monolayers", "0.1", "0.2"], "--monolayers"),
    (["--temperature", "0"], "--temperature"),
    (["--lattice", "2", "8", "5"], "lattice_size"),
    (["--flux-ratio", "-1"], "--flux-ratio"),
])
def test_bad_flags_one_line_exit_2(learning, capsys, argv, field):
    tmp, _ = learning
    ckpt = tmp / "runs" / "seed0" / "stage1_final"
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--checkpoint", str(ckpt), *argv, "--json", str(tmp / "bad.json")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err, err
    assert not (tmp / "bad.json").exists()


def test_missing_checkpoint_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--checkpoint", str(tmp_path / "nope"), "--json", str(tmp_path / "x.json")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err


def test_mean_weight_consistent():
    from swarm_jax.bench.evaluate import mean_weight_consistent, weight_summary

    assert mean_weight_consistent(1.0, 0.0) and not mean_weight_consistent(0.999, 0.0)
    assert mean_weight_consistent(0.9, 0.05) and not mean_weight_consistent(0.8, 0.05)
    assert not mean_weight_consistent(1.8e-5, 1.7e-5)  # the sample missed the weight mass
    # weights that are even among themselves but far below 1: ESS and k-hat cannot see it
    summary = weight_summary(np.log(np.full(30, 1e-6)) + np.linspace(0, 0.1, 30))
    assert summary["reliable"] and not summary["mean_weight_consistent"]
