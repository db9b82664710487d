"""Environment throughput: env-steps/s of TiO2GrowthEnv with random actions, per lattice and batch.

One env-step = one KMC event chosen among K candidates, including the candidate draw, the
observation features, the reward, and gymnax's auto-reset. Batches are ``jax.vmap`` of
``env.step`` (batch 1 is the plain, unbatched env); ``lax.scan`` runs the steps inside one jit
call. ``compile_s`` is the lowering plus compilation time of that call; throughput is the best of
``--repeats`` timed calls, compile excluded.
"""

from __future__ import annotations

import time
from functools import partial

import jax

from swarm_jax.bench.common import block

DEFAULT_LATTICES = "8,8,5;20,20,10;50,50,20"  # the curriculum stages


def add_arguments(parser) -> None:
    parser.add_argument("--lattices", default=DEFAULT_LATTICES,
                        help="';'-separated Lx,Ly,Lz lattices (default: the three curriculum stages)")
    parser.add_argument("--batches", default="1,64,1024", help="comma-separated numbers of parallel envs")
    parser.add_argument("--n-swarm", type=int, default=32, help="K, candidates per decision")
    parser.add_argument("--env-steps", type=int, default=20_000,
                        help="target env-steps per timed call; steps per env = this / batch, clamped")
    parser.add_argument("--min-steps", type=int, default=10, help="minimum steps per env per timed call")
    parser.add_argument("--max-steps", type=int, default=500, help="maximum steps per env per timed call")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per configuration, the best is kept")
    parser.add_argument("--temperature", type=float, default=300.0, help="substrate temperature, K")
    parser.add_argument("--episode-steps", type=int, default=1000, help="max_steps_in_episode of the env")


def _parse_lattices(text: str):
    return [tuple(int(v) for v in item.split(",")) for item in text.split(";") if item.strip()]


def make_rollout(env, params, batch: int, n_steps: int):
    """A jitted ``(state, key, params) -> (state, reward sum)`` running ``n_steps`` random-action
    steps of ``batch`` envs, and ``init(key) -> state``.

    ``params`` are a jit argument, not a closed-over constant: otherwise XLA constant-folds the
    reset film (broadcast over the batch) into large literals and compiles slowly.
    """
    k = env.num_actions
    if batch == 1:
        step = env.step

        def one(params, state, key):
            k_act, k_step = jax.random.split(key)
            action = jax.random.randint(k_act, (), 0, k)
            _, state, reward, _, _, _ = step(k_step, state, action, params)
            return state, reward

        reset = env.reset
    else:
        step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

        def one(params, state, key):
            k_act, k_step = jax.random.split(key)
            action = jax.random.randint(k_act, (batch,), 0, k)
            _, state, reward, _, _, _ = step(jax.random.split(k_step, batch), state, action, params)
            return state, reward

        reset = jax.vmap(env.reset, in_axes=(0, None))

    @jax.jit
    def rollout(state, key, params):
        state, rewards = jax.lax.scan(partial(one, params), state, jax.random.split(key, n_steps))
        return state, rewards.sum()

    def init(key):
        keys = key if batch == 1 else jax.random.split(key, batch)
        return jax.jit(reset)(keys, params)[1]

    return rollout, init


def run(args) -> list[dict]:
    from swarm_jax.env.tio2_env import TiO2GrowthEnv

    rows = []
    for size in _parse_lattices(args.lattices):
        env = TiO2GrowthEnv(size, n_swarm=args.n_swarm, temperature=args.temperature,
                            max_steps_in_episode=args.episode_steps)
        params = env.default_params
        for batch in (int(b) for b in args.batches.split(",")):
            n_steps = max(args.min_steps, min(args.max_steps, args.env_steps // batch))
            rollout, init = make_rollout(env, params, batch, n_steps)
            state = block(init(jax.random.key(0)))
            key = jax.random.key(1)
            t0 = time.perf_counter()
            compiled = rollout.lower(state, key, params).compile()
            compile_s = time.perf_counter() - t0
            state, _ = block(compiled(state, key, params))  # warm-up (first touch of buffers)
            best = float("inf")
            for r in range(args.repeats):
                t0 = time.perf_counter()
                state, _ = block(compiled(state, jax.random.key(2 + r), params))
                best = min(best, time.perf_counter() - t0)
            env_steps = batch * n_steps
            rows.append({
                "lattice": "x".join(map(str, size)),
                "batch": batch,
                "n_swarm": args.n_swarm,
                "steps": n_steps,
                "env_steps_per_s": env_steps / best,
                "us_per_env_step": 1e6 * best / env_steps,
                "compile_s": compile_s,
            })
            print(f"  {rows[-1]['lattice']} batch {batch}: {rows[-1]['env_steps_per_s']:.4g} env-steps/s "
                  f"(compile {compile_s:.1f} s)", flush=True)
    return rows

