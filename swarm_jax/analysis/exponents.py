"""Scaling-exponent fits: log-log ordinary least squares with honest error bars (NumPy only).

docs/physics.md asks for exponents from log-log fits over a chosen window, never a one-point
estimate. Everything here fits ``log y = intercept + slope · log x`` by ordinary least squares
over the points whose ``x`` lies in a closed window ``[x_min, x_max]`` and whose ``y > 0``.

Error bars
----------
- ``ols_stderr``: the textbook standard error of the OLS slope,
  ``sqrt(Σ r_i² / (n − 2) / Σ (u_i − ū)²)`` with ``u = log x`` and ``r`` the residuals. It is the
  right error when the residuals are independent (i.i.d. noise on each point).
- ``bootstrap_stderr``: when several independent replicas (trajectories, surfaces) are given, the
  curve is averaged over replicas first and the fit is made to that mean; the error is then the
  standard deviation of the fitted slope over ``n_boot`` bootstrap resamples of the replicas
  (replicas drawn with replacement). This captures the strong correlation between the points of
  one growth curve (W(t) at successive t shares the history), which the OLS error ignores.
- ``stderr`` (the one to quote) is ``max(ols_stderr, bootstrap_stderr)`` when both exist,
  otherwise the OLS one: conservative, and never smaller than either honest estimate.

Importance weights (docs/physics.md): trajectories produced by a non-uniform policy carry a log
weight ``log W``; the physical average of an observable over replicas is then the self-normalised
weighted mean ``Σ W_i A_i / Σ W_i``. Passing ``log_weights`` switches the replica mean to that
estimator (inside the bootstrap too).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

__all__ = [
    "ExponentFit",
    "loglog_fit",
    "fit_growth_exponent",
    "fit_replica_exponent",
    "replica_mean",
    "self_normalised_weights",
    "effective_sample_size",
    "MIN_FIT_POINTS",
]

#: An OLS slope with a standard error needs at least 3 points (n − 2 ≥ 1 degrees of freedom).
MIN_FIT_POINTS = 3


@dataclasses.dataclass(frozen=True)
class ExponentFit:
    """Result of a log-log power-law fit ``y ≈ exp(intercept) · x**(slope)``.

    Attributes:
        exponent: the scaling exponent (the slope for β; half the slope of G(r) for α).
        stderr: the standard error to quote for ``exponent`` (see module docstring).
        window: the ``(x_min, x_max)`` window actually requested (inclusive).
        n_points: number of points inside the window that entered the fit.
        intercept: OLS intercept of ``log y`` vs ``log x`` (natural logs).
        ols_stderr: OLS standard error of ``exponent``.
        bootstrap_stderr: replica-bootstrap standard error of ``exponent`` (None with one replica).
        n_replicas: number of replicas averaged before fitting.
        slope: the raw log-log slope (``exponent = slope / slope_per_exponent``).
    """

    exponent: float
    stderr: float
    window: tuple
    n_points: int
    intercept: float
    ols_stderr: float
    bootstrap_stderr: Optional[float] = None
    n_replicas: int = 1
    slope: float = float("nan")

    def to_dict(self) -> dict:
        """JSON-friendly dict (plain Python floats/ints)."""
        d = dataclasses.asdict(self)
        d["window"] = [float(w) for w in self.window]
        return d


def _ols(u: np.ndarray, v: np.ndarray) -> tuple[float, float, float]:
    """OLS of v on u: returns (slope, intercept, stderr of slope)."""
    n = u.size
    ubar, vbar = u.mean(), v.mean()
    suu = np.sum((u - ubar) ** 2)
    if suu <= 0.0:
        raise ValueError("fit window holds a single distinct x value; widen the window")
    slope = np.sum((u - ubar) * (v - vbar)) / suu
    intercept = vbar - slope * ubar
    resid = v - (intercept + slope * u)
    stderr = np.sqrt(np.sum(resid**2) / (n - 2) / suu)
    return float(slope), float(intercept), float(stderr)


def _window_mask(x: np.ndarray, window: Sequence[float]) -> np.ndarray:
    x_min, x_max = float(window[0]), float(window[1])
    if not (np.isfinite(x_min) and np.isfinite(x_max)) or x_min >= x_max:
        raise ValueError(f"bad fit window [{x_min}, {x_max}]: need finite x_min < x_max")
    if x_max <= 0.0:
        raise ValueError(f"bad fit window [{x_min}, {x_max}]: a log-log fit needs x > 0")
    return (x >= x_min) & (x <= x_max) & (x > 0)


def loglog_fit(x, y, window: Sequence[float], slope_per_exponent: float = 1.0) -> ExponentFit:
    """OLS fit of ``log y`` against ``log x`` over ``x`` in ``window`` (inclusive).

    Args:
        x: (n,) abscissae (> 0 inside the window; others are ignored).
        y: (n,) ordinates; points with ``y <= 0`` or non-finite are ignored.
        window: ``(x_min, x_max)``.
        slope_per_exponent: the exponent is ``slope / slope_per_exponent`` (2 for α from G(r)).

    Raises:
        ValueError: bad window, or fewer than ``MIN_FIT_POINTS`` usable points in it.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in shape: {x.shape} vs {y.shape}")
    mask = _window_mask(x, window) & np.isfinite(y) & (y > 0)
    n = int(mask.sum())
    if n < MIN_FIT_POINTS:
        raise ValueError(
            f"fit window [{window[0]:g}, {window[1]:g}] holds {n} usable points; "
            f"need at least {MIN_FIT_POINTS}"
        )
    slope, intercept, se = _ols(np.log(x[mask]), np.log(y[mask]))
    k = float(slope_per_exponent)
    return ExponentFit(
        exponent=slope / k,
        stderr=se / abs(k),
        window=(float(window[0]), float(window[1])),
        n_points=n,
        intercept=intercept,
        ols_stderr=se / abs(k),
        slope=slope,
    )


