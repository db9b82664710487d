"""Tests of swarm_jax.analysis (morphology, exponents, GSF, plots) and the analyze CLI.

All statistical tests use fixed seeds and tolerances derived from the estimate's own error
(5 standard errors unless stated), so they fail when an estimator or its error bar is wrong.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from swarm_jax import analyze
from swarm_jax.analysis import exponents as ex
from swarm_jax.analysis import gsf, morphology

REPO = Path(__file__).resolve().parents[1]
A_M = 4.59e-10


# --------------------------------------------------------------------------------------------
# synthetic data
# --------------------------------------------------------------------------------------------
def random_deposition(rng, n_replicas, lx, ly, thetas):
    """Random deposition (docs/physics.md, frozen regime) in NumPy: every column receives a
    Poisson number of atoms with mean Δθ per interval. Returns heights (R, T, Lx, Ly)."""
    increments = np.diff(np.concatenate([[0.0], thetas]))
    steps = rng.poisson(increments[None, :, None, None], size=(n_replicas, len(thetas), lx, ly))
    return np.cumsum(steps, axis=1)


def spectral_surface(rng, n, alpha, n_maps):
    """Self-affine periodic surfaces by Fourier filtering: white noise times |q|^-(1+α), i.e.
    power spectrum S(q) ∝ q^-(2+2α) in 2-D, so G(r) ∝ r^{2α} below the system size.
    Returns (maps (n_maps, n, n), amplitude filter (n, n))."""
    q = 2 * np.pi * np.fft.fftfreq(n)
    qq = np.hypot(q[:, None], q[None, :])
    amp = np.zeros_like(qq)
    amp[qq > 0] = qq[qq > 0] ** (-(1.0 + alpha))
    noise = rng.standard_normal((n_maps, n, n))
    return np.fft.ifft2(np.fft.fft2(noise) * amp).real, amp


def expected_correlation_map(amp):
    """Exact ensemble mean of G[d] for spectral_surface (up to a constant factor):
    2 (C(0) − C(d)) with C the inverse FFT of the power spectrum |amp|²."""
    c = np.fft.ifft2(amp**2).real
    return 2.0 * (c[0, 0] - c)


# --------------------------------------------------------------------------------------------
# morphology
# --------------------------------------------------------------------------------------------
def test_batched_observables_match_per_map_definitions():
    rng = np.random.default_rng(0)
    h = rng.integers(0, 5, size=(3, 2, 6, 7))
    w = morphology.roughness(h)
    assert w.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            m = h[i, j].astype(float)
            assert np.isclose(w[i, j], np.sqrt(np.mean((m - m.mean()) ** 2)))
            assert np.isclose(morphology.mean_height(h)[i, j], m.mean())
            assert np.isclose(morphology.coverage(h)[i, j], np.mean(m > 0))
    with pytest.raises(ValueError):
        morphology.roughness(np.zeros(5))


def test_height_height_map_equals_direct_periodic_differences():
    rng = np.random.default_rng(1)
    h = rng.normal(size=(2, 6, 9)) + rng.integers(0, 3, size=(2, 6, 9))
    g = morphology.height_height_map(h)
    for dx in range(6):
        for dy in range(9):
            shifted = np.roll(h, shift=(-dx, -dy), axis=(1, 2))  # h(x + dx, y + dy)
            direct = np.mean((shifted - h) ** 2, axis=(1, 2))
            np.testing.assert_allclose(g[:, dx, dy], direct, rtol=1e-10, atol=1e-12)


def test_radial_average_groups_lattice_vectors_by_exact_length():
    rng = np.random.default_rng(2)
    h = rng.normal(size=(8, 8))
    r, g, counts = morphology.height_height_correlation(h)
    np.testing.assert_allclose(r[:4], [0.0, 1.0, np.sqrt(2.0), 2.0])
    np.testing.assert_array_equal(counts[:4], [1, 4, 4, 4])
    assert r.max() <= 4.0 + 1e-12 and g[0] == 0.0
    full = morphology.height_height_map(h)
    assert np.isclose(g[1], np.mean([full[1, 0], full[7, 0], full[0, 1], full[0, 7]]))
    assert np.isclose(g[2], np.mean([full[1, 1], full[1, 7], full[7, 1], full[7, 7]]))
    ra, ga, ca = morphology.height_height_correlation(h, mode="axes")
    np.testing.assert_allclose(ra, [0, 1, 2, 3, 4])
    assert np.isclose(ga[1], g[1])  # |d| = 1 vectors are all on the axes
    # the autocorrelation is 1 at r = 0 and equals 1 − G / (2 W²)
    rc, c, _ = morphology.autocorrelation(h)
    assert np.isclose(c[0], 1.0)
    np.testing.assert_allclose(c, 1.0 - g / (2 * h.var()), atol=1e-12)


@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_roughness_exponent_of_spectral_surfaces(alpha):
    """α recovered from G(r) of Fourier-filtered surfaces.

    Tolerance: |α̂ − α| ≤ |α_det − α| + 5 σ, where σ is the replica-bootstrap standard error of
    α̂ and α_det is the same fit applied to the exact ensemble-mean G(r) of the generator (no
    noise): the method's deterministic finite-size/lattice bias, which is known to pull G(r)
    estimates of α below the true value as α → 1 (≈ 0.01 at α = 0.5, ≈ 0.09 at α = 0.8 for
    L = 128, r ∈ [1, 16]). We also require α̂ to agree with α_det itself within 5 σ, and that
    the bias stays below 0.12 (so the test cannot pass with a broken estimator).
    """
    n, window = 128, (1.0, 16.0)
    rng = np.random.default_rng(10 + int(alpha * 10))
    maps, amp = spectral_surface(rng, n, alpha, n_maps=8)
    fit, r, g = morphology.fit_roughness_exponent(maps, window, n_boot=300)
    r_e, g_e, _ = morphology.radial_average(expected_correlation_map(amp))
    det = ex.loglog_fit(r_e, g_e, window, slope_per_exponent=2.0)
    bias = abs(det.exponent - alpha)
    assert fit.n_replicas == 8 and fit.bootstrap_stderr is not None
    assert 0.0 < fit.stderr < 0.05
    assert bias < 0.12
    assert abs(fit.exponent - det.exponent) <= 5 * fit.stderr
    assert abs(fit.exponent - alpha) <= bias + 5 * fit.stderr


def test_alpha_distinguishes_surfaces():
    rng = np.random.default_rng(3)
    low, _ = spectral_surface(rng, 64, 0.3, 6)
    high, _ = spectral_surface(rng, 64, 0.9, 6)
    f_low, *_ = morphology.fit_roughness_exponent(low, (1, 8))
    f_high, *_ = morphology.fit_roughness_exponent(high, (1, 8))
    assert f_high.exponent - f_low.exponent > 5 * np.hypot(f_low.stderr, f_high.stderr)


# --------------------------------------------------------------------------------------------
# exponents
# --------------------------------------------------------------------------------------------
def test_power_law_with_noise_recovers_beta_within_its_stderr():
    rng = np.random.default_rng(4)
    t = np.geomspace(1.0, 1e4, 25)
    w = 0.7 * t**0.31 * np.exp(rng.normal(0.0, 0.05, t.size))
    fit = ex.fit_growth_exponent(t, w, (1.0, 1e4))
    assert fit.n_points == 25 and fit.window == (1.0, 1e4)
    assert fit.bootstrap_stderr is None and fit.stderr == fit.ols_stderr > 0
    assert abs(fit.exponent - 0.31) <= 5 * fit.stderr
    assert abs(np.exp(fit.intercept) - 0.7) < 0.1
    # the window selects points: the fit over the upper half uses only those
    upper = ex.fit_growth_exponent(t, w, (100.0, 1e4))
    assert upper.n_points == int(np.sum(t >= 100.0))


def test_ols_stderr_is_calibrated():
    """Over many independent noisy power laws, |β̂ − β| ≤ 2 stderr must hold with the Student-t
    probability P(|t_{n−2}| ≤ 2) (0.939 for n = 20), within 5 binomial standard deviations."""
    rng = np.random.default_rng(5)
    t = np.geomspace(1.0, 1e3, 20)
    trials, hits = 400, 0
    for _ in range(trials):
        w = 2.0 * t**0.25 * np.exp(rng.normal(0.0, 0.1, t.size))
        fit = ex.loglog_fit(t, w, (1.0, 1e3))
        hits += abs(fit.exponent - 0.25) <= 2 * fit.stderr
    p = 0.9392  # scipy.stats.t(18).cdf(2) - t(18).cdf(-2)
    assert abs(hits / trials - p) <= 5 * np.sqrt(p * (1 - p) / trials)


def test_fit_rejects_bad_windows_and_one_point_estimates():
    t = np.arange(1.0, 11.0)
    w = np.sqrt(t)
    for window in [(5.0, 5.0), (6.0, 2.0), (-3.0, -1.0), (np.nan, 3.0)]:
        with pytest.raises(ValueError):
            ex.loglog_fit(t, w, window)
    with pytest.raises(ValueError, match="usable points"):
        ex.loglog_fit(t, w, (2.0, 3.0))  # two points: no stderr possible
    with pytest.raises(ValueError):
        ex.loglog_fit(t, np.zeros_like(t), (1.0, 10.0))  # W = 0 cannot be log-fitted


def test_random_deposition_gives_beta_one_half():
    """Random deposition: <W²> = θ(1 − 1/N) exactly, so β = 1/2; fitted on the replica mean of
    W(θ), error from the bootstrap over replicas; 5 σ tolerance."""
    rng = np.random.default_rng(6)
    thetas = np.geomspace(1.0, 500.0, 16)
    h = random_deposition(rng, 16, 32, 32, thetas)
    w = morphology.roughness(h)  # (R, T)
    n = 32 * 32
    w2_mean = (w**2).mean(axis=0)
    w2_err = (w**2).std(axis=0, ddof=1) / np.sqrt(16)
    assert np.all(np.abs(w2_mean - thetas * (1 - 1 / n)) <= 5 * w2_err)
    fit = ex.fit_growth_exponent(thetas, w, (1.0, 500.0), n_boot=300)
    assert fit.n_replicas == 16 and fit.bootstrap_stderr is not None
    assert 0.0 < fit.stderr < 0.02
    assert abs(fit.exponent - 0.5) <= 5 * fit.stderr


def test_replica_bootstrap_error_matches_spread_between_experiments():
    """The bootstrap error of β (replica mean of 6 random-deposition runs) must match the actual
    scatter of β̂ over 40 independent experiments. The ratio of the two has a relative sampling
    error ≈ 1/sqrt(2·39) ≈ 0.11 from the scatter, plus the bootstrap's own small-sample bias
    (sqrt((R−1)/R) ≈ 0.91 for R = 6); we accept [0.55, 1.6] (≈ 4 σ either side)."""
    rng = np.random.default_rng(7)
    thetas = np.geomspace(1.0, 64.0, 10)
    betas, errs = [], []
    for _ in range(40):
        w = morphology.roughness(random_deposition(rng, 6, 8, 8, thetas))
        fit = ex.fit_growth_exponent(thetas, w, (1.0, 64.0), n_boot=150)
        betas.append(fit.exponent)
        errs.append(fit.bootstrap_stderr)
    ratio = np.mean(errs) / np.std(betas, ddof=1)
    assert 0.55 <= ratio <= 1.6
    assert abs(np.mean(betas) - 0.5) <= 5 * np.std(betas, ddof=1) / np.sqrt(40)


def test_importance_weights_select_replicas():
    """Self-normalised weights: a replica with overwhelming weight dominates the mean; equal
    weights reproduce the plain mean; the ESS counts the effective replicas."""
    vals = np.array([[1.0, 2.0], [3.0, 6.0]])
    np.testing.assert_allclose(ex.replica_mean(vals, np.array([0.0, 0.0])), vals.mean(axis=0))
    np.testing.assert_allclose(ex.replica_mean(vals, np.array([0.0, -800.0])), vals[0])
    np.testing.assert_allclose(ex.effective_sample_size(np.zeros(5)), 5.0)
    assert np.isclose(ex.effective_sample_size(np.array([0.0, -800.0])), 1.0)


# --------------------------------------------------------------------------------------------
# GSF
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("title", ["", "a", "ab", "abc", None])
def test_gsf_round_trip_header_padding_and_byte_order(tmp_path, title):
    rng = np.random.default_rng(8)
    h = rng.integers(0, 9, size=(5, 3)).astype(float) + rng.random((5, 3))  # Lx=5, Ly=3
    path = tmp_path / "m.gsf"
    gsf.write_gsf(path, h, lattice_constant_m=A_M, title=title)
    blob = path.read_bytes()
    assert blob.split(b"\n", 1)[0] == b"Gwyddion Simple Field 1.0"
    end = blob.index(b"\x00")
    start = len(blob) - 4 * 5 * 3
    assert start % 4 == 0 and 1 <= start - end <= 4
    assert blob[end:start] == b"\x00" * (start - end)
    # data block: little-endian float32 metres, row y holds h[:, y]
    expected = (h * A_M).T.astype("<f4")
    assert blob[start:] == expected.tobytes()
    assert np.frombuffer(blob[start:], "<f4").reshape(3, 5)[2, 4] == np.float32(h[4, 2] * A_M)
    z, header = gsf.read_gsf(path)
    assert z.shape == (5, 3) and z.dtype == np.float32
    np.testing.assert_array_equal(z, (h * A_M).astype(np.float32))
    assert header["XRes"] == 5 and header["YRes"] == 3
    assert header["XReal"] == 5 * A_M and header["YReal"] == 3 * A_M
    assert header["XYUnits"] == "m" and header["ZUnits"] == "m"
    if title:
        assert header["Title"] == title


def test_gsf_padding_covers_one_to_four_nuls(tmp_path):
    pads = set()
    for k in range(8):
        blob = gsf.gsf_bytes(np.zeros((2, 2)), title="x" * k)
        end = blob.index(b"\x00")
        pads.add(len(blob) - 16 - end)
    assert pads == {1, 2, 3, 4}


def test_gsf_reader_rejects_malformed_files(tmp_path):
    good = gsf.gsf_bytes(np.ones((2, 2)))
    bad_magic = tmp_path / "a.gsf"
    bad_magic.write_bytes(b"Gwyddion Simple Field 2.0\n" + good[26:])
    truncated = tmp_path / "b.gsf"
    truncated.write_bytes(good[:-4])
    for p in (bad_magic, truncated):
        with pytest.raises(ValueError):
            gsf.read_gsf(p)
    with pytest.raises(ValueError):
        gsf.gsf_bytes(np.ones(4))
    with pytest.raises(ValueError):
        gsf.gsf_bytes(np.ones((2, 2)), title="two\nlines")


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
COLUMNS = ["event", "time", "mean_height", "roughness", "coverage", "n_ti", "n_o", "oxide_fraction"]


def make_run_dir(path: Path, n_replicas=3, lx=16, ly=12, lz=80, weights=True, summary=True, seed=9):
    """A run directory in the simulate format, from NumPy random deposition of Ti/O (1:2)."""
    rng = np.random.default_rng(seed)
    thetas = np.geomspace(0.05, 40.0, 24)
    h = random_deposition(rng, n_replicas, lx, ly, thetas)  # (R, T, Lx, Ly)
    rows = []
    for r in range(n_replicas):
        for k, theta in enumerate(thetas):
            hk = h[r, k]
            n_atoms = hk.sum()
            row = dict(event=(k + 1) * 100, time=theta * (1 + 0.01 * rng.normal()),
                       mean_height=hk.mean(), roughness=hk.std(), coverage=np.mean(hk > 0),
                       n_ti=n_atoms // 3, n_o=n_atoms - n_atoms // 3,
                       oxide_fraction=0.5 * k / len(thetas))
            if n_replicas > 1:
                row["replica"] = r
            if weights:
                row["log_weight"] = -0.05 * r * k
                row["ess"] = 1.0
            rows.append(row)
    rng.shuffle(rows)  # the loader must sort by replica and event itself
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "timeseries.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    final = h[:, -1]
    species = np.zeros(final.shape + (lz,), np.int8)
    zz = np.arange(lz)
    filled = (zz >= 1) & (zz <= final[..., None])
    species[..., 0] = 3
    species[filled] = rng.choice(np.array([1, 2, 2], np.int8), size=int(filled.sum()))
    oxide = (filled & (rng.random(species.shape) < 0.3)).astype(np.int8)
    if n_replicas == 1:
        final, species, oxide = final[0], species[0], oxide[0]
    np.savez(path / "final_state.npz", heights=final, species=species, oxide=oxide)
    if summary:
        (path / "summary.json").write_text(json.dumps(
            {"lattice_size": [lx, ly, lz], "lattice_constant_angstrom": 4.59, "temperature": 180.0}))
    return final, species, oxide


@pytest.mark.slow
def test_cli_writes_all_outputs(tmp_path, capsys):
    run = tmp_path / "run"
    final, species, oxide = make_run_dir(run)
    out = tmp_path / "out"
    assert analyze.main([str(run), "--out", str(out)]) == 0
    for name in ("analysis.json", "height_map.gsf", "roughness.png", "correlation.png",
                 "analysis_height_map.png", "composition.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    res = json.loads((out / "analysis.json").read_text())
    assert res["n_replicas"] == 3 and res["importance_weighted"] is True
    beta = res["beta"]
    assert beta["n_points"] >= 3 and beta["bootstrap_stderr"] is not None
    assert beta["window"][0] >= 1.0 * 0.9  # default window starts after the first monolayer
    assert abs(beta["exponent"] - 0.5) <= 5 * beta["stderr"]
    # default α window [1, min(Lx, Ly)/4] = [1, 3] holds |r| = 1, √2, 2, √5, √8, 3
    assert res["alpha"]["window"] == [1.0, 3.0] and res["alpha"]["n_points"] == 6
    assert np.isfinite(res["alpha"]["exponent"])
    fin = res["final"]
    assert 0 < fin["ess_fraction"] <= 1
    w = ex.replica_mean(morphology.roughness(final)[:, None], -0.05 * np.arange(3) * 23)[0]
    assert np.isclose(fin["roughness_layers"], w)
    assert np.isclose(fin["roughness_angstrom"], w * 4.59)
    lw = -0.05 * np.arange(3) * 23
    n_ti = ex.replica_mean((species == 1).sum(axis=(1, 2, 3))[:, None].astype(float), lw)[0]
    n_o = ex.replica_mean((species == 2).sum(axis=(1, 2, 3))[:, None].astype(float), lw)[0]
    assert np.isclose(fin["o_ti_ratio"], n_o / n_ti)
    z, header = gsf.read_gsf(out / "height_map.gsf")
    np.testing.assert_array_equal(z, (final[0] * A_M).astype(np.float32))
    assert header["XRes"] == 16 and header["YRes"] == 12
    assert "beta =" in capsys.readouterr().out


def test_cli_single_replica_minimal_columns_and_user_windows(tmp_path):
    run = tmp_path / "run"
    final, species, oxide = make_run_dir(run, n_replicas=1, weights=False, summary=False)
    assert analyze.main([str(run), "--beta-window", "2", "40", "--alpha-window", "1", "4",
                         "--no-plots"]) == 0
    res = json.loads((run / "analysis.json").read_text())
    assert res["n_replicas"] == 1 and res["importance_weighted"] is False
    assert res["windows"]["beta"] == [2.0, 40.0] and res["windows"]["beta_source"] == "user"
    assert res["alpha"]["window"] == [1.0, 4.0] and res["alpha"]["bootstrap_stderr"] is None
    film = (species == 1) | (species == 2)
    assert np.isclose(res["final"]["oxide_fraction"], (oxide.astype(bool) & film).sum() / film.sum())
    assert np.isclose(res["final"]["coverage"], np.mean(final > 0))
    assert not (run / "roughness.png").exists()


def test_cli_degenerate_run_reports_null_exponents(tmp_path):
    """A run too short for any fit (two logged rows, flat film) is analysed, not rejected:
    both exponents are null with a note, observables are still reported."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "timeseries.csv").write_text(
        ",".join(COLUMNS) + "\n0,0.0,0,0,0,0,0,0\n64,1.0,1,0,1,21,43,0\n")
    np.savez(run / "final_state.npz", heights=np.ones((8, 8), np.int32))
    assert analyze.main([str(run), "--no-plots"]) == 0
    res = json.loads((run / "analysis.json").read_text())
    assert res["beta"] is None and "fewer than 3" in res["beta_note"]
    assert res["alpha"] is None and res["alpha_note"]
    assert res["final"]["roughness_layers"] == 0.0 and res["final"]["coverage"] == 1.0
    assert res["final"]["composition_source"] == "timeseries.csv"
    assert np.isclose(res["final"]["o_ti_ratio"], 43 / 21)
    assert (run / "height_map.gsf").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--beta-window", "10", "1"], "MIN < MAX"),
        (["--beta-window", "1e6", "2e6"], "usable points"),
        (["--alpha-window", "0", "inf"], "finite"),
        (["--alpha-window", "1", "1.2"], "usable points"),
        (["--beta-window", "x", "2"], "invalid float"),
    ],
)
def test_cli_bad_windows_exit_2_with_one_line(tmp_path, capsys, args, message):
    run = tmp_path / "run"
    make_run_dir(run, n_replicas=2)
    assert analyze.main([str(run), "--no-plots", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err and message in err


def test_cli_missing_inputs_exit_2(tmp_path, capsys):
    assert analyze.main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found" in err
    run = tmp_path / "run"
    make_run_dir(run, n_replicas=1)
    os.remove(run / "final_state.npz")
    assert analyze.main([str(run)]) == 2
    assert "final_state.npz" in capsys.readouterr().err
    (run / "final_state.npz").write_bytes(b"garbage")
    assert analyze.main([str(run)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    (run / "timeseries.csv").write_text("event,time\n1,2\n")
    assert analyze.main([str(run)]) == 2
    assert "missing column" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_module_entry_point_error_is_one_line_no_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "swarm_jax.analyze", str(tmp_path / "missing")],
                          capture_output=True, text=True, env=env, cwd=str(REPO), timeout=1800)  # hang guard only
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("swarm_jax.analyze: error:")


def test_analysis_modules_do_not_import_jax():
    """The analysis layer is NumPy/matplotlib only (usable on any machine, no JAX runtime)."""
    import ast

    files = sorted((REPO / "swarm_jax" / "analysis").glob("*.py")) + [REPO / "swarm_jax" / "analyze.py"]
    assert len(files) >= 6
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in ("jax", "flax", "optax"), (path.name, name)
                assert name.split(".")[:2] != ["swarm_jax", "physics"], (path.name, name)


# --------------------------------------------------------------------------------------------
# Damaged inputs, caveats on the console, ownership of --out
# --------------------------------------------------------------------------------------------


def _one_error(capsys, *texts):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("swarm_jax.analyze: error:"), err
    assert "Traceback" not in err
    for text in texts:
        assert text in err, err


def test_cli_refuses_non_utf8_truncated_and_non_finite_series(tmp_path, capsys):
    run = tmp_path / "run"
    make_run_dir(run, n_replicas=2)
    good = (run / "timeseries.csv").read_bytes()
    (run / "timeseries.csv").write_bytes(good.replace(b"event", b"\xe9vent", 1))
    assert analyze.main([str(run), "--no-plots"]) == 2
    _one_error(capsys, "not UTF-8")

    lines = good.decode().splitlines(keepends=True)
    (run / "timeseries.csv").write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 3])
    assert analyze.main([str(run), "--no-plots"]) == 2
    _one_error(capsys, f"timeseries.csv:{len(lines)}: truncated", "incomplete")

    (run / "timeseries.csv").write_text("".join(lines[:-1]) + lines[-1].rstrip("\r\n")[:-2])
    assert analyze.main([str(run), "--no-plots"]) == 2  # same field count, cut in the last one
    _one_error(capsys, f"timeseries.csv:{len(lines)}: the last row has no line break")

    header = lines[0].strip().split(",")
    for column, value in (("time", "nan"), ("roughness", "inf"), ("time", "")):
        fields = lines[3].strip().split(",")
        fields[header.index(column)] = value
        (run / "timeseries.csv").write_text("".join(lines[:3]) + ",".join(fields) + "\n"
                                            + "".join(lines[4:]))
        assert analyze.main([str(run), "--no-plots"]) == 2
        _one_error(capsys, "timeseries.csv:4:", f"column {column} = {value!r}", "finite")
    assert not (run / "analysis.json").exists()


