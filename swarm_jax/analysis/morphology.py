"""Surface morphology of height maps (NumPy only): W, mean height, coverage, G(r), α.

Conventions
-----------
- A height map is an integer or float array ``h[..., x, y]`` of shape ``(..., Lx, Ly)`` in layers
  (monolayers, ML); leading axes are a batch (replicas, times). Multiply lengths by the lattice
  constant ``a`` (4.59 Å by default) for Å.
- The map is periodic in x and y (docs/physics.md), so correlations use the minimum-image
  displacement ``d = (dx, dy)`` with ``dx ∈ (−Lx/2, Lx/2]``.

Definitions (docs/physics.md)
---------------------------
- mean height ``h̄ = mean(h)``; roughness ``W = sqrt(mean((h − h̄)²))``; coverage = fraction of
  columns with ``h > 0``.
- height–height correlation ``G(d) = ⟨(h(x + d) − h(x))²⟩_x``. With ``C(d) = ⟨δh(x) δh(x + d)⟩``
  the (circular) autocovariance of ``δh = h − h̄``, ``G(d) = 2 (W² − C(d))`` exactly for a periodic
  map; ``C`` is obtained by FFT (Wiener–Khinchin), O(N log N).
- For a self-affine surface ``G(r) ∝ r^{2α}`` for ``r`` well below the correlation length, so the
  roughness exponent is half the log-log slope of ``G`` over a window of ``r``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from swarm_jax.analysis.exponents import ExponentFit, fit_replica_exponent, replica_mean

__all__ = [
    "mean_height",
    "roughness",
    "coverage",
    "autocovariance_map",
    "height_height_map",
    "radial_average",
    "height_height_correlation",
    "autocorrelation",
    "default_alpha_window",
    "fit_roughness_exponent",
]


def _as_maps(h) -> np.ndarray:
    h = np.asarray(h, dtype=np.float64)
    if h.ndim < 2:
        raise ValueError(f"a height map needs at least 2 axes (…, Lx, Ly); got shape {h.shape}")
    return h


def mean_height(h) -> np.ndarray:
    """Mean height in layers over the last two axes: (..., Lx, Ly) -> (...)."""
    return _as_maps(h).mean(axis=(-2, -1))


def roughness(h) -> np.ndarray:
    """Interface width ``W = sqrt(mean((h − h̄)²))`` in layers: (..., Lx, Ly) -> (...)."""
    h = _as_maps(h)
    return h.std(axis=(-2, -1))


def coverage(h) -> np.ndarray:
    """Fraction of columns with ``h > 0`` (substrate covered): (..., Lx, Ly) -> (...)."""
    return (_as_maps(h) > 0).mean(axis=(-2, -1))


def autocovariance_map(h) -> np.ndarray:
    """Circular autocovariance ``C[dx, dy] = ⟨δh(x, y) δh(x + dx, y + dy)⟩`` in layers².

    Args:
        h: (..., Lx, Ly) height maps.

    Returns:
        (..., Lx, Ly) array indexed by displacement ``(dx mod Lx, dy mod Ly)``; ``C[0, 0] = W²``.
    """
    h = _as_maps(h)
    dh = h - h.mean(axis=(-2, -1), keepdims=True)
    spec = np.fft.rfft2(dh, axes=(-2, -1))
    n = h.shape[-2] * h.shape[-1]
    return np.fft.irfft2(np.abs(spec) ** 2, s=h.shape[-2:], axes=(-2, -1)) / n


def height_height_map(h) -> np.ndarray:
    """``G[dx, dy] = ⟨(h(x + d) − h(x))²⟩`` for every displacement, in layers²: (..., Lx, Ly)."""
    c = autocovariance_map(h)
    g = 2.0 * (c[..., :1, :1] - c)
    return np.maximum(g, 0.0)  # remove −1e-16 round-off; G ≥ 0 by definition


def _min_image(n: int) -> np.ndarray:
    d = np.arange(n)
    return np.where(d <= n // 2, d, d - n)


def radial_average(field, r_max: Optional[float] = None, mode: str = "radial"):
    """Average a displacement-indexed field ``f[..., dx, dy]`` over lattice vectors of equal length.

    Args:
        field: (..., Lx, Ly) indexed by displacement modulo the box (as from the FFT).
        r_max: largest |d| kept (lattice units); default ``min(Lx, Ly) / 2``.
        mode: ``"radial"``: one point per distinct exact length ``|d| = sqrt(dx² + dy²)``
            (1, √2, 2, √5, …), averaging all vectors of that length; ``"axes"``: only vectors
            along ±x and ±y, one point per integer ``r``.

    Returns:
        ``(r, f_r, counts)``: r (n,) in lattice units starting at 0, f_r (..., n), counts (n,) the
        number of lattice vectors averaged into each point.
    """
    field = np.asarray(field, dtype=np.float64)
    lx, ly = field.shape[-2:]
    if r_max is None:
        r_max = min(lx, ly) / 2.0
    dx, dy = np.meshgrid(_min_image(lx), _min_image(ly), indexing="ij")
    r2 = dx**2 + dy**2
    keep = r2 <= r_max**2 + 1e-9
    if mode == "axes":
        keep &= (dx == 0) | (dy == 0)
    elif mode != "radial":
        raise ValueError(f"mode must be 'radial' or 'axes', got {mode!r}")
    # Each Lx or Ly of even size has dx = Lx/2 only once (it is its own mirror image): fine, the
    # average is over the lattice vectors actually present in the periodic box.
    r2_vals, inverse = np.unique(r2[keep], return_inverse=True)
    counts = np.bincount(inverse)
    flat = field[..., keep]
    batch = flat.reshape(-1, flat.shape[-1])
    sums = np.stack([np.bincount(inverse, weights=row, minlength=r2_vals.size) for row in batch])
    sums = sums.reshape(field.shape[:-2] + (r2_vals.size,))
    return np.sqrt(r2_vals.astype(np.float64)), sums / counts, counts


def height_height_correlation(h, r_max: Optional[float] = None, mode: str = "radial"):
    """Radially averaged height–height correlation ``G(r)`` in layers².

    Args:
        h: (..., Lx, Ly) periodic height maps (layers).
        r_max: largest separation kept (lattice units), default ``min(Lx, Ly) / 2``.
        mode: ``"radial"`` (all lattice vectors, grouped by exact length) or ``"axes"`` (x and y
            directions only, integer r).

    Returns:
        ``(r, G, counts)``: r (n,) lattice units (r[0] = 0, G = 0 there), G (..., n), counts (n,).
    """
    return radial_average(height_height_map(h), r_max=r_max, mode=mode)


def autocorrelation(h, r_max: Optional[float] = None, mode: str = "radial"):
    """Radially averaged normalised autocorrelation ``C(r) / W²`` (1 at r = 0).

    Flat maps (W = 0) give NaN. Returns ``(r, c, counts)`` like
    :func:`height_height_correlation`.
    """
    c = autocovariance_map(h)
    w2 = c[..., 0, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = c / w2[..., None, None]
    return radial_average(norm, r_max=r_max, mode=mode)


def default_alpha_window(shape: Sequence[int]) -> tuple[float, float]:
    """Default r window for α: ``[1, min(Lx, Ly) / 4]`` (below saturation, above r = 0)."""
    lx, ly = int(shape[-2]), int(shape[-1])
    return 1.0, min(lx, ly) / 4.0


def fit_roughness_exponent(
    h,
    window: Optional[Sequence[float]] = None,
    *,
    mode: str = "radial",
    n_boot: int = 400,
    seed: int = 0,
    log_weights=None,
) -> tuple[ExponentFit, np.ndarray, np.ndarray]:
    """Roughness exponent α from ``G(r) ∝ r^{2α}`` over ``r ∈ window``.

    Args:
        h: (Lx, Ly) one map, or (R, Lx, Ly) R independent maps (replicas). With R ≥ 2 the fit is
            to the replica-mean G(r) and the error is the bootstrap over replicas (see
            :mod:`swarm_jax.analysis.exponents`); with one map the error is the OLS one, which
            ignores the correlation between the G(r) points and so understates the uncertainty.
        window: ``(r_min, r_max)`` in lattice units; default :func:`default_alpha_window`.
        mode: see :func:`height_height_correlation`.
        log_weights: optional (R,) importance log weights of the replicas.

    Returns:
        ``(fit, r, G)`` with ``fit.exponent = α``, ``r`` (n,) and the replica-mean ``G`` (n,).
    """
    h = _as_maps(h)
    if h.ndim == 2:
        h = h[None]
    elif h.ndim != 3:
        raise ValueError(f"expected (Lx, Ly) or (R, Lx, Ly) maps, got shape {h.shape}")
    if window is None:
        window = default_alpha_window(h.shape)
    r, g, _ = height_height_correlation(h, mode=mode)
    fit = fit_replica_exponent(
        r, g, window, slope_per_exponent=2.0, log_weights=log_weights, n_boot=n_boot, seed=seed
    )
    lw = None if log_weights is None else np.asarray(log_weights, dtype=np.float64)
    return fit, r, replica_mean(g, lw)
