"""Learning evidence: does the trained policy beat the uniform (classical) one, and at what ESS?

For each seed, trains one curriculum stage (default stage 1 with its CPU overrides on CPU) with
:func:`swarm_jax.training.trainer.run_stage`, then evaluates the final parameters and the uniform
policy (exactly classical KMC) on held-out evaluation keys (never used in training) with
:func:`swarm_jax.agents.ppo.evaluate`; both policies see the same env keys.

Rows: per seed the mean episode reward of each (± its standard error over the evaluation
episodes), their difference, the trained policy's per-step ESS ratio and batch ESS, the final
ESS multiplier λ, and final roughness / coverage / O:Ti. A last row holds the mean ± standard
error over seeds, and ``z`` (the mean improvement in units of its standard error over seeds:
training runs are the independent replicates). Learning curves (reward, per-step ESS, λ) of
seed 0 are drawn from the trainer's metrics CSV into a PNG.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import numpy as np

from swarm_jax.agents.ppo import evaluate
from swarm_jax.analysis.importance import mean_stderr
from swarm_jax.training.checkpoint import load_params_only
from swarm_jax.training.config import for_backend, load_config, resolve_config_path, with_overrides
from swarm_jax.training.logging import plot_learning_curves, read_metrics
from swarm_jax.training.trainer import StagePaths, make_trainer, run_stage

#: Learning-curve panels (metrics CSV columns): the reward, the constraint and what it costs.
CURVE_METRICS = ("ep_rew_mean", "ess_ratio", "ess_lambda", "batch_ess", "roughness", "value_loss")

#: First PRNG key of the held-out evaluation (training uses keys derived from ``training.seed``).
EVAL_KEY_BASE = 10_000


def add_arguments(parser) -> None:
    parser.add_argument("--config", default="stage1_small", help="stage config name or YAML path")
    parser.add_argument("--seeds", type=int, default=3, help="training runs, one per seed 0 .. N-1")
    parser.add_argument("--total-timesteps", type=int, default=None,
                        help="env steps per training run (default: the config's)")
    parser.add_argument("--eval-envs", type=int, default=64,
                        help="environments each policy is evaluated on")
    parser.add_argument("--eval-steps", type=int, default=None,
                        help="evaluation horizon per env (default: the episode length max_steps)")
    parser.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                        help="config override, e.g. --set ppo.ess_constraint=false (repeatable)")
    parser.add_argument("--out", default="bench_results/learning",
                        help="folder for the training runs and the learning-curve PNG")


def mean_sem(values) -> tuple[float, float]:
    """Mean and standard error of the mean (NaN error for fewer than two values)."""
    stats = mean_stderr(values)
    return stats["mean"], float("nan") if stats["stderr"] is None else stats["stderr"]


def _parse_sets(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _evaluate_seed(cfg, params, seed: int, n_envs: int, n_steps: int) -> dict:
    trainer = make_trainer(cfg)
    key = jax.random.key(EVAL_KEY_BASE + seed)
    common = dict(network=trainer.network, env=trainer.env, env_params=trainer.env_params,
                  key=key, n_envs=n_envs, n_steps=n_steps)
    trained = evaluate(params, policy="trained", **common)
    uniform = evaluate(None, policy="uniform", **common)
    row = {
        "trained_ep_rew": trained["ep_rew_mean"],
        "trained_sem": trained["ep_rew_sem"],
        "uniform_ep_rew": uniform["ep_rew_mean"],
        "uniform_sem": uniform["ep_rew_sem"],
        "improvement": trained["ep_rew_mean"] - uniform["ep_rew_mean"],
        "trained_reward_per_step": trained["reward_per_step"],
        "uniform_reward_per_step": uniform["reward_per_step"],
        "ess_ratio": trained["ess_ratio"],
        "batch_ess": trained["batch_ess"],
        "n_eval_episodes": trained["n_episodes"],
    }
    for k in ("roughness", "coverage", "o_ti_ratio"):
        row[f"trained_final_{k}"] = trained.get(f"final_{k}", float("nan"))
        row[f"uniform_final_{k}"] = uniform.get(f"final_{k}", float("nan"))
    return row


def run(args) -> list[dict]:
    base = for_backend(load_config(resolve_config_path(args.config)))
    overrides = _parse_sets(getattr(args, "set", []) or [])
    if args.total_timesteps:
        overrides["training.total_timesteps"] = args.total_timesteps
    if overrides:
        base = with_overrides(base, overrides)
    out = Path(args.out)
    eval_steps = args.eval_steps or base.environment.max_steps
    stage = base.stage or 1
    rows = []
    for seed in range(args.seeds):
        cfg = with_overrides(base, {"training.seed": seed, "training.cpu_overrides": {}})
        run_dir = out / f"seed{seed}"
        shutil.rmtree(run_dir, ignore_errors=True)
        result = run_stage(cfg, run_dir, stage, progress=False, log=lambda _msg: None)
        params = jax.tree.map(np.asarray,
                              load_params_only(result.paths.final, subtree="train_state.params"))
        metrics = read_metrics(result.paths.metrics_csv)
        lam = metrics.get("ess_lambda", [(0, float("nan"))])[-1][1]
        row = {"seed": seed, "env_steps": result.env_steps,
               "train_sps": result.timings.get("sps", float("nan")),
               **_evaluate_seed(cfg, params, seed, args.eval_envs, eval_steps),
               "ess_lambda": lam}
        rows.append(row)
        print(f"  seed {seed}: trained {row['trained_ep_rew']:.3f} ± {row['trained_sem']:.2g} vs "
              f"uniform {row['uniform_ep_rew']:.3f} ± {row['uniform_sem']:.2g} "
              f"(ESS ratio {row['ess_ratio']:.3f}, batch ESS {row['batch_ess']:.3g})", flush=True)
    summary = {"seed": "mean ± s.e."}
    for k in ("trained_ep_rew", "uniform_ep_rew", "improvement", "ess_ratio", "batch_ess",
              "ess_lambda", "trained_final_roughness", "uniform_final_roughness",
              "trained_final_coverage", "uniform_final_coverage",
              "trained_final_o_ti_ratio", "uniform_final_o_ti_ratio"):
        m, se = mean_sem([r[k] for r in rows])
        summary[k] = f"{m:.4g} ± {se:.2g}"
    m, se = mean_sem([r["improvement"] for r in rows])
    summary["z"] = f"{m / se:.1f}" if se > 0 else "n/a"
    rows.append(summary)
    seed0 = read_metrics(StagePaths(out / "seed0", stage).metrics_csv)
    png = plot_learning_curves(seed0, out / "learning_curve.png",
                               metrics=[m for m in CURVE_METRICS if m in seed0])
    print(f"# learning curve (seed 0): {png}")
    return rows
