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

Estimators judged against classical KMC (docs/sampling.md): :func:`probability_estimate` (the plain
``mean(W·1_A)``, with the ESS and ``k̂`` of the integrand ``W·1_A``, the free check
``E_q[W] = 1`` (:func:`mean_weight_check`) and its own ``reliable`` rule), :func:`mean_estimate`
(SNIS, with :func:`assess_weights`), :func:`estimator_efficiency` per trajectory and at equal wall
time, :func:`efficiency_interval` (bootstrap) and :func:`group_mse`. Naming:
:func:`effective_sample_size` here is a *count* in [1, n] (the ``batch_ess`` column);
``swarm_jax.swarm.weights.batch_ess_ratio`` is the *ratio* ESS / n;
:func:`integrand_diagnostics` reports ``integrand_ess``, a count in [1, hits].

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
    "MEAN_WEIGHT_Z",
    "MIN_HITS",
    "MIN_TAIL",
    "assess_weights",
    "effective_sample_size",
    "efficiency_interval",
    "estimator_efficiency",
    "gpd_fit",
    "group_mse",
    "integrand_diagnostics",
    "mean_estimate",
    "mean_stderr",
    "mean_weight_check",
    "per_trajectory_variance",
    "plain_estimate",
    "probability_estimate",
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


def effective_sample_size(log_weights) -> float:
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
    return _tail_khat(lw, tail_length(lw.size))


def _tail_khat(sorted_logs: np.ndarray, m: int) -> Optional[float]:
    """k̂ of the ``m`` largest of ascending log values (exceedances over the next one), or None."""
    n = sorted_logs.size
    if m < MIN_TAIL or m >= n:
        return None
    w = np.exp(sorted_logs - sorted_logs[-1])
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
    ess = float(n) if uniform else effective_sample_size(lw)
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


# --------------------------------------------------------------------------- estimators of a
# probability and of a mean from a sampler's trajectories, with their diagnostics (docs/sampling.md)

#: Fewer hits of the event (or effective hits of the integrand W·1_A) than this: the error bar of
#: a probability rests on a handful of trajectories and is flagged unreliable.
MIN_HITS = 10
#: |mean W − 1| above this many standard errors: the free check E_q[W] = 1 fails (the weights'
#: tail is not sampled) and the estimate is flagged unreliable.
MEAN_WEIGHT_Z = 3.0


def _values_like(values, lw: np.ndarray, name: str = "values") -> np.ndarray:
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    if a.shape != lw.shape:
        raise ValueError(f"{name} {a.shape} and log_weights {lw.shape} differ in shape")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: every value must be finite")
    return a


def plain_estimate(values, log_weights) -> dict:
    """The plain (unnormalised) importance estimate ``mean(W·A)`` of ``E_physics[A]``.

    Unbiased for any sampler (``E_q[W·A] = E_p[A]``); for a probability ``A = 1_event``. The
    standard error is ``sd(W·A) / sqrt(n)`` (``n − 1`` deviation).

    Args:
        values: (n,) observable per trajectory. log_weights: (n,) log W (0 for classical).

    Returns:
        ``{"estimate", "stderr", "per_trajectory_variance", "n"}``; the variance of one
        trajectory's ``W·A`` (``stderr² · n``), ``None`` with ``stderr`` for n = 1.
    """
    lw = _log_weights(log_weights)
    f = np.exp(lw) * _values_like(values, lw)
    n = f.size
    var = float(f.var(ddof=1)) if n > 1 else None
    return {"estimate": float(f.mean()), "stderr": math.sqrt(var / n) if var is not None else None,
            "per_trajectory_variance": var, "n": n}


def integrand_diagnostics(values, log_weights) -> dict:
    """Diagnostics of the integrand ``|W·A|`` of a plain estimate (for a probability, ``W·1_A``:
    the weights off the event set do not enter the estimate and do not matter).

    Returns:
        ``{"hits", "integrand_ess", "integrand_khat"}``: ``hits`` = trajectories with
        ``W·A ≠ 0``; ``integrand_ess = (Σ|f|)² / Σf²`` (a count in [1, hits], 0 without hits: the
        number of trajectories that effectively carry the estimate); ``integrand_khat`` the PSIS
        tail shape of ``|f|`` (its ``M = ceil(min(n/5, 3 sqrt n))`` largest values over all n,
        fewer when there are fewer hits; ``None`` when under :data:`MIN_TAIL` or flat).
    """
    lw = _log_weights(log_weights)
    a = np.abs(_values_like(values, lw))
    nz = a > 0
    hits = int(nz.sum())
    if hits == 0:
        return {"hits": 0, "integrand_ess": 0.0, "integrand_khat": None}
    log_f = np.sort(lw[nz] + np.log(a[nz]))
    p = np.exp(log_f - log_f[-1])
    ess = float(p.sum() ** 2 / np.sum(p * p))
    khat = _tail_khat(log_f, min(tail_length(lw.size), hits - 1))
    return {"hits": hits, "integrand_ess": ess, "integrand_khat": khat}