def test_cli_prints_caveats_and_marks_unreliable_fits(tmp_path, capsys):
    """A run that never completes a monolayer: β falls back to the whole run and α comes from
    scattered adatoms; both are reported, marked unreliable, and the caveats reach the console."""
    run = tmp_path / "run"
    run.mkdir()
    rng = np.random.default_rng(0)
    t = np.geomspace(0.01, 0.5, 12)
    rows = [",".join(COLUMNS)] + [
        f"{100 * (k + 1)},{tk},{tk},{np.sqrt(tk) * (1 + 0.02 * rng.normal())},{tk},1,2,0"
        for k, tk in enumerate(t)]
    (run / "timeseries.csv").write_text("\n".join(rows) + "\n")
    np.savez(run / "final_state.npz", heights=(rng.random((16, 16)) < 0.4).astype(np.int32))
    assert analyze.main([str(run), "--no-plots"]) == 0
    captured = capsys.readouterr()
    assert "(UNRELIABLE)" in captured.out.splitlines()[0]
    caveat_lines = [ln for ln in captured.err.splitlines() if "caveat:" in ln]
    assert any("beta:" in ln and "first monolayer" in ln for ln in caveat_lines)
    assert any("alpha:" in ln and "thinner than one monolayer" in ln for ln in caveat_lines)
    res = json.loads((run / "analysis.json").read_text())
    assert res["beta"]["reliable"] is False and res["beta"]["caveats"]
    assert res["alpha"]["reliable"] is False
    assert len(res["caveats"]) == len(caveat_lines)


