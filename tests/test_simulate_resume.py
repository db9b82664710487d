"""Production runs that survive interruption, own their folder, stay bounded and write whole files.

Every in-process run here uses the 8x8x16 lattice and chunk lengths of 100 or 300 events of
tests/test_simulate.py, so the batched engine is compiled at most once per length per process.
"""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from swarm_jax import simulate
from swarm_jax.outdir import claim_output_dir
from train_script import cache_copy_env

REPO = Path(__file__).resolve().parents[1]
SIZE = ("8", "8", "16")


def _argv(out, *extra, events=1000, log_every=300, seed=0, temperature=300):
    return ["--policy", "classical", "--lattice-size", *SIZE, "--temperature", str(temperature),
            "--deposition-rate", "1.0", "--events", str(events), "--log-every", str(log_every),
            "--seed", str(seed), "--out", str(out), "--quiet", *extra]


def _outputs(out):
    """The four outputs as bytes (summary.json without its timing and resume fields) and the
    final arrays."""
    summary = json.loads((out / "summary.json").read_text())
    for key in ("events_per_second", "events_per_second_with_logging", "engine_seconds",
                "compile_seconds", "peak_memory_bytes", "command", "resumed_from_events"):
        summary.pop(key)
    with np.load(out / "final_state.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    return (out / "timeseries.csv").read_bytes(), arrays, summary


def _assert_same_run(a, b):
    csv_a, arrays_a, summary_a = _outputs(a)
    csv_b, arrays_b, summary_b = _outputs(b)
    assert csv_a == csv_b
    assert arrays_a.keys() == arrays_b.keys()
    for name in arrays_a:
        np.testing.assert_array_equal(arrays_a[name], arrays_b[name])
    assert summary_a == summary_b


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs: chunks of 300 (log points) and of 100 (--check-every 100)."""
    root = tmp_path_factory.mktemp("ref")
    assert simulate.main(_argv(root / "log300")) == 0
    assert simulate.main(_argv(root / "check100", "--check-every", "100")) == 0
    return root


class _Crash(Exception):
    """Stands for a process killed right after a checkpoint was committed."""


def _crash_after_two_checkpoints(out, monkeypatch) -> list[int]:
    """Run into ``out`` with a checkpoint every 300 events and 'kill' it right after the second
    one is committed; return the event counts of the checkpoints written. Later calls of
    ``simulate.main`` in the test run without the crash."""
    saved = []

    def crash_after_second(progress):
        saved.append(progress.done)
        if len(saved) == 2:
            raise _Crash

    monkeypatch.setattr(simulate, "_after_checkpoint", crash_after_second)
    with pytest.raises(_Crash):
        simulate.main(_argv(out, "--checkpoint-every", "300"))
    monkeypatch.setattr(simulate, "_after_checkpoint", lambda progress: None)
    return saved


@pytest.mark.slow
def test_crash_after_checkpoint_then_resume_is_identical(reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    saved = _crash_after_two_checkpoints(out, monkeypatch)
    assert saved == [300, 600]
    assert (out / "checkpoints" / "600").is_dir() and not (out / "summary.json").exists()
    assert simulate.main(["--resume", "--out", str(out), "--quiet"]) == 0
    _assert_same_run(out, reference / "log300")
    assert json.loads((out / "summary.json").read_text())["resumed_from_events"] == 600
    assert not (out / "checkpoints").exists()  # a finished run keeps no checkpoints


@pytest.mark.slow
@pytest.mark.parametrize("after_chunks", [2, 3])  # inside a log interval / at a log point
def test_sigint_then_resume_is_identical(reference, tmp_path, monkeypatch, after_chunks):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed in the main thread")
    out = tmp_path / "run"
    calls = []
    original = simulate._CompiledChunks.__call__

    def call_then_signal(self, carry, keys, n_events):
        result = original(self, carry, keys, n_events)
        calls.append(n_events)
        if len(calls) == after_chunks:
            signal.raise_signal(signal.SIGINT)
        return result

    monkeypatch.setattr(simulate._CompiledChunks, "__call__", call_then_signal)
    assert simulate.main(_argv(out, "--check-every", "100")) == 130
    done = 100 * after_chunks
    rows = simulate.read_timeseries_rows(out / "timeseries.csv")
    assert rows[-1]["status"] == "interrupted" and rows[-1]["event"] == done
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "--resume" in summary["message"]
    assert (out / "checkpoints" / str(done)).is_dir()
    monkeypatch.setattr(simulate._CompiledChunks, "__call__", original)
    # the whole original command plus --resume is accepted too
    assert simulate.main(_argv(out, "--check-every", "100", "--resume")) == 0
    _assert_same_run(out, reference / "check100")


def test_resume_refuses_other_settings_and_empty_folders(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    assert simulate.main(["--resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no run to resume" in err[0]

    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "run.json").write_text(json.dumps({"argv": _argv(out)}))
    assert simulate.main(_argv(out, "--resume", seed=7)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume: seed = 7 differs" in err[0]
    (out / "checkpoints" / "run.json").write_text("{not json")
    assert simulate.main(["--resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read" in err[0]


@pytest.mark.slow
def test_resume_without_a_checkpoint_starts_over(reference, tmp_path):
    """A run killed before its first checkpoint is resumed from event 0 with its saved command."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "run.json").write_text(json.dumps({"argv": _argv(out)}))
    assert simulate.main(["--resume", "--out", str(out), "--quiet"]) == 0
    _assert_same_run(out, reference / "log300")


@pytest.mark.slow
def test_sigkill_then_resume_is_identical(reference, tmp_path, jax_cache_env,
                                         worker_compilation_cache):
    """A real kill: the subprocess stalls right after committing its 600-event checkpoint (so it
    is certainly alive and holding --out) and is SIGKILLed; --resume in a new process finishes
    the run exactly like the uninterrupted one. (Only the resumed process, which runs to its
    end, shares the worker's compilation cache: it finds the reference run's chunk of 300.)"""
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    launcher = ("import runpy, sys, time; from swarm_jax import simulate; "
                "simulate._after_checkpoint = "
                "lambda p: (print('committed', p.done, flush=True), time.sleep(3600)) "
                "if p.done >= 600 else None; "
                "sys.exit(simulate.main(sys.argv[1:]))")
    killed_env = {**env, **cache_copy_env(worker_compilation_cache, tmp_path / "jax_cache")}
    proc = subprocess.Popen([sys.executable, "-c", launcher, *_argv(out),
                             "--checkpoint-every", "300"],
                            env=killed_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Event-driven: the hook prints once the 600-event checkpoint is committed (readline
        # blocks until then; EOF means the process died first).
        line = proc.stdout.readline()
        assert line.startswith("committed 600"), (line, proc.stderr.read())
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
    assert not (out / "summary.json").exists()
    resumed = subprocess.run([sys.executable, "-m", "swarm_jax.simulate", "--resume", "--out",
                              str(out), "--quiet"], env={**env, **jax_cache_env},
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(out, reference / "log300")
    assert json.loads((out / "summary.json").read_text())["resumed_from_events"] == 600


# ------------------------------------------------------------------------ one owner per folder


def _no_compile(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("simulate() ran although the run should have been refused")

    monkeypatch.setattr(simulate, "simulate", fail)


def _one_error_line(capsys, *texts):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("swarm_jax.simulate: error: ")
    for text in texts:
        assert text in lines[0], lines[0]
    assert "Traceback" not in captured.err


def test_live_folder_is_refused(tmp_path, capsys, monkeypatch):
    _no_compile(monkeypatch)
    out = tmp_path / "live"
    with claim_output_dir(out):  # as a running simulate holds it, with its run file
        (out / "checkpoints").mkdir()
        (out / "checkpoints" / "run.json").write_text(json.dumps({"argv": _argv(out)}))
        for extra in ((), ("--overwrite",), ("--resume",)):
            assert simulate.main(_argv(out, *extra)) == 2
            _one_error_line(capsys, "already in use by process", str(os.getpid()))


@pytest.mark.parametrize("kind", ["file", "empty", "under_file", "read_only"])
def test_unusable_out_is_refused_before_compiling(kind, tmp_path, capsys, monkeypatch):
    _no_compile(monkeypatch)
    (tmp_path / "README.md").write_text("x")
    if kind == "read_only":
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        if os.geteuid() == 0:  # root may write anyway: make the access check say what a user sees
            real_access = os.access
            monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
                False if str(path).startswith(str(ro)) else real_access(path, mode, **kw)))
    out = {"file": tmp_path / "README.md", "empty": "", "under_file": tmp_path / "README.md" / "x",
           "read_only": tmp_path / "ro" / "run"}[kind]
    assert simulate.main(_argv(out)) == 2
    _one_error_line(capsys, "--out")


# --------------------------------------------------------------------------------- bounded


def test_default_check_every_bounds_the_chunks(tmp_path):
    assert simulate.default_check_every(1, "classical") == 2**17
    assert simulate.default_check_every(4, "candidates") == 2**13
    assert simulate.default_check_every(4096, "full") == 1024
    cfg = simulate.parse_config(["--out", str(tmp_path / "r"), "--lattice-size", "100", "100",
                                 "100", "--events", "2e7", "--log-every", "2e7"])
    assert cfg.log_every == 20_000_000 and cfg.check_every == 2**17
    lengths, done = set(), 0
    while done < cfg.events:
        n = simulate.next_chunk_events(done, cfg)
        lengths.add(n)
        done += n
    assert done == cfg.events and max(lengths) == 2**17 and len(lengths) <= 2


@pytest.mark.slow
def test_ceiling_stops_within_one_host_check(tmp_path, monkeypatch):
    """--log-every as large as --events: the film fills the 8x8x5 box long before 2e6 events and
    the run stops at the end of the 1024-event chunk in which that happened."""
    calls = []
    original = simulate._CompiledChunks.__call__

    def counting(self, carry, keys, n_events):
        calls.append(n_events)
        return original(self, carry, keys, n_events)

    monkeypatch.setattr(simulate._CompiledChunks, "__call__", counting)
    out = tmp_path / "ceil"
    argv = ["--lattice-size", "8", "8", "5", "--temperature", "180", "--events", "2e6",
            "--log-every", "2e6", "--check-every", "1024", "--out", str(out), "--quiet"]
    assert simulate.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    executed = summary["events_executed"][0]
    assert summary["status"] == "ceiling" and executed <= 8 * 8 * 4
    assert set(calls) == {1024} and sum(calls) <= executed + 1024
    rows = simulate.read_timeseries_rows(out / "timeseries.csv")
    assert [r["event"] for r in rows] == [0, executed] and rows[-1]["status"] == "ceiling"


# ----------------------------------------------------------------------------- disk faults


@pytest.mark.slow
def test_file_size_limit_gives_one_line_and_keeps_previous_outputs(reference, tmp_path):
    """``ulimit -f`` while the outputs are written: exit 1, one line, the previous run's files
    untouched and no staged files left behind."""
    out = tmp_path / "run"
    assert simulate.main(_argv(out)) == 0
    before = {n: (out / n).read_bytes() for n in simulate.OUTPUT_FILES}
    limit = 4096  # the time series and the state fit, the PNG does not
    assert len(before["timeseries.csv"]) < limit < len(before["height_map.png"])

    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    launcher = ("import resource, runpy, sys; "
                f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY)); "
                "sys.argv = ['swarm_jax.simulate', *sys.argv[1:]]; "
                "runpy.run_module('swarm_jax.simulate', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", launcher, *_argv(out, "--overwrite", seed=5)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if "warning: --events" not in ln]
    assert len(lines) == 1 and "cannot write outputs" in lines[0], proc.stderr
    assert "File too large" in lines[0] and "Traceback" not in proc.stderr
    assert {n: (out / n).read_bytes() for n in simulate.OUTPUT_FILES} == before
    assert not [n for n in os.listdir(out) if n.endswith(".new") or n.endswith(".tmp")]


# --------------------------------------------------------------------- defaults that finish


def test_default_box_is_sized_for_the_requested_growth(tmp_path):
    out = str(tmp_path / "r")
    cfg = simulate.parse_config(["--out", out])
    lz = simulate.default_box_height(simulate.DEFAULT_MONOLAYERS, 400)
    assert cfg.monolayers == simulate.DEFAULT_MONOLAYERS == 5
    assert cfg.deposit_target == 5 * 20 * 20 and cfg.lattice_size == (20, 20, lz)
    assert cfg.events == simulate.EVENTS_PER_ATOM_CAP * cfg.deposit_target  # a cap only
    assert cfg.log_every == 100  # a quarter monolayer of events
    assert cfg.fillable_sites >= 2 * cfg.deposit_target  # room for twice the film
    cfg = simulate.parse_config(["--out", out, "--lattice-size", "64", "64", "auto",
                                 "--events", "1e5"])  # 24.4 ML
    assert cfg.lattice_size[2] == simulate.default_box_height(1e5 / 64**2, 64**2) > 24 + 3
    cfg = simulate.parse_config(["--out", out, "--monolayers", "2.5", "--lattice-size", "10",
                                 "10", "30"])
    assert cfg.deposit_target == 250 and cfg.lattice_size == (10, 10, 30)
    cfg = simulate.parse_config(["--out", out, "--monolayers", "3", "--events", "50"])
    assert cfg.events == 50 and cfg.deposit_target == 1200 and cfg.expected_events == 50
    assert cfg.lattice_size[2] == simulate.default_box_height(50 / 400, 400)
    # 250 ML on 20x20: a tall box is fine (one lattice limit for train.py, the env and simulate)
    assert simulate.parse_config(["--out", out, "--events", "1e5"]).lattice_size[2] > 250
    with pytest.raises(simulate.UsageError, match=r"auto \(a box of \d+ layers"):
        simulate.parse_config(["--out", out, "--lattice-size", "2000", "2000", "auto",
                               "--monolayers", "1e6"])  # over 2^31 - 1 sites
    for bad in (["--monolayers", "0"], ["--monolayers", "nan"], ["--monolayers", "-1"],
                ["--lattice-size", "auto", "8", "8"]):
        with pytest.raises(simulate.UsageError):
            simulate.parse_config(["--out", out, *bad])


@pytest.mark.slow
def test_monolayers_budget_completes_without_reaching_the_ceiling(tmp_path):
    """Random deposition (180 K: hardly any hop is active) is the roughest growth; the sized box
    holds 6 ML of it, and the run ends once every replica has deposited 6 ML (600 atoms), within
    one quarter-monolayer chunk (25 events)."""
    out = tmp_path / "ml"
    assert simulate.main(["--lattice-size", "10", "10", "auto", "--monolayers", "6",
                          "--temperature", "180", "--replicas", "3", "--out", str(out),
                          "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["replica_status"] == ["done"] * 3
    assert "deposited 6 monolayers" in summary["message"]
    rows = simulate.read_timeseries_rows(out / "timeseries.csv")
    last = rows[-3:]
    assert [r["status"] for r in last] == ["done"] * 3
    assert all(r["status"] == "running" for r in rows[:-3])
    assert min(r["n_deposited"] for r in last) >= 600
    assert min(r["n_deposited"] for r in rows[-6:-3]) < 600  # the chunk before had not
    assert max(r["n_deposited"] for r in last) <= 600 + 25 + 25  # at most two chunks' worth
    assert {r["event"] for r in rows} == set(range(0, rows[-1]["event"] + 1, 25))
    assert summary["final"]["mean_height"]["mean"] > 5.5


# ------------------------------------------------------------------ honest weighted estimates


def test_collapsed_weights_are_flagged_in_summary_and_on_the_console(capsys):
    """The issue's four replicas: one carries all the weight. The estimate keeps its (tiny)
    delta-method error, and the summary and the console say it is not reliable."""
    final = {"roughness": np.array([0.12, 0.11, 0.10934, 0.13]), "coverage": np.ones(4),
             "o_ti_ratio": np.full(4, 2.0), "mean_height": np.array([1.0, 1.1, 1.2, 1.3])}
    iw = simulate.importance_estimates(final, [-6438.0, -7157.0, -6411.0, -8067.0])
    assert iw["roughness"]["estimate"] == pytest.approx(0.10934)
    assert iw["roughness"]["stderr"] < 1e-10 and iw["batch_ess"] == pytest.approx(1.0)
    assert iw["reliable"] is False and "batch ESS 1 of 4" in iw["reasons"][0]
    json.dumps(iw, allow_nan=False)  # summary.json stays strict JSON
    simulate._warn_weights({"policy": "trained", "importance_weighted": iw})
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NOT reliable" in err[0] and "batch ESS 1 of 4" in err[0]
    mild = simulate.importance_estimates(final, [-1.0, -1.1, -0.9, -1.05])
    assert mild["reliable"] and mild["reasons"] == []
    simulate._warn_weights({"policy": "trained", "importance_weighted": mild})
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_library_interface_steps_to_the_same_run(reference, tmp_path):
    """``start`` / ``step`` / ``result``: stepping by hand is the command line's run."""
    out = tmp_path / "lib"
    config = simulate.parse_config(_argv(out))
    run = simulate.start(config)
    steps = []
    while not run.finished():
        steps.append(run.step())
        assert run.values["n_events"].shape == (1,)
    result = run.result()
    assert steps == [300, 300, 300, 100] and result.status == "completed"
    assert Path(result.timeseries_path).read_bytes() == (
        reference / "log300" / "timeseries.csv").read_bytes()
    with np.load(reference / "log300" / "final_state.npz") as ref:
        np.testing.assert_array_equal(result.species[0], ref["species"])


@pytest.mark.slow
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(reference, tmp_path,
                                                                   monkeypatch, capsys):
    out = tmp_path / "run"
    _crash_after_two_checkpoints(out, monkeypatch)
    data = [p for p in (out / "checkpoints" / "600" / "state").rglob("*")
            if p.is_file() and p.stat().st_size > 64 and "metadata" not in p.name]
    assert data
    for p in data:  # a disk fault: the newest checkpoint's array data cut short
        p.write_bytes(p.read_bytes()[:16])
    capsys.readouterr()
    assert simulate.main(["--resume", "--out", str(out), "--quiet"]) == 0
    err = [ln for ln in capsys.readouterr().err.strip().splitlines()
           if "warning: --events" not in ln]
    assert len(err) == 1 and "checkpoint 600" in err[0] and "trying the previous one" in err[0]
    _assert_same_run(out, reference / "log300")
    assert json.loads((out / "summary.json").read_text())["resumed_from_events"] == 300
