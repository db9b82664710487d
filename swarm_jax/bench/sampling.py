"""Estimator benchmark: importance samplers against classical KMC at a deposited thickness θ.

Every trajectory grows a flat film until it has deposited θ ML (``deposit_target``), through
:mod:`swarm_jax.swarm.rollout`. Procedure (docs/sampling.md):

1. a classical run of ``--quantile-replicas`` finds w_q, the ``--quantile`` (1 %) quantile of the
   final roughness W, placed midway between the attainable value of W at/below the quantile and
   the next attainable one (C²W² = C·Σh² − (Σh)² is an integer);
2. an independent classical run of ``--reference-replicas`` gives the reference values of the two
   estimands, P(W ≤ w_q) and E[W];
3. per sampler (``tilt_s=…`` for each ``--tilts`` value; ``learned`` with ``--checkpoint``),
   ``--groups`` groups of ``--replicas`` trajectories, alternated with classical groups of the
   same size through the plain engine; each group is timed after compilation. P is estimated by
   the plain estimate mean(W·1_A), E[W] by self-normalised IS, each with its error, diagnostics
   and ``reliable`` flag (:mod:`swarm_jax.analysis.importance`).

Efficiency = σ²_classical / σ²_sampler per trajectory (``efficiency_equal_replicas``; σ²_classical
from the reference run), times t_classical / t_sampler (medians of the alternated timings) at
equal wall time (``efficiency_equal_time``), with percentile-bootstrap intervals; and the MSE of
each estimator over the groups against the reference.
"""

from __future__ import annotations

import math
import sys
import time

import jax
import numpy as np

from swarm_jax.analysis import importance as I
from swarm_jax.physics.lattice import deposit_target
from swarm_jax.swarm.rollout import GrowthSpec, grow_classical, grow_sampler, tilt_logits

ESTIMANDS = ("P(W<=w_q)", "E[W]")
KINDS = {"P(W<=w_q)": "probability", "E[W]": "mean"}
TABLE_COLUMNS = ["sampler", "estimand", "replicas", "reference", "classical_estimate", "sampler_estimate",
                 "sampler_stderr", "z_vs_reference", "reliable", "khat", "mean_weight",
                 "efficiency_equal_replicas", "efficiency_equal_time", "efficiency_ci", "mse_ratio"]


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="stage-style config name or YAML path (environment section)")
    parser.add_argument("--checkpoint", default=None,
                        help="training checkpoint of the learned sampler (without it the learned rows are skipped)")
    parser.add_argument("--tilts", default="0.25,0.5,1,1.5,2", help="tilt strengths s (1/layer), comma-separated; '' for none")
    parser.add_argument("--replicas", type=int, default=1024, help="trajectories per group")
    parser.add_argument("--groups", type=int, default=4, help="groups per sampler (MSE over groups; timings)")
    parser.add_argument("--reference-replicas", type=int, default=16384,
                        help="classical trajectories of the reference run (rounded up to whole groups)")
    parser.add_argument("--quantile-replicas", type=int, default=4096,
                        help="classical trajectories that locate w_q (rounded up to whole groups)")
    parser.add_argument("--quantile", type=float, default=0.01, help="quantile of W defining the rare event")
    parser.add_argument("--monolayers", type=float, default=None,
                        help="thickness θ, ML (default: the config's environment.episode_ml, else 1.0)")
    parser.add_argument("--chunk", type=int, default=64, help="steps per jitted chunk of the rollouts")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed")


def _fail(message: str):
    print(message, file=sys.stderr)
    raise SystemExit(2)


def _check_args(args) -> list[float]:
    for name in ("replicas", "groups", "reference_replicas", "quantile_replicas", "chunk"):
        value = getattr(args, name)
        if value < 1:
            _fail(f"--{name.replace('_', '-')} = {value}: must be an integer >= 1")
    if args.groups < 2:
        _fail(f"--groups = {args.groups}: must be >= 2 (MSE over groups)")
    if not 0.0 < args.quantile < 0.5:
        _fail(f"--quantile = {args.quantile}: must be in (0, 0.5)")
    if args.monolayers is not None and not (math.isfinite(args.monolayers) and args.monolayers > 0):
        _fail(f"--monolayers = {args.monolayers}: must be a number > 0")
    try:
        tilts = [float(v) for v in args.tilts.split(",") if v.strip()]
    except ValueError:
        _fail(f"--tilts = {args.tilts!r}: must be comma-separated numbers, e.g. 0.25,0.5,1")
    if any(not math.isfinite(s) for s in tilts):
        _fail(f"--tilts = {args.tilts!r}: every tilt must be finite")
    return tilts