def mean_weight_check(log_weights) -> dict:
    """The free check ``E_q[W] = 1``: ``{"mean_weight", "mean_weight_stderr", "mean_weight_z"}``
    with ``z = (mean W − 1) / stderr`` (0 for exactly unit weights, ±inf for equal non-unit ones)."""
    lw = _log_weights(log_weights)
    w = np.exp(lw)
    mean = float(w.mean())
    se = float(w.std(ddof=1) / math.sqrt(w.size)) if w.size > 1 else 0.0
    if se > 0:
        z = (mean - 1.0) / se
    else:
        z = 0.0 if mean == 1.0 else math.copysign(math.inf, mean - 1.0)
    return {"mean_weight": mean, "mean_weight_stderr": se, "mean_weight_z": z}


def _weight_reason(check: dict) -> list[str]:
    if abs(check["mean_weight_z"]) > MEAN_WEIGHT_Z:
        return [f"mean weight {check['mean_weight']:.3g} ± {check['mean_weight_stderr']:.2g} is "
                f"{abs(check['mean_weight_z']):.1f} standard errors from 1 (E_q[W] = 1 fails: "
                "the weights' tail is not sampled)"]
    return []


def probability_estimate(indicator, log_weights) -> dict:
    """``P(A) = mean(W·1_A)`` with its standard error, diagnostics and a ``reliable`` flag.

    Not reliable (``reasons`` says why) when: fewer than :data:`MIN_HITS` hits or effective hits
    (``integrand_ess``); the integrand's PSIS ``k̂`` > :data:`KHAT_THRESHOLD` (heavy-tailed: the
    error bar is too small). Only the integrand ``W·1_A`` enters the estimate and its error, so
    only its diagnostics decide: a sampler tilted towards ``A`` rarely visits the trajectories far
    outside ``A``, whose weights are the largest, so ``E_q[W] = 1`` can fail (``|mean W − 1|`` >
    :data:`MEAN_WEIGHT_Z` standard errors) while ``P(A)`` is estimated correctly. That failure is
    reported in ``warnings`` (and ``mean_weight_consistent``), not as a reason.

    Returns:
        the keys of :func:`plain_estimate`, :func:`integrand_diagnostics` and
        :func:`mean_weight_check`, plus ``"reliable"``, ``"reasons"``, ``"warnings"`` and
        ``"mean_weight_consistent"``.
    """
    lw = _log_weights(log_weights)
    a = _values_like(indicator, lw, "indicator")
    if not np.all((a == 0) | (a == 1)):
        raise ValueError("indicator: values must be 0 or 1")
    out = plain_estimate(a, lw)
    out.update(integrand_diagnostics(a, lw))
    out.update(mean_weight_check(lw))
    reasons = []
    if out["hits"] < MIN_HITS:
        reasons.append(f"only {out['hits']} trajectories hit the event (< {MIN_HITS})")
    elif out["integrand_ess"] < MIN_HITS:
        reasons.append(f"effective hits (ESS of W·1_A) {out['integrand_ess']:.3g} < {MIN_HITS}")
    if out["integrand_khat"] is not None and out["integrand_khat"] > KHAT_THRESHOLD:
        reasons.append(f"PSIS k-hat of W·1_A {out['integrand_khat']:.2f} > {KHAT_THRESHOLD:g} "
                       "(heavy-tailed integrand: the error bar is too small)")
    warnings = _weight_reason(out)
    out.update(reliable=not reasons, reasons=reasons, warnings=warnings,
               mean_weight_consistent=not warnings)
    return out


