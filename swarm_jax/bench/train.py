"""Training throughput: env-steps/s of PPO including learning, with the time split by phase.

For each ``n_envs`` the stage config (default stage 1, with its CPU overrides on CPU) is run with
that many environments and the same rollout length. Three jitted programs are timed on the same
runner state (compile excluded, best of ``--repeats``):

* ``env``: the rollout with uniformly random actions (env stepping only, no network);
* ``rollout``: the real rollout (env stepping + actor/critic forward passes);
* ``update``: one whole PPO update (rollout + GAE + epochs × minibatches of gradient steps).

The split reported is ``env``, ``forward = rollout − env`` and ``learn = update − rollout``, each
as a share of the update's time; ``env_steps_per_s`` is the full update's throughput.
"""

from __future__ import annotations

import time

import jax

from swarm_jax.bench.common import block
from swarm_jax.env.tio2_env import batched_step
from swarm_jax.training.config import for_backend, load_config, resolve_config_path, with_overrides
from swarm_jax.training.trainer import initial_runner_state, make_trainer


def add_arguments(parser) -> None:
    parser.add_argument("--config", default="stage1_small", help="stage config name or YAML path")
    parser.add_argument("--n-envs", default="8,32,128,512", help="comma-separated n_envs values")
    parser.add_argument("--n-steps", type=int, default=None,
                        help="rollout length per env (default: the config's, after CPU overrides)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per program, the best is kept")


def _random_rollout_fn(trainer, n_steps: int):
    """Rollout with uniform random actions: env stepping alone, same shapes as the real one."""
    env, env_params = trainer.env, trainer.env_params
    step = batched_step(env)  # as the PPO rollout steps (one device)

    @jax.jit
    def rollout(env_state, key):
        def body(carry, k):
            env_state = carry
            k_act, k_step = jax.random.split(k)
            n = jax.tree.leaves(env_state)[0].shape[0]
            actions = jax.random.randint(k_act, (n,), 0, env.num_actions)
            obs, env_state, reward, term, trunc, info = step(jax.random.split(k_step, n), env_state, actions, env_params)
            return env_state, reward.sum()

        env_state, rewards = jax.lax.scan(body, env_state, jax.random.split(key, n_steps))
        return env_state, rewards.sum()

    return rollout


def _best(fn, *args, repeats: int) -> float:
    block(fn(*args))  # compile + warm
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        block(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def run(args) -> list[dict]:
    base = for_backend(load_config(resolve_config_path(args.config)))
    rows = []
    for n_envs in [int(v) for v in args.n_envs.split(",")]:
        n_steps = args.n_steps or base.ppo.n_steps
        rollout_size = n_envs * n_steps
        batch = min(base.ppo.batch_size, rollout_size)
        while rollout_size % batch:
            batch //= 2
        cfg = with_overrides(base, {
            "training.n_envs": n_envs, "ppo.n_steps": n_steps, "ppo.batch_size": batch,
            "training.total_timesteps": max(base.training.total_timesteps, rollout_size),
        })
        trainer = make_trainer(cfg)
        state = initial_runner_state(trainer, cfg)
        random_rollout = _random_rollout_fn(trainer, n_steps)
        t_env = _best(random_rollout, state.env_state, jax.random.key(1), repeats=args.repeats)
        t_rollout = _best(trainer.collect_rollout, state, repeats=args.repeats)
        t_update = _best(lambda s: trainer.train_chunk(s, 1), state, repeats=args.repeats)
        row = {
            "lattice": "x".join(str(v) for v in cfg.environment.lattice_size),
            "n_swarm": cfg.environment.n_swarm,
            "n_envs": n_envs,
            "n_steps": n_steps,
            "minibatch": batch,
            "epochs": cfg.ppo.n_epochs,
            "env_steps_per_s": rollout_size / t_update,
            "env_only_steps_per_s": rollout_size / t_env,
            "env_share": t_env / t_update,
            "forward_share": max(t_rollout - t_env, 0.0) / t_update,
            "learn_share": max(t_update - t_rollout, 0.0) / t_update,
            "update_s": t_update,
        }
        rows.append(row)
        print(f"  n_envs {n_envs}: {row['env_steps_per_s']:,.0f} env-steps/s", flush=True)
    return rows
