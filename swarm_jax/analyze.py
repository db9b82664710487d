"""Analyse a simulation run directory: exponents, final morphology, composition, exports.

Usage::

    python -m swarm_jax.analyze RUN_DIR [--beta-window TMIN TMAX] [--alpha-window RMIN RMAX]
                                        [--out DIR]

Reads (as written by ``python -m swarm_jax.simulate``):

- ``timeseries.csv``: columns ``event,time,mean_height,roughness,coverage,n_ti,n_o,
  oxide_fraction`` and optionally ``replica,log_weight,ess``. With a ``replica`` column the file
  holds R interleaved series; each is sorted by ``event`` and row k of every replica is taken as
  the same logged event count (replicas are cut to the shortest one). Times of row k are
  averaged over replicas to give the common clock.
- ``final_state.npz``: ``heights`` (Lx, Ly) or (R, Lx, Ly) in layers; ``species`` and ``oxide``
  (…, Lx, Ly, Lz) when present (else the composition comes from the last time-series row).
- ``summary.json`` (optional): ``lattice_constant_angstrom`` (default 4.59) and metadata.

Writes to ``--out`` (default RUN_DIR), each file whole or not at all (temporary file + rename):
``analysis.json``, ``roughness.png`` (W(t) with the β fit), ``correlation.png`` (G(r) with the α
fit), ``analysis_height_map.png`` (simulate's own ``height_map.png`` is left alone),
``composition.png`` and ``height_map.gsf`` (replica 0's final map, heights in metres; see
:mod:`swarm_jax.analysis.gsf`). ``--out`` is claimed like simulate's (one owner at a time;
a folder in use by a live run is refused).

Defaults: β is fitted to W(t) over the rows at or after the first complete monolayer (replica-
mean ``mean_height ≥ 1``) up to the end of the run; α to G(r) over ``r ∈ [1, min(Lx, Ly)/4]``.
When a default window holds fewer than 3 points the exponent is reported as ``null`` with a
note; a window given on the command line that is invalid or holds fewer than 3 points is an
error. An exponent fitted to fewer than :data:`RELIABLE_FIT_POINTS` points, a β window that
reaches into the sub-monolayer regime, or an α from a film thinner than one monolayer is
reported with ``"reliable": false`` and its ``caveats``. Replicas carrying ``log_weight`` are
averaged with self-normalised importance weights (docs/physics.md); ``weights`` in
analysis.json holds their batch ESS, PSIS k̂ and reliability
(:mod:`swarm_jax.analysis.importance`). Every caveat is in ``caveats`` in analysis.json and
printed on stderr (``swarm_jax.analyze: caveat: ...``) after the result line.

Input checks: a time series that is not UTF-8, has a truncated row (fewer fields than the
header, or a last row without its line break: a file cut short), or a non-finite or empty value
in a used column is refused with one line naming the file and line. Bad input gives one ``error:`` line on stderr and exit status 2;
outputs that cannot be written give one line and exit status 1 (previous files intact).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import zipfile
from typing import Optional

import numpy as np

from swarm_jax.analysis import exponents as ex
from swarm_jax.analysis import gsf, importance, morphology
from swarm_jax.cli import OneLineParser
from swarm_jax.outdir import OutputDirError, atomic_write_text, check_output_dir, claim_output_dir

__all__ = ["RunInputError", "RunData", "load_run", "analyze_run", "main"]

PROG = "swarm_jax.analyze"
REQUIRED_COLUMNS = (
    "event", "time", "mean_height", "roughness", "coverage", "n_ti", "n_o", "oxide_fraction",
)
OPTIONAL_COLUMNS = ("replica", "log_weight", "ess")
DEFAULT_LATTICE_CONSTANT_ANGSTROM = 4.59
HEIGHT_MAP_PNG = "analysis_height_map.png"  # simulate's own height_map.png is left alone
#: An exponent fitted to fewer points than this is reported but marked ``reliable: false``.
RELIABLE_FIT_POINTS = 5
TI, O = 1, 2  # species codes (docs/physics.md / swarm_jax.physics.lattice)


class RunInputError(Exception):
    """The run directory, its files or the requested windows are unusable (exit status 2)."""


class RunData:
    """A loaded run.

    Attributes:
        series: dict column -> (R, T) float64 array (required and present optional columns).
        heights: (R, Lx, Ly) final height maps in layers.
        species, oxide: (R, Lx, Ly, Lz) int arrays or None.
        summary: dict from ``summary.json`` (empty if absent).
        lattice_constant_angstrom: a in Å.
        run_dir: absolute path of the run directory (None when built in memory).
    """

    def __init__(self, series, heights, species, oxide, summary, lattice_constant_angstrom,
                 run_dir=None):
        self.run_dir = run_dir
        self.series = series
        self.heights = heights
        self.species = species
        self.oxide = oxide
        self.summary = summary
        self.lattice_constant_angstrom = lattice_constant_angstrom

    @property
    def n_replicas(self) -> int:
        return int(self.series["time"].shape[0])

    @property
    def log_weights(self) -> Optional[np.ndarray]:
        """(R, T) log weights, or None if absent or trivially equal (uniform policy)."""
        lw = self.series.get("log_weight")
        if lw is None or not np.all(np.isfinite(lw)) or np.ptp(lw, axis=0).max(initial=0) == 0:
            return None
        return lw


def _float(text: str) -> float:
    """A finite number from a CSV field (ValueError otherwise, also for an empty field)."""
    value = float((text or "").strip())
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def _read_rows(path: str) -> tuple[list, list]:
    """(wanted column names, rows of floats) of a time-series CSV; one-line RunInputError for
    a file that is not UTF-8, misses columns, or has a truncated or non-numeric row."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = [f.strip() for f in next(reader, [])]
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise RunInputError(f"{path}: missing column(s) {', '.join(missing)}")
            wanted = [c for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS if c in header]
            index = [header.index(c) for c in wanted]
            rows = [_parse_row(path, reader.line_num, fields, len(header), wanted, index)
                    for fields in reader if fields]
            _check_final_newline(fh, path, reader.line_num)
    except UnicodeDecodeError as exc:
        raise RunInputError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                            f"offset {exc.start}); is it a timeseries.csv written by "
                            "swarm_jax.simulate?") from None
    except csv.Error as exc:
        raise RunInputError(f"{path}: malformed CSV ({exc})") from None
    except OSError as exc:
        raise RunInputError(f"cannot read {path}: {exc.strerror or exc}") from None
    return wanted, rows