def _environment(args):
    from swarm_jax.training.config import ConfigError, load_config, resolve_config_path

    try:
        cfg = load_config(resolve_config_path(args.config))
    except ConfigError as err:
        _fail(str(err))
    env = cfg.environment
    theta = args.monolayers if args.monolayers is not None else float(getattr(env, "episode_ml", None) or 1.0)
    return cfg, env, theta


def attainable_threshold(sum_h, sum_h2, n_columns: int, quantile: float) -> dict:
    """w_q between two attainable roughness values, from classical replicas' Σh and Σh² (n,).

    ``C²W² = C·Σh² − (Σh)²`` is an integer; the ``quantile`` (inverted CDF: the smallest observed
    value with empirical CDF ≥ q) is an attainable value; w_q is put midway between its W and the
    next larger observed one, so "W ≤ w_q" never depends on float rounding.

    Returns:
        ``{"w_q", "w_at_quantile", "w_next", "fraction_at_or_below"}``.
    """
    key = n_columns * np.asarray(sum_h2, np.int64) - np.asarray(sum_h, np.int64) ** 2
    s = np.sort(key)
    k_q = s[max(0, math.ceil(quantile * s.size) - 1)]
    above = s[s > k_q]
    if above.size == 0:
        raise ValueError("every replica has the same roughness: no rare event to define")
    w_lo, w_hi = math.sqrt(k_q) / n_columns, math.sqrt(above[0]) / n_columns
    return {"w_q": 0.5 * (w_lo + w_hi), "w_at_quantile": w_lo, "w_next": w_hi,
            "fraction_at_or_below": float(np.mean(key <= k_q))}


def _host(result) -> dict:
    r = jax.device_get(result)
    return {"W": np.asarray(r.roughness), "lw": np.asarray(r.log_weight), "sum_h": np.asarray(r.sum_h),
            "sum_h2": np.asarray(r.sum_h2), "ceiling": int(np.sum(r.ceiling)),
            "unfinished": int(np.sum(~np.asarray(r.reached) & ~np.asarray(r.ceiling)))}


def _timed(fn, *args) -> tuple[float, dict]:
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0, _host(out)


def _concat(parts: list[dict]) -> dict:
    out = {k: np.concatenate([p[k] for p in parts]) for k in ("W", "lw", "sum_h", "sum_h2")}
    out["ceiling"] = sum(p["ceiling"] for p in parts)
    out["unfinished"] = sum(p["unfinished"] for p in parts)
    return out


class _Keys:
    """Distinct PRNG keys for every run of the benchmark."""

    def __init__(self, seed: int):
        self.base, self.i = jax.random.key(seed), 0

    def __call__(self):
        self.i += 1
        return jax.random.fold_in(self.base, self.i)


