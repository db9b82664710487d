"""Importance-weighted estimates: SNIS error, batch ESS, PSIS k-hat and the reliability flag."""

import math

import numpy as np
import pytest

from swarm_jax.analysis import importance as I

ISSUE_LOG_WEIGHTS = np.array([-6438.0, -7157.0, -6411.0, -8067.0])


@pytest.mark.parametrize("xi", [0.2, 0.5, 0.9])
def test_khat_recovers_the_pareto_shape(xi):
    """Weights drawn from a Pareto with tail index 1/xi have GPD tail shape xi."""
    rng = np.random.default_rng(1)
    khats = [I.psis_khat(np.log(rng.pareto(1.0 / xi, 20_000) + 1.0)) for _ in range(3)]
    assert abs(np.mean(khats) - xi) < 0.12, khats


def test_gpd_fit_recovers_shape_and_scale():
    rng = np.random.default_rng(2)
    k, sigma = 0.4, 2.5
    u = rng.uniform(size=50_000)
    x = sigma / k * ((1.0 - u) ** (-k) - 1.0)  # GPD quantile function
    k_hat, sigma_hat = I.gpd_fit(x)
    assert abs(k_hat - k) < 0.03 and abs(sigma_hat / sigma - 1) < 0.05


def test_khat_needs_a_tail_of_five():
    assert I.tail_length(21) == 5 and I.tail_length(20) == 4 and I.tail_length(10_000) == 300
    assert I.psis_khat(np.linspace(0, 1, 20)) is None
    assert I.psis_khat(np.linspace(0, 1, 21)) is not None
    assert I.psis_khat(np.zeros(100)) is None  # flat weights: no tail
    with pytest.raises(ValueError, match="at least 5"):
        I.gpd_fit([1.0, 2.0])


def test_issue_example_is_flagged():
    """Four replicas, one carrying all the weight: the error bar collapses, the flag does not."""
    roughness = np.array([0.12, 0.11, 0.10934, 0.13])
    est, se = I.snis_estimate(roughness, ISSUE_LOG_WEIGHTS)
    assert math.isclose(est, 0.10934, rel_tol=1e-9) and se < 1e-10
    d = I.assess_weights(ISSUE_LOG_WEIGHTS)
    assert math.isclose(d["batch_ess"], 1.0, rel_tol=1e-6) and d["n"] == 4
    assert d["reliable"] is False and d["khat"] is None
    assert "batch ESS 1 of 4" in d["reasons"][0]


def test_snis_with_a_mild_proposal_agrees_within_its_error():
    """Target N(0,1), proposal N(0.3,1): reliable, and the estimate of E[x] = 0 within 3 se."""
    rng = np.random.default_rng(3)
    x = rng.normal(0.3, 1.0, 4000)
    lw = -0.5 * x**2 + 0.5 * (x - 0.3) ** 2
    est, se = I.snis_estimate(x, lw)
    assert abs(est) < 3 * se
    d = I.assess_weights(lw)
    assert d["reliable"] and d["khat"] < 0.5 and d["batch_ess_ratio"] > 0.8


def test_heavy_tailed_weights_are_flagged_by_khat():
    """Proposal N(0, 0.4^2) for target N(0,1): infinite-variance weights (k = 1 - 0.16 = 0.84)."""
    rng = np.random.default_rng(4)
    x = rng.normal(0.0, 0.4, 4000)
    lw = -0.5 * x**2 + 0.5 * (x / 0.4) ** 2
    d = I.assess_weights(lw)
    assert d["khat"] > I.KHAT_THRESHOLD and not d["reliable"]
    assert any("k-hat" in r for r in d["reasons"])


def test_uniform_weights_are_the_plain_mean():
    v = np.array([1.0, 2.0, 4.0, 7.0])
    est, se = I.snis_estimate(v, np.zeros(4))
    plain = I.mean_stderr(v)
    assert est == pytest.approx(plain["mean"])
    assert se == pytest.approx(plain["stderr"] * math.sqrt(3 / 4))  # (n-1)/n variance factor
    d = I.assess_weights(np.full(4, -3.0))
    assert d["reliable"] and d["batch_ess"] == 4 and d["khat"] is None
    assert I.snis_estimate([5.0], [0.0]) == (5.0, None)
    assert I.mean_stderr([5.0]) == {"per_replica": [5.0], "mean": 5.0, "stderr": None}


def test_weighted_estimates_and_bad_input():
    out = I.weighted_estimates({"a": [1.0, 2.0, 3.0], "b": [0.0, 0.0, 1.0]}, [0.0, 0.0, 0.0])
    assert out["a"]["estimate"] == pytest.approx(2.0) and out["b"]["estimate"] == pytest.approx(1 / 3)
    assert out["reliable"] and out["batch_ess"] == 3
    with pytest.raises(ValueError, match="finite"):
        I.assess_weights([0.0, float("nan")])
    with pytest.raises(ValueError, match="differ in shape"):
        I.snis_estimate([1.0, 2.0], [0.0])