def test_fits_from_few_points_are_marked_unreliable(tmp_path, capsys):
    run = tmp_path / "run"
    make_run_dir(run, n_replicas=2, weights=False)
    assert analyze.main([str(run), "--no-plots", "--beta-window", "10", "40"]) == 0
    res = json.loads((run / "analysis.json").read_text())
    n = res["beta"]["n_points"]
    assert 3 <= n < analyze.RELIABLE_FIT_POINTS and res["beta"]["reliable"] is False
    assert f"only {n} points" in capsys.readouterr().err
    assert analyze.main([str(run), "--no-plots"]) == 0  # default window: 12 points
    res = json.loads((run / "analysis.json").read_text())
    assert res["beta"]["reliable"] is True and res["beta"]["caveats"] == []


def test_collapsed_importance_weights_are_flagged(tmp_path, capsys):
    run = tmp_path / "run"
    make_run_dir(run, n_replicas=4)
    lines = (run / "timeseries.csv").read_text().splitlines()
    header = lines[0].split(",")
    issue_lw = {0: -6438.0, 1: -7157.0, 2: -6411.0, 3: -8067.0}
    out_lines = [lines[0]]
    for line in lines[1:]:
        f = line.split(",")
        f[header.index("log_weight")] = repr(issue_lw[int(f[header.index("replica")])])
        out_lines.append(",".join(f))
    (run / "timeseries.csv").write_text("\n".join(out_lines) + "\n")
    assert analyze.main([str(run), "--no-plots"]) == 0
    captured = capsys.readouterr()
    assert "caveat: importance weights: batch ESS 1 of 4" in captured.err
    assert captured.out.count("(UNRELIABLE)") == 2  # beta and alpha
    res = json.loads((run / "analysis.json").read_text())
    assert res["weights"]["reliable"] is False and res["weights"]["batch_ess"] < 1.01
    for fit in ("beta", "alpha"):  # exponents of weighted averages inherit the flag
        assert res[fit]["reliable"] is False
        assert any("not reliable" in c for c in res[fit]["caveats"])



