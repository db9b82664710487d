"""train.py reliability: output-folder ownership, refused folders, bounded settings, coordinator
timeout, the compilation cache, and a checkpoint write that hits the file-size limit.

The subprocess runs share one compilation cache folder (module-scoped, under pytest's tmp), so
only the first of them (``first_start``, which both subprocess tests observe) compiles the tiny
configuration.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from swarm_jax.outdir import claim_output_dir
from swarm_jax.training.checkpoint import (
    is_verified_checkpoint,
    load_params_only,
)
from swarm_jax.training.config import ConfigError, load_config, with_overrides
from swarm_jax.training.trainer import (
    TrainError,
    check_training_memory,
    chunk_sizes,
    count_chunks,
    iter_chunk_sizes,
)
from train_script import REPO, TINY, one_error_line, train_cli


# ---- output folder -----------------------------------------------------------------------------


def test_a_second_run_into_a_live_out_folder_stops_with_one_line(tmp_path, capsys):
    out = tmp_path / "live"
    with claim_output_dir(out):  # a running train.py holds this claim
        code = train_cli.main(["--config", str(TINY), "--out", str(out), "--no-progress"])
        assert code == 2
        assert "already in use by process" in one_error_line(capsys)
    assert not (out / "checkpoints").exists() and not (out / "config_stage1.yaml").exists()


@pytest.mark.parametrize("make_out, expected", [
    (lambda tmp: str(REPO / "README.md"), "exists and is not a folder"),
    (lambda tmp: "", "an empty path is not an output folder"),
    (lambda tmp: "   ", "an empty path is not an output folder"),
    (lambda tmp: str(REPO / "README.md" / "sub"), "is a file, so no folder can be made under it"),
])
def test_unusable_out_is_refused_before_compiling(tmp_path, capsys, make_out, expected):
    assert train_cli.main(["--config", str(TINY), "--out", make_out(tmp_path)]) == 2
    assert expected in one_error_line(capsys)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root may write anywhere: no unwritable folder to test with")
def test_unwritable_out_is_refused(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert train_cli.main(["--config", str(TINY), "--out", str(ro / "run")]) == 2
        assert "not writable" in one_error_line(capsys)
    finally:
        ro.chmod(0o700)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_out_on_a_file_system_that_refuses_writes_is_one_line(capsys):
    # /proc refuses new folders even to root (the chmod test above is skipped for root)
    assert train_cli.main(["--config", str(TINY), "--out", "/proc/swarm_jax_run"]) == 2
    line = one_error_line(capsys)
    assert "--out /proc/swarm_jax_run" in line and ("cannot create it" in line
                                                     or "not writable" in line)


# ---- bounded settings --------------------------------------------------------------------------


@pytest.mark.parametrize("key, value, expected", [
    ("environment.max_steps", 1e30, "environment.max_steps = 1e+30: must be an integer >= 1 and "
                                    "<= 2147483647"),
    ("environment.n_swarm", 2**40, "environment.n_swarm"),
    ("training.n_envs", 1e12, "training.n_envs"),
    ("training.log_every", 1e20, "training.log_every"),
    ("training.total_timesteps", 1e30, "training.total_timesteps"),
    ("training.checkpoint_every_s", -1, "training.checkpoint_every_s"),
    ("training.checkpoint_every_s", float("nan"), "training.checkpoint_every_s"),
])
def test_integer_settings_beyond_what_jax_holds_are_one_config_error(key, value, expected):
    with pytest.raises(ConfigError, match="must be") as info:
        with_overrides(load_config(TINY), {key: value})
    assert expected in str(info.value) and info.value.field == key


def test_total_timesteps_1e15_is_refused_by_the_update_counter_not_a_list(capsys, tmp_path):
    # 1e15 / 32 = 3.1e13 PPO updates: more than the int32 update counter holds.
    with pytest.raises(ConfigError, match="int32"):
        with_overrides(load_config(TINY), {"training.total_timesteps": 1e15})
    code = train_cli.main(["--config", str(TINY), "--out", str(tmp_path / "o"),
                           "--total-timesteps", "1e15"])
    assert code == 2 and "at most 2147483647" in one_error_line(capsys)


def test_the_chunk_schedule_is_lazy_and_counted_arithmetically():
    it = iter_chunk_sizes(0, 2**31 - 1, 1)  # the largest budget: 2**31 - 1 one-update chunks
    assert iter(it) is it and [next(it) for _ in range(3)] == [1, 1, 1]
    assert count_chunks(0, 2**31 - 1, 1) == 2**31 - 1
    assert count_chunks(5, 2**31 - 1, 7) == 1 + (2**31 - 2) // 7 - 0  # chunks end on multiples
    for start, end, every in [(0, 8, 2), (0, 7, 3), (3, 8, 3), (4, 8, 3), (8, 8, 2), (0, 1, 5),
                              (2, 30, 4), (5, 6, 7)]:
        assert count_chunks(start, end, every) == len(chunk_sizes(start, end, every))
        assert sum(chunk_sizes(start, end, every)) == max(end - start, 0)


def test_a_network_that_cannot_fit_is_refused_naming_the_network(tmp_path, capsys):
    cfg = with_overrides(load_config(TINY), {"network.hidden_sizes": [1_000_000_000]})
    with pytest.raises(TrainError, match=r"network.hidden_sizes = \[1000000000\]"):
        check_training_memory(cfg, available=64 * 2**30)
    big = tmp_path / "big.yaml"
    big.write_text(TINY.read_text().replace("hidden_sizes: [32, 32]", "hidden_sizes: [1000000000]"))
    assert train_cli.main(["--config", str(big), "--out", str(tmp_path / "o")]) == 2
    line = one_error_line(capsys)
    assert "network.hidden_sizes" in line and "GB available" in line
    assert not (tmp_path / "o").exists()


# ---- multi-host start-up -----------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_coordinator_is_one_line_after_the_timeout(tmp_path, capsys):
    port = _closed_port()
    code = train_cli.main(["--config", str(TINY), "--out", str(tmp_path / "o"),
                           "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                           "--process-id", "1", "--coordinator-timeout", "1"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("train.py: process 1 of 2: joining the coordinator")  # not silent
    assert len(err) == 2 and err[1].startswith("train.py: error: distributed start-up failed: ")
    assert f"coordinator 127.0.0.1:{port} unreachable for 1 s" in err[1]


def test_help_shows_each_default_once_and_documents_the_new_flags(capsys):
    with pytest.raises(SystemExit):
        train_cli.build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default 1, or the config's stage)" in text
    assert "(default: runs/train)" in text
    for flag in ("--no-progress", "--no-compile-cache", "--coordinator-timeout"):
        assert flag in text


def test_override_flags_map_to_config_keys_and_come_back_in_the_resume_hint():
    args = train_cli.build_parser().parse_args(
        ["--stage", "1", "--n-envs", "1e2", "--ess-threshold", "0.3", "--log-every", "4",
         "--total-timesteps", "5_000", "--no-progress"])
    assert train_cli._flag_overrides(args) == {
        "training.n_envs": 100, "training.ess_threshold": 0.3, "training.log_every": 4,
        "training.total_timesteps": 5000}
    assert train_cli._resume_hint(args) == (
        "python train.py --stage 1 --resume --out runs/train --total-timesteps 5000 "
        "--n-envs 100 --ess-threshold 0.3 --log-every 4 --no-progress")


# ---- subprocess runs: compilation cache, file-size limit -----------------------------------------


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("jax_cache")


def _train(args, cache, cwd, prelude: str = "", timeout: int = 600):
    env = {**os.environ, "PYTHONPATH": str(REPO), "SWARM_JAX_CACHE_DIR": str(cache)}
    code = textwrap.dedent(prelude) + textwrap.dedent(f"""
        import runpy, sys
        sys.argv = ["train.py"] + {list(map(str, args))!r}
        runpy.run_path({str(REPO / "train.py")!r}, run_name="__main__")
    """)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


_FIRST = ["--config", TINY, "--total-timesteps", "128", "--no-progress"]


@pytest.fixture(scope="module")
def first_start(cache_dir, tmp_path_factory):
    """The first ``train.py`` start of the module, into its still empty cache folder: 128 env
    steps (4 updates, the checkpoint at 128). Returns (the process, its --out folder, the names
    in the cache folder right after it). Both tests below observe it."""
    root = tmp_path_factory.mktemp("first")
    assert not any(cache_dir.iterdir())  # nothing compiled into it before this run
    proc = _train(_FIRST + ["--out", root / "a"], cache_dir, root)
    return proc, root / "a", sorted(p.name for p in cache_dir.iterdir())


@pytest.mark.slow
def test_second_start_uses_the_compilation_cache_and_gives_identical_results(
        cache_dir, first_start, tmp_path):
    first, out_a, cached = first_start
    assert first.returncode == 0, first.stderr[-3000:]
    assert "compiling the update (first start; cached afterwards)" in first.stdout
    assert "compiled in" in first.stdout
    assert any("train_chunk" in name for name in cached), cached  # the update is in the cache
    second = _train(_FIRST + ["--out", tmp_path / "b"], cache_dir, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    pa, pb = (load_params_only(out / "stage1_final", "train_state.params")
              for out in (out_a, tmp_path / "b"))
    flat_a, flat_b = (np.concatenate([np.ravel(v) for v in _leaves(p)]) for p in (pa, pb))
    np.testing.assert_array_equal(flat_a, flat_b)  # bitwise: a cache hit computes the same
    # --no-compile-cache: nothing new is written into the cache folder
    before = sorted(p.name for p in cache_dir.iterdir())
    third = _train(["--config", TINY, "--total-timesteps", "64", "--no-progress", "--out",
                    tmp_path / "c", "--no-compile-cache", "--seed", "7"], cache_dir, tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    assert sorted(p.name for p in cache_dir.iterdir()) == before


def _leaves(tree):
    if isinstance(tree, dict):
        for k in sorted(tree):
            yield from _leaves(tree[k])
    else:
        yield np.asarray(tree)


_FSIZE = """
    import resource, signal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (48 * 1024, resource.RLIM_INFINITY))
