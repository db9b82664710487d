"""train.py and the training loop: end-to-end run, outputs, resume, stops, curriculum, CLI errors.

Every run uses configs/tiny_test.yaml (5x5x4, 4 envs x 8 steps, 8 updates in chunks of 2). One
module-scoped run through ``train.main`` provides the reference outputs; the other runs reuse
its compiled trainer (trainers are cached per config), so only the curriculum's second lattice
and the subprocess test compile again.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swarm_jax.training.checkpoint import (
    is_complete_checkpoint,
    load_params_only,
    read_config,
    restore_checkpoint,
)
from swarm_jax.training.config import (
    config_from_dict,
    config_to_dict,
    load_config,
    with_overrides,
)
from swarm_jax.training.curriculum import load_transfer_params, plan_stages, run_curriculum
from swarm_jax.training.logging import metric_tag, read_metrics
from swarm_jax.training.trainer import (
    ChunkReport,
    chunk_sizes,
    complete_steps,
    initial_runner_state,
    make_trainer,
    resume_differences,
    run_stage,
    write_config_yaml,
)
from tensorboard_events import tensorboard_scalars
from train_script import REPO, TINY, cache_copy_env, one_error_line, train_cli


REQUIRED_TAGS = (
    "rollout/ep_rew_mean", "rollout/ep_len_mean", "train/policy_loss", "train/value_loss",
    "train/entropy", "train/approx_kl", "train/clip_fraction", "custom/ess_ratio",
    "custom/batch_ess", "custom/roughness", "custom/coverage", "custom/o_ti_ratio", "time/fps",
)
TIME_COLUMNS = ("time_s", "fps")  # wall-clock dependent


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _deterministic(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in rows]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The reference run: ``train.py --config configs/tiny_test.yaml`` in-process."""
    out = tmp_path_factory.mktemp("tiny")
    code = train_cli.main(["--config", str(TINY), "--out", str(out), "--no-progress"])
    return out, code


# ---- pure helpers ------------------------------------------------------------------------------


def test_chunk_sizes_are_aligned_to_log_every():
    assert chunk_sizes(0, 8, 2) == [2, 2, 2, 2]
    assert chunk_sizes(0, 7, 3) == [3, 3, 1]
    assert chunk_sizes(3, 8, 3) == [3, 2]  # resumed at a chunk boundary
    assert chunk_sizes(4, 8, 3) == [2, 2]  # log_every changed on resume: back on the grid
    assert chunk_sizes(8, 8, 2) == []


def test_resume_differences_allow_only_run_control_keys():
    cfg = load_config(TINY)
    saved = with_overrides(cfg, {"training.total_timesteps": 512, "training.log_every": 4,
                                 "training.ess_threshold": 0.2})
    assert resume_differences(cfg, config_to_dict(saved)) == []
    changed = with_overrides(cfg, {"training.n_envs": 8, "ppo.learning_rate": 1e-3})
    diffs = resume_differences(changed, config_to_dict(cfg))
    assert [d.split(":")[0] for d in diffs] == ["ppo.learning_rate", "training.n_envs"]
    annealed = with_overrides(cfg, {"ppo.anneal_lr": True})
    longer = with_overrides(annealed, {"training.total_timesteps": 512})
    assert [d.split(":")[0] for d in resume_differences(longer, config_to_dict(annealed))] == [
        "training.total_timesteps"]


def test_resume_counts_keys_added_after_the_checkpoint_as_their_defaults():
    cfg = load_config(TINY)
    saved = config_to_dict(cfg)
    for key in ("clip_range_vf", "normalize_advantage", "adam_eps"):
        del saved["ppo"][key]
    del saved["reward"]["target_o_ti"]
    assert resume_differences(cfg, saved) == []
    changed = with_overrides(cfg, {"ppo.adam_eps": 1e-8})
    assert [d.split(":")[0] for d in resume_differences(changed, saved)] == ["ppo.adam_eps"]


# ---- the reference run -------------------------------------------------------------------------