@pytest.mark.slow
def test_cli_keeps_simulates_height_map_and_refuses_a_live_folder(tmp_path, capsys):
    from swarm_jax.outdir import claim_output_dir

    run = tmp_path / "run"
    make_run_dir(run, n_replicas=1)
    (run / "height_map.png").write_bytes(b"simulate's figure")
    assert analyze.main([str(run)]) == 0
    assert (run / "height_map.png").read_bytes() == b"simulate's figure"
    assert (run / "analysis_height_map.png").stat().st_size > 0
    res = json.loads((run / "analysis.json").read_text())
    assert res["outputs"]["height_map"] == "analysis_height_map.png"
    capsys.readouterr()
    with claim_output_dir(run):  # a simulate still writing into the folder
        assert analyze.main([str(run), "--no-plots"]) == 2
        _one_error(capsys, "already in use")
    (tmp_path / "file").write_text("x")
    assert analyze.main([str(run), "--out", str(tmp_path / "file")]) == 2
    _one_error(capsys, "not a folder")
    assert analyze.main([str(run), "--out", ""]) == 2
    _one_error(capsys, "empty path")


def test_cli_failed_write_gives_one_line_and_keeps_the_previous_analysis(tmp_path, capsys,
                                                                         monkeypatch):
    from swarm_jax.outdir import OutputWriteError

    run = tmp_path / "run"
    make_run_dir(run, n_replicas=2)
    assert analyze.main([str(run), "--no-plots"]) == 0
    before = (run / "analysis.json").read_bytes()
    capsys.readouterr()

    def disk_full(path, text):
        raise OutputWriteError(28, f"could not write {path}: No space left on device (ENOSPC)")

    monkeypatch.setattr(analyze, "atomic_write_text", disk_full)
    assert analyze.main([str(run), "--no-plots", "--beta-window", "2", "40"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write outputs" in err and "ENOSPC" in err
    assert (run / "analysis.json").read_bytes() == before