def _check_final_newline(fh, path: str, line_no: int) -> None:
    """Every row written by simulate ends with a line break; a file that does not was cut."""
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    if size == 0:
        return
    fh.buffer.seek(size - 1)
    if fh.buffer.read(1) not in (b"\n", b"\r"):
        raise RunInputError(f"{path}:{line_no}: the last row has no line break: the file is "
                            "incomplete (a run killed while writing it?)")


def _parse_row(path, line_no, fields, n_header, wanted, index) -> list:
    if len(fields) != n_header:
        raise RunInputError(
            f"{path}:{line_no}: truncated or malformed row ({len(fields)} of {n_header} fields); "
            "the file is incomplete (a run killed while writing it?)")
    values = []
    for name, i in zip(wanted, index):
        try:
            values.append(_float(fields[i]))
        except ValueError:
            raise RunInputError(f"{path}:{line_no}: column {name} = {fields[i]!r} is not a "
                                "finite number") from None
    return values


def _read_timeseries(path: str) -> dict:
    wanted, rows = _read_rows(path)
    if not rows:
        raise RunInputError(f"{path}: no data rows")
    table = np.asarray(rows, dtype=np.float64)
    col = {c: i for i, c in enumerate(wanted)}
    replica = table[:, col["replica"]] if "replica" in col else np.zeros(len(table))
    groups = []
    for rid in np.unique(replica):
        block = table[replica == rid]
        groups.append(block[np.argsort(block[:, col["event"]], kind="stable")])
    length = min(len(g) for g in groups)
    stacked = np.stack([g[:length] for g in groups])  # (R, T, n_columns)
    return {c: stacked[:, :, i] for c, i in col.items() if c != "replica"}


def _read_final_state(path: str):
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k]) for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise RunInputError(f"cannot read {path}: {exc}") from None
    if "heights" not in arrays:
        raise RunInputError(f"{path}: no 'heights' array")
    heights = arrays["heights"]
    if heights.ndim == 2:
        heights = heights[None]
    if heights.ndim != 3 or min(heights.shape) < 1:
        raise RunInputError(f"{path}: 'heights' must be (Lx, Ly) or (R, Lx, Ly), got {heights.shape}")
    extras = []
    for name in ("species", "oxide"):
        arr = arrays.get(name)
        if arr is not None:
            if arr.ndim == 3:
                arr = arr[None]
            if arr.ndim != 4 or arr.shape[:3] != heights.shape:
                raise RunInputError(
                    f"{path}: '{name}' shape {arrays[name].shape} does not match heights {heights.shape}"
                )
        extras.append(arr)
    return heights.astype(np.float64), extras[0], extras[1]