@pytest.mark.slow
def test_end_to_end_writes_all_outputs(tiny_run):
    out, code = tiny_run
    assert code == 0
    steps_per_log = [64, 128, 192, 256]  # 4 chunks of 2 updates x 32 transitions

    scalars = tensorboard_scalars(out / "tensorboard" / "stage1")
    for tag in REQUIRED_TAGS:
        assert tag in scalars, (tag, sorted(scalars))
    for tag in ("custom/roughness", "custom/coverage", "custom/o_ti_ratio", "custom/ess_ratio",
                "train/policy_loss", "time/fps"):
        assert [s for s, _ in scalars[tag]] == steps_per_log, tag
    # Episodes last 20 steps per env: none finishes in the first chunk (16 steps per env).
    assert [s for s, _ in scalars["rollout/ep_rew_mean"]] == steps_per_log[1:]
    assert all(np.isfinite(v) for _, v in scalars["custom/roughness"])

    assert complete_steps(out / "checkpoints" / "stage1") == [128, 256]  # checkpoint_freq 128
    final = out / "stage1_final"
    assert is_complete_checkpoint(final)
    saved_cfg, meta = read_config(final)
    assert meta["status"] == "completed" and meta["env_steps"] == 256 and meta["update"] == 8
    assert meta["stage"] == 1 and meta["jax_backend"] == jax.default_backend()

    effective = load_config(out / "config_stage1.yaml")
    assert effective == config_from_dict(saved_cfg)
    assert effective.stage == 1 and effective.environment.lattice_size == (5, 5, 4)

    rows = _csv_rows(out / "metrics_stage1.csv")
    assert [int(r["env_steps"]) for r in rows] == steps_per_log
    assert [int(r["update"]) for r in rows] == [2, 4, 6, 8]
    # The metrics CSV, which the package reads back, has the points TensorBoard shows.
    metrics = read_metrics(out / "metrics_stage1.csv")
    for key in ("ep_rew_mean", "roughness", "ess_ratio", "policy_loss", "entropy"):
        tb = scalars[metric_tag(key)]
        assert [s for s, _ in metrics[key]] == [s for s, _ in tb], key
        assert [v for _, v in metrics[key]] == pytest.approx([v for _, v in tb], rel=1e-6), key

    png = (out / "learning_curve_stage1.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


@pytest.mark.slow
def test_checkpoint_round_trip_restores_whole_runner_state(tiny_run):
    out, _ = tiny_run
    cfg = load_config(out / "config_stage1.yaml")
    trainer = make_trainer(cfg)
    template = jax.eval_shape(trainer.init, jax.random.PRNGKey(0))
    state, saved_cfg, meta = restore_checkpoint(out / "checkpoints" / "stage1" / "256", template)
    assert int(state.update_step) == 8 and int(state.env_steps) == 256
    assert int(state.train_state.step) == 8 * 2 * 4  # updates x epochs x minibatches
    assert meta["update"] == 8 and meta["ess_below_count"] == 0
    # The final checkpoint holds the same state; compare every leaf (params, Adam, rng, envs).
    final_state, _, _ = restore_checkpoint(out / "stage1_final", template)
    assert jax.tree.structure(final_state) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(final_state)):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    # ... and training goes on from it.
    state2, metrics = trainer.train_chunk(state, 2)
    assert int(state2.env_steps) == 320 and np.isfinite(float(metrics["policy_loss"]))


