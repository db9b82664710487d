"""Production runs with a trained policy: checkpoint loading (swarm_jax.trained_policy), stepping (swarm_jax.swarm.policy) and
``python -m swarm_jax.simulate --policy trained`` in candidate and full-lattice mode.

Checkpoints are built here in the trainer's layout (whole state with the network variables at
``train_state.params``, config dict as written by ``config_to_dict``), without the training CLI.
"""

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swarm_jax import simulate
from swarm_jax.agents.networks import NetworkConfig, make_network
from swarm_jax import trained_policy as P
from swarm_jax.swarm import policy as S
from swarm_jax.swarm.features import CANDIDATE_FEATURE_DIM as D, GLOBAL_FEATURE_DIM as G
from swarm_jax.swarm.weights import batch_ess_ratio, weighted_mean
from swarm_jax.training.checkpoint import CheckpointStore, save_final
from swarm_jax.training.config import TrainConfig, config_to_dict

K = 6
HIDDEN = (16, 16)


def _params(kind="swarm", head_scale=1.0, seed=0):
    net = make_network(NetworkConfig(kind=kind, hidden_sizes=HIDDEN), K)
    obs = {"candidates": jnp.zeros((K, D), jnp.float32), "global": jnp.zeros((G,), jnp.float32)}
    params = net.init(jax.random.key(seed), obs)
    return jax.tree_util.tree_map_with_path(
        lambda p, x: x * head_scale if "actor_head" in jax.tree_util.keystr(p) else x, params)


def _config(kind="swarm", n_swarm=K):
    cfg = config_to_dict(TrainConfig())
    cfg["stage"] = 2
    cfg["environment"]["n_swarm"] = n_swarm
    cfg["network"].update(kind=kind, hidden_sizes=list(HIDDEN))
    return cfg


def _state(params):
    """A stand-in for the trainer's RunnerState: params under train_state, other leaves beside."""
    return {"train_state": {"params": params, "step": jnp.int32(7)},
            "rng": jax.random.key(1), "update_step": jnp.int32(7)}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    sharp = _params(head_scale=200.0)  # a policy far from uniform
    out = {"params": sharp}
    out["final"] = save_final(root / "stage2_final", _state(sharp), _config(), {"stage": 2})
    with CheckpointStore(root / "checkpoints" / "stage2", max_to_keep=3) as store:
        store.save(10, _state(_params(seed=5)), _config())
        store.save(20, _state(sharp), _config())
    out["store"] = root / "checkpoints" / "stage2"
    zero = jax.tree_util.tree_map_with_path(
        lambda p, x: x * 0 if "actor_head" in jax.tree_util.keystr(p) else x, _params())
    out["uniform"] = save_final(root / "uniform_final", {"params": zero}, _config())
    out["flat"] = save_final(root / "flat_final", _state(_params("flat_mlp")), _config("flat_mlp"))
    bad = _config()
    bad["network"]["hidden_sizes"] = [32, 32]
    out["mismatch"] = save_final(root / "mismatch_final", _state(sharp), bad)
    no_k = _config()
    del no_k["environment"]["n_swarm"]
    out["no_k"] = save_final(root / "nok_final", _state(sharp), no_k)
    return out


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


@pytest.mark.slow
def test_load_policy_from_final_step_and_store(checkpoints):
    final = P.load_policy(checkpoints["final"])
    assert final.n_swarm == K and final.network_config == NetworkConfig("swarm", HIDDEN, "tanh")
    assert final.per_candidate and _leaves_equal(final.params, checkpoints["params"])
    step = P.load_policy(checkpoints["store"] / "10")
    assert not _leaves_equal(step.params, checkpoints["params"])
    latest = P.load_policy(checkpoints["store"])  # the store directory means its latest step
    assert latest.path.endswith("20") and _leaves_equal(latest.params, checkpoints["params"])
    assert P.load_policy(checkpoints["uniform"]).n_swarm == K  # bare {"params": ...} state
    assert not P.load_policy(checkpoints["flat"]).per_candidate


@pytest.mark.slow
def test_policy_logits_are_the_networks_actor_logits(checkpoints):
    pol = P.load_policy(checkpoints["final"])
    x = jax.random.uniform(jax.random.key(0), (3, 11, D), jnp.float32)
    g = jax.random.uniform(jax.random.key(1), (3, G), jnp.float32)
    logits = jax.jit(pol.logits)(pol.params, x, g)
    ref, _ = pol.network.apply(pol.params, {"candidates": x, "global": g})
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref), rtol=1e-6)
    assert logits.shape == (3, 11) and logits.dtype == jnp.float32
    assert float(jnp.std(logits)) > 0.1  # the sharpened head really discriminates