def mean_estimate(values, log_weights) -> dict:
    """``E[A]`` by self-normalised importance sampling, with diagnostics and ``reliable``.

    SNIS (``Σ W A / Σ W``) rather than ``mean(W·A)`` for a mean: a typical observable (the
    roughness) varies little between trajectories, so ``W·A`` fluctuates mostly through ``W``;
    normalising cancels that (delta-method variance ``E[W²(A − μ)²]`` instead of ``Var(W·A)``),
    at an O(1/n) bias far below the error. Not reliable when :func:`assess_weights` says so
    (batch ESS, PSIS ``k̂`` of W: here every weight enters) or ``E_q[W] = 1`` fails.

    Returns:
        ``{"estimate", "stderr", "per_trajectory_variance", "n"}`` (``n·stderr²``), the keys of
        :func:`assess_weights` and :func:`mean_weight_check`, ``"reliable"``, ``"reasons"``.
    """
    lw = _log_weights(log_weights)
    a = _values_like(values, lw)
    est, se = snis_estimate(a, lw)
    out = {"estimate": est, "stderr": se, "n": lw.size,
           "per_trajectory_variance": se * se * lw.size if se is not None else None}
    out.update(assess_weights(lw))
    out.update(mean_weight_check(lw))
    weight_reasons = _weight_reason(out)
    reasons = list(out["reasons"]) + weight_reasons
    out.update(reliable=not reasons, reasons=reasons, warnings=[],
               mean_weight_consistent=not weight_reasons)
    return out


ESTIMATORS = {"probability": probability_estimate, "mean": mean_estimate}


def per_trajectory_variance(kind: str, values, log_weights) -> float:
    """Variance per trajectory of the estimator of ``kind`` ("probability" or "mean")."""
    if kind not in ESTIMATORS:
        raise ValueError(f"kind = {kind!r}: must be one of {sorted(ESTIMATORS)}")
    if kind == "probability":
        return plain_estimate(values, log_weights)["per_trajectory_variance"]
    lw = _log_weights(log_weights)
    return snis_estimate(values, lw)[1] ** 2 * lw.size


def estimator_efficiency(var_classical: float, var_sampler: float, seconds_classical: float,
                         seconds_sampler: float) -> dict:
    """Efficiency of a sampler against classical KMC (``> 1``: the sampler is better).

    ``equal_replicas = σ²_classical / σ²_sampler`` (variances per trajectory);
    ``equal_time = equal_replicas · t_classical / t_sampler`` (seconds per trajectory).
    """
    ratio = var_classical / var_sampler if var_sampler > 0 else math.inf
    return {"equal_replicas": ratio, "equal_time": ratio * seconds_classical / seconds_sampler}


def efficiency_interval(kind: str, classical_values, sampler_values, sampler_log_weights,
                        time_ratios, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """Percentile bootstrap interval of both efficiencies of :func:`estimator_efficiency`.

    Resamples, independently, the classical reference trajectories, the sampler's trajectories
    and the alternated timing pairs (``time_ratios``: ``t_classical / t_sampler`` per pair). A
    bootstrap sees only what was sampled: when the integrand is heavy-tailed (``reliable`` False)
    the interval is as optimistic as the error bar.

    Returns:
        ``{"equal_replicas": [low, high], "equal_time": [low, high]}``.
    """
    rng = np.random.default_rng(seed)
    c = np.asarray(classical_values, np.float64).reshape(-1)
    a = np.asarray(sampler_values, np.float64).reshape(-1)
    lw = _log_weights(sampler_log_weights)
    t = np.asarray(time_ratios, np.float64).reshape(-1)
    reps, times = np.empty(n_boot), np.empty(n_boot)
    for b in range(n_boot):
        vc = float(c[rng.integers(0, c.size, c.size)].var(ddof=1))
        i = rng.integers(0, a.size, a.size)
        vs = per_trajectory_variance(kind, a[i], lw[i])
        reps[b] = vc / vs if vs > 0 else math.inf
        times[b] = reps[b] * float(np.median(t[rng.integers(0, t.size, t.size)]))
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    return {"equal_replicas": [float(v) for v in np.percentile(reps, q)],
            "equal_time": [float(v) for v in np.percentile(times, q)]}


def group_mse(estimates, reference: float) -> float:
    """Mean squared error ``mean_g (est_g − reference)²`` of estimates from repeated groups (G,)."""
    e = np.asarray(estimates, np.float64).reshape(-1)
    return float(np.mean((e - reference) ** 2))