# ---- resume ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_interrupt_then_resume_gives_bitwise_identical_run(tiny_run, tmp_path, capsys):
    ref_out, _ = tiny_run
    out = tmp_path / "run"
    # Same setup as the reference; only the checkpoint schedule differs (96 env steps: the first
    # chunk boundaries at or after 96 and 192 are 128 and 192).
    cfg = with_overrides(load_config(ref_out / "config_stage1.yaml"),
                         {"training.checkpoint_freq": 96, "training.keep_checkpoints": 3})

    def interrupt_after_update_6(report: ChunkReport):
        if report.update == 6:
            signal.raise_signal(signal.SIGINT)

    result = run_stage(cfg, out, 1, progress=False, callbacks=[interrupt_after_update_6])
    assert result.status == "interrupted" and result.exit_code == 130
    assert "resume with: " in result.message and "--resume" in result.message
    assert complete_steps(out / "checkpoints" / "stage1") == [128, 192]
    assert not (out / "stage1_final").exists()
    # Simulate a harder crash: lose the interrupt checkpoint, so the run resumes from step 128
    # with metrics rows and TensorBoard events beyond it that must be discarded.
    import shutil

    shutil.rmtree(out / "checkpoints" / "stage1" / "192")
    capsys.readouterr()

    # A resumed run may not change the setup.
    assert train_cli.main(["--resume", "--out", str(out), "--n-envs", "8"]) == 2
    assert "training.n_envs: 4 -> 8" in one_error_line(capsys)

    assert train_cli.main(["--resume", "--out", str(out), "--no-progress"]) == 0
    assert "resuming from" in capsys.readouterr().out

    ref_params = load_params_only(ref_out / "stage1_final", "train_state.params")
    new_params = load_params_only(out / "stage1_final", "train_state.params")
    leaves_ref, tree_ref = jax.tree.flatten(ref_params)
    leaves_new, tree_new = jax.tree.flatten(new_params)
    assert tree_ref == tree_new
    for a, b in zip(leaves_ref, leaves_new):
        assert a.dtype == b.dtype and np.array_equal(a, b)  # bitwise
    ref_state, _, _ = restore_checkpoint(ref_out / "stage1_final")
    new_state, _, meta = restore_checkpoint(out / "stage1_final")
    assert all(np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(ref_state), jax.tree.leaves(new_state)))
    assert meta["status"] == "completed" and meta["update"] == 8

    assert _deterministic(_csv_rows(out / "metrics_stage1.csv")) == _deterministic(
        _csv_rows(ref_out / "metrics_stage1.csv"))
    ref_tb = tensorboard_scalars(ref_out / "tensorboard" / "stage1")
    new_tb = tensorboard_scalars(out / "tensorboard" / "stage1")
    for tag in REQUIRED_TAGS:
        if tag != "time/fps":
            assert new_tb[tag] == ref_tb[tag], tag

    # Resuming a finished stage does nothing.
    assert train_cli.main(["--resume", "--out", str(out), "--no-progress"]) == 0
    assert "nothing to do" in capsys.readouterr().out


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume_gives_the_uninterrupted_result(
        tiny_run, tmp_path, worker_compilation_cache):
    """``kill -9`` of a training process at a random moment (checkpoints are written after every
    update, so the kill often lands inside a save) never leaves a checkpoint that restores
    wrongly, and ``--resume`` ends with bitwise the uninterrupted run's parameters."""
    import time

    import yaml

    ref_out, _ = tiny_run
    cfg = yaml.safe_load((ref_out / "config_stage1.yaml").read_text())
    cfg["training"]["checkpoint_freq"] = 32  # one rollout: a save after every update
    cfg["training"]["keep_checkpoints"] = 2
    config = tmp_path / "every_update.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           **cache_copy_env(worker_compilation_cache, tmp_path / "jax_cache")}  # see its note
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), "--config", str(config),
                             "--out", str(out), "--no-progress"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = out / "checkpoints" / "stage1"
    # Event-driven: kill as soon as a seeded number (1-3) of complete checkpoints is on disk, so
    # the kill lands at a random point of the save cycle that follows it (often inside a save).
    # A loaded machine makes this slower, never red; the guard only stops a hung process.
    wanted = int(np.random.default_rng(7).integers(1, 4))
    guard, seen = time.monotonic() + 1800, set()
    while proc.poll() is None and len(seen) < wanted:  # complete checkpoints seen so far
        assert time.monotonic() < guard, "hang guard: no checkpoint in 30 min"
        seen.update(complete_steps(store))
        time.sleep(0.02)
    killed = proc.poll() is None
    proc.kill()
    proc.wait(timeout=600)
    steps = complete_steps(store)
    assert steps, "the run was killed before its first checkpoint"
    for step in steps:  # every listed checkpoint is whole
        state, config_dict, meta = restore_checkpoint(store / str(step))
        assert meta["env_steps"] == step
    if not killed:
        pytest.skip("the training process finished before the kill (machine too fast)")

    assert train_cli.main(["--resume", "--out", str(out), "--no-progress"]) == 0
    ref_params = load_params_only(ref_out / "stage1_final", "train_state.params")
    new_params = load_params_only(out / "stage1_final", "train_state.params")
    for a, b in zip(jax.tree.leaves(ref_params), jax.tree.leaves(new_params)):
        assert a.dtype == b.dtype and np.array_equal(a, b)  # bitwise