def load_run(run_dir) -> RunData:
    """Load ``timeseries.csv``, ``final_state.npz`` and (optional) ``summary.json``.

    Raises:
        RunInputError: missing directory or files, unreadable or malformed content.
    """
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise RunInputError(f"run directory not found: {run_dir}")
    ts_path = os.path.join(run_dir, "timeseries.csv")
    fs_path = os.path.join(run_dir, "final_state.npz")
    for p in (ts_path, fs_path):
        if not os.path.isfile(p):
            raise RunInputError(f"missing {os.path.basename(p)} in {run_dir}")
    series = _read_timeseries(ts_path)
    heights, species, oxide = _read_final_state(fs_path)
    summary = {}
    sm_path = os.path.join(run_dir, "summary.json")
    if os.path.isfile(sm_path):
        try:
            with open(sm_path, encoding="utf-8") as fh:
                summary = json.load(fh)
        except (OSError, ValueError) as exc:
            raise RunInputError(f"cannot read {sm_path}: {exc}") from None
        if not isinstance(summary, dict):
            raise RunInputError(f"{sm_path}: expected a JSON object")
    a = summary.get("lattice_constant_angstrom", DEFAULT_LATTICE_CONSTANT_ANGSTROM)
    try:
        a = float(a)
    except (TypeError, ValueError):
        raise RunInputError(f"{sm_path}: lattice_constant_angstrom is not a number") from None
    if not (math.isfinite(a) and a > 0):
        raise RunInputError(f"{sm_path}: lattice_constant_angstrom must be positive, got {a}")
    return RunData(series, heights, species, oxide, summary, a, run_dir=os.path.abspath(run_dir))


