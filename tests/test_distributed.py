"""Multi-device training: sharded == single-device, checkpoints across layouts, mesh errors.

The checks that need several devices run in one subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (the flag is read when JAX starts its CPU
backend, which the pytest process has already done). That subprocess is this file run as a
script: it performs every check, records ``"ok"`` or the traceback per check in a JSON file, and
each test below asserts on its own entry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

N_DEVICES = 4
N_UPDATES = 3
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


# ---- in-process: settings validation (no devices needed) ---------------------------------------


@pytest.fixture
def clean_env(monkeypatch):
    from swarm_jax import distributed as dist

    for var in (dist.ENV_COORDINATOR, dist.ENV_NUM_PROCESSES, dist.ENV_PROCESS_ID,
                "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    return dist


def test_initialize_distributed_is_a_noop_for_one_process(clean_env, monkeypatch):
    dist = clean_env
    assert dist.initialize_distributed() is False
    assert dist.initialize_distributed(num_processes=1) is False
    monkeypatch.setenv("SLURM_NTASKS", "1")  # a one-task SLURM job is a single process too
    assert dist.initialize_distributed() is False
    assert dist.is_main_process()


@pytest.mark.parametrize(
    "kwargs, env, match",
    [
        (dict(num_processes=2, process_id=0), {}, "missing coordinator address"),
        (dict(coordinator_address="node0:1234"), {}, "number of processes, process id"),
        (dict(coordinator_address="node0:1234", num_processes=2, process_id=2), {}, r"outside \[0, 2\)"),
        (dict(coordinator_address="node0", num_processes=2, process_id=0), {}, "host:port"),
        (dict(num_processes=0), {}, ">= 1"),
        ({}, {"SWARM_JAX_COORDINATOR": "node0:1234", "SWARM_JAX_NUM_PROCESSES": "two",
              "SWARM_JAX_PROCESS_ID": "0"}, "must be an integer"),
        ({}, {"SWARM_JAX_COORDINATOR": "node0:1234", "SWARM_JAX_NUM_PROCESSES": "2"},
         "missing process id"),
    ],
)
def test_initialize_distributed_rejects_incomplete_settings(clean_env, monkeypatch, kwargs, env, match):
    dist = clean_env
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(dist.DistributedError, match=match):
        dist.initialize_distributed(**kwargs)


def test_make_data_mesh_rejects_more_devices_than_exist():
    import jax

    from swarm_jax import distributed as dist

    n = len(jax.devices())
    assert dist.make_data_mesh().size == n
    with pytest.raises(dist.DistributedError, match=f"only {n} cpu device"):
        dist.make_data_mesh(n + 1)
    with pytest.raises(dist.DistributedError, match=">= 1"):
        dist.make_data_mesh(0)


@pytest.mark.parametrize("n_envs, n_steps, n_minibatches, n_dev", [(4, 6, 3, 2), (4, 5, 2, 2), (8, 4, 16, 2)])
def test_minibatches_cover_the_rollout_and_split_evenly_over_devices(n_envs, n_steps, n_minibatches, n_dev):
    import jax
    import numpy as np

    from swarm_jax.agents.ppo import minibatch_indices

    idx = np.asarray(minibatch_indices(jax.random.PRNGKey(3), n_envs, n_steps, n_minibatches))
    batch = n_envs * n_steps // n_minibatches
    assert idx.shape == (n_minibatches, batch, 2)
    pairs = idx.reshape(-1, 2)
    # Every (env, step) exactly once per epoch.
    assert len({tuple(p) for p in pairs}) == n_envs * n_steps
    # Each device's block of envs fills exactly its share of every minibatch, in its own slots.
    block = n_envs // n_dev
    for m in range(n_minibatches):
        for d in range(n_dev):
            slots = idx[m, d * batch // n_dev:(d + 1) * batch // n_dev, 0]
            assert ((slots >= d * block) & (slots < (d + 1) * block)).all()
    # The shuffle is random: another key gives other minibatches.
    other = np.asarray(minibatch_indices(jax.random.PRNGKey(4), n_envs, n_steps, n_minibatches))
    assert not np.array_equal(idx, other)


# ---- subprocess with 4 host devices ------------------------------------------------------------


@pytest.fixture(scope="module")
def multi_device_results(tmp_path_factory, worker_compilation_cache):
    from swarm_jax.compile_cache import ENV_CACHE_DIR

    out = tmp_path_factory.mktemp("dist")
    env = dict(os.environ)
    env[ENV_CACHE_DIR] = str(worker_compilation_cache)  # the worker runs to its end
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={N_DEVICES}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), str(out)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    result_file = out / "results.json"
    if not result_file.exists():
        pytest.fail(f"multi-device worker crashed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(result_file.read_text())


def _check(results, name):
    assert name in results, f"check {name!r} did not run: {sorted(results)}"
    assert results[name] == "ok", f"{name} failed in the 4-device subprocess:\n{results[name]}"


@pytest.mark.slow
def test_mesh_and_layout_errors_on_four_devices(multi_device_results):
    _check(multi_device_results, "mesh_errors")


@pytest.mark.slow
def test_sharded_training_equals_single_device(multi_device_results):
    _check(multi_device_results, "sharded_equals_single")


@pytest.mark.slow
def test_sharded_checkpoint_restores_on_one_device(multi_device_results):
    _check(multi_device_results, "checkpoint_sharded_to_single")


@pytest.mark.slow
def test_single_device_checkpoint_restores_sharded(multi_device_results):
    _check(multi_device_results, "checkpoint_single_to_sharded")


# ---- two processes x two devices: jax.distributed on one machine --------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_process_run_matches_one_process_and_its_checkpoint_restores(tmp_path):
    """2 processes (hosts) x 2 CPU devices started through SWARM_JAX_* variables: the 4-device
    global mesh trains like one device, and the checkpoint both processes write together restores
    in this (single-process, single-device) interpreter."""
    import jax
    import numpy as np

    from mock_env import MockSwarmEnv
    from swarm_jax.agents.ppo import make_train
    from swarm_jax.training.checkpoint import restore_checkpoint

    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ)
        env.update(
            XLA_FLAGS=(env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip(),
            JAX_PLATFORMS="cpu",
            PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE), env.get("PYTHONPATH", "")]),
            SWARM_JAX_COORDINATOR=f"127.0.0.1:{port}",
            SWARM_JAX_NUM_PROCESSES="2",
            SWARM_JAX_PROCESS_ID=str(rank),
        )
        procs.append(subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--multiprocess", str(tmp_path)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=600))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (p, (_, err)) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"process {rank} failed (rc {p.returncode}):\n{err[-4000:]}"
        result = json.loads((tmp_path / f"mp_{rank}.json").read_text())
        assert result == {"process_count": 2, "global_devices": 4, "local_devices": 2,
                          "mesh_size": 4, "main": rank == 0, "ok": True}, result

    # The checkpoint written by both processes restores on this one device.
    cfg, net = _mp_config()
    trainer = make_train(cfg, net, MockSwarmEnv(num_candidates=8))
    restored, config, _ = restore_checkpoint(tmp_path / "mp_ckpt" / "1",
                                             target=trainer.abstract_state(jax.random.PRNGKey(9)))
    assert config == {"processes": 2}
    reference = np.load(tmp_path / "single_process_state.npz")
    got = [np.asarray(x) for x in jax.tree.leaves(restored)]
    assert len(got) == len(reference.files)
    for i, x in enumerate(got):
        assert len(jax.tree.leaves(restored)[i].sharding.device_set) == 1
        if np.issubdtype(x.dtype, np.floating):
            np.testing.assert_allclose(x, reference[f"a{i}"], rtol=RTOL, atol=ATOL)
        else:
            np.testing.assert_array_equal(x, reference[f"a{i}"])


def _mp_config():
    from swarm_jax.agents.networks import NetworkConfig
    from swarm_jax.agents.ppo import PPOConfig

    cfg = PPOConfig(n_envs=8, n_steps=8, batch_size=16, n_epochs=2, learning_rate=1e-3, anneal_lr=True,
                    total_timesteps=8 * 8 * N_UPDATES)
    return cfg, NetworkConfig(hidden_sizes=(16, 16))


def _multiprocess_worker(out_dir: Path) -> None:
    """One of two processes: initialise from SWARM_JAX_*, train on the global mesh, checkpoint."""
    import importlib.util

    # swarm_jax/distributed.py needs only jax and numpy: it is loaded from its file so that the
    # multi-process runtime starts before anything else of the package is imported (importing
    # the package may create arrays, which starts the single-process backend).
    spec = importlib.util.spec_from_file_location("_swarm_jax_distributed",
                                                  ROOT / "swarm_jax" / "distributed.py")
    dist = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dist)
    assert dist.initialize_distributed() is True  # before any JAX computation
    assert dist.initialize_distributed() is True  # a second call is a no-op
    import jax
    import numpy as np

    import swarm_jax

    swarm_jax.enable_x64()  # as train.py: the checkpoint's integer leaves are then 64-bit

    from mock_env import MockSwarmEnv
    from swarm_jax.agents.ppo import make_train
    from swarm_jax.training.checkpoint import CheckpointStore

    rank = jax.process_index()
    cfg, net = _mp_config()
    env = MockSwarmEnv(num_candidates=8)
    key = jax.random.PRNGKey(0)
    sharded = make_train(cfg, net, env, n_devices=2)  # 2 local devices per process: 4 in all
    rs, _ = sharded.train_chunk(sharded.init(key), N_UPDATES)
    single = make_train(cfg, net, env)  # this process's first device alone
    rs1, _ = single.train_chunk(single.init(key), N_UPDATES)

    for a, b in zip(jax.tree.leaves(rs), jax.tree.leaves(rs1)):
        b = np.asarray(b)
        for shard in a.addressable_shards:  # this process's part of the global array
            x, y = np.asarray(shard.data), b[shard.index]
            if np.issubdtype(x.dtype, np.floating):
                np.testing.assert_allclose(x, y, rtol=RTOL, atol=ATOL)
            else:
                np.testing.assert_array_equal(x, y)
    store = CheckpointStore(out_dir / "mp_ckpt")  # every process takes part in the save
    store.save(1, rs, {"processes": 2})
    store.close()
    if dist.is_main_process():
        np.savez(out_dir / "single_process_state.npz",
                 **{f"a{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(rs1))})
    (out_dir / f"mp_{rank}.json").write_text(json.dumps({
        "process_count": jax.process_count(), "global_devices": len(jax.devices()),
        "local_devices": len(jax.local_devices()), "mesh_size": sharded.n_devices,
        "main": dist.is_main_process(), "ok": True,
    }))


# ---- the worker (runs with 4 forced CPU devices) -----------------------------------------------

# Parameters move by up to one learning rate (2.5e-4 or 1e-3 here) per Adam step; sharding only
# changes the order of float32 sums (gradient all-reduce, means): relative errors of a few float32
# ulps per step, which Adam's normalisation can amplify to ~1e-6 absolute after a few updates
# (measured: up to 1.3e-6). A layout bug (unaveraged gradients, a different shuffle, wrong env
# keys) shows up as differences of the order of a step, 25-100x above ATOL.
ATOL, RTOL = 1e-5, 1e-4


def _worker(out_dir: Path) -> None:
    import jax
    import numpy as np

    import swarm_jax
    from swarm_jax.compile_cache import enable_compilation_cache

    swarm_jax.enable_x64()
    # The worker's cache folder when the test passes one (SWARM_JAX_CACHE_DIR), else none: the
    # HLO check below compiles the sharded chunk a second time, and that one is then loaded.
    enable_compilation_cache()
    from swarm_jax import distributed as dist
    from swarm_jax.agents.networks import NetworkConfig
    from swarm_jax.agents.ppo import PPOConfig, make_train
    from swarm_jax.env.tio2_env import TiO2GrowthEnv
    from swarm_jax.training.checkpoint import CheckpointStore
    from swarm_jax.training.factories import canonical_state

    results: dict[str, str] = {}
    state: dict = {}

    def check(fn):
        try:
            fn()
            results[fn.__name__] = "ok"
        except Exception:  # noqa: BLE001  (reported to the test that owns the check)
            results[fn.__name__] = traceback.format_exc()
        (out_dir / "results.json").write_text(json.dumps(results))

    assert len(jax.devices()) == N_DEVICES, jax.devices()
    env = TiO2GrowthEnv(lattice_size=(5, 5, 4), n_swarm=8, max_steps_in_episode=24)
    cfg = PPOConfig(n_envs=8, n_steps=16, batch_size=32, n_epochs=2, learning_rate=2.5e-4, anneal_lr=True,
                    total_timesteps=8 * 16 * 2 * N_UPDATES)
    net = NetworkConfig(hidden_sizes=(32, 32))
    key = jax.random.PRNGKey(0)

    def leaves(rs, part):
        return [np.asarray(x) for x in jax.tree.leaves(getattr(rs, part))]

    def assert_close(a, b, part):
        la, lb = leaves(a, part), leaves(b, part)
        assert len(la) == len(lb)
        for x, y in zip(la, lb):
            if np.issubdtype(x.dtype, np.floating):
                np.testing.assert_allclose(x, y, rtol=RTOL, atol=ATOL, err_msg=part)
            else:
                np.testing.assert_array_equal(x, y, err_msg=part)

    def n_devices_of(x):
        return len(x.sharding.device_set)

    def mesh_errors():
        mesh = dist.make_data_mesh(N_DEVICES, n_envs=8)
        assert mesh.size == N_DEVICES and mesh.axis_names == (dist.DATA_AXIS,)
        assert dist.make_data_mesh(2).size == 2
        for call, match in (
            (lambda: dist.make_data_mesh(N_DEVICES + 1), f"only {N_DEVICES} cpu device"),
            (lambda: dist.make_data_mesh(3, n_envs=8), "not divisible by the 3 devices"),
            (lambda: dist.shard_batch({"x": np.zeros((6, 2))}, mesh), r"\['x'\].*\(6, 2\)"),
            (lambda: make_train(cfg.__class__(n_envs=6, n_steps=16, batch_size=32,
                                              total_timesteps=96 * 2), net, env, mesh=mesh),
             "n_envs=6 must be a multiple of the 4 devices"),
            (lambda: make_train(cfg.__class__(n_envs=8, n_steps=16, batch_size=2,
                                              total_timesteps=128), net, env, mesh=mesh),
             "batch_size=2 must be a multiple"),
            (lambda: make_train(cfg, net, env, n_devices=N_DEVICES + 1), "only 4 cpu device"),
        ):
            try:
                call()
            except ValueError as err:
                import re

                assert re.search(match, str(err)), (match, str(err))
            else:
                raise AssertionError(f"no error for {match!r}")
        x = dist.shard_batch({"a": np.arange(8.0)}, mesh)["a"]
        assert n_devices_of(x) == N_DEVICES and x.addressable_shards[0].data.shape == (2,)
        r = dist.replicate(np.arange(3.0), mesh)
        assert n_devices_of(r) == N_DEVICES and r.addressable_shards[1].data.shape == (3,)

    def sharded_equals_single():
        single = make_train(cfg, net, env)
        sharded = make_train(cfg, net, env, n_devices=N_DEVICES)
        assert single.n_devices == 1 and sharded.n_devices == N_DEVICES
        rs0 = sharded.init(key)
        # Layout: per-env fields split over the 4 devices, parameters and key replicated.
        assert rs0.ep_return.sharding.spec == dist.data_sharding(sharded.mesh).spec
        for x in jax.tree.leaves((rs0.env_state, rs0.last_obs)):
            assert n_devices_of(x) == N_DEVICES and x.addressable_shards[0].data.shape[0] == 2
        for x in jax.tree.leaves((rs0.train_state, rs0.rng)):
            assert x.sharding.is_fully_replicated and n_devices_of(x) == N_DEVICES
        # On its device, as the trainer and a restored checkpoint place it: one compiled chunk
        # serves the fresh and the restored single-device states below.
        rs_single, m_single = single.train_chunk(canonical_state(single.init(key)), N_UPDATES)
        rs_sharded, m_sharded = sharded.train_chunk(rs0, N_UPDATES)
        assert int(rs_sharded.env_steps) == N_UPDATES * cfg.rollout_size
        for part in ("train_state", "env_state", "last_obs", "traj_log_weight", "ep_return",
                     "ep_length", "rng", "update_step", "env_steps"):
            assert_close(rs_single, rs_sharded, part)
        # The comparison is meaningful: training moved the parameters by far more than ATOL.
        moved = max(np.max(np.abs(a - b)) for a, b in zip(leaves(rs_single, "train_state"),
                                                           leaves(single.init(key), "train_state"))
                    if np.issubdtype(a.dtype, np.floating))
        assert moved > 10 * ATOL, moved
        for k in m_single:
            np.testing.assert_allclose(float(m_single[k]), float(m_sharded[k]), rtol=1e-4,
                                       atol=1e-6, err_msg=k)
        for x in jax.tree.leaves(rs_sharded.env_state):
            assert n_devices_of(x) == N_DEVICES and not x.sharding.is_fully_replicated
        # Each device steps its own envs: no transition or env state crosses devices, only
        # reductions (gradient and metric all-reduces) are communicated.
        hlo = sharded._chunk_fn.lower(rs0, N_UPDATES).compile().as_text()
        for op in ("all-gather(", "all-to-all(", "collective-permute("):
            assert op not in hlo, op
        assert "all-reduce(" in hlo
        state.update(single=single, sharded=sharded, rs_single=rs_single, rs_sharded=rs_sharded)

    def checkpoint_sharded_to_single():
        single, sharded = state["single"], state["sharded"]
        store = CheckpointStore(out_dir / "from_sharded")
        store.save(1, state["rs_sharded"], {"n_devices": N_DEVICES})
        restored, config, _ = store.restore(target=single.init(jax.random.PRNGKey(5)))
        assert config == {"n_devices": N_DEVICES}
        for x in jax.tree.leaves(restored):
            assert n_devices_of(x) == 1
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state["rs_sharded"])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        # Training goes on from the restored state on one device as it does sharded.
        cont_single, _ = single.train_chunk(restored, N_UPDATES)
        cont_sharded, _ = sharded.train_chunk(state["rs_sharded"], N_UPDATES)
        assert_close(cont_single, cont_sharded, "train_state")
        store.close()

    def checkpoint_single_to_sharded():
        single, sharded = state["single"], state["sharded"]
        store = CheckpointStore(out_dir / "from_single")
        store.save(1, state["rs_single"], {"n_devices": 1})
        # An abstract template (shapes only) of the single-device trainer restores on one device.
        restored, _, _ = store.restore(target=single.abstract_state(jax.random.PRNGKey(5)))
        assert all(n_devices_of(x) == 1 for x in jax.tree.leaves(restored))
        on_mesh = sharded.shard_state(restored)
        for a, b in zip(jax.tree.leaves(on_mesh), jax.tree.leaves(state["rs_single"])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        for x in jax.tree.leaves((on_mesh.env_state, on_mesh.ep_length)):
            assert n_devices_of(x) == N_DEVICES and x.addressable_shards[0].data.shape[0] == 2
        cont_sharded, _ = sharded.train_chunk(on_mesh, N_UPDATES)
        cont_single, _ = single.train_chunk(state["rs_single"], N_UPDATES)
        assert_close(cont_single, cont_sharded, "train_state")
        assert_close(cont_single, cont_sharded, "env_state")
        store.close()

    for fn in (mesh_errors, sharded_equals_single, checkpoint_sharded_to_single,
               checkpoint_single_to_sharded):
        check(fn)


if __name__ == "__main__":
    if sys.argv[1] == "--multiprocess":
        _multiprocess_worker(Path(sys.argv[2]))
    else:
        _worker(Path(sys.argv[1]))