# ---- stops -------------------------------------------------------------------------------------


class _PoisonAfter:
    """Wraps a trainer; puts a NaN into one parameter leaf at chunk ``bad_chunk`` (1-based)."""

    def __init__(self, inner, bad_chunk: int):
        self._inner, self._bad, self._calls = inner, bad_chunk, 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def train_chunk(self, runner_state, n):
        runner_state, metrics = self._inner.train_chunk(runner_state, n)
        self._calls += 1
        if self._calls == self._bad:
            params = runner_state.train_state.params
            bias = params["params"]["critic_head"]["bias"]
            params = {"params": {**params["params"],
                                 "critic_head": {**params["params"]["critic_head"],
                                                 "bias": bias.at[0].set(jnp.nan)}}}
            runner_state = runner_state.replace(
                train_state=runner_state.train_state.replace(params=params))
        return runner_state, metrics


@pytest.mark.slow
def test_nan_stops_keeps_last_good_checkpoint_and_exits_3(tiny_run, tmp_path):
    ref_out, _ = tiny_run
    cfg = load_config(ref_out / "config_stage1.yaml")
    out = tmp_path / "nan"
    result = run_stage(cfg, out, 1, progress=False,
                       trainer=_PoisonAfter(make_trainer(cfg), bad_chunk=3))
    assert result.status == "numerical_fault" and result.exit_code == 3
    assert "NaN in params" in result.message and "critic_head" in result.message
    assert "after update 6" in result.message
    assert str(out / "checkpoints" / "stage1" / "128") in result.message
    assert complete_steps(out / "checkpoints" / "stage1") == [128]
    assert not (out / "stage1_final").exists()
    assert [int(r["env_steps"]) for r in _csv_rows(out / "metrics_stage1.csv")] == [64, 128]


