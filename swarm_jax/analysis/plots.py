"""PNG figures of a growth run (matplotlib, Agg backend, imported lazily).

Each function builds a :class:`matplotlib.figure.Figure` attached to an Agg canvas directly (no
``pyplot``, so no global figure state and no GUI backend is touched, whatever backend the
caller uses), saves it to ``path`` atomically (temporary file + rename) and returns the path.
"""

from __future__ import annotations

import io
import os
from typing import Optional

import numpy as np

from swarm_jax.analysis.exponents import ExponentFit
from swarm_jax.outdir import atomic_write_bytes

__all__ = ["plot_roughness", "plot_height_map", "plot_composition", "plot_correlation"]


def _figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> str:
    """Render ``fig`` as PNG and write it to ``path`` whole or not at all (temp file + rename;
    :class:`swarm_jax.outdir.OutputWriteError` on failure, any previous file kept)."""
    path = os.fspath(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _fit_line(ax, fit: Optional[ExponentFit], x, label_fmt: str):
    if fit is None:
        return
    x = np.asarray(x, dtype=np.float64)
    lo, hi = fit.window
    xs = x[(x >= lo) & (x <= hi) & (x > 0)]
    if xs.size < 2:
        return
    xs = np.geomspace(xs.min(), xs.max(), 50)
    ax.plot(xs, np.exp(fit.intercept) * xs**fit.slope, "r--", lw=1.5,
            label=label_fmt.format(v=fit.exponent, e=fit.stderr))
    ax.axvspan(lo, hi, color="r", alpha=0.06, lw=0)


def plot_roughness(path, t, roughness, fit: Optional[ExponentFit] = None,
                   roughness_per_replica=None, xlabel: str = "time t (s)") -> str:
    """Log-log W(t) with the fitted power law ``W ∝ t^β`` and its window shaded.

    Args:
        path: output PNG.
        t: (T,) times (or θ); roughness: (T,) replica-mean W in layers.
        fit: the β fit (drawn if given).
        roughness_per_replica: optional (R, T) per-replica W drawn faintly.
    """
    t = np.asarray(t, dtype=np.float64)
    w = np.asarray(roughness, dtype=np.float64)
    fig = _figure((5.2, 4.0))
    ax = fig.add_subplot()
    ok = (t > 0) & (w > 0)
    if roughness_per_replica is not None:
        for wr in np.asarray(roughness_per_replica, dtype=np.float64):
            okr = ok & (wr > 0)
            ax.plot(t[okr], wr[okr], color="0.75", lw=0.6)
    ax.plot(t[ok], w[ok], "o-", ms=3, lw=1, label="W (mean)" if roughness_per_replica is not None else "W")
    _fit_line(ax, fit, t[ok], r"fit: $\beta$ = {v:.3f} ± {e:.3f}")
    if ok.any():
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("roughness W (layers)")
    ax.set_title("Interface width")
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def plot_correlation(path, r, g, fit: Optional[ExponentFit] = None) -> str:
    """Log-log G(r) (layers²) with the fitted ``G ∝ r^{2α}``."""
    r = np.asarray(r, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    fig = _figure((5.2, 4.0))
    ax = fig.add_subplot()
    ok = (r > 0) & (g > 0)
    ax.plot(r[ok], g[ok], "o", ms=3, label="G(r)")
    _fit_line(ax, fit, r[ok], r"fit: $\alpha$ = {v:.3f} ± {e:.3f}")
    if ok.any():
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("r (lattice units)")
    ax.set_ylabel(r"G(r) = <(h(x+r) - h(x))$^2$> (layers$^2$)")
    ax.set_title("Height-height correlation")
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def plot_height_map(path, heights, lattice_constant_angstrom: float = 4.59,
                    title: str = "Height map") -> str:
    """Image of ``h[x, y]`` (x horizontal, y vertical, origin lower left) with a colourbar in
    layers and a second scale on the colourbar in Å (``h · a``); axes in lattice units."""
    h = np.asarray(heights, dtype=np.float64)
    a = float(lattice_constant_angstrom)
    fig = _figure((5.6, 4.4))
    ax = fig.add_subplot()
    im = ax.imshow(h.T, origin="lower", cmap="viridis", interpolation="nearest",
                   extent=(-0.5, h.shape[0] - 0.5, -0.5, h.shape[1] - 0.5))
    ax.set_xlabel(f"x (sites, a = {a:g} Å)")
    ax.set_ylabel("y (sites)")
    ax.set_title(title)
    cbar = fig.colorbar(im, ax=ax)
    cbar.set_label("height (layers)")
    sec = cbar.ax.secondary_yaxis("left", functions=(lambda v: v * a, lambda v: v / a))
    sec.set_ylabel("height (Å)")
    return _save(fig, path)


def plot_composition(path, t, n_ti, n_o, oxide_fraction, xlabel: str = "time t (s)") -> str:
    """Three panels vs time: atom counts N_Ti and N_O; the O/Ti ratio (with the stoichiometric
    value 2); the oxide fraction."""
    t = np.asarray(t, dtype=np.float64)
    n_ti = np.asarray(n_ti, dtype=np.float64)
    n_o = np.asarray(n_o, dtype=np.float64)
    ox = np.asarray(oxide_fraction, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(n_ti > 0, n_o / np.where(n_ti > 0, n_ti, 1.0), np.nan)
    fig = _figure((5.2, 7.0))
    ax1, ax2, ax3 = fig.subplots(3, 1, sharex=True)
    ax1.plot(t, n_ti, label="Ti")
    ax1.plot(t, n_o, label="O")
    ax1.set_ylabel("atoms in film")
    ax1.legend(loc="best", fontsize=8)
    ax2.plot(t, ratio, color="C2")
    ax2.axhline(2.0, color="0.5", ls=":", lw=1, label="TiO$_2$")
    ax2.set_ylabel("O/Ti")
    ax2.legend(loc="best", fontsize=8)
    ax3.plot(t, ox, color="C3")
    ax3.set_ylabel("oxide fraction")
    ax3.set_ylim(-0.02, 1.02)
    ax3.set_xlabel(xlabel)
    ax1.set_title("Film composition")
    return _save(fig, path)