def _jsonable(obj):
    """Plain-Python, strict-JSON copy (non-finite floats -> None)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def _check_window(name: str, window) -> tuple[float, float]:
    lo, hi = float(window[0]), float(window[1])
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise RunInputError(f"--{name}-window must be finite numbers, got {lo:g} {hi:g}")
    if lo >= hi:
        raise RunInputError(f"--{name}-window needs MIN < MAX, got {lo:g} {hi:g}")
    if hi <= 0:
        raise RunInputError(f"--{name}-window must reach positive values (log-log fit), got {lo:g} {hi:g}")
    return lo, hi


def _default_growth_window(clock: np.ndarray, w: np.ndarray, mean_h: np.ndarray):
    """[first clock value with mean height >= 1 ML, last clock value]; falls back to the whole
    run. Returns (window or None, note or None)."""
    usable = (clock > 0) & (w > 0) & np.isfinite(clock) & np.isfinite(w)
    after = usable & (mean_h >= 1.0)
    if after.sum() >= ex.MIN_FIT_POINTS:
        return (float(clock[after].min()), float(clock[after].max())), None
    if usable.sum() >= ex.MIN_FIT_POINTS:
        return (float(clock[usable].min()), float(clock[usable].max())), (
            "fewer than 3 logged points after the first monolayer; window spans the whole run"
        )
    return None, "fewer than 3 logged points with t > 0 and W > 0: no growth exponent"


def _composition(run: RunData):
    """Final per-replica N_Ti, N_O, oxide atoms (R,) from the 3-D arrays, else the CSV."""
    if run.species is not None:
        sp = run.species
        n_ti = (sp == TI).sum(axis=(1, 2, 3)).astype(np.float64)
        n_o = (sp == O).sum(axis=(1, 2, 3)).astype(np.float64)
        if run.oxide is not None:
            film = (sp == TI) | (sp == O)
            n_ox = ((run.oxide != 0) & film).sum(axis=(1, 2, 3)).astype(np.float64)
        else:
            n_ox = run.series["oxide_fraction"][:, -1] * (n_ti + n_o)
        return n_ti, n_o, n_ox, "final_state.npz"
    n_ti = run.series["n_ti"][:, -1]
    n_o = run.series["n_o"][:, -1]
    return n_ti, n_o, run.series["oxide_fraction"][:, -1] * (n_ti + n_o), "timeseries.csv"


def _header(run: RunData) -> dict:
    """Run description: sizes, replica count, and metadata copied from summary.json."""
    s = run.series
    result = {
        "run_dir": run.run_dir,
        "n_replicas": run.n_replicas,
        "n_rows": int(s["time"].shape[1]),
        "lattice_shape": list(run.heights.shape[1:]) + (
            [int(run.species.shape[-1])] if run.species is not None else []
        ),
        "lattice_constant_angstrom": run.lattice_constant_angstrom,
        "importance_weighted": run.log_weights is not None,
    }
    for key in ("temperature", "deposition_rate", "lattice_size", "n_events", "policy", "seed"):
        if key in run.summary:
            result[key] = run.summary[key]
    return result


def _fit_beta(run: RunData, beta_window, t_mean, w_mean, h_mean):
    """β from W(t): ``(fit or None, note or None, window or None, source)``; a user window
    that cannot be fitted raises :class:`RunInputError`."""
    s, lw = run.series, run.log_weights
    if beta_window is not None:
        window = _check_window("beta", beta_window)
        try:
            return (ex.fit_growth_exponent(s["time"], s["roughness"], window, log_weights=lw),
                    None, window, "user")
        except ValueError as exc:
            raise RunInputError(f"--beta-window: {exc}") from None
    window, note = _default_growth_window(t_mean, w_mean, h_mean)
    fit = None
    if window is not None:
        try:
            fit = ex.fit_growth_exponent(s["time"], s["roughness"], window, log_weights=lw)
        except ValueError as exc:
            fit, note = None, f"β fit failed: {exc}"
    return fit, note, window, "default"


def _fit_beta_vs_height(run: RunData, w_mean, h_mean):
    """The same exponent against the film thickness (mean height, ML): clock-noise free.
    Returns ``(fit dict or None, note or None)``."""
    window, note = _default_growth_window(h_mean, w_mean, h_mean)
    if window is None:
        return None, note
    try:
        fit = ex.fit_growth_exponent(run.series["mean_height"], run.series["roughness"], window,
                                     log_weights=run.log_weights).to_dict()
    except ValueError as exc:
        return None, f"fit failed: {exc}"
    fit["clock"] = "mean_height_layers"
    return fit, note


def _fit_alpha(run: RunData, alpha_window, lw_alpha):
    """α from G(r) of the final maps: ``(fit or None, note or None, r, G, window, source)``."""
    heights = run.heights
    source = "default" if alpha_window is None else "user"
    window = (morphology.default_alpha_window(heights.shape) if alpha_window is None
              else _check_window("alpha", alpha_window))
    try:
        fit, r, g = morphology.fit_roughness_exponent(heights, window, log_weights=lw_alpha)
    except ValueError as exc:
        if source == "user":
            raise RunInputError(f"--alpha-window: {exc}") from None
        r, g_all, _ = morphology.height_height_correlation(heights)
        return (None, f"no roughness exponent: {exc}", r, ex.replica_mean(g_all, lw_alpha),
                window, source)
    note = ("single map: stderr is the OLS fit error (G(r) points are correlated)"
            if heights.shape[0] == 1 else None)
    return fit, note, r, g, window, source


def _final_observables(run: RunData, t_mean, lw_alpha) -> dict:
    """Final morphology and composition, importance-weighted when the run carries weights."""
    heights, a_ang = run.heights, run.lattice_constant_angstrom
    w_fin = morphology.roughness(heights)
    n_ti, n_o, n_ox, comp_src = _composition(run)
    avg = (lambda v: float(ex.replica_mean(np.asarray(v)[:, None], lw_alpha)[0]))
    n_ti_m, n_o_m, n_ox_m = avg(n_ti), avg(n_o), avg(n_ox)
    final = {
        "time_s": float(t_mean[-1]),
        "mean_height_layers": avg(morphology.mean_height(heights)),
        "roughness_layers": avg(w_fin),
        "roughness_angstrom": avg(w_fin) * a_ang,
        "roughness_per_replica_layers": w_fin.tolist(),
        "coverage": avg(morphology.coverage(heights)),
        "n_ti": n_ti_m,
        "n_o": n_o_m,
        "o_ti_ratio": n_o_m / n_ti_m if n_ti_m > 0 else None,
        "oxide_fraction": n_ox_m / (n_ti_m + n_o_m) if (n_ti_m + n_o_m) > 0 else None,
        "composition_source": comp_src,
    }
    lw = run.log_weights
    if lw is not None:
        final["ess_fraction"] = float(ex.effective_sample_size(lw[:, -1]) / run.n_replicas)
    if "ess" in run.series:
        final["logged_ess"] = ex.replica_mean(run.series["ess"])[-1]
    return final


def _write_figures(run: RunData, out_dir, t_mean, w_mean, beta_fit, r, g, alpha_fit) -> dict:
    """The PNG figures (each written atomically); returns {figure: file name}."""
    from swarm_jax.analysis import plots

    s, lw, r_count = run.series, run.log_weights, run.n_replicas
    plots.plot_roughness(os.path.join(out_dir, "roughness.png"), t_mean, w_mean, beta_fit,
                         roughness_per_replica=s["roughness"] if r_count > 1 else None)
    plots.plot_correlation(os.path.join(out_dir, "correlation.png"), r, g, alpha_fit)
    plots.plot_height_map(os.path.join(out_dir, HEIGHT_MAP_PNG), run.heights[0],
                          run.lattice_constant_angstrom,
                          title="Final height map" + (" (replica 0)" if r_count > 1 else ""))
    plots.plot_composition(os.path.join(out_dir, "composition.png"), t_mean,
                           ex.replica_mean(s["n_ti"], lw), ex.replica_mean(s["n_o"], lw),
                           ex.replica_mean(s["oxide_fraction"], lw))
    return dict(roughness="roughness.png", correlation="correlation.png",
                height_map=HEIGHT_MAP_PNG, composition="composition.png")


def analyze_run(run: RunData, out_dir, beta_window=None, alpha_window=None,
                make_plots: bool = True) -> dict:
    """Compute the analysis of a loaded run and write every output into ``out_dir``.

    Returns the dict written to ``analysis.json``.
    """
    os.makedirs(out_dir, exist_ok=True)
    s, lw_series = run.series, run.log_weights
    lw_final = None if lw_series is None else lw_series[:, -1]
    lw_alpha = (lw_final if (lw_final is not None and lw_final.shape[0] == run.heights.shape[0])
                else None)
    t_mean = ex.replica_mean(s["time"], lw_series)
    w_mean = ex.replica_mean(s["roughness"], lw_series)
    h_mean = ex.replica_mean(s["mean_height"], lw_series)

    result = _header(run)
    beta_fit, beta_note, beta_window, beta_source = _fit_beta(run, beta_window, t_mean, w_mean,
                                                              h_mean)
    result["beta"] = None if beta_fit is None else dict(beta_fit.to_dict(), clock="time_s")
    result["beta_note"] = beta_note
    result["beta_vs_mean_height"], result["beta_vs_mean_height_note"] = _fit_beta_vs_height(
        run, w_mean, h_mean)
    alpha_fit, alpha_note, r, g, alpha_window, alpha_source = _fit_alpha(run, alpha_window,
                                                                         lw_alpha)
    result["alpha"] = None if alpha_fit is None else alpha_fit.to_dict()
    result["alpha_note"] = alpha_note
    result["windows"] = {
        "beta": None if beta_window is None else list(beta_window),
        "beta_source": beta_source,
        "beta_units": "s",
        "alpha": list(alpha_window),
        "alpha_source": alpha_source,
        "alpha_units": "lattice sites",
    }
    result["final"] = _final_observables(run, t_mean, lw_alpha)

    gsf.write_gsf(os.path.join(out_dir, "height_map.gsf"), run.heights[0],
                  lattice_constant_m=run.lattice_constant_angstrom * 1e-10,
                  title="swarm_jax final height map (replica 0)")
    outputs = {"gsf": "height_map.gsf"}
    if make_plots:
        outputs.update(_write_figures(run, out_dir, t_mean, w_mean, beta_fit, r, g, alpha_fit))
    result["outputs"] = outputs
    _add_caveats(result, lw_final)
    result = _jsonable(result)
    atomic_write_text(os.path.join(out_dir, "analysis.json"),
                      json.dumps(result, indent=2, allow_nan=False) + "\n")
    return result


def _fit_caveats(fit: Optional[dict], note: Optional[str], extra: list) -> list:
    """Caveats of one exponent fit; sets ``fit["reliable"]`` and ``fit["caveats"]``."""
    caveats = [note] if note else []
    caveats += extra
    if fit is not None:
        if fit["n_points"] < RELIABLE_FIT_POINTS:
            caveats.append(f"only {fit['n_points']} points in the fit window (fewer than "
                           f"{RELIABLE_FIT_POINTS}): the exponent is not reliable")
        fit["reliable"] = not caveats
        fit["caveats"] = list(caveats)
    return caveats


def _add_caveats(result: dict, lw_final) -> None:
    """Collects every caveat of the analysis into ``result["caveats"]`` (printed by the CLI) and
    marks each exponent ``reliable`` or not; adds the importance-weight diagnostics."""
    caveats, weighted = [], []
    if lw_final is not None:
        weights = importance.assess_weights(lw_final)
        result["weights"] = weights
        if not weights["reliable"]:
            caveats.append("importance weights: " + "; ".join(weights["reasons"])
                           + " (weighted averages and fits are not reliable)")
            weighted = ["fitted to importance-weighted averages whose weights are not reliable"]
    thin = result["final"]["mean_height_layers"] < 1.0
    thin_note = ("the film is thinner than one monolayer (mean height "
                 f"{result['final']['mean_height_layers']:.3g}): the surface is scattered "
                 "adatoms, not a growing film")
    sub_ml = result["beta_note"] is not None and "after the first monolayer" in result["beta_note"]
    caveats += [f"beta: {c}" for c in _fit_caveats(
        result["beta"], result["beta_note"],
        (["the fit includes the sub-monolayer regime"] if sub_ml and result["beta"] else [])
        + weighted)]
    caveats += [f"beta vs mean height: {c}" for c in _fit_caveats(
        result["beta_vs_mean_height"], result["beta_vs_mean_height_note"], weighted)]
    alpha_note = result["alpha_note"]
    informational = alpha_note is not None and alpha_note.startswith("single map")
    alpha_extra = ([thin_note] if thin and result["alpha"] is not None else []) + weighted
    caveats += [f"alpha: {c}" for c in _fit_caveats(
        result["alpha"], None if informational else alpha_note, alpha_extra)]
    result["caveats"] = caveats


class _Parser(OneLineParser):
    error_class = RunInputError  # one line, exit status 2, no usage dump


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Analyse a swarm_jax simulation run directory.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="directory written by swarm_jax.simulate")
    p.add_argument("--beta-window", nargs=2, type=float, metavar=("TMIN", "TMAX"),
                   help="time window (s) of the W(t) fit; default: after the first monolayer")
    p.add_argument("--alpha-window", nargs=2, type=float, metavar=("RMIN", "RMAX"),
                   help="r window (lattice sites) of the G(r) fit; default: 1 to min(Lx,Ly)/4")
    p.add_argument("--out", metavar="DIR", default=None, help="output directory (default RUN_DIR)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    return p


def _print_report(result: dict, out_dir: str) -> None:
    """The result line on stdout, then each caveat on stderr."""
    def fmt(fit):
        if fit is None:
            return "n/a"
        text = f"{fit['exponent']:.3f} ± {fit['stderr']:.3f}"
        return text if fit.get("reliable", True) else text + " (UNRELIABLE)"

    print(f"beta = {fmt(result['beta'])}  alpha = {fmt(result['alpha'])}  "
          f"W = {result['final']['roughness_layers']:.3f} layers  -> "
          f"{os.path.join(out_dir, 'analysis.json')}", flush=True)
    for caveat in result["caveats"]:
        print(f"{PROG}: caveat: {caveat}", file=sys.stderr)


def main(argv=None) -> int:
    """CLI entry point; returns the exit status (0 ok, 1 outputs could not be written, 2 bad
    input or an --out that cannot be used)."""
    try:
        args = _build_parser().parse_args(argv)
        out_dir = args.out if args.out is not None else args.run_dir
        try:
            check_output_dir(out_dir)
            run = load_run(args.run_dir)
            lock = claim_output_dir(out_dir)
        except OutputDirError as exc:
            raise RunInputError(str(exc)) from None
    except RunInputError as exc:
        print(f"{PROG}: error: {exc}".replace("\n", " "), file=sys.stderr)
        return 2
    with lock:
        try:
            result = analyze_run(run, out_dir, beta_window=args.beta_window,
                                 alpha_window=args.alpha_window, make_plots=not args.no_plots)
        except RunInputError as exc:
            print(f"{PROG}: error: {exc}".replace("\n", " "), file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"{PROG}: error: cannot write outputs to {out_dir}: {exc.strerror or exc}",
                  file=sys.stderr)
            return 1
    _print_report(result, out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