@pytest.mark.slow
@pytest.mark.parametrize("name, text", [
    ("missing", "no such file"), ("empty", "not a readable training checkpoint"),
    ("mismatch", "shape"), ("no_k", "n_swarm")])
def test_bad_checkpoints_raise_clear_errors(checkpoints, tmp_path, name, text):
    path = {"missing": tmp_path / "nope", "empty": tmp_path}.get(name) or checkpoints.get(name)
    with pytest.raises(P.PolicyLoadError, match=text):
        P.load_policy(path)


def _cli(tmp_path, name, ckpt, *extra):
    out = tmp_path / name
    argv = ["--policy", "trained", "--checkpoint", str(ckpt), "--lattice-size", "6", "6", "10",
            "--events", "120", "--log-every", "60", "--replicas", "3", "--seed", "4",
            "--out", str(out), "--quiet", *extra]
    return simulate.main(argv), out


def _rows(out):
    with open(out / "timeseries.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _check_weighted_summary(out):
    summary = json.loads((out / "summary.json").read_text())
    rows = _rows(out)
    assert len(rows) == 3 * 3 and {r["replica"] for r in rows} == {"0", "1", "2"}
    log_w = np.array(summary["log_weight"])
    for event in ("0", "60", "120"):
        at = [r for r in rows if r["event"] == event]
        lw = np.array([float(r["log_weight"]) for r in at])
        ess = {float(r["ess"]) for r in at}
        assert len(ess) == 1 and np.isclose(ess.pop(), float(batch_ess_ratio(jnp.asarray(lw))))
    np.testing.assert_allclose([float(r["log_weight"]) for r in rows if r["event"] == "120"], log_w)
    iw = summary["importance_weighted"]
    for name in ("roughness", "coverage", "o_ti_ratio", "mean_height"):
        est, se = weighted_mean(jnp.asarray(summary["final"][name]["per_replica"]), jnp.asarray(log_w))
        assert np.isclose(iw[name]["estimate"], float(est)) and np.isclose(iw[name]["stderr"], float(se))
    assert np.isclose(iw["batch_ess_ratio"], float(batch_ess_ratio(jnp.asarray(log_w))))
    assert summary["events_per_second"] > 0 and summary["peak_memory_bytes"] > 0
    # three replicas of a sharp policy: an effective sample below 3 is flagged, never hidden
    assert iw["n"] == 3 and iw["khat"] is None  # k-hat needs >= 21 replicas
    assert iw["reliable"] is False and "batch ESS" in iw["reasons"][0]
    # a finished run's last rows carry the real stop reason, not "running"
    assert [r["status"] for r in rows if r["event"] == "120"] == ["done"] * 3
    return summary, log_w


@pytest.mark.slow
def test_cli_candidate_mode_weights_and_estimates(checkpoints, tmp_path):
    code, out = _cli(tmp_path, "cand", checkpoints["store"])
    assert code == 0
    summary, log_w = _check_weighted_summary(out)
    assert summary["mode"] == "candidates" and summary["trained_policy"]["n_swarm"] == K
    assert np.all(log_w != 0) and np.all(np.isfinite(log_w))  # a sharp policy is reweighted
    step_ess = np.array(summary["trained_policy"]["step_ess_mean"])
    assert np.all((step_ess > 0) & (step_ess < 1))
    # The uniform policy (zero logits) is classical KMC: weights exactly 1, ESS 1.
    code, out = _cli(tmp_path, "uniform", checkpoints["uniform"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["log_weight"] == [0.0, 0.0, 0.0] and summary["ess"] == [1.0, 1.0, 1.0]
    assert summary["trained_policy"]["step_ess_mean"] == pytest.approx([1.0] * 3, abs=1e-6)


# Full-lattice mode settings shared by the runs below, so that they compile one program.
FULL = ("--mode", "full", "--context-refresh", "50", "--react-slots", "2")


@pytest.fixture(scope="module")
def full_run(checkpoints, tmp_path_factory):
    """One uninterrupted full-lattice run of the sharp policy: (exit code, output folder)."""
    return _cli(tmp_path_factory.mktemp("full"), "full", checkpoints["final"], *FULL)


@pytest.mark.slow
def test_cli_full_lattice_mode(full_run):
    code, out = full_run
    assert code == 0
    summary, log_w = _check_weighted_summary(out)
    assert summary["mode"] == "full" and summary["trained_policy"]["context_refresh_events"] == 50
    assert summary["trained_policy"]["react_slots"] == 2
    assert np.all(log_w != 0) and np.all(np.isfinite(log_w))
    film = np.load(out / "final_state.npz")
    assert film["heights"].shape == (3, 6, 6)


@pytest.mark.parametrize("extra, text", [
    (["--mode", "full"], "scores a whole K-set"),
    (["--react-slots", "2"], "only used with --mode full"),
])
@pytest.mark.slow
def test_cli_usage_errors(checkpoints, tmp_path, capsys, extra, text):
    code, out = _cli(tmp_path, "never", checkpoints["flat" if "full" in extra else "final"], *extra)
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("swarm_jax.simulate: error:") and text in err[0]


def test_cli_rejects_a_non_checkpoint(tmp_path, capsys):
    code, _ = _cli(tmp_path, "never", tmp_path)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--checkpoint" in err[0] and "not a readable training checkpoint" in err[0]


@pytest.mark.slow
def test_incremental_film_stats_give_the_global_features(checkpoints):
    """Candidate mode keeps FilmStats per event; they equal a recount, and the O(Lz) global
    features equal swarm.features.global_features, after a run with every kind of event."""
    from swarm_jax.physics import PhysicsParams, init_flat, make_rate_tables
    from swarm_jax.swarm.features import global_features

    pol = P.load_policy(checkpoints["final"])
    phys = PhysicsParams(temperature=300.0)
    tables = make_rate_tables(phys)
    lattice = init_flat((5, 4, 9), phys)

    policy = S.CandidatePolicy(tables=tables, physics=phys, params=pol.params, logits_fn=pol.logits, n_swarm=K)

    def body(c, key):
        return S.candidates_step(c, policy, key, 0.3), None

    carry, _ = jax.jit(lambda c, k: jax.lax.scan(body, c, jax.random.split(k, 600)))(
        S.candidate_carry(lattice), jax.random.key(9))
    lat, stats = carry.lattice, carry.stats
    assert int(lat.event_counts[0] + lat.event_counts[1]) > 5 and int(lat.event_counts[2]) > 5
    assert int(lat.event_counts[4]) > 0 and int(stats.n_oxide) > 0  # reactions happened
    fresh = S.film_stats(lat)
    np.testing.assert_array_equal(np.asarray(stats.height_counts), np.asarray(fresh.height_counts))
    assert int(stats.n_oxide) == int(fresh.n_oxide)
    np.testing.assert_allclose(np.asarray(S.global_features_from_stats(lat, stats, tables, phys, 0.3)),
                               np.asarray(global_features(lat, tables, phys, 0.3)), rtol=1e-6, atol=1e-7)


class _Crash(Exception):
    """Stands for a process killed right after a checkpoint was committed."""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["candidates", "full"])
def test_trained_run_resumes_bit_identically(checkpoints, request, tmp_path, monkeypatch, mode):
    """The policy's carry (running log weights, film statistics or score caches) is checkpointed
    with the lattices: crash after the 60-event checkpoint, --resume, same files. (The full
    mode's uninterrupted reference is the module's ``full_run``.)"""
    extra = list(FULL) if mode == "full" else ["--mode", mode]
    code, ref = (request.getfixturevalue("full_run") if mode == "full"
                 else _cli(tmp_path, "ref", checkpoints["final"], *extra))
    assert code == 0

    def crash(progress):
        raise _Crash

    monkeypatch.setattr(simulate, "_after_checkpoint", crash)
    with pytest.raises(_Crash):
        _cli(tmp_path, "crashed", checkpoints["final"], *extra, "--checkpoint-every", "60")
    monkeypatch.setattr(simulate, "_after_checkpoint", lambda progress: None)
    out = tmp_path / "crashed"
    assert simulate.main(["--resume", "--out", str(out), "--quiet"]) == 0
    assert (out / "timeseries.csv").read_bytes() == (ref / "timeseries.csv").read_bytes()
    a, b = np.load(out / "final_state.npz"), np.load(ref / "final_state.npz")
    for name in ("heights", "species", "oxide"):
        np.testing.assert_array_equal(a[name], b[name])
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (out, ref))
    assert sa["log_weight"] == sb["log_weight"] and sa["resumed_from_events"] == 60
    assert sa["importance_weighted"] == sb["importance_weighted"]
