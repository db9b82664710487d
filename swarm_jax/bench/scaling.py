"""Multi-device scaling: PPO training env-steps/s (rollout + update) on 1, 2, 4, ... devices.

Each device count runs in a fresh subprocess (``python -m swarm_jax.bench.scaling --worker``),
because the number of CPU devices is fixed when JAX starts its backend: with ``--platform cpu``
the subprocess gets ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` and
``JAX_PLATFORMS=cpu``; with ``--platform gpu`` it uses the first N real GPUs (a count larger than
the GPUs present is reported as skipped). The trainer is :func:`swarm_jax.agents.ppo.make_train`
with ``n_devices=N``: the env batch is split over a ``"data"`` mesh, parameters replicated.

By default the global batch is fixed (strong scaling: ``--n-envs`` environments in total);
``--weak`` keeps ``--n-envs`` environments *per device*. One timed call is ``--updates`` PPO
updates of ``n_envs × --n-steps`` env steps each (rollout, GAE and ``--n-epochs`` epochs of
minibatch updates); throughput is the best of ``--repeats`` calls, compile excluded.

Caveat: forced CPU devices are not extra hardware. They share the machine's cores (and XLA's
thread pool), so on a C-core machine at most ~C× can be gained, and less when other work is
running; the CPU figures show that the sharded program splits the work, not what a cluster gives.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from swarm_jax.bench import HelpFormatter, plain_text


def add_arguments(parser) -> None:
    parser.add_argument("--devices", default="1,2,4", help="comma-separated device counts")
    parser.add_argument("--platform", choices=("cpu", "gpu"), default="cpu",
                        help="cpu: forced host devices (XLA_FLAGS); gpu: real GPUs")
    parser.add_argument("--lattice", default="8,8,5", help="Lx,Ly,Lz of every env; stage 1's size")
    parser.add_argument("--n-swarm", type=int, default=32, help="K, candidates per decision")
    parser.add_argument("--n-envs", type=int, default=16,
                        help="environments in total (per device with --weak); a multiple of every device count")
    parser.add_argument("--weak", action="store_true", help="weak scaling: --n-envs per device")
    parser.add_argument("--n-steps", type=int, default=32, help="rollout length per update")
    parser.add_argument("--batch-size", type=int, default=128, help="PPO minibatch size, global over devices")
    parser.add_argument("--n-epochs", type=int, default=2, help="PPO epochs per update")
    parser.add_argument("--hidden", default="64,64", help="hidden layer widths of the network")
    parser.add_argument("--updates", type=int, default=2, help="PPO updates per timed call")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls, the best is kept")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per device count")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: JSON output path


def _worker(args) -> dict:
    """Measure one device count in this process (its XLA_FLAGS already set by the parent)."""
    import jax

    import swarm_jax

    swarm_jax.enable_x64()
    from swarm_jax.agents.networks import NetworkConfig
    from swarm_jax.agents.ppo import PPOConfig, make_train
    from swarm_jax.bench.common import block, machine_info
    from swarm_jax.distributed import make_data_mesh
    from swarm_jax.env.tio2_env import TiO2GrowthEnv

    n_dev = int(args.devices)
    n_envs = args.n_envs * (n_dev if args.weak else 1)
    lattice = tuple(int(v) for v in args.lattice.split(","))
    row = {"platform": args.platform, "devices": n_dev, "lattice": "x".join(map(str, lattice)),
           "n_swarm": args.n_swarm, "n_envs": n_envs, "envs_per_device": n_envs // n_dev}
    try:
        mesh = make_data_mesh(n_dev, n_envs, platform=args.platform)
    except ValueError as err:
        return {**row, "skipped": str(err)}
    env = TiO2GrowthEnv(lattice, n_swarm=args.n_swarm)
    cfg = PPOConfig(n_envs=n_envs, n_steps=args.n_steps, batch_size=args.batch_size * (n_dev if args.weak else 1),
                    n_epochs=args.n_epochs, total_timesteps=n_envs * args.n_steps * args.updates)
    net = NetworkConfig(hidden_sizes=tuple(int(h) for h in args.hidden.split(",")))
    trainer = make_train(cfg, net, env, mesh=mesh)
    state = block(trainer.init(jax.random.PRNGKey(0)))
    t0 = time.perf_counter()
    state, _ = block(trainer.train_chunk(state, args.updates))  # compile + first run
    first_s = time.perf_counter() - t0
    best = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        state, _ = block(trainer.train_chunk(state, args.updates))
        best = min(best, time.perf_counter() - t0)
    steps = args.updates * cfg.rollout_size
    info = machine_info()
    return {**row, "env_steps_per_s": steps / best, "s_per_update": best / args.updates,
            "compile_s": max(first_s - best, 0.0), "device_kind": info["devices"][0],
            "cpu_count": info["cpu_count"]}


def _worker_command(args, n_dev: int, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "swarm_jax.bench.scaling", "--worker", str(out),
           "--devices", str(n_dev)]
    for flag in ("platform", "lattice", "n_swarm", "n_envs", "n_steps", "batch_size", "n_epochs",
                 "hidden", "updates", "repeats"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.weak:
        cmd.append("--weak")
    return cmd


def _worker_env(platform: str, n_dev: int) -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    if platform == "cpu":
        flags = [f for f in env.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
        env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n_dev}"])
        env["JAX_PLATFORMS"] = "cpu"
    return env


def run(args) -> list[dict]:
    rows = []
    counts = [int(n) for n in args.devices.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for n_dev in counts:
            out = Path(tmp) / f"scaling_{n_dev}.json"
            proc = subprocess.run(_worker_command(args, n_dev, out), env=_worker_env(args.platform, n_dev),
                                  capture_output=True, text=True, timeout=args.timeout)
            if proc.returncode != 0 or not out.exists():
                raise RuntimeError(f"scaling worker for {n_dev} device(s) failed (rc {proc.returncode}):\n"
                                   f"{proc.stderr[-3000:]}")
            row = json.loads(out.read_text())
            rows.append(row)
            if "skipped" in row:
                print(f"  {n_dev} device(s): skipped ({row['skipped']})", flush=True)
            else:
                print(f"  {n_dev} device(s): {row['env_steps_per_s']:,.0f} env-steps/s "
                      f"(compile {row['compile_s']:.1f} s)", flush=True)
    base = next((r["env_steps_per_s"] for r in rows if r["devices"] == 1 and "env_steps_per_s" in r), None)
    for r in rows:
        if base and "env_steps_per_s" in r:
            r["speedup"] = r["env_steps_per_s"] / base
            r["efficiency"] = r["speedup"] / r["devices"]
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m swarm_jax.bench.scaling", description=plain_text(__doc__),
                                     formatter_class=HelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.worker is None:  # direct use: same as `python -m swarm_jax.bench scaling`
        from swarm_jax.bench.__main__ import main as bench_main

        return bench_main(["scaling", *(argv if argv is not None else sys.argv[1:])])
    Path(args.worker).write_text(json.dumps(_worker(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
