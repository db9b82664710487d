"""python -m swarm_jax.bench sampling: the threshold between attainable W, the JSON rows, the
learned sampler from a checkpoint (a synthetic one in the trainer's layout, loadable by
``load_policy``), and bad input (exit 2)."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swarm_jax.agents.networks import NetworkConfig, make_network
from swarm_jax.bench.__main__ import main
from swarm_jax.bench.sampling import attainable_threshold
from swarm_jax.swarm.features import CANDIDATE_FEATURE_DIM as D, GLOBAL_FEATURE_DIM as G
from swarm_jax.training.checkpoint import save_final
from swarm_jax.training.config import TrainConfig, config_to_dict

pytestmark = pytest.mark.slow  # not in the quick tier: runs the benchmark end to end

K = 4
TINY = """
name: sampling_tiny
environment:
  lattice_size: [3, 3, 8]
  temperature: 180.0
  deposition_rate: 0.1
  o_ti_flux_ratio: 2.0
  n_swarm: 4
"""
REQUIRED = ("sampler", "estimand", "replicas", "reference", "classical_estimate", "sampler_estimate",
            "sampler_stderr", "reliable", "khat", "mean_weight", "efficiency_equal_time",
            "efficiency_equal_replicas", "efficiency_ci", "lattice", "temperature_K", "theta_ml")


def test_threshold_lies_midway_between_attainable_values():
    # 3 columns, Σh = 3: attainable C²W² = 3 Σh² − 9 ∈ {0 (1,1,1), 6 (2,1,0), 18 (3,0,0)}.
    sum_h = np.full(100, 3)
    sum_h2 = np.array([3] * 5 + [5] * 90 + [9] * 5)
    t = attainable_threshold(sum_h, sum_h2, 3, 0.05)
    assert t["w_at_quantile"] == 0.0 and t["w_next"] == pytest.approx(math.sqrt(6) / 3)
    assert t["w_q"] == pytest.approx(math.sqrt(6) / 6) and t["fraction_at_or_below"] == 0.05
    t = attainable_threshold(sum_h, sum_h2, 3, 0.06)  # the quantile is the middle value
    assert t["w_at_quantile"] == pytest.approx(math.sqrt(6) / 3)
    assert t["w_next"] == pytest.approx(math.sqrt(18) / 3)
    with pytest.raises(ValueError, match="same roughness"):
        attainable_threshold(sum_h, np.full(100, 3), 3, 0.05)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    net = make_network(NetworkConfig(kind="swarm", hidden_sizes=(8, 8)), K)
    params = net.init(jax.random.key(0), {"candidates": jnp.zeros((K, D)), "global": jnp.zeros((G,))})
    cfg = config_to_dict(TrainConfig())
    cfg["environment"]["n_swarm"] = K
    cfg["network"].update(kind="swarm", hidden_sizes=[8, 8])
    root = tmp_path_factory.mktemp("sampling_ckpt")
    return save_final(root / "final", {"train_state": {"params": params}}, cfg)


def test_bench_rows_with_tilts_and_a_learned_checkpoint(tmp_path, checkpoint, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    out = tmp_path / "sampling.json"
    rc = main(["sampling", "--config", str(config), "--json", str(out), "--checkpoint", str(checkpoint),
               "--tilts", "0.5", "--replicas", "64", "--groups", "2", "--reference-replicas", "256",
               "--quantile-replicas", "128", "--quantile", "0.05", "--chunk", "16"])
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["sampler"], r["estimand"]) for r in rows] == [
        ("tilt_s=0.5", "P(W<=w_q)"), ("tilt_s=0.5", "E[W]"), ("learned", "P(W<=w_q)"), ("learned", "E[W]")]
    for r in rows:
        assert all(k in r for k in REQUIRED), [k for k in REQUIRED if k not in r]
        assert r["replicas"] == 128 and r["theta_ml"] == 1.0 and len(r["efficiency_ci"]) == 2
        assert r["reference_replicas"] == 256
    learned = rows[2]
    assert learned["n_swarm"] == K
    assert "learned" in capsys.readouterr().out


def test_bench_without_checkpoint_skips_learned_and_bad_input_exits_2(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    with pytest.raises(SystemExit) as err:
        main(["sampling", "--config", str(config), "--tilts", "a,b", "--json", str(tmp_path / "x.json")])
    assert err.value.code == 2
    assert "--tilts" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(["sampling", "--config", str(config), "--groups", "1", "--json", str(tmp_path / "x.json")])
    assert err.value.code == 2
    with pytest.raises(SystemExit) as err:
        main(["sampling", "--config", str(tmp_path / "missing.yaml"), "--json", str(tmp_path / "x.json")])
    assert err.value.code == 2
