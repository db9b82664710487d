"""The production-simulation command line (swarm_jax.simulate).

Every run here uses an 8x8x16 lattice and chunk lengths of 300 and 100 events, so the whole file
compiles the batched engine three times (R = 1 with 300 and 100 events, R = 3 with 300 events);
later runs reuse the compiled code.
"""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from swarm_jax import analyze, simulate
from swarm_jax.outdir import LOCK_NAME
from swarm_jax.physics import make_rate_tables
from swarm_jax.physics.lattice import check_sos
from swarm_jax.physics.params import O, TI

REPO = Path(__file__).resolve().parents[1]
SIZE = ("8", "8", "16")
REQUIRED = ("event", "time", "mean_height", "roughness", "coverage", "n_ti", "n_o",
            "oxide_fraction", "replica", "log_weight", "ess")


def _run(out, *extra, events=1000, log_every=300, temperature=300, seed=0):
    argv = ["--policy", "classical", "--lattice-size", *SIZE, "--temperature", str(temperature),
            "--deposition-rate", "1.0", "--events", str(events), "--log-every", str(log_every),
            "--seed", str(seed), "--out", str(out), "--quiet", *extra]
    return simulate.main(argv)


def _listing(out):
    """The run folder's files, without the hidden ownership lock file."""
    return sorted(n for n in os.listdir(out) if n != LOCK_NAME)


def _read_csv(path):
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return reader.fieldnames, list(reader)


def _load(out):
    with np.load(os.path.join(out, "final_state.npz")) as npz:
        return {k: npz[k] for k in npz.files}


