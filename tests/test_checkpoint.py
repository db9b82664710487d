"""Checkpoints: round trip, pruning, device portability, atomicity under kills, mismatch errors."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct

from swarm_jax.training import checkpoint as ckpt
from swarm_jax.training.checkpoint import (
    CheckpointError,
    CheckpointStore,
    is_complete_checkpoint,
    load_params_only,
    read_config,
    restore_checkpoint,
    save_final,
)

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


@struct.dataclass
class Runner:
    """Stand-in for the PPO RunnerState: params, optimiser state, env-like state, key, counters."""

    params: dict
    opt_state: Any
    env: dict
    key: jax.Array
    update: jax.Array


def make_runner(step: int, width: int = 4) -> Runner:
    """A runner whose every value is a deterministic function of ``step``."""
    s = float(step)
    params = {
        "actor": {
            "Dense_0": {
                "kernel": jnp.arange(3 * width, dtype=jnp.float32).reshape(3, width) * 0.5 + s,
                "bias": jnp.full((width,), -s, jnp.float32),
            }
        },
        "critic": {"Dense_0": {"kernel": jnp.ones((width, 1), jnp.float32) * (s + 0.25)}},
    }
    tx = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(1e-3))
    opt_state = jax.tree.map(lambda x: x + step, tx.init(params))
    env = {
        "heights": jnp.arange(8, dtype=jnp.int32) + step,
        "time": jnp.linspace(0.0, 1.0, 5, dtype=jnp.float64) * (s + 1.0) / 3.0,
        "n_events": jnp.int64(10**12 + step),
    }
    return Runner(params, opt_state, env, jax.random.key(step), jnp.int32(step))


def kill_state(step: int) -> dict:
    """A few-MB pytree for the kill test (float32, float64, int64, typed keys), from ``step``."""
    return {
        "w": np.arange(512 * 1024, dtype=np.float32).reshape(512, 1024) + step,
        "x64": np.linspace(0.0, 1.0, 128 * 1024, dtype=np.float64) * step,
        "counters": {"n": np.int64(step), "steps": np.arange(64, dtype=np.int64) * step},
        "keys": jax.random.split(jax.random.key(step), 4),
    }


def assert_trees_equal(got: Any, want: Any) -> None:
    """Same structure, same leaf types/dtypes/shapes and bitwise-equal values (keys included)."""
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
        name = jax.tree_util.keystr(path)
        assert g.dtype == w.dtype, name
        assert g.shape == w.shape, name
        if jax.dtypes.issubdtype(w.dtype, jax.dtypes.prng_key):
            g, w = jax.random.key_data(g), jax.random.key_data(w)
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=name)


CONFIG = {"name": "t", "stage": 1, "environment": {"lattice_size": (8, 8, 5), "temperature": 180.0},
          "ppo": {"learning_rate": 3e-4}, "training": {"ess_threshold": None}}


@pytest.mark.slow
def test_round_trip_restores_types_dtypes_values_and_config(tmp_path):
    with CheckpointStore(tmp_path / "ck") as store:
        saved = make_runner(7)
        path = store.save(7, saved, CONFIG, {"wall_time_s": 12.5, "note": "x"})
        assert path == tmp_path / "ck" / "7" and is_complete_checkpoint(path)
        assert store.latest_step() == 7 and store.all_steps() == [7]
        state, config, meta = store.restore(target=make_runner(0))  # values must come from disk
    assert isinstance(state, Runner)
    assert type(state.opt_state[1][0]) is type(saved.opt_state[1][0])  # ScaleByAdamState
    assert_trees_equal(state, saved)
    assert jax.dtypes.issubdtype(state.key.dtype, jax.dtypes.prng_key)
    # the restored key is usable and reproduces the saved key's stream
    np.testing.assert_array_equal(jax.random.uniform(state.key, (3,)),
                                  jax.random.uniform(saved.key, (3,)))
    want_config = dict(CONFIG, environment={"lattice_size": [8, 8, 5], "temperature": 180.0})
    assert config == want_config  # JSON: tuples come back as lists, nothing else changes
    assert meta == {"wall_time_s": 12.5, "note": "x"}


def test_restore_without_target_gives_host_numpy_tree(tmp_path):
    with CheckpointStore(tmp_path) as store:
        store.save(3, make_runner(3), CONFIG)
        raw, _, _ = store.restore()
    assert isinstance(raw["params"]["actor"]["Dense_0"]["kernel"], np.ndarray)
    np.testing.assert_array_equal(raw["params"]["actor"]["Dense_0"]["kernel"],
                                  make_runner(3).params["actor"]["Dense_0"]["kernel"])
    np.testing.assert_array_equal(raw["key"], jax.random.key_data(jax.random.key(3)))


def test_max_to_keep_prunes_oldest_and_leaves_no_trash(tmp_path):
    d = tmp_path / "ck"
    with CheckpointStore(d, max_to_keep=2) as store:
        for step in (10, 20, 30, 40, 50):
            store.save(step, make_runner(step), CONFIG, {"step": step})
        assert store.all_steps() == [40, 50]
    assert sorted(p.name for p in d.iterdir()) == ["40", "50"]
    with CheckpointStore(d, max_to_keep=2) as reopened:  # a resumed run sees the same steps
        assert reopened.all_steps() == [40, 50]
        state, _, meta = reopened.restore(40, target=make_runner(0))
    assert meta == {"step": 40}
    assert_trees_equal(state, make_runner(40))


def test_existing_step_needs_force_and_force_replaces(tmp_path):
    with CheckpointStore(tmp_path) as store:
        store.save(5, make_runner(5), CONFIG)
        with pytest.raises(CheckpointError, match="step 5 already exists"):
            store.save(5, make_runner(6), CONFIG)
        store.save(5, make_runner(6), CONFIG, {"v": 2}, force=True)
        state, _, meta = store.restore(5, target=make_runner(0))
    assert meta == {"v": 2}
    assert_trees_equal(state, make_runner(6))


def test_config_must_be_json_and_nothing_is_written_otherwise(tmp_path):
    with CheckpointStore(tmp_path / "ck") as store:
        store.save(1, make_runner(1), {"lr": np.float32(0.5), "n": np.int64(3), "p": Path("a/b")})
        assert read_config(store.step_path(1))[0] == {"lr": 0.5, "n": 3, "p": "a/b"}
        with pytest.raises(CheckpointError, match=r"config\['bad'\].*not JSON-able"):
            store.save(2, make_runner(2), {"bad": object()})
        with pytest.raises(CheckpointError, match="non-finite"):
            store.save(2, make_runner(2), CONFIG, {"x": float("nan")})
        assert store.all_steps() == [1]
        assert not (tmp_path / "ck" / "2").exists()


def test_restore_onto_explicit_cpu_device(tmp_path):
    cpu = jax.devices("cpu")[-1]
    with CheckpointStore(tmp_path) as store:
        store.save(2, make_runner(2), CONFIG)
        state, _, _ = store.restore(target=make_runner(0), device=cpu)
    for leaf in jax.tree.leaves(state):
        assert leaf.devices() == {cpu}
    assert_trees_equal(state, make_runner(2))


def _run_child(code: str, env_extra: dict | None = None, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]),
               JAX_PLATFORMS="cpu", **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.slow
def test_checkpoint_saved_on_another_device_restores_on_default_device(tmp_path):
    """Stands in for GPU -> CPU: a 2-device process saves on its device 1, we restore here."""
    final = tmp_path / "final"
    child = _run_child(f"""
        import swarm_jax, jax
        swarm_jax.enable_x64()
        from test_checkpoint import kill_state
        from swarm_jax.training.checkpoint import save_final
        assert len(jax.devices()) == 2
        state = jax.device_put(kill_state(7), jax.devices()[1])
        assert jax.tree.leaves(state)[0].devices() == {{jax.devices()[1]}}
        save_final({str(final)!r}, state, {{"saved_on": str(jax.devices()[1])}})
        """, env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    out, err = child.communicate(timeout=1800)  # hang guard only
    assert child.returncode == 0, err[-3000:]
    stored = ckpt._state_metadata_tree(final / "state")
    assert "cpu:1" in str(stored["w"].sharding)  # the checkpoint really names the other device
    state, config, _ = restore_checkpoint(final, target=kill_state(0))
    assert list(config) == ["saved_on"] and config["saved_on"].endswith("1")
    for leaf in jax.tree.leaves(state):
        assert leaf.devices() == {jax.devices()[0]}
    assert_trees_equal(state, jax.tree.map(jnp.asarray, kill_state(7)))


def test_incomplete_checkpoints_are_ignored_and_quarantined(tmp_path):
    d = tmp_path / "ck"
    with CheckpointStore(d, max_to_keep=5) as store:
        store.save(1, make_runner(1), CONFIG)
        store.save(2, make_runner(2), CONFIG)
    # (a) a save killed before orbax's final rename: a complete-looking temporary directory
    shutil.copytree(d / "2", d / "3.orbax-checkpoint-tmp-1712345678")
    # (b) a step directory with a missing item file (e.g. a half-deleted or half-copied step)
    shutil.copytree(d / "2", d / "4")
    (d / "4" / "state" / "_METADATA").unlink()
    assert not is_complete_checkpoint(d / "4")
    assert not is_complete_checkpoint(d / "3.orbax-checkpoint-tmp-1712345678")

    with CheckpointStore(d, max_to_keep=5) as store:
        assert store.all_steps() == [1, 2] and store.latest_step() == 2
        assert not (d / "3.orbax-checkpoint-tmp-1712345678").exists()  # removed on open
        assert store.removed_tmp == [d / "3.orbax-checkpoint-tmp-1712345678"]
        assert store.quarantined == [d / "4.incomplete"] and not (d / "4").exists()
        state, _, _ = store.restore(target=make_runner(0))
        assert_trees_equal(state, make_runner(2))
        with pytest.raises(CheckpointError, match="no complete checkpoint for step 4"):
            store.restore(4, target=make_runner(0))
        store.save(3, make_runner(3), CONFIG)  # the run goes on from the good checkpoint
        assert store.all_steps() == [1, 2, 3]
    assert_trees_equal(restore_checkpoint(d, target=make_runner(0))[0], make_runner(3))


def test_shape_mismatch_names_leaf_and_both_shapes(tmp_path):
    with CheckpointStore(tmp_path) as store:
        store.save(1, make_runner(1, width=4), CONFIG)
        with pytest.raises(CheckpointError) as info:
            store.restore(target=make_runner(0, width=6))
    msg = str(info.value)
    assert "shape differs" in msg and "state.params['actor']['Dense_0']['bias']" in msg
    assert "(4,)" in msg and "(6,)" in msg
    assert isinstance(info.value, ValueError)


def test_structure_and_dtype_mismatch_are_reported(tmp_path):
    with CheckpointStore(tmp_path) as store:
        store.save(1, make_runner(1), CONFIG)
        bigger = make_runner(0)
        bigger = bigger.replace(env={**bigger.env, "extra": jnp.zeros(3)})
        missing_msg = r"state\.env\['extra'\].*missing from the checkpoint"
        with pytest.raises(CheckpointError, match=missing_msg):
            store.restore(target=bigger)
        smaller = make_runner(0)
        smaller = smaller.replace(env={k: v for k, v in smaller.env.items() if k != "time"})
        with pytest.raises(CheckpointError, match=r"\['env'\]\['time'\].*not in the template"):
            store.restore(target=smaller)
        wrong = make_runner(0)
        wrong = wrong.replace(env={**wrong.env, "time": wrong.env["time"].astype(jnp.float32)})
        dtype_msg = r"dtype differs.*state\.env\['time'\].*float64.*float32"
        with pytest.raises(CheckpointError, match=dtype_msg):
            store.restore(target=wrong)
        with pytest.raises(CheckpointError, match="no complete checkpoint for step 9"):
            store.restore(9, target=make_runner(0))


@pytest.mark.slow
def test_save_final_overwrite_load_params_only_and_read_config(tmp_path):
    final = tmp_path / "results" / "stage1_final"
    assert save_final(final, make_runner(1), CONFIG, {"stage": 1}) == final
    save_final(final, make_runner(2), dict(CONFIG, stage=2), {"stage": 1, "v": 2})
    assert sorted(p.name for p in final.parent.iterdir()) == ["stage1_final"]  # no leftovers
    with pytest.raises(CheckpointError, match="already exists"):
        save_final(final, make_runner(3), CONFIG, overwrite=False)
    config, meta = read_config(final)
    assert config["stage"] == 2 and meta == {"stage": 1, "v": 2}
    state, _, _ = restore_checkpoint(final, target=make_runner(0))
    assert_trees_equal(state, make_runner(2))

    params = load_params_only(final)
    assert_trees_equal(params, jax.tree.map(np.asarray, make_runner(2).params))
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(params))
    adam_mu = load_params_only(final, "opt_state.1.0.mu")
    assert_trees_equal(adam_mu, jax.tree.map(np.asarray, make_runner(2).opt_state[1][0].mu))
    with pytest.raises(CheckpointError, match=r"has no entry 'policy'.*'params'"):
        load_params_only(final, "policy")

    with CheckpointStore(tmp_path / "ck") as store:  # a store directory means its latest step
        store.save(1, make_runner(1), CONFIG)
        store.save(2, make_runner(5), CONFIG)
    assert_trees_equal(load_params_only(tmp_path / "ck"),
                       jax.tree.map(np.asarray, make_runner(5).params))
    with pytest.raises(CheckpointError, match="neither a complete checkpoint"):
        load_params_only(tmp_path / "nothing_here")


_SAVER = """
    import sys, swarm_jax
    from test_checkpoint import kill_state
    from swarm_jax.training.checkpoint import CheckpointStore
    store = CheckpointStore(sys.argv[1], max_to_keep=3)
    step = (store.latest_step() or 0) + 1
    while True:
        store.save(step, kill_state(step), {"step": step}, {"step": step})
        print(step, flush=True)
        step += 1
