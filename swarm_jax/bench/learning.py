"""Learning evidence: does the trained policy beat the uniform (classical) one, and at what ESS?

For each seed, trains one curriculum stage (default stage 1 with its CPU overrides on CPU) with
:func:`swarm_jax.training.trainer.run_stage`, then evaluates the final parameters and the uniform
policy (exactly classical KMC) on the same env keys with :func:`swarm_jax.agents.ppo.evaluate`.
Rows: per seed the mean episode reward of each, their difference, the trained policy's per-step
ESS ratio and batch ESS, and final roughness/coverage; a last row holds the mean ± standard error
over seeds. Learning curves of every seed are drawn from the TensorBoard scalars into a PNG.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import jax
import numpy as np

from swarm_jax.agents.ppo import evaluate
from swarm_jax.training.config import for_backend, load_config, resolve_config_path, with_overrides
from swarm_jax.training.logging import plot_learning_curves, read_scalars
from swarm_jax.training.trainer import StagePaths, make_trainer, run_stage


def add_arguments(parser) -> None:
    parser.add_argument("--config", default="stage1_small", help="stage config name or YAML path")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--total-timesteps", type=int, default=None, help="default: the config's")
    parser.add_argument("--eval-envs", type=int, default=64)
    parser.add_argument("--eval-steps", type=int, default=None,
                        help="evaluation horizon per env (default: the episode length max_steps)")
    parser.add_argument("--out", default="bench_results/learning", help="training runs and the PNG")


def _stderr(values) -> float:
    v = np.asarray(values, float)
    return float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")


def run(args) -> list[dict]:
    base = for_backend(load_config(resolve_config_path(args.config)))
    if args.total_timesteps:
        base = with_overrides(base, {"training.total_timesteps": args.total_timesteps})
    out = Path(args.out)
    eval_steps = args.eval_steps or base.environment.max_steps
    rows, curves = [], {}
    for seed in range(args.seeds):
        cfg = with_overrides(base, {"training.seed": seed, "training.cpu_overrides": {}})
        run_dir = out / f"seed{seed}"
        shutil.rmtree(run_dir, ignore_errors=True)
        result = run_stage(cfg, run_dir, cfg.stage or 1, progress=False, log=lambda _msg: None)
        trainer = make_trainer(cfg)
        from swarm_jax.training.checkpoint import load_params_only

        params = load_params_only(result.paths.final, subtree="train_state.params")
        params = jax.tree.map(np.asarray, params)
        key = jax.random.key(10_000 + seed)
        common = dict(network=trainer.network, env=trainer.env, env_params=trainer.env_params,
                      key=key, n_envs=args.eval_envs, n_steps=eval_steps)
        trained = evaluate(params, policy="trained", **common)
        uniform = evaluate(None, policy="uniform", **common)
        rows.append({
            "seed": seed,
            "env_steps": result.env_steps,
            "train_sps": result.timings.get("sps", float("nan")),
            "trained_ep_rew": trained["ep_rew_mean"],
            "uniform_ep_rew": uniform["ep_rew_mean"],
            "improvement": trained["ep_rew_mean"] - uniform["ep_rew_mean"],
            "trained_reward_per_step": trained["reward_per_step"],
            "uniform_reward_per_step": uniform["reward_per_step"],
            "ess_ratio": trained["ess_ratio"],
            "batch_ess": trained["batch_ess"],
            "trained_final_roughness": trained.get("final_roughness", float("nan")),
            "uniform_final_roughness": uniform.get("final_roughness", float("nan")),
            "trained_final_coverage": trained.get("final_coverage", float("nan")),
            "uniform_final_coverage": uniform.get("final_coverage", float("nan")),
        })
        print(f"  seed {seed}: trained {trained['ep_rew_mean']:.3f} vs uniform "
              f"{uniform['ep_rew_mean']:.3f} (ESS ratio {trained['ess_ratio']:.3f})", flush=True)
        for tag, points in read_scalars(StagePaths(run_dir, cfg.stage or 1).tensorboard).items():
            curves.setdefault(tag, []).extend(points)
    summary = {"seed": "mean ± s.e."}
    for k in ("trained_ep_rew", "uniform_ep_rew", "improvement", "ess_ratio", "batch_ess",
              "trained_final_roughness", "uniform_final_roughness"):
        vals = [r[k] for r in rows]
        summary[k] = f"{np.mean(vals):.4g} ± {_stderr(vals):.2g}"
    rows.append(summary)
    png = plot_learning_curves(str(out / "seed0" / "tensorboard" / f"stage{base.stage or 1}"),
                               out / "learning_curve.png")
    print(f"# learning curve (seed 0): {png}")
    return rows