def _assert_film_consistent(heights, species, oxide, n_ti, n_o):
    """SOS invariant, and the arrays agree with the logged atom counts."""
    check_sos(heights, species, oxide)
    assert int((species == TI).sum()) == n_ti
    assert int((species == O).sum()) == n_o


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The issue's example command on a small lattice: 1000 events logged every 300 (chunks of
    300, 300, 300 and a final 100)."""
    out = tmp_path_factory.mktemp("sim") / "demo"
    assert _run(out) == 0
    return out


@pytest.mark.slow
def test_demo_run_writes_every_output(demo_run):
    assert _listing(demo_run) == [
        "final_state.npz", "height_map.png", "summary.json", "timeseries.csv"]
    assert (demo_run / LOCK_NAME).exists()  # the (released) ownership lock; checkpoints removed
    fields, rows = _read_csv(demo_run / "timeseries.csv")
    assert set(REQUIRED) <= set(fields)
    assert [int(r["event"]) for r in rows] == [0, 300, 600, 900, 1000]
    assert {r["replica"] for r in rows} == {"0"}
    assert all(float(r["log_weight"]) == 0.0 and float(r["ess"]) == 1.0 for r in rows)
    times = [float(r["time"]) for r in rows]
    assert times[0] == 0.0 and all(b > a for a, b in zip(times, times[1:]))
    assert int(rows[-1]["n_ti"]) + int(rows[-1]["n_o"]) > 0

    arrays = _load(demo_run)
    assert arrays["heights"].shape == (8, 8) and arrays["heights"].dtype.kind == "i"
    assert arrays["species"].shape == (8, 8, 16) and arrays["species"].dtype == np.int8
    assert arrays["oxide"].shape == (8, 8, 16) and arrays["oxide"].dtype == np.int8
    last = rows[-1]
    _assert_film_consistent(arrays["heights"], arrays["species"], arrays["oxide"],
                            int(last["n_ti"]), int(last["n_o"]))
    assert math.isclose(float(last["mean_height"]), arrays["heights"].mean(), rel_tol=1e-12)
    assert math.isclose(float(last["roughness"]), arrays["heights"].std(), rel_tol=1e-9)

    summary = json.loads((demo_run / "summary.json").read_text())
    assert summary["lattice_size"] == [8, 8, 16]
    assert summary["lattice_constant_angstrom"] == 4.59
    assert summary["temperature"] == 300.0 and summary["deposition_rate"] == 1.0
    assert summary["events_requested"] == 1000 and summary["events_executed"] == [1000]
    assert summary["status"] == "completed"
    assert summary["physical_time_s"]["mean"] == float(last["time"])
    assert summary["final"]["roughness"]["per_replica"] == [float(last["roughness"])]
    assert summary["final"]["roughness"]["stderr"] is None  # one replica
    assert summary["events_per_second"] > 0 and summary["compile_seconds"] > 0
    assert summary["peak_memory_bytes"] > 0 and summary["state_bytes_per_replica"] > 0
    assert summary["jax_backend"] and summary["package_version"] and summary["seed"] == 0
    assert "--events 1000" in summary["command"]


@pytest.mark.slow
def test_same_seed_reproduces_and_other_seed_differs(demo_run, tmp_path):
    assert _run(tmp_path / "same") == 0
    assert _run(tmp_path / "other", seed=1) == 0
    demo_csv = (demo_run / "timeseries.csv").read_text()
    assert (tmp_path / "same" / "timeseries.csv").read_text() == demo_csv
    assert (tmp_path / "other" / "timeseries.csv").read_text() != demo_csv
    a, b = _load(demo_run), _load(tmp_path / "same")
    for name in ("heights", "species", "oxide"):
        np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.slow
def test_replicas_are_batched_independent_runs(tmp_path):
    out = tmp_path / "rep"
    assert _run(out, "--replicas", "3", events=600) == 0
    fields, rows = _read_csv(out / "timeseries.csv")
    assert [(int(r["replica"]), int(r["event"])) for r in rows] == [
        (rep, ev) for ev in (0, 300, 600) for rep in range(3)]
    arrays = _load(out)
    assert arrays["heights"].shape == (3, 8, 8)
    assert arrays["species"].shape == arrays["oxide"].shape == (3, 8, 8, 16)
    last = {int(r["replica"]): r for r in rows[-3:]}
    for rep in range(3):
        _assert_film_consistent(arrays["heights"][rep], arrays["species"][rep],
                                arrays["oxide"][rep], int(last[rep]["n_ti"]), int(last[rep]["n_o"]))
    # different seeds per replica: the films are not copies of each other
    assert len({arrays["species"][rep].tobytes() for rep in range(3)}) == 3

    summary = json.loads((out / "summary.json").read_text())
    w = np.array([float(last[rep]["roughness"]) for rep in range(3)])
    stats = summary["final"]["roughness"]
    assert stats["per_replica"] == w.tolist()
    assert math.isclose(stats["mean"], w.mean(), rel_tol=1e-12)
    assert math.isclose(stats["stderr"], w.std(ddof=1) / math.sqrt(3), rel_tol=1e-9)
    assert summary["events_executed"] == [600, 600, 600]


@pytest.mark.slow
def test_ceiling_stops_cleanly_with_outputs(tmp_path, capsys):
    """At 180 K growth is random deposition: 3000 events overfill 8x8x15 sites, so the film must
    reach the top of the box; the run stops at the end of that chunk with status 'ceiling'."""
    out = tmp_path / "ceil"
    assert _run(out, events=3000, temperature=180) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "warning: --events 3000 exceeds the 960 sites" in err[0]
    assert "column full at z = Lz-1 = 15" in err[1] and "--lattice-size" in err[1]
    assert err[1].startswith("swarm_jax.simulate: stopped after ")

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ceiling" and summary["replica_status"] == ["ceiling"]
    executed = summary["events_executed"][0]
    assert 0 < executed < 3000
    assert f"stopped after {executed} events" in summary["message"]
    fields, rows = _read_csv(out / "timeseries.csv")
    assert rows[-1]["status"] == "ceiling" and int(rows[-1]["event"]) == executed
    assert all(r["status"] == "running" for r in rows[:-1])
    # it stopped in the first chunk that hit the ceiling: all earlier rows are full chunks
    assert [int(r["event"]) for r in rows[:-1]] == list(range(0, 300 * (len(rows) - 1), 300))
    arrays = _load(out)
    assert arrays["heights"].max() == 15
    _assert_film_consistent(arrays["heights"], arrays["species"], arrays["oxide"],
                            int(rows[-1]["n_ti"]), int(rows[-1]["n_o"]))


@pytest.mark.slow
def test_analyze_reads_the_run_directory(demo_run, tmp_path, capsys):
    assert analyze.main([str(demo_run), "--no-plots", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "analysis.json").read_text())
    assert result["n_rows"] == 5 and result["n_replicas"] == 1
    assert result["lattice_shape"] == [8, 8, 16]
    assert result["lattice_size"] == [8, 8, 16]
    assert result["n_events"] == 1000
    assert result["importance_weighted"] is False
    arrays = _load(demo_run)
    assert math.isclose(result["final"]["roughness_layers"], arrays["heights"].std(), rel_tol=1e-9)


@pytest.mark.slow
def test_plugged_in_runner_weights_and_interrupt(tmp_path):
    """A policy runner plugs in through PolicyRunner: its weights reach the time series, and a
    SIGINT (raised here from the host-side weights hook after the first chunk) ends the loop at
    the end of that chunk with status 'interrupted'."""
    config = simulate.parse_config(["--lattice-size", *SIZE, "--events", "1000", "--log-every",
                                    "300", "--out", str(tmp_path / "int"), "--quiet"])
    tables = make_rate_tables(config.physics_params())
    calls = []

    def weights(state):
        calls.append(len(calls))
        if len(calls) == 2:  # after the first chunk
            signal.raise_signal(signal.SIGINT)
        return np.full(1, -0.5 * len(calls)), np.full(1, 0.25)

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed in the main thread")
    runner = simulate.make_classical_runner(config, tables)._replace(weights=weights)
    handler_before = signal.getsignal(signal.SIGINT)
    result = simulate.simulate(config, runner, progress=False)
    assert result.status == "interrupted" and "SIGINT" in result.message
    assert [r["event"] for r in result.rows] == [0, 300]
    assert [r["log_weight"] for r in result.rows] == [-0.5, -1.0]
    assert all(r["ess"] == 0.25 for r in result.rows)
    assert signal.getsignal(signal.SIGINT) is handler_before  # handler restored


@pytest.mark.slow
def test_module_entry_point_in_a_subprocess(tmp_path):
    """``python -m swarm_jax.simulate`` end to end. With no flux nothing can happen on a bare
    substrate: the run stops at event 0 (status no_events) and still writes every output."""
    out = tmp_path / "empty"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "swarm_jax.simulate", "--lattice-size", *SIZE,
         "--deposition-rate", "0", "--events", "100", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "stopped after 0 events: no event is possible" in proc.stderr
    assert "no_events" in proc.stdout
    assert _listing(out) == [
        "final_state.npz", "height_map.png", "summary.json", "timeseries.csv"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "no_events" and summary["events_executed"] == [0]
    fields, rows = _read_csv(out / "timeseries.csv")
    assert len(rows) == 1 and rows[0]["event"] == "0"


# --------------------------------------------------------------------------- bad input

BAD_ARGUMENTS = [
    # (extra argv, flag the message must name, another text it must contain)
    (["--lattice-size", "2", "8", "6"], "--lattice-size", "2 8 6"),
    (["--lattice-size", "8", "8", "1"], "--lattice-size", "LZ >= 2"),
    (["--lattice-size", "8", "8"], "--lattice-size", "expected 3"),
    (["--temperature", "0"], "--temperature", "> 0"),
    (["--temperature", "-5"], "--temperature", "-5"),
    (["--temperature", "nan"], "--temperature", "finite"),
    (["--temperature", "hot"], "--temperature", "hot"),
    (["--deposition-rate", "-1"], "--deposition-rate", ">= 0"),
    (["--o-ti-ratio", "-0.5"], "--o-ti-ratio", ">= 0"),
    (["--events", "0"], "--events", "[1, 2^62]"),
    (["--events", "1.5"], "--events", "1.5"),
    (["--log-every", "0"], "--log-every", "[1, 2^62]"),
    (["--replicas", "0"], "--replicas", "[1, 2^62]"),
    (["--seed", "-1"], "--seed", "-1"),
    (["--physics", "e_ess=0.2"], "--physics", "did you mean 'e_es'"),
    (["--physics", "temperature=400"], "--physics", "--temperature"),
    (["--physics", "e_es"], "--physics", "KEY=VALUE"),
    (["--physics", "sticking_ti=1.5"], "--physics", "[0, 1]"),
    (["--physics", "e_es=0.1", "--physics", "e_es=0.2"], "--physics", "twice"),
    (["--policy", "quantum"], "--policy", "quantum"),
    (["--policy", "trained"], "--policy trained", "--checkpoint"),
    (["--policy", "trained", "--checkpoint", "__CKPT__"], "--checkpoint", "not a readable training checkpoint"),
    (["--mode", "full"], "--mode", "--policy trained"),
    (["--checkpoint", "__CKPT__"], "--checkpoint", "--policy trained"),
    (["--max-memory-gb", "-1"], "--max-memory-gb", "> 0"),
    (["--max-memory-gb", "1e-6"], "--max-memory-gb", "needs about"),
    (["--no-such-flag"], "--no-such-flag", "unrecognized"),
]


@pytest.mark.parametrize("extra, flag, text", BAD_ARGUMENTS,
                         ids=[" ".join(a) for a, _, _ in BAD_ARGUMENTS])
def test_bad_arguments_give_one_error_line(extra, flag, text, tmp_path, capsys):
    out = tmp_path / "never"
    extra = [str(tmp_path) if a == "__CKPT__" else a for a in extra]
    assert simulate.main(["--events", "100", "--out", str(out), *extra]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("swarm_jax.simulate: error: ")
    assert flag in lines[0] and text in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""
    assert not out.exists()  # refused before anything was written


def test_missing_out_and_non_empty_out(tmp_path, capsys):
    assert simulate.main(["--events", "100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0]

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    assert simulate.main(["--events", "100", "--out", str(busy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and "--overwrite" in err[0]
    assert os.listdir(busy) == ["keep.txt"]


def test_parse_config_defaults_and_units(tmp_path):
    out = str(tmp_path / "run")
    cfg = simulate.parse_config(["--out", out, "--events", "1e5", "--lattice-size", "20", "20", "10"])
    assert cfg.lattice_size == (20, 20, 10) and cfg.events == 100_000
    assert cfg.log_every == 1000  # events / 100
    assert cfg.replicas == 1 and cfg.policy == "classical"
    assert simulate.parse_config(["--out", out, "--events", "50"]).log_every == 1  # at least 1
    cfg = simulate.parse_config(["--out", out, "--physics", "e_es=0.2", "--temperature", "450",
                                 "--lattice-size", "20", "20", "10"])
    params = cfg.physics_params()
    assert params.e_es == 0.2 and params.temperature == 450.0
    assert cfg.fillable_sites == 20 * 20 * 9


def test_memory_estimate_scales_with_replicas_and_lattice():
    small = simulate.estimate_run_bytes((8, 8, 16), 1, 300)
    assert simulate.estimate_run_bytes((8, 8, 16), 4, 300) == 4 * small
    assert simulate.estimate_run_bytes((64, 64, 16), 1, 300) > small
    huge = simulate.estimate_run_bytes((40000, 40000, 100), 1, 1000)
    assert huge > 3 * 40000 * 40000 * 100  # at least 3 bytes per site, three copies


@pytest.mark.slow
def test_replicas_sharded_over_devices_match_one_device(tmp_path):
    """``--replicas`` runs sharded over 2 forced host devices give exactly the 1-device run."""
    common = ["--lattice-size", "6", "6", "8", "--events", "600", "--log-every", "300",
              "--replicas", "4", "--temperature", "600", "--quiet"]
    finals = []
    for devices in (1, 2):
        out = tmp_path / f"dev{devices}"
        env = {**os.environ,
               "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        proc = subprocess.run([sys.executable, "-m", "swarm_jax.simulate", *common, "--out", str(out)],
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        finals.append(np.load(out / "final_state.npz"))
    for name in ("heights", "species", "oxide"):
        assert np.array_equal(finals[0][name], finals[1][name]), name