"""


@pytest.mark.slow
def test_a_checkpoint_write_past_the_file_size_limit_is_one_line_and_resumable(
        cache_dir, first_start, tmp_path):
    first, first_out, _ = first_start  # a completed run to 128 env steps, copied here
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "run"
    shutil.copytree(first_out, out)
    base = ["--config", TINY, "--out", out, "--no-progress"]
    ckpt = out / "checkpoints" / "stage1" / "128"
    assert is_verified_checkpoint(ckpt)
    shutil.rmtree(out / "stage1_final")  # as if killed after the checkpoint at 128

    # Resume to 256 env steps with a 48 KiB file-size limit: the checkpoint at 256 cannot be written.
    limited = _train(base + ["--total-timesteps", "256", "--resume"], cache_dir, tmp_path,
                     prelude=_FSIZE)
    assert limited.returncode == 1, (limited.stdout[-2000:], limited.stderr[-3000:])
    err = limited.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error: stage1: could not write"), err
    assert "File too large" in err[0] and f"the last verified checkpoint is {ckpt}" in err[0]
    assert "--resume" in err[0]
    assert is_verified_checkpoint(ckpt)  # intact
    # (orbax may leave its temporary folder of the failed save; it is never listed as a step)

    # With the limit lifted, --resume continues from the verified checkpoint and completes.
    again = _train(base + ["--total-timesteps", "256", "--resume"], cache_dir, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {ckpt}" in again.stdout
    assert "stage1: completed 8 updates, 256 env steps" in again.stdout
    assert is_verified_checkpoint(out / "stage1_final")
    leftovers = [p.name for p in (out / "checkpoints" / "stage1").iterdir()]
    assert all(".orbax-checkpoint-tmp" not in name for name in leftovers), leftovers  # cleaned
