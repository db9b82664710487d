"""Honest importance-weighted estimates: SNIS standard errors, batch ESS and the PSIS tail shape.

Trajectories run with a policy that is not the physical one carry log importance weights
``log W_i`` (docs/physics.md, SwarmThinkers weights). The physical mean of an observable ``A`` over
``n`` replicas is the self-normalised importance-sampling (SNIS) estimate

    Â = Σ p_i A_i,     p_i = W_i / Σ_j W_j,

with the delta-method standard error (Owen, *Monte Carlo theory, methods and examples*, §9.2)

    se(Â) = sqrt( Σ p_i² (A_i − Â)² ),

which reduces to the usual ``s / sqrt(n)`` (up to the ``(n−1)/n`` factor) for equal weights.
That error is only as good as the weights: when one replica carries nearly all the weight the
formula returns almost 0 (the issue that motivated this module: log-weights −6438, −7157, −6411,
−8067 give ``0.109 ± 1e-14``). Two diagnostics say when not to trust it:

* the batch effective sample size ``ESS = (Σ W)² / Σ W²`` (Kish), in [1, n];
* the Pareto-smoothed importance sampling (PSIS) shape ``k̂`` of the weights' upper tail
  (Vehtari, Simpson, Gelman, Yao & Gabry, *Pareto smoothed importance sampling*, JMLR 2024): a
  generalized Pareto distribution is fitted to the ``M = ceil(min(n/5, 3 sqrt(n)))`` largest
  weights (their exceedances over the next-largest weight) with the Zhang & Stephens (2009)
  empirical-Bayes estimator, and its shape is shrunk towards 0.5 by a weakly informative prior
  worth 10 observations. ``k̂ < 0.5``: finite variance, the estimate is fine; ``0.5 ≤ k̂ ≤ 0.7``:
  usable; ``k̂ > 0.7``: the SNIS estimate and its error are not reliable (the ESS itself is then
  optimistic). ``k̂`` needs a tail of at least :data:`MIN_TAIL` weights, i.e. ``n ≥ 21``.

:func:`assess_weights` turns these into ``reliable`` (bool) and ``reasons`` (a list of one-line
strings): reliable means ESS ≥ max(:data:`ESS_FLOOR_RATIO` · n, :data:`ESS_FLOOR_COUNT`) and,
when ``k̂`` can be estimated, ``k̂ ≤`` :data:`KHAT_THRESHOLD`. Equal weights (the classical
policy) are always reliable: the estimate is the plain replica mean.

NumPy only (no JAX): ``swarm_jax.simulate`` and ``swarm_jax.analyze`` share these definitions, as
well as :func:`mean_stderr` for unweighted replica statistics.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

__all__ = [
    "ESS_FLOOR_COUNT",
    "ESS_FLOOR_RATIO",
    "KHAT_THRESHOLD",
    "MIN_TAIL",
    "assess_weights",
    "batch_ess",
    "gpd_fit",
    "mean_stderr",
    "psis_khat",
    "snis_estimate",
    "weighted_estimates",
]

#: Below this batch ESS ratio (ESS / n) weighted estimates are flagged unreliable.
ESS_FLOOR_RATIO = 0.1
#: Below this batch ESS (absolute count of effective replicas) they are flagged too.
ESS_FLOOR_COUNT = 3.0
#: Above this PSIS tail shape the weights' variance is effectively infinite (Vehtari et al.).
KHAT_THRESHOLD = 0.7
#: Smallest tail (number of largest weights) a generalized Pareto fit is attempted on.
MIN_TAIL = 5
_PRIOR_WEIGHT = 10.0  # observations' worth of the weakly informative prior on k, centred at 0.5
_PRIOR_CENTRE = 0.5


def _log_weights(log_weights) -> np.ndarray:
    lw = np.asarray(log_weights, dtype=np.float64).reshape(-1)
    if lw.size == 0:
        raise ValueError("log_weights: need at least one replica")
    if not np.all(np.isfinite(lw)):
        raise ValueError("log_weights: every log weight must be finite")
    return lw


def _normalised(lw: np.ndarray) -> np.ndarray:
    w = np.exp(lw - lw.max())
    return w / w.sum()


def batch_ess(log_weights) -> float:
    """Kish batch ESS ``(Σ W)² / Σ W²`` of log weights (n,), in [1, n] (n for equal weights)."""
    p = _normalised(_log_weights(log_weights))
    return float(1.0 / np.sum(p * p))


def snis_estimate(values, log_weights) -> tuple[float, Optional[float]]:
    """SNIS estimate ``Σ p_i A_i`` and its delta-method standard error.

    Args:
        values: (n,) observable per replica.
        log_weights: (n,) log importance weights.

    Returns:
        ``(estimate, stderr)``; ``stderr`` is ``None`` for one replica.
    """
    lw = _log_weights(log_weights)
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    if a.shape != lw.shape:
        raise ValueError(f"values {a.shape} and log_weights {lw.shape} differ in shape")
    p = _normalised(lw)
    est = float(np.sum(p * a))
    if a.size < 2:
        return est, None
    return est, float(math.sqrt(np.sum(p * p * (a - est) ** 2)))


def mean_stderr(values) -> dict:
    """Unweighted replica statistics ``{"per_replica", "mean", "stderr"}`` of (n,) values.

    ``stderr`` is ``s / sqrt(n)`` with the ``n − 1`` sample deviation, ``None`` for one value.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    stderr = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else None
    return {"per_replica": v.tolist(), "mean": float(v.mean()), "stderr": stderr}


