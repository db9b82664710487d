"""Learning evidence: does the trained policy beat the uniform (classical) one at equal thickness?

For each seed, trains one curriculum stage (default stage 1 with its CPU overrides on CPU) with
:func:`swarm_jax.training.trainer.run_stage` (training as configured), then evaluates the final
parameters and the uniform policy (exactly classical KMC) on held-out evaluation keys (never
used in training) with :func:`swarm_jax.agents.evaluation.evaluate_episodes`; both policies see
the same env keys. Every evaluation episode ends at θ = ``--eval-monolayers`` ML deposited (the
same number of atoms for both policies), in the training box or a taller one (``--eval-lz``);
episodes that the ceiling or the step cap ends first are counted (``*_n_ceiling``,
``*_n_cap``) and left out of the comparison, never compared.

Rows: per seed the mean episode reward of each policy at θ (± its standard error over the
evaluation episodes), their difference, the trained policy's per-step ESS ratio, the batch ESS
of its trajectory weights (count and ratio), PSIS k̂, the ``reliable`` verdict and E_q[W] ± its
error (:mod:`swarm_jax.bench.evaluate`), the final ESS multiplier λ, and each policy's roughness
W, mean height, coverage, O:Ti, physical time to θ and events per episode at θ. A last row holds
the mean ± standard error over seeds, and ``z`` (the mean improvement in units of its standard
error over seeds: training runs are the independent replicates). Learning curves (reward,
per-step ESS, λ) of seed 0 are drawn from the trainer's metrics CSV into a PNG.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import numpy as np

from swarm_jax.agents.evaluation import evaluate_episodes
from swarm_jax.analysis.importance import mean_stderr
from swarm_jax.bench.evaluate import (
    DEFAULT_EVENTS_PER_ATOM, DEFAULT_MONOLAYERS, EVAL_KEY_BASE, compare,
)
from swarm_jax.physics.lattice import deposit_target
from swarm_jax.training.checkpoint import load_params_only
from swarm_jax.training.config import for_backend, load_config, resolve_config_path, with_overrides
from swarm_jax.training.logging import plot_learning_curves, read_metrics
from swarm_jax.training.trainer import StagePaths, make_trainer, run_stage

#: Learning-curve panels (metrics CSV columns): the reward, the constraint and what it costs.
CURVE_METRICS = ("ep_rew_mean", "ess_ratio", "ess_lambda", "batch_ess", "roughness", "value_loss")

#: Columns of each policy summarised per seed and over seeds (``trained_X`` / ``uniform_X``).
POLICY_COLUMNS = ("ep_rew", "final_roughness", "final_mean_height", "final_coverage",
                  "final_o_ti_ratio", "time_to_theta", "events", "o_deposit_fraction",
                  "n_reached", "n_ceiling", "n_cap")


def add_arguments(parser) -> None:
    parser.add_argument("--config", default="stage1_small", help="stage config name or YAML path")
    parser.add_argument("--seeds", type=int, default=3, help="training runs, one per seed 0 .. N-1")
    parser.add_argument("--total-timesteps", type=int, default=None,
                        help="env steps per training run (default: the config's)")
    parser.add_argument("--eval-envs", type=int, default=256,
                        help="evaluation episodes per policy (one per environment)")
    parser.add_argument("--eval-monolayers", type=float, default=DEFAULT_MONOLAYERS,
                        help="θ, ML: every evaluation episode ends when θ ML are deposited "
                             "(equal deposited amount for both policies)")
    parser.add_argument("--eval-lz", type=int, default=None,
                        help="box height of the evaluation (default: the training box's Lz)")
    parser.add_argument("--eval-steps", type=int, default=None,
                        help=f"step cap of an evaluation episode (default: "
                             f"{DEFAULT_EVENTS_PER_ATOM} events per deposited atom, at least "
                             f"the config's max_steps)")
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


def eval_config(cfg, monolayers: float, lz: int | None, cap: int | None):
    """``cfg`` with the evaluation episode: ends at ``monolayers`` ML, box height ``lz``, step
    cap ``cap`` (defaults in :func:`add_arguments`)."""
    lx, ly, lz0 = cfg.environment.lattice_size
    target = deposit_target(lx * ly, monolayers)
    cap = cap or max(cfg.environment.max_steps, DEFAULT_EVENTS_PER_ATOM * target)
    return with_overrides(cfg, {"environment.lattice_size": [lx, ly, lz or lz0],
                                "environment.episode_ml": monolayers,
                                "environment.episode_time": 0.0,
                                "environment.max_steps": cap}), target


_RENAMES = {"ep_return": "ep_rew", "ep_return_se": "sem", "roughness": "final_roughness",
            "mean_height": "final_mean_height", "coverage": "final_coverage",
            "o_ti_ratio": "final_o_ti_ratio", "time": "time_to_theta", "length": "events",
            "o_deposit_fraction": "o_deposit_fraction", "n_reached": "n_reached",
            "n_ceiling": "n_ceiling", "n_cap": "n_cap"}
_TRAINED_ONLY = ("ess_ratio", "batch_ess", "batch_ess_ratio", "khat", "reliable",
                 "mean_weight", "mean_weight_se", "mean_weight_consistent", "log_weight_min",
                 "log_weight_max")


def _evaluate_seed(env, network, params, seed: int, n_envs: int, target: int) -> dict:
    key = jax.random.key(EVAL_KEY_BASE + seed)
    recs = {p: evaluate_episodes(params, network, env, env.default_params, key, n_envs, p)
            for p in ("trained", "uniform")}
    trained, uniform = compare(recs["trained"], recs["uniform"], target)
    row = {}
    for name, short in _RENAMES.items():
        row[f"trained_{short}"] = trained[name]
        row[f"uniform_{short}"] = uniform[name]
    row["improvement"] = trained["ep_return"] - uniform["ep_return"]
    row.update({k: trained[k] for k in _TRAINED_ONLY})
    row["n_eval_episodes"] = n_envs
    return row


def run(args) -> list[dict]:
    base = for_backend(load_config(resolve_config_path(args.config)))
    overrides = _parse_sets(getattr(args, "set", []) or [])
    if args.total_timesteps:
        overrides["training.total_timesteps"] = args.total_timesteps
    if overrides:
        base = with_overrides(base, overrides)
    out = Path(args.out)
    stage = base.stage or 1
    eval_cfg, target = eval_config(base, args.eval_monolayers, args.eval_lz, args.eval_steps)
    eval_trainer = make_trainer(eval_cfg)  # one env and network for every seed: compiled once
    e = eval_cfg.environment
    print(f"# evaluation: episodes end at {args.eval_monolayers:g} ML ({target} atoms) in "
          f"{'x'.join(map(str, e.lattice_size))}, step cap {e.max_steps}", flush=True)
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
               "eval_monolayers": args.eval_monolayers, "eval_target_atoms": target,
               "eval_lattice": "x".join(map(str, e.lattice_size)), "eval_max_steps": e.max_steps,
               **_evaluate_seed(eval_trainer.env, eval_trainer.network, params, seed,
                                args.eval_envs, target),
               "ess_lambda": lam}
        rows.append(row)
        print(f"  seed {seed}: at {args.eval_monolayers:g} ML trained {row['trained_ep_rew']:.3f}"
              f" ± {row['trained_sem']:.2g} vs uniform {row['uniform_ep_rew']:.3f} ± "
              f"{row['uniform_sem']:.2g} (ESS ratio {row['ess_ratio']:.3f}, batch ESS "
              f"{row['batch_ess']:.3g} of {args.eval_envs}, ceiling {row['trained_n_ceiling']}"
              f"/{row['uniform_n_ceiling']})", flush=True)
    rows.append(_over_seeds(rows))
    seed0 = read_metrics(StagePaths(out / "seed0", stage).metrics_csv)
    png = plot_learning_curves(seed0, out / "learning_curve.png",
                               metrics=[m for m in CURVE_METRICS if m in seed0])
    print(f"# learning curve (seed 0): {png}")
    return rows


def _over_seeds(rows: list[dict]) -> dict:
    """The last row: mean ± standard error over seeds of each column, and ``z``."""
    summary = {"seed": "mean ± s.e."}
    keys = ["improvement", "ess_ratio", "batch_ess", "batch_ess_ratio", "khat", "mean_weight",
            "ess_lambda"] + [f"{p}_{c}" for c in POLICY_COLUMNS for p in ("trained", "uniform")]
    for k in keys:
        values = [r[k] for r in rows if r.get(k) is not None]
        if values:
            m, se = mean_sem(values)
            summary[k] = f"{m:.4g} ± {se:.2g}"
    m, se = mean_sem([r["improvement"] for r in rows])
    summary["z"] = f"{m / se:.1f}" if se > 0 else "n/a"
    return summary