def _classical_batches(classical, keys, n_total: int, replicas: int) -> dict:
    return _concat([_host(classical(keys())) for _ in range(-(-n_total // replicas))])


def _estimand_values(run: dict, estimand: str, w_q: float) -> np.ndarray:
    return (run["W"] <= w_q).astype(np.float64) if estimand == "P(W<=w_q)" else run["W"]


def _reference(ref: dict, w_q: float) -> dict:
    out = {}
    for estimand in ESTIMANDS:
        v = _estimand_values(ref, estimand, w_q)
        stats = I.mean_stderr(v)
        out[estimand] = {"value": stats["mean"], "stderr": stats["stderr"], "values": v}
    return out


def _sampler_runs(sampler, params, classical, keys, args, classical_groups: list) -> tuple:
    """``--groups`` sampler groups, each after a classical group (alternated, timed after the
    compile). Returns (sampler groups, time ratios t_classical / t_sampler, (median seconds per
    trajectory classical, sampler)); the classical groups are appended to ``classical_groups``."""
    groups, t_c, t_s = [], [], []
    for _ in range(args.groups):
        dt, c = _timed(classical, keys())
        t_c.append(dt)
        classical_groups.append(c)
        dt, g = _timed(sampler, params, keys())
        t_s.append(dt)
        groups.append(g)
    ratios = [a / b for a, b in zip(t_c, t_s)]
    return groups, ratios, (float(np.median(t_c)) / args.replicas, float(np.median(t_s)) / args.replicas)


def _row(name: str, estimand: str, groups: list, ratios: list, times: list, classical_groups: list,
         reference: dict, w_q: float) -> dict:
    kind = KINDS[estimand]
    pooled = _concat(groups)
    values = _estimand_values(pooled, estimand, w_q)
    est = I.ESTIMATORS[kind](values, pooled["lw"])
    ref = reference[estimand]
    c_pooled = _concat(classical_groups)
    classical = I.ESTIMATORS[kind](_estimand_values(c_pooled, estimand, w_q), c_pooled["lw"])
    var_c = float(np.var(ref["values"], ddof=1))
    # Seconds enter as the median ratio of the alternated pairs (robust to a changing load).
    eff = I.estimator_efficiency(var_c, est["per_trajectory_variance"], float(np.median(ratios)), 1.0)
    ci = I.efficiency_interval(kind, ref["values"], values, pooled["lw"], ratios)
    group_est = [I.ESTIMATORS[kind](_estimand_values(g, estimand, w_q), g["lw"])["estimate"] for g in groups]
    c_group_est = [I.ESTIMATORS[kind](_estimand_values(g, estimand, w_q), g["lw"])["estimate"]
                   for g in classical_groups]
    mse_s, mse_c = I.group_mse(group_est, ref["value"]), I.group_mse(c_group_est, ref["value"])
    reasons = list(est["reasons"])
    if pooled["ceiling"] or pooled["unfinished"]:
        reasons.append(f"{pooled['ceiling']} trajectories hit the ceiling and {pooled['unfinished']} "
                       "did not finish before θ")
    combined = math.sqrt(est["stderr"] ** 2 + ref["stderr"] ** 2)
    return {
        "sampler": name, "estimand": estimand, "replicas": int(values.size), "groups": len(groups),
        "w_q": w_q, "reference": ref["value"], "reference_stderr": ref["stderr"],
        "classical_estimate": classical["estimate"], "classical_stderr": classical["stderr"],
        "sampler_estimate": est["estimate"], "sampler_stderr": est["stderr"],
        "z_vs_reference": (est["estimate"] - ref["value"]) / combined if combined > 0 else 0.0,
        "reliable": not reasons, "reasons": reasons, "warnings": est["warnings"],
        "mean_weight_consistent": est["mean_weight_consistent"],
        "khat": est["integrand_khat"] if kind == "probability" else est["khat"],
        "hits": est.get("hits"), "integrand_ess": est.get("integrand_ess"), "batch_ess": est.get("batch_ess"),
        "mean_weight": est["mean_weight"], "mean_weight_stderr": est["mean_weight_stderr"],
        "var_classical": var_c, "var_sampler": est["per_trajectory_variance"],
        "efficiency_equal_replicas": eff["equal_replicas"], "efficiency_equal_time": eff["equal_time"],
        "efficiency_ci": ci["equal_time"], "efficiency_equal_replicas_ci": ci["equal_replicas"],
        "mse_classical": mse_c, "mse_sampler": mse_s, "mse_ratio": mse_c / mse_s if mse_s > 0 else math.inf,
        "time_ratio_classical_over_sampler": float(np.median(ratios)),
        "ms_per_trajectory_classical": 1e3 * times[0], "ms_per_trajectory_sampler": 1e3 * times[1],
        "ceiling_sampler": pooled["ceiling"], "ceiling_classical": c_pooled["ceiling"],
    }


def _samplers(args, tilts: list[float], env):
    """(name, logits_fn, params, K) per sampler; the learned one only with --checkpoint."""
    out = [(f"tilt_s={s:g}", tilt_logits, float(s), env.n_swarm) for s in tilts]
    if args.checkpoint is None:
        print("# no --checkpoint: the learned sampler's rows are skipped (train one with "
              f"`python train.py --config {args.config} --out runs/NAME`, then pass "
              "--checkpoint runs/NAME/stage1_final)", flush=True)
        return out
    from swarm_jax.trained_policy import PolicyLoadError, load_policy

    try:
        policy = load_policy(args.checkpoint)
    except PolicyLoadError as err:
        _fail(f"--checkpoint: {err}")
    trained = policy.summary()["trained_environment"]
    differ = {k: v for k, v in trained.items() if k != "physics" and v is not None
              and list(np.atleast_1d(v)) != list(np.atleast_1d(getattr(env, k)))}
    if differ:
        print(f"# note: the checkpoint was trained with {differ}; evaluated here with the config's "
              "environment (the weights stay exact, the efficiency may not carry over)", flush=True)
    out.append(("learned", policy.logits, policy.params, policy.n_swarm))
    return out


def run(args) -> list[dict]:
    tilts = _check_args(args)
    cfg, env, theta = _environment(args)
    physics = env.physics_params()
    lx, ly, lz = env.lattice_size
    target = deposit_target(lx * ly, theta)
    spec = GrowthSpec((lx, ly, lz), target, args.replicas, chunk=args.chunk)
    keys = _Keys(args.seed)
    print(f"# {cfg.name}: {lx}x{ly}x{lz}, {env.temperature:g} K, {env.deposition_rate:g} ML/s, "
          f"θ = {theta:g} ML = {target} atoms; groups of {args.replicas}", flush=True)
    classical = jax.jit(lambda k: grow_classical(spec, physics, k))
    samplers = _samplers(args, tilts, env)
    jax.block_until_ready(classical(keys()))  # compile
    quant = _classical_batches(classical, keys, args.quantile_replicas, args.replicas)
    threshold = attainable_threshold(quant["sum_h"], quant["sum_h2"], lx * ly, args.quantile)
    ref = _classical_batches(classical, keys, args.reference_replicas, args.replicas)
    if ref["ceiling"] or quant["ceiling"]:
        print(f"# WARNING: {quant['ceiling'] + ref['ceiling']} classical trajectories hit the ceiling "
              f"before θ (box too short)", flush=True)
    w_q = threshold["w_q"]
    reference = _reference(ref, w_q)
    print(f"# w_q = {w_q:.5f} (between attainable W {threshold['w_at_quantile']:.5f} and "
          f"{threshold['w_next']:.5f}); reference P = {reference['P(W<=w_q)']['value']:.5f} ± "
          f"{reference['P(W<=w_q)']['stderr']:.5f}, E[W] = {reference['E[W]']['value']:.5f}", flush=True)
    meta = {"config": cfg.name, "lattice": f"{lx}x{ly}x{lz}", "temperature_K": env.temperature,
            "deposition_rate_ml_s": env.deposition_rate, "o_ti_flux_ratio": env.o_ti_flux_ratio,
            "theta_ml": theta, "target_atoms": target, "reference_replicas": int(ref["W"].size),
            "quantile_replicas": int(quant["W"].size), "quantile": args.quantile, "seed": args.seed}
    runs, classical_groups, compiled = [], [], {}
    for name, logits_fn, params, k in samplers:
        if (logits_fn, k) not in compiled:  # one compile per scoring function and K
            compiled[(logits_fn, k)] = jax.jit(
                lambda p, kk, f=logits_fn, n=k: grow_sampler(spec, physics, f, p, n, kk))
            jax.block_until_ready(compiled[(logits_fn, k)](params, keys()))
        groups, ratios, times = _sampler_runs(compiled[(logits_fn, k)], params, classical, keys, args,
                                              classical_groups)
        runs.append((name, k, groups, ratios, times))
        p_est = I.probability_estimate(_estimand_values(_concat(groups), "P(W<=w_q)", w_q), _concat(groups)["lw"])
        print(f"  {name}: P = {p_est['estimate']:.5f} ± {p_est['stderr']:.5f} (reliable {p_est['reliable']}); "
              f"{1e3 * times[0]:.2f} / {1e3 * times[1]:.2f} ms per trajectory classical / sampler", flush=True)
    rows = []
    for name, k, groups, ratios, times in runs:
        for estimand in ESTIMANDS:
            row = _row(name, estimand, groups, ratios, times, classical_groups, reference, w_q)
            row.update(meta, n_swarm=k)
            rows.append(row)
    return rows