"""


@pytest.mark.slow
def test_sigkill_during_saves_never_leaves_a_wrong_checkpoint(tmp_path):
    """Kill a saving process at random moments; every listed step must restore what was saved."""
    d = tmp_path / "ck"
    rng = random.Random(20240611)
    template = kill_state(0)
    leftovers = 0
    for _ in range(4):
        child = _run_child(f"import sys; sys.argv[1:] = [{str(d)!r}]\n" + textwrap.dedent(_SAVER))
        first = child.stdout.readline()  # blocks until one save in this round is committed
        assert first.strip().isdigit(), child.stderr.read()[-3000:]
        time.sleep(rng.uniform(0.0, 0.8))
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate(timeout=60)
        assert child.returncode == -signal.SIGKILL
        last_reported = int(([first] + rest.split())[-1])
        leftovers += any(".orbax-checkpoint-tmp" in p.name or p.name == ".deleted"
                         for p in d.iterdir())

        with CheckpointStore(d, max_to_keep=3) as store:  # what a resumed run does
            steps = store.all_steps()
            assert store.quarantined == []  # orbax never left a step dir half-written
            assert last_reported in steps  # a save that returned is durable
            # A kill between a save's commit and the pruning of the oldest step leaves one extra
            # complete checkpoint (harmless: the next save prunes it); never more.
            assert len(steps) <= 3 + 1 and steps == sorted(steps)
            for step in steps:
                state, config, meta = store.restore(step, target=template)
                assert config == {"step": step} and meta == {"step": step}
                assert_trees_equal(state, jax.tree.map(jnp.asarray, kill_state(step)))
    print(f"kills that left an orbax temporary/trash directory behind: {leftovers} of 4")
