"""analysis.importance estimators of a probability and a mean, their diagnostics and efficiencies."""

import math

import numpy as np
import pytest

from swarm_jax.analysis import importance as I


def test_plain_estimate_is_mean_of_w_times_a():
    lw = np.log([0.5, 2.0, 1.0, 0.5])
    a = np.array([1.0, 0.0, 1.0, 1.0])
    out = I.plain_estimate(a, lw)
    f = np.array([0.5, 0.0, 1.0, 0.5])
    assert out["estimate"] == pytest.approx(f.mean())
    assert out["stderr"] == pytest.approx(f.std(ddof=1) / 2)
    assert out["per_trajectory_variance"] == pytest.approx(f.var(ddof=1))


def test_classical_probability_is_binomial_and_reliable():
    a = np.zeros(2000)
    a[:40] = 1
    out = I.probability_estimate(a, np.zeros(2000))
    assert out["estimate"] == pytest.approx(0.02)
    assert out["stderr"] == pytest.approx(math.sqrt(0.02 * 0.98 * 2000 / 1999 / 2000))
    assert out["hits"] == 40 and out["integrand_ess"] == pytest.approx(40)
    assert out["integrand_khat"] is None  # flat integrand: no tail
    assert out["mean_weight"] == 1.0 and out["mean_weight_z"] == 0.0
    assert out["reliable"], out["reasons"]


def test_too_few_hits_is_flagged():
    a = np.zeros(1000)
    a[:3] = 1
    out = I.probability_estimate(a, np.zeros(1000))
    assert not out["reliable"] and "only 3" in out["reasons"][0]


def test_exact_importance_sampler_of_a_gaussian_tail_is_reliable_and_right():
    """q = N(μ, 1) shifted to the event A = {x > 3} of p = N(0, 1): W = exp(−μx + μ²/2)."""
    rng = np.random.default_rng(0)
    mu, n = 3.0, 20_000
    x = rng.normal(mu, 1.0, n)
    lw = -mu * x + mu * mu / 2
    out = I.probability_estimate((x > 3).astype(float), lw)
    exact = 0.5 * math.erfc(3 / math.sqrt(2))
    assert abs(out["estimate"] - exact) < 3 * out["stderr"]
    assert out["reliable"], out["reasons"]
    assert out["per_trajectory_variance"] < exact * (1 - exact) / 10  # far better than plain MC


def test_heavy_tailed_integrand_is_flagged():
    """q = N(0, 0.5²) for p = N(0, 1): W has infinite variance (k = 0.75); the event |x| > 1.5 is
    reached mostly through the tail, the estimate is typically far too low with a small error."""
    rng = np.random.default_rng(1)
    n, sd = 4000, 0.5
    x = rng.normal(0.0, sd, n)
    lw = -x * x / 2 + x * x / (2 * sd * sd) + math.log(sd)
    out = I.probability_estimate((np.abs(x) > 1.5).astype(float), lw)
    assert not out["reliable"]


def test_mean_weight_check():
    assert I.mean_weight_check(np.zeros(10))["mean_weight_z"] == 0.0
    assert I.mean_weight_check(np.full(10, -1.0))["mean_weight_z"] == -math.inf
    rng = np.random.default_rng(2)
    lw = rng.normal(-0.5, 1.0, 50_000)  # lognormal with E[W] = 1
    assert abs(I.mean_weight_check(lw)["mean_weight_z"]) < 4


def test_mean_estimate_is_snis_and_classical_is_reliable():
    rng = np.random.default_rng(3)
    a = rng.normal(1.0, 0.1, 500)
    out = I.mean_estimate(a, np.zeros(500))
    assert out["estimate"] == pytest.approx(a.mean())
    assert out["reliable"]
    assert out["per_trajectory_variance"] == pytest.approx(a.var(ddof=0), rel=1e-9)


def test_efficiency_and_interval():
    eff = I.estimator_efficiency(0.01, 0.001, 1.0, 4.0)
    assert eff["equal_replicas"] == pytest.approx(10) and eff["equal_time"] == pytest.approx(2.5)
    rng = np.random.default_rng(4)
    classical = (rng.uniform(size=5000) < 0.05).astype(float)
    sampler = (rng.uniform(size=2000) < 0.5).astype(float)
    lw = np.full(2000, math.log(0.1))  # W·1_A = 0.1 on half: P = 0.05, variance 0.0025
    ci = I.efficiency_interval("probability", classical, sampler, lw, [0.5, 0.5, 0.5], n_boot=300)
    point = np.var(classical, ddof=1) / np.var(sampler * 0.1, ddof=1)
    assert ci["equal_replicas"][0] < point < ci["equal_replicas"][1]
    assert ci["equal_time"] == pytest.approx([0.5 * v for v in ci["equal_replicas"]])
    assert I.group_mse([1.0, 3.0], 2.0) == 1.0
    with pytest.raises(ValueError, match="kind"):
        I.per_trajectory_variance("median", [1.0], [0.0])


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="indicator"):
        I.probability_estimate([0.0, 0.5], [0.0, 0.0])
    with pytest.raises(ValueError, match="differ in shape"):
        I.plain_estimate([1.0], [0.0, 0.0])
