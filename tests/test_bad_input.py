"""Bad input at every entry point is one clean error naming the argument, the value and what is
allowed (issue 22, cases 2-7): pathological YAML, wrong types at the Python API, badly shaped
actions, the library path of production runs, one tool deleting another's checkpoints, and one
set of lattice limits.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swarm_jax.env.tio2_env import EnvParams, TiO2GrowthEnv, check_action
from swarm_jax.physics import PhysicsParams
from swarm_jax.physics.lattice import MAX_LATTICE_SITES, validate_lattice_size
from swarm_jax.training.config import (
    MAX_CONFIG_ALIASES,
    MAX_CONFIG_BYTES,
    MAX_CONFIG_DEPTH,
    ConfigError,
    EnvironmentConfig,
    load_config,
)
from train_script import TINY, one_error_line, train_cli

# ---- case 2: pathological YAML ------------------------------------------------------------------


def _deep_flow(levels: int) -> str:
    return "environment: {lattice_size: " + "[" * levels + "]" * levels + "}\n"


def _alias_bomb(levels: int = 8) -> str:
    text = "a: &a [x, x, x, x, x, x, x, x, x]\n"
    for i in range(levels):
        name, prev = chr(98 + i), chr(97 + i)
        text += f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]\n"
    return text


@pytest.mark.parametrize("text, expected", [
    (_deep_flow(20_000), f"nested deeper than {MAX_CONFIG_DEPTH} levels"),
    ("".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "x: 1\n",
     f"nested deeper than {MAX_CONFIG_DEPTH} levels"),
    (_alias_bomb(), f"more than {MAX_CONFIG_ALIASES} aliases"),
    ("name: x\n" + "# padding\n" * (MAX_CONFIG_BYTES // 10 + 1), f"{MAX_CONFIG_BYTES} bytes"),
])
def test_pathological_yaml_is_one_config_error(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_pathological_yaml_on_the_command_line_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "deep.yaml"
    path.write_text(_deep_flow(20_000))
    assert train_cli.main(["--config", str(path), "--out", str(tmp_path / "o")]) == 2
    line = one_error_line(capsys)
    assert "nested deeper than" in line


def test_a_config_may_use_a_few_aliases(tmp_path):
    text = TINY.read_text().replace("n_steps: 8", "n_steps: &n 8").replace("batch_size: 8",
                                                                              "batch_size: *n")
    assert "*n" in text
    path = tmp_path / "ok.yaml"
    path.write_text(text)
    load_config(path)  # the shipped configs are far inside the limits


# ---- case 3: types at the Python API ------------------------------------------------------------


@pytest.mark.parametrize("value, kind", [("300", TypeError), (None, TypeError),
                                         (True, TypeError), (np.bool_(True), TypeError),
                                         (jnp.array(-1.0), ValueError),
                                         (np.array([300.0, -2.0]), ValueError),
                                         (jnp.array([300.0, jnp.nan]), ValueError),
                                         (jnp.array([True]), TypeError)])
def test_physics_params_refuse_bad_concrete_temperatures(value, kind):
    with pytest.raises(kind) as err:
        PhysicsParams(temperature=value)
    text = str(err.value)
    assert text.startswith("PhysicsParams.temperature = ") and "must be" in text
    with pytest.raises(kind):
        PhysicsParams().replace(temperature=value)


def test_physics_params_accept_sweeps_tracers_and_pytree_rebuilds():
    p = PhysicsParams(temperature=jnp.array([300.0, 400.0]))  # a sweep, every entry checked
    assert p.temperature.shape == (2,)
    kT = jax.vmap(lambda t: PhysicsParams(temperature=t).kT)(jnp.array([300.0, 400.0]))
    assert kT.shape == (2,)
    # Traced values are not checked (documented): a negative traced temperature passes.
    out = jax.jit(lambda t: PhysicsParams(temperature=t).temperature)(-5.0)
    assert float(out) == -5.0
    grads = jax.grad(lambda q: q.kT)(PhysicsParams())  # zeros where a range says > 0
    assert float(grads.attempt_frequency) == 0.0
    assert jax.tree.map(lambda _: None, PhysicsParams()).temperature is None


@pytest.mark.parametrize("value", [None, "5", True, 2.5, 0])
def test_env_params_refuse_bad_episode_lengths(value):
    with pytest.raises((TypeError, ValueError), match="EnvParams.max_steps_in_episode"):
        EnvParams.create(max_steps_in_episode=value)


def test_env_params_placeholder_trees_are_not_checked():
    jax.tree.map(lambda _: None, EnvParams.create())


@pytest.mark.parametrize("size", [(2, 5, 5), (5, 5, 1), (5.0, 5, 5), (True, 5, 5), "abc",
                                  (5, 5), None, (50_000, 50_000, 2)])
def test_one_lattice_limit(size):
    with pytest.raises(ValueError, match="lattice_size = .*: must be three integers"):
        validate_lattice_size(size)
    with pytest.raises((ValueError, TypeError)):
        TiO2GrowthEnv(size)


def test_the_lattice_limit_is_the_same_for_train_env_and_simulate(tmp_path):
    from swarm_jax import simulate

    tall = (8, 8, 200)
    assert EnvironmentConfig(lattice_size=tall).lattice_size == tall
    assert TiO2GrowthEnv(tall).lattice_size == tall
    cfg = simulate.parse_config(["--out", str(tmp_path / "s"), "--lattice-size", "8", "8", "200",
                                 "--events", "100"])
    assert cfg.lattice_size == tall
    lx = int(np.sqrt(MAX_LATTICE_SITES // 3)) + 10  # (lx^2 + 1) * 3 sites: over the limit
    with pytest.raises(ConfigError, match="environment.lattice_size"):
        EnvironmentConfig(lattice_size=(lx, lx, 3))
    with pytest.raises(simulate.UsageError, match="--lattice-size"):
        simulate.parse_config(["--out", str(tmp_path / "s"), "--lattice-size", str(lx), str(lx),
                               "3", "--events", "100"])


# ---- case 4: env.step actions -------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_env():
    env = TiO2GrowthEnv((5, 5, 4), n_swarm=4)
    key = jax.random.PRNGKey(0)
    _, state = env.reset(key)
    return env, key, state


@pytest.mark.parametrize("action, kind, text", [
    (jnp.array([1, 2]), ValueError, "shape (2,)"), (jnp.array([[1]]), ValueError, "shape (1, 1)"),
    (None, TypeError, "action = None"), (True, TypeError, "action = True"),
    (1.5, TypeError, "dtype float64"), ("1", TypeError, "action = '1'"),
])
def test_step_refuses_badly_shaped_actions(small_env, action, kind, text):
    env, key, state = small_env
    with pytest.raises(kind) as err:
        env.step(key, state, action)
    assert text in str(err.value) and "shape ()" in str(err.value)


def test_step_batch_checks_the_batch_shape(small_env):
    env, key, _ = small_env
    keys = jax.random.split(key, 3)
    # step_batch checks the action before it touches the states: abstract states (shapes only,
    # nothing compiled) are enough to see a wrong batch refused. A right one passes the same
    # check (tests/test_env.py steps right batches through step_batch).
    _, states = jax.eval_shape(jax.vmap(env.reset), keys)
    check_action(jnp.zeros(3, jnp.int32), (3,))
    with pytest.raises(ValueError, match=r"action has shape \(2,\).*shape \(3,\)"):
        env.step_batch(keys, states, jnp.zeros(2, jnp.int32))


@pytest.mark.slow  # compiles env steps or runs simulate
def test_good_and_traced_actions_still_work(small_env):
    env, key, state = small_env
    for a in (1, np.int64(2), jnp.int32(3), 99):  # 99: clamped, as documented
        env.step(key, state, a)
    jax.jit(env.step)(key, state, 1)
    jax.vmap(env.step, in_axes=(None, None, 0))(key, state, jnp.arange(2))


# ---- case 5: the library path of production runs -----------------------------------------------


def _sim_kwargs(tmp_path, **kw):
    return dict(dict(lattice_size=(5, 5, 6), temperature=300.0, deposition_rate=1.0,
                     o_ti_flux_ratio=2.0, events=100, log_every=10, replicas=1, seed=0,
                     out_dir=str(tmp_path / "sim")), **kw)


@pytest.mark.parametrize("kw, text", [
    (dict(policy="trained", checkpoint=None), "SimulationConfig.checkpoint = None"),
    (dict(temperature=True), "PhysicsParams.temperature = True"),
    (dict(temperature="300"), "PhysicsParams.temperature = '300'"),
    (dict(replicas=0), "SimulationConfig.replicas = 0"),
    (dict(events=True), "SimulationConfig.events = True"),
    (dict(lattice_size=(2, 5, 5)), "SimulationConfig.lattice_size"),
    (dict(physics=(("e_es", "x"),)), "PhysicsParams.e_es = 'x'"),
    (dict(mode="fast"), "SimulationConfig.mode = 'fast'"),
])
def test_simulation_config_refuses_bad_fields(tmp_path, kw, text):
    from swarm_jax.production import SimulationConfig

    with pytest.raises(ValueError) as err:
        SimulationConfig(**_sim_kwargs(tmp_path, **kw))
    assert text in str(err.value) and "\n" not in str(err.value)


def test_simulator_refuses_an_unknown_policy(tmp_path):
    from swarm_jax.production import SimulationConfig, simulator

    with pytest.raises(ValueError, match="policy 'bogus': must be one of 'classical', 'trained'"):
        simulator(SimulationConfig(**_sim_kwargs(tmp_path, policy="bogus")))


# ---- case 6: simulate never deletes another tool's checkpoints ----------------------------------


def test_simulate_overwrite_refuses_train_checkpoints(tmp_path, capsys):
    from swarm_jax import simulate

    out = tmp_path / "train_out"
    step = out / "checkpoints" / "stage1" / "64"
    step.mkdir(parents=True)
    (step / "data").write_text("training state")
    argv = ["--lattice-size", "5", "5", "6", "--events", "100", "--overwrite", "--out", str(out),
            "--quiet"]
    assert simulate.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did not write" in err[0] and "not deleted" in err[0]
    assert (step / "data").read_text() == "training state"
    with pytest.raises(simulate.UsageError):  # the library function refuses too
        simulate.remove_checkpoints(simulate.parse_config(argv))
    assert (step / "data").is_file()


@pytest.mark.slow  # compiles env steps or runs simulate
def test_simulate_overwrite_replaces_its_own_run(tmp_path):
    from swarm_jax import simulate

    out = tmp_path / "sim"
    argv = ["--lattice-size", "5", "5", "6", "--events", "50", "--out", str(out), "--quiet"]
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "run.json").write_text(json.dumps({"argv": argv}))
    (out / "checkpoints" / "7").mkdir()
    assert simulate.main([*argv, "--overwrite"]) == 0
    assert not (out / "checkpoints").exists() and (out / "summary.json").is_file()


# ---- probes: load_policy, --pretrained with corrupt metadata, analyze on damaged outputs -------


@pytest.mark.parametrize("path", [None, 123, b"/tmp", ""])
def test_load_policy_refuses_what_is_not_a_path(path):
    from swarm_jax.trained_policy import load_policy

    with pytest.raises(TypeError, match="load_policy\\(path=.*must be a checkpoint folder path"):
        load_policy(path)


def _damaged_final(tmp_path, fault: str):
    import shutil

    from swarm_jax.training.checkpoint import MANIFEST, save_final

    final = save_final(tmp_path / f"final_{fault}", {"params": {"w": np.arange(16.0)}},
                       {"name": "t"}, {"step": 1})
    meta = final / "meta" / "metadata"
    if fault == "truncated":
        meta.write_bytes(meta.read_bytes()[: len(meta.read_bytes()) // 2])
    elif fault == "garbage":
        meta.write_text('{"config": [1, 2,')
    elif fault == "unverified_wrong_tree":
        (final / MANIFEST).unlink()
        meta.write_text('{"config": "x", "meta": 5}')
    elif fault == "missing":
        shutil.rmtree(final / "meta")
    return final


@pytest.mark.parametrize("fault", ["truncated", "garbage", "unverified_wrong_tree", "missing"])
def test_pretrained_with_corrupt_metadata_is_one_line_exit_2(tmp_path, capsys, fault):
    final = _damaged_final(tmp_path, fault)
    assert train_cli.main(["--config", str(TINY), "--pretrained", str(final), "--out",
                           str(tmp_path / "out"), "--no-progress", "--no-compile-cache"]) == 2
    assert "cannot use checkpoint" in one_error_line(capsys)


def _analyze_run(tmp_path, name: str):
    """A run folder with a simulate-like layout, small enough to write by hand."""
    from swarm_jax.production.writers import TIMESERIES_COLUMNS

    run = tmp_path / name
    run.mkdir()
    rows = [",".join(TIMESERIES_COLUMNS)]
    for i in range(6):
        values = {c: "0" for c in TIMESERIES_COLUMNS}
        values.update(replica="0", event=str(10 * i), time=str(0.1 * i),
                      mean_height=str(0.2 * i), roughness=str(0.1 + 0.05 * i), status="running")
        rows.append(",".join(values[c] for c in TIMESERIES_COLUMNS))
    (run / "timeseries.csv").write_text("\n".join(rows) + "\n")
    np.savez(run / "final_state.npz", heights=np.ones((5, 5), np.int32))
    return run


@pytest.mark.parametrize("damage", ["truncated_row", "header_only_part", "garbage_npz",
                                    "empty_npz", "no_heights"])
def test_analyze_on_damaged_outputs_is_one_line_exit_2(tmp_path, capsys, damage):
    from swarm_jax import analyze

    run = _analyze_run(tmp_path, damage)
    ts, fs = run / "timeseries.csv", run / "final_state.npz"
    if damage == "truncated_row":
        text = ts.read_text()
        ts.write_text(text[: len(text) - 20])
    elif damage == "header_only_part":
        ts.write_text(ts.read_text()[:20])
    elif damage == "garbage_npz":
        fs.write_bytes(b"\x00garbage" * 100)
    elif damage == "empty_npz":
        fs.write_bytes(b"")
    elif damage == "no_heights":
        np.savez(fs, species=np.zeros((5, 5, 4), np.int8))
    assert analyze.main([str(run), "--no-plots", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("swarm_jax.analyze: error: "), err
