"""Environment throughput: env-steps/s of TiO2GrowthEnv with random actions, per lattice and batch.

One env-step = one KMC event chosen among K candidates, including the candidate draw, the
observation features, the reward, and gymnax's auto-reset. Batches step through
``TiO2GrowthEnv.step_batch`` (``--auto-reset done``: ``vmap(env.step)``'s outputs, resetting only
the envs that are done, as the PPO rollout and evaluation do) or ``jax.vmap`` of ``env.step``
(``--auto-reset all``: gymnax's per-env cond, a select over every lattice array of every env on
every step); batch 1 is the plain, unbatched env. ``lax.scan`` runs the steps inside one jit
call. ``compile_s`` is the lowering plus compilation time of that call; throughput is the best
(and ``_median`` the median) of ``--repeats`` timed calls, compile excluded; with both auto-reset
modes their timed calls alternate (A B A B ...), so a busy machine slows both alike.
"""

from __future__ import annotations

import time
from functools import partial

import statistics

import jax
import jax.numpy as jnp

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
    parser.add_argument("--auto-reset", default="done",
                        help="comma-separated batched auto-resets to time: 'done' (step_batch: reset "
                             "only the done envs) and/or 'all' (vmap of env.step: select over every env)")
    parser.add_argument("--stagger", action="store_true",
                        help="start the envs at random step counts in [0, episode-steps), as PPO's "
                             "staggered starts do (default: all at step 0, so episodes end in lockstep)")


def _parse_lattices(text: str):
    return [tuple(int(v) for v in item.split(",")) for item in text.split(";") if item.strip()]


AUTO_RESETS = ("done", "all")


def make_rollout(env, params, batch: int, n_steps: int, auto_reset: str = "done", stagger: bool = False):
    """A jitted ``(state, key, params) -> (state, reward sum)`` running ``n_steps`` random-action
    steps of ``batch`` envs, and ``init(key) -> state``.

    ``auto_reset`` (batch > 1): ``"done"`` steps through ``env.step_batch``, ``"all"`` through
    ``jax.vmap(env.step)`` (same outputs). ``stagger``: ``init`` draws each env's step count
    uniformly in ``[0, max_steps_in_episode)``.

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
        if auto_reset not in AUTO_RESETS:
            raise ValueError(f"auto_reset must be one of {AUTO_RESETS}, got {auto_reset!r}")
        from swarm_jax.env.tio2_env import batched_step

        step = (batched_step(env) if auto_reset == "done"
                else jax.vmap(env.step, in_axes=(0, 0, 0, None)))

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
        state = jax.jit(reset)(keys, params)[1]
        if stagger:
            shape = () if batch == 1 else (batch,)
            count = jax.random.randint(jax.random.fold_in(key, 1), shape, 0,
                                       int(params.max_steps_in_episode), jnp.int32)
            state = state.replace(step_count=count)
        return state

    return rollout, init


def run(args) -> list[dict]:
    from swarm_jax.env.tio2_env import TiO2GrowthEnv

    modes = [m.strip() for m in args.auto_reset.split(",") if m.strip()]
    for m in modes:
        if m not in AUTO_RESETS:
            raise SystemExit(f"--auto-reset: {m!r} is not one of {AUTO_RESETS}")
    rows = []
    for size in _parse_lattices(args.lattices):
        env = TiO2GrowthEnv(size, n_swarm=args.n_swarm, temperature=args.temperature,
                            max_steps_in_episode=args.episode_steps)
        params = env.default_params
        for batch in (int(b) for b in args.batches.split(",")):
            n_steps = max(args.min_steps, min(args.max_steps, args.env_steps // batch))
            runs = {}
            for mode in (modes if batch > 1 else modes[:1]):
                rollout, init = make_rollout(env, params, batch, n_steps, mode, args.stagger)
                state = block(init(jax.random.key(0)))
                key = jax.random.key(1)
                t0 = time.perf_counter()
                compiled = rollout.lower(state, key, params).compile()
                compile_s = time.perf_counter() - t0
                state, _ = block(compiled(state, key, params))  # warm-up (first touch of buffers)
                runs[mode] = {"compiled": compiled, "state": state, "compile_s": compile_s, "times": []}
            for r in range(args.repeats):
                for run_ in runs.values():  # alternate the modes: A B A B ...
                    t0 = time.perf_counter()
                    run_["state"], _ = block(run_["compiled"](run_["state"], jax.random.key(2 + r), params))
                    run_["times"].append(time.perf_counter() - t0)
            env_steps = batch * n_steps
            for mode, run_ in runs.items():
                best, median = min(run_["times"]), statistics.median(run_["times"])
                rows.append({
                    "lattice": "x".join(map(str, size)),
                    "batch": batch,
                    "auto_reset": mode if batch > 1 else "cond",
                    "stagger": bool(args.stagger),
                    "n_swarm": args.n_swarm,
                    "steps": n_steps,
                    "env_steps_per_s": env_steps / best,
                    "env_steps_per_s_median": env_steps / median,
                    "us_per_env_step": 1e6 * best / env_steps,
                    "compile_s": run_["compile_s"],
                })
                print(f"  {rows[-1]['lattice']} batch {batch} ({rows[-1]['auto_reset']}): "
                      f"{rows[-1]['env_steps_per_s']:.4g} env-steps/s, median "
                      f"{rows[-1]['env_steps_per_s_median']:.4g} (compile {run_['compile_s']:.1f} s)",
                      flush=True)
    return rows