def self_normalised_weights(log_weights) -> np.ndarray:
    """Normalised importance weights ``W_i / Σ W_i`` along axis 0 from log weights (stable)."""
    lw = np.asarray(log_weights, dtype=np.float64)
    lw = lw - np.max(lw, axis=0, keepdims=True)
    w = np.exp(lw)
    return w / np.sum(w, axis=0, keepdims=True)


def effective_sample_size(log_weights) -> np.ndarray:
    """Kish ESS ``(Σ W)² / Σ W²`` over axis 0 (equals n for equal weights)."""
    w = self_normalised_weights(log_weights)
    return 1.0 / np.sum(w**2, axis=0)


def replica_mean(values, log_weights=None) -> np.ndarray:
    """Mean over replicas (axis 0), importance-weighted when ``log_weights`` is given.

    Args:
        values: (R, T) per-replica series.
        log_weights: None, (R,) or (R, T) log importance weights.
    """
    values = np.asarray(values, dtype=np.float64)
    if log_weights is None:
        return values.mean(axis=0)
    lw = np.asarray(log_weights, dtype=np.float64)
    if lw.ndim == 1:
        lw = lw[:, None]
    w = self_normalised_weights(np.broadcast_to(lw, values.shape))
    return np.sum(w * values, axis=0)


def fit_replica_exponent(
    x,
    y,
    window: Sequence[float],
    *,
    slope_per_exponent: float = 1.0,
    log_weights=None,
    n_boot: int = 400,
    seed: int = 0,
) -> ExponentFit:
    """Fit the replica-mean curve and bootstrap over replicas.

    Args:
        x: (T,) common abscissae, or (R, T) per-replica abscissae (averaged like ``y``).
        y: (T,) one curve, or (R, T) one curve per replica.
        window: ``(x_min, x_max)`` applied to the (mean) abscissae.
        slope_per_exponent: see :func:`loglog_fit`.
        log_weights: optional (R,) or (R, T) importance log weights for the replica mean.
        n_boot: bootstrap resamples (only used when R ≥ 2).
        seed: seed of the bootstrap generator (deterministic results).
    """
    y = np.asarray(y, dtype=np.float64)
    if y.ndim == 1:
        y = y[None]
    x = np.asarray(x, dtype=np.float64)
    common_x = x.ndim == 1  # one abscissa for all replicas: used as is (no averaging round-off)
    if x.shape != (y.shape[-1],) and x.shape != y.shape:
        raise ValueError(f"x and y differ in shape: {x.shape} vs {y.shape}")
    r = y.shape[0]
    lw = None if log_weights is None else np.asarray(log_weights, dtype=np.float64)

    def mean_x(idx, lw_b):
        return x if common_x else replica_mean(x[idx], lw_b)

    fit = loglog_fit(
        mean_x(slice(None), lw), replica_mean(y, lw), window, slope_per_exponent=slope_per_exponent
    )
    if r < 2:
        return fit
    rng = np.random.default_rng(seed)
    slopes = []
    for _ in range(int(n_boot)):
        idx = rng.integers(0, r, size=r)
        lw_b = None if lw is None else lw[idx]
        try:
            b = loglog_fit(
                mean_x(idx, lw_b),
                replica_mean(y[idx], lw_b),
                window,
                slope_per_exponent=slope_per_exponent,
            )
        except ValueError:  # a resample whose mean leaves too few positive points in the window
            continue
        slopes.append(b.exponent)
    boot = float(np.std(slopes, ddof=1)) if len(slopes) >= 2 else None
    stderr = fit.ols_stderr if boot is None else max(fit.ols_stderr, boot)
    return dataclasses.replace(fit, stderr=stderr, bootstrap_stderr=boot, n_replicas=r)


def fit_growth_exponent(
    t,
    roughness,
    window: Sequence[float],
    *,
    log_weights=None,
    n_boot: int = 400,
    seed: int = 0,
) -> ExponentFit:
    """Growth exponent β from ``W ∝ t^β`` over ``t ∈ [t_min, t_max]``.

    Args:
        t: (T,) times in s (or deposited monolayers θ, or mean height: any growth clock), or
            (R, T) per replica; per-replica clocks are averaged row by row.
        roughness: (T,) or (R, T) roughness W in layers (units drop out of the exponent).
        window: ``(t_min, t_max)``, inclusive, in the units of ``t``.
        log_weights: optional importance log weights, (R,) or (R, T).

    Returns:
        :class:`ExponentFit` with ``exponent = β``.
    """
    return fit_replica_exponent(
        t, roughness, window, slope_per_exponent=1.0, log_weights=log_weights,
        n_boot=n_boot, seed=seed,
    )