class _CorruptThenPoison(_PoisonAfter):
    """Before poisoning, flips 8 bytes of the (verified) checkpoint ``victim``."""

    def __init__(self, inner, bad_chunk: int, victim: Path):
        super().__init__(inner, bad_chunk)
        self._victim = victim

    def train_chunk(self, runner_state, n):
        if self._calls + 1 == self._bad:
            import time

            from swarm_jax.training.checkpoint import is_verified_checkpoint

            deadline = time.monotonic() + 1800  # hang guard only
            while not is_verified_checkpoint(self._victim) and time.monotonic() < deadline:
                time.sleep(0.05)  # the asynchronous save of the victim is still being written
            assert is_verified_checkpoint(self._victim)
            data = max((f for f in (self._victim / "state").rglob("*") if f.is_file()),
                       key=lambda f: f.stat().st_size)
            raw = bytearray(data.read_bytes())
            raw[len(raw) // 2: len(raw) // 2 + 8] = bytes(b ^ 0xFF for b in
                                                          raw[len(raw) // 2: len(raw) // 2 + 8])
            data.write_bytes(bytes(raw))
        return super().train_chunk(runner_state, n)


@pytest.mark.slow
def test_nan_stop_never_names_an_unverified_checkpoint_as_good(tiny_run, tmp_path):
    ref_out, _ = tiny_run
    cfg = load_config(ref_out / "config_stage1.yaml")
    out = tmp_path / "nan_corrupt"
    victim = out / "checkpoints" / "stage1" / "128"
    result = run_stage(cfg, out, 1, progress=False,
                       trainer=_CorruptThenPoison(make_trainer(cfg), bad_chunk=3, victim=victim))
    assert result.status == "numerical_fault" and result.exit_code == 3
    assert "no verified checkpoint was written before it" in result.message
    assert str(victim) not in result.message and result.last_checkpoint is None


@pytest.mark.slow
def test_resume_falls_back_past_a_corrupt_newest_checkpoint(tiny_run, tmp_path, capsys):
    """Both checkpoints of a run (128, 256) exist; 256 is corrupted: --resume reports it in one
    line, continues from 128 and ends with the uninterrupted run's parameters."""
    import shutil

    ref_out, _ = tiny_run
    out = tmp_path / "fallback"
    shutil.copytree(ref_out, out)
    shutil.rmtree(out / "stage1_final")
    bad = out / "checkpoints" / "stage1" / "256"
    (bad / "meta" / "metadata").write_text('{"trunc')  # a truncated metadata file
    code = train_cli.main(["--config", str(TINY), "--out", str(out), "--no-progress", "--resume"])
    assert code == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "not usable" in ln]
    assert len(lines) == 1 and str(bad) in lines[0] and "stage1/128" in lines[0], lines
    assert (out / "checkpoints" / "stage1" / "256.corrupt").is_dir()
    a = load_params_only(ref_out / "stage1_final", "train_state.params")
    b = load_params_only(out / "stage1_final", "train_state.params")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_ess_monitor_stops_early_with_final_checkpoint(tiny_run, tmp_path, capsys):
    out = tmp_path / "ess"
    # The near-uniform initial policy has an ESS ratio just below 1: every log counts as low.
    code = train_cli.main(["--config", str(TINY), "--out", str(out), "--no-progress",
                           "--ess-threshold", "1.0", "--ess-patience", "2"])
    assert code == 0
    assert "stopping early" in capsys.readouterr().err
    _, meta = read_config(out / "stage1_final")
    assert meta["status"] == "stopped_early" and meta["update"] == 4
    assert meta["ess_below_count"] == 2
    assert complete_steps(out / "checkpoints" / "stage1") == [128]


# ---- curriculum and transfer -------------------------------------------------------------------


@pytest.mark.slow
def test_curriculum_hands_parameters_across_lattice_sizes(tiny_run, tmp_path):
    ref_out, _ = tiny_run
    cfg_a = load_config(ref_out / "config_stage1.yaml")
    # Stage B: a bigger lattice and its own hyper-parameters (LR, budget, chunking).
    cfg_b = with_overrides(cfg_a, {
        "stage": 2, "environment.lattice_size": [6, 6, 5], "ppo.learning_rate": 1e-3,
        "training.total_timesteps": 32, "training.log_every": 1, "training.checkpoint_freq": 32})
    out = tmp_path / "curriculum"
    plans = plan_stages([(1, cfg_a), (2, cfg_b)], out)
    assert [p.action for p in plans] == ["run", "run"]
    results = run_curriculum(plans, out, progress=False)
    assert [r.status for r in results] == ["completed", "completed"]
    a_final = out / "stage1_final"
    _, meta_b = read_config(out / "stage2_final")
    assert meta_b["init_from"] == str(a_final)

    # B's first parameters are A's final ones, with a fresh optimiser state and B's lattice.
    params_a = load_transfer_params(a_final, cfg_b)
    trainer_b = make_trainer(cfg_b)
    start_b = initial_runner_state(trainer_b, cfg_b, params_a)
    raw_a = load_params_only(a_final, "train_state.params")
    for x, y in zip(jax.tree.leaves(start_b.train_state.params), jax.tree.leaves(raw_a)):
        assert np.array_equal(np.asarray(x), y)
    assert int(start_b.train_state.step) == 0
    for leaf in jax.tree.leaves(start_b.train_state.opt_state):
        assert not np.any(np.asarray(leaf))  # Adam moments and counts all zero
    assert start_b.env_state.lattice.heights.shape == (cfg_b.ppo.n_envs, 6 * 6 + 1)

    # ... and they are what the curriculum trained from: one update from them reproduces B.
    replay, _ = trainer_b.train_chunk(start_b, 1)
    final_b = load_params_only(out / "stage2_final", "train_state.params")
    for x, y in zip(jax.tree.leaves(replay.train_state.params), jax.tree.leaves(final_b)):
        assert np.array_equal(np.asarray(x), y)
    assert not all(np.array_equal(x, y) for x, y in
                   zip(jax.tree.leaves(final_b), jax.tree.leaves(raw_a)))  # B did learn


@pytest.mark.slow
def test_pretrained_with_a_different_network_is_refused(tiny_run, tmp_path, capsys):
    ref_out, _ = tiny_run
    other = with_overrides(load_config(TINY), {"network.hidden_sizes": [16, 16]})
    path = write_config_yaml(other, tmp_path / "narrow.yaml")
    out = tmp_path / "out"
    code = train_cli.main(["--config", str(path), "--pretrained", str(ref_out / "stage1_final"),
                           "--out", str(out), "--no-progress"])
    assert code == 2
    line = one_error_line(capsys)
    assert "networks differ" in line and "[32, 32]" in line and "[16, 16]" in line
    assert not (out / "checkpoints").exists()  # refused before anything ran


# ---- command-line errors -----------------------------------------------------------------------


@pytest.mark.parametrize("argv, expected", [
    (["--stage", "4"], "invalid choice"),
    (["--n-envs", "abc"], "invalid integer"),
    (["--bogus"], "unrecognized arguments"),
    (["--n-envs", "0"], "training.n_envs = 0"),
    (["--ess-threshold", "2"], "training.ess_threshold = 2.0"),
    (["--config", "no_such_config.yaml"], "not found"),
    (["--stage", "all", "--config", str(TINY)], "--config cannot be combined with --stage all"),
    (["--resume", "--pretrained", "x"], "exclude each other"),
    (["--config", str(TINY), "--stage", "all"], "--config cannot be combined"),
])
def test_cli_errors_are_one_line_and_exit_2(argv, expected, tmp_path, capsys):
    assert train_cli.main(argv + ["--out", str(tmp_path / "o")]) == 2
    assert expected in one_error_line(capsys)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_cli_config_errors(tiny_run, tmp_path, capsys):
    ref_out, _ = tiny_run
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text() + "\nlearning_rat: 1.0\n")
    assert train_cli.main(["--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "learning_rat: unknown key (did you mean 'learning_rate'?)" in one_error_line(capsys)
    # A stage-2 config run as stage 1 is a contradiction.
    assert train_cli.main(["--config", "stage2_medium", "--stage", "1",
                           "--out", str(tmp_path / "o")]) == 2
    assert "contradicts" in one_error_line(capsys)
    # Nothing to resume; and a fresh start never overwrites earlier results.
    assert train_cli.main(["--resume", "--out", str(tmp_path / "empty")]) == 2
    assert "nothing to resume" in one_error_line(capsys)
    assert train_cli.main(["--config", str(TINY), "--out", str(ref_out)]) == 2
    assert "already holds stage1 results" in one_error_line(capsys)
    assert train_cli.main(["--pretrained", str(tmp_path / "missing"), "--config", str(TINY),
                           "--out", str(tmp_path / "o")]) == 2
    assert "no such file or directory" in one_error_line(capsys)


# ---- the entry point ---------------------------------------------------------------------------


@pytest.mark.slow
def test_train_py_runs_as_a_script(tiny_run, tmp_path, jax_cache_env):
    # The process runs to its end, so it may share the worker's compilation cache, which holds
    # the reference run's programs (the same update: chunks of 2).
    out = tmp_path / "script"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           **jax_cache_env}
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--config", "configs/tiny_test.yaml",
         "--out", str(out), "--total-timesteps", "64", "--no-progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stage1: completed" in proc.stdout
    assert is_complete_checkpoint(out / "stage1_final")
    assert [int(r["env_steps"]) for r in _csv_rows(out / "metrics_stage1.csv")] == [64]


def test_training_that_cannot_fit_in_memory_is_refused_before_allocation(tmp_path, capsys):
    """A run whose lattices and rollout cannot fit is refused with one line, before compiling."""
    from swarm_jax.training.trainer import TrainError, check_training_memory, estimate_training_bytes

    cfg = load_config(TINY)
    need = estimate_training_bytes(cfg)
    assert need > 0
    assert check_training_memory(cfg, available=need) == need
    with pytest.raises(TrainError, match="training.n_envs = 4 lattices of 5x5x4"):
        check_training_memory(cfg, available=need - 1)
    big = tmp_path / "big.yaml"
    big.write_text((REPO / "configs" / "tiny_test.yaml").read_text())
    # 2**24 environments with 8-step rollouts of 8x116-feature observations need ~1 TB:
    # refused by the CLI with one line.
    code = train_cli.main(["--config", str(big), "--out", str(tmp_path / "out"),
                           "--n-envs", str(2 ** 24), "--total-timesteps", str(2 ** 28)])
    assert code == 2
    assert "GB available" in one_error_line(capsys)
