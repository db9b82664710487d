"""Thickness-ended rollouts and the importance estimators against an exactly solvable case.

Random deposition: with hops and desorption frozen out (barriers of 50 eV) every open column
receives the next deposited atom with the same probability 1/C (reactions change species, never
heights), so after N deposits the heights are multinomial(N; 1/C, ..., 1/C) and the distribution
of S = Σ h² (W² = S/C − (N/C)²) is computed exactly below by a dynamic programme over columns.
The box is N + 2 layers tall, so the ceiling can never be reached.

Bounds come from the statistics (chi-square p-value, 3 standard errors) with fixed seeds; they
were not tuned to pass.
"""

import math

import jax
import numpy as np
import pytest
from scipy import stats

from swarm_jax.analysis import importance as I
from swarm_jax.physics import PhysicsParams
from swarm_jax.physics.lattice import deposit_target
from swarm_jax.swarm.rollout import GrowthSpec, grow_classical, grow_sampler, tilt_logits

pytestmark = pytest.mark.slow  # not in the quick tier: statistical checks over thousands of trajectories

LX = LY = 3
C = LX * LY
THETA = 2.0  # ML
N = deposit_target(C, THETA)  # 18 atoms
LZ = N + 2
REPLICAS = 4096
K = 8
FROZEN = PhysicsParams(temperature=180.0, deposition_rate=0.1, o_ti_flux_ratio=2.0,
                       e_diff_ti=50.0, e_diff_o=50.0, e_des_ti=50.0, e_des_o=50.0)


def exact_sum_h2_distribution(n_atoms: int, n_columns: int) -> dict:
    """{S: P(Σ h² = S)} for multinomial(n_atoms; uniform over n_columns) heights (NumPy DP)."""
    # f[n] = {S: Σ Π_c 1/h_c!} over height vectors of the columns so far with Σ h = n.
    f = [dict() for _ in range(n_atoms + 1)]
    f[0][0] = 1.0
    for _ in range(n_columns):
        g = [dict() for _ in range(n_atoms + 1)]
        for n, row in enumerate(f):
            for s, v in row.items():
                for h in range(n_atoms - n + 1):
                    key = s + h * h
                    g[n + h][key] = g[n + h].get(key, 0.0) + v / math.factorial(h)
        f = g
    norm = math.factorial(n_atoms) / n_columns ** n_atoms
    return {s: v * norm for s, v in sorted(f[n_atoms].items())}


EXACT = exact_sum_h2_distribution(N, C)


def rare_threshold(max_probability: float = 0.02) -> int:
    """Largest attainable S whose exact P(Σh² ≤ S) is at most ``max_probability``."""
    cdf, best = 0.0, None
    for s, p in EXACT.items():
        cdf += p
        if cdf > max_probability:
            break
        best = s
    return best


S_STAR = rare_threshold()
P_EXACT = sum(p for s, p in EXACT.items() if s <= S_STAR)


@pytest.fixture(scope="module")
def runs():
    spec = GrowthSpec((LX, LY, LZ), N, REPLICAS)
    classical = jax.jit(lambda k: grow_classical(spec, FROZEN, k))(jax.random.key(11))
    sampler = jax.jit(lambda s, k: grow_sampler(spec, FROZEN, tilt_logits, s, K, k))
    return {"classical": classical, "tilt": sampler(0.5, jax.random.key(12)),
            "over": sampler(4.0, jax.random.key(13))}


def test_exact_distribution_is_normalised_and_has_the_multinomial_moments():
    p = np.array(list(EXACT.values()))
    s = np.array(list(EXACT.keys()))
    assert abs(p.sum() - 1.0) < 1e-12
    # E[h²] = Var + mean² = N(1/C)(1 − 1/C) + (N/C)² per column.
    assert abs(np.sum(p * s) - C * (N / C * (1 - 1 / C) + (N / C) ** 2)) < 1e-9
    assert 0.001 < P_EXACT <= 0.02


def test_every_replica_stops_at_the_target(runs):
    for r in runs.values():
        assert np.all(np.asarray(r.deposited) == N) and np.all(np.asarray(r.reached))
        assert not np.any(np.asarray(r.ceiling))
        assert np.all(np.asarray(r.sum_h) == N)  # nothing desorbs in the frozen regime
        w2 = np.asarray(r.sum_h2) / C - (N / C) ** 2
        np.testing.assert_allclose(np.asarray(r.roughness) ** 2, w2, atol=1e-9)


def test_classical_rollout_matches_the_exact_distribution(runs):
    s = np.asarray(runs["classical"].sum_h2)
    assert np.all(np.asarray(runs["classical"].log_weight) == 0.0)
    values = np.array(list(EXACT.keys()))
    probs = np.array(list(EXACT.values()))
    counts = np.array([(s == v).sum() for v in values])
    assert counts.sum() == REPLICAS  # every observed S is attainable
    # Merge the tails into bins with >= 5 expected counts, then a chi-square test.
    expected = probs * REPLICAS
    bins_o, bins_e, acc_o, acc_e = [], [], 0, 0.0
    for o, e in zip(counts, expected):
        acc_o, acc_e = acc_o + o, acc_e + e
        if acc_e >= 5:
            bins_o.append(acc_o), bins_e.append(acc_e)
            acc_o, acc_e = 0, 0.0
    bins_o[-1] += acc_o
    bins_e[-1] += acc_e
    chi2 = np.sum((np.array(bins_o) - np.array(bins_e)) ** 2 / np.array(bins_e))
    p_value = stats.chi2.sf(chi2, len(bins_o) - 1)
    assert p_value > 1e-3, (chi2, len(bins_o), p_value)


def test_tilted_sampler_estimates_the_rare_probability(runs):
    r = runs["tilt"]
    hit = (np.asarray(r.sum_h2) <= S_STAR).astype(float)
    est = I.probability_estimate(hit, np.asarray(r.log_weight))
    assert abs(est["estimate"] - P_EXACT) < 3 * est["stderr"], (est["estimate"], est["stderr"], P_EXACT)
    assert est["reliable"], est["reasons"]
    assert abs(est["mean_weight"] - 1.0) < 3 * est["mean_weight_stderr"]
    # The tilt makes the event common: more hits than classical's expected count.
    assert est["hits"] > 3 * P_EXACT * REPLICAS
    # Better than classical per trajectory (classical variance P(1 − P)).
    assert est["per_trajectory_variance"] < P_EXACT * (1 - P_EXACT)


def test_over_tilted_sampler_is_confidently_wrong_and_flagged(runs):
    r = runs["over"]
    hit = (np.asarray(r.sum_h2) <= S_STAR).astype(float)
    est = I.probability_estimate(hit, np.asarray(r.log_weight))
    # The failure mode: the error bar excludes the exact answer ...
    assert abs(est["estimate"] - P_EXACT) > 3 * est["stderr"], (est["estimate"], est["stderr"], P_EXACT)
    # ... and the flag says so.
    assert not est["reliable"]
    assert est["reasons"]