def gpd_fit(exceedances) -> tuple[float, float]:
    """Generalized Pareto fit ``(k, sigma)`` to positive exceedances (m,), Zhang & Stephens (2009).

    The GPD has survival function ``(1 + k x / sigma)^(-1/k)``. Zhang & Stephens reparametrise
    by ``theta = -k / sigma`` and, for ``theta`` fixed, the maximum-likelihood shape is
    ``k(theta) = mean(log(1 - theta x))``; the profile log-likelihood is
    ``m (log(-theta / k(theta)) - k(theta) - 1)``. ``theta`` is averaged over a grid of
    ``30 + sqrt(m)`` points (quantile-spaced, anchored at the first quartile and the maximum)
    weighted by their profile likelihoods. The shape is then shrunk towards 0.5 by a prior worth
    ten observations, as in PSIS.

    Args:
        exceedances: (m,) values ``x_i − u > 0`` over a threshold ``u``, m ≥ :data:`MIN_TAIL`.

    Returns:
        ``(k_hat, sigma_hat)``.
    """
    x = np.sort(np.asarray(exceedances, dtype=np.float64).reshape(-1))
    m = x.size
    if m < MIN_TAIL:
        raise ValueError(f"gpd_fit: need at least {MIN_TAIL} exceedances, got {m}")
    if not (np.all(np.isfinite(x)) and x[0] >= 0 and x[-1] > 0):
        raise ValueError("gpd_fit: exceedances must be finite, >= 0 and not all 0")
    grid = 30 + int(math.sqrt(m))
    j = np.arange(1, grid + 1, dtype=np.float64)
    quartile = x[max(0, int(m / 4 + 0.5) - 1)]
    quartile = quartile if quartile > 0 else x[x > 0][0]
    theta = 1.0 / x[-1] + (1.0 - np.sqrt(grid / (j - 0.5))) / (3.0 * quartile)
    k_of_theta = np.mean(np.log1p(-theta[:, None] * x[None, :]), axis=1)
    profile = m * (np.log(-theta / k_of_theta) - k_of_theta - 1.0)
    weights = np.exp(profile - profile.max())
    weights /= weights.sum()
    theta_hat = float(np.sum(weights * theta))
    k_hat = float(np.mean(np.log1p(-theta_hat * x)))
    sigma_hat = -k_hat / theta_hat
    k_hat = (m * k_hat + _PRIOR_WEIGHT * _PRIOR_CENTRE) / (m + _PRIOR_WEIGHT)
    return k_hat, float(sigma_hat)


def tail_length(n: int) -> int:
    """PSIS tail length ``M = ceil(min(n / 5, 3 sqrt(n)))`` for n weights."""
    return int(math.ceil(min(n / 5.0, 3.0 * math.sqrt(n))))


def psis_khat(log_weights) -> Optional[float]:
    """PSIS tail shape k̂ of importance weights given as logs (n,); ``None`` when the tail is too
    short (fewer than :data:`MIN_TAIL` weights, n < 21) or flat (all tail weights equal).

    The ``M`` largest weights (scaled by the largest, so nothing overflows) minus the
    ``(M+1)``-th largest are the exceedances fitted by :func:`gpd_fit`.
    """
    lw = np.sort(_log_weights(log_weights))
    n = lw.size
    m = tail_length(n)
    if m < MIN_TAIL or m >= n:
        return None
    w = np.exp(lw - lw[-1])
    exceed = w[n - m:] - w[n - m - 1]
    if not np.any(exceed > 0):
        return None
    return gpd_fit(exceed)[0]


def assess_weights(log_weights) -> dict:
    """Diagnostics of a batch of log weights (n,).

    Returns:
        ``{"n", "batch_ess", "batch_ess_ratio", "khat", "reliable", "reasons"}``: ``khat`` is
        ``None`` when it cannot be estimated; ``reasons`` lists why the weights are not reliable
        (empty when ``reliable``), each a short phrase fit for a console line.
    """
    lw = _log_weights(log_weights)
    n = lw.size
    uniform = bool(np.all(lw == lw[0]))
    ess = float(n) if uniform else batch_ess(lw)
    khat = None if uniform else psis_khat(lw)
    reasons = []
    if not uniform:
        floor = max(ESS_FLOOR_RATIO * n, ESS_FLOOR_COUNT)
        if ess < floor:
            reasons.append(f"batch ESS {ess:.3g} of {n} replicas is below the floor "
                           f"max({ESS_FLOOR_RATIO:g} n, {ESS_FLOOR_COUNT:g}) = {floor:.3g}")
        if khat is not None and khat > KHAT_THRESHOLD:
            reasons.append(f"PSIS tail shape k-hat {khat:.2f} > {KHAT_THRESHOLD:g} "
                           "(heavy-tailed weights: the error bars are too small)")
    return {"n": n, "batch_ess": ess, "batch_ess_ratio": ess / n, "khat": khat,
            "reliable": not reasons, "reasons": reasons}


def weighted_estimates(observables: dict, log_weights) -> dict:
    """SNIS estimates of several observables sharing one set of weights, with diagnostics.

    Args:
        observables: name -> (n,) values per replica.
        log_weights: (n,) log importance weights.

    Returns:
        ``{name: {"estimate", "stderr"}, ...}`` plus the keys of :func:`assess_weights`.
    """
    out = {}
    for name, values in observables.items():
        est, se = snis_estimate(values, log_weights)
        out[name] = {"estimate": est, "stderr": se}
    out.update(assess_weights(log_weights))
    return out
