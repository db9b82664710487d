"""Evaluate a training checkpoint anywhere, without retraining: trained vs classical KMC at θ ML.

Loads the actor of a checkpoint (a ``stageN_final/`` directory or a checkpoint store, via
:func:`swarm_jax.trained_policy.load_policy`) and runs, for every condition (temperature ×
flux × lattice), ``--episodes`` episodes of the trained policy and as many of the uniform policy
(exactly classical KMC) on the same held-out env keys (``EVAL_KEY_BASE + seed``, never used in
training). Every episode ends at θ = ``--monolayers`` ML deposited
(:func:`swarm_jax.physics.lattice.deposit_target` atoms: both policies deposit exactly the same
amount), unless the box's ceiling or the step cap ``--max-steps`` ends it first: those episodes
are counted (``n_ceiling``, ``n_cap``) and left out of the observables at θ, never compared.

Rows, one per (condition, policy): the mean per-step ESS ratio; the batch ESS of the
trajectory log-weights (count and ratio), their PSIS tail shape k̂ and the ``reliable`` verdict
of :func:`swarm_jax.analysis.importance.assess_weights`; ``mean_weight`` = E_q[W], the mean of
exp(log W) with its standard error (exactly 1 for the uniform policy; for an importance sampler
it must be 1 within its error, or the error bars of its estimates are not to be trusted:
``mean_weight_consistent``, 3 standard errors); and at
θ, each with its standard error over the episodes that reached θ: roughness W (layers), mean
height (ML), O:Ti, coverage, physical time to θ (s), events per episode and the episode's env
return. Conditions: ``--temperature`` and ``--flux`` take one value or several, ``--lattice``
can be repeated (``--monolayers``, ``--episodes`` and ``--max-steps`` then take one value or one
per lattice). Defaults come from the checkpoint's saved config.
"""

from __future__ import annotations

import itertools
import sys

import jax
import numpy as np

from swarm_jax.agents.evaluation import END_STEP_CAP, evaluate_episodes
from swarm_jax.analysis.importance import assess_weights, mean_stderr
from swarm_jax.env.tio2_env import END_REASON_NAMES, END_THICKNESS
from swarm_jax.physics.lattice import CEILING, deposit_target

#: First PRNG key of the held-out evaluation (training uses keys derived from ``training.seed``).
EVAL_KEY_BASE = 10_000
#: Deposited amount (ML) that ends an evaluation episode when none is given: half a monolayer,
#: which the stage-1 box 8×8×5 holds in most classical episodes (docs/learning.md gives the
#: ceiling counts measured there).
DEFAULT_MONOLAYERS = 0.5
#: Episodes per policy and condition when ``--episodes`` is not given.
DEFAULT_EPISODES = 64
#: Default step cap: this many events per deposited atom (at least the config's ``max_steps``).
DEFAULT_EVENTS_PER_ATOM = 20
#: Observables at θ reported with their standard errors (``info`` keys and per-episode records).
OBSERVABLES = ("roughness", "mean_height", "o_ti_ratio", "coverage", "time", "length", "ep_return")


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="training checkpoint: a stageN_final/ folder or a checkpoint store")
    parser.add_argument("--temperature", type=float, nargs="+", default=None,
                        help="substrate temperature(s), K (default: the checkpoint's)")
    parser.add_argument("--flux", type=float, nargs="+", default=None,
                        help="deposition rate(s) F, ML/s (default: the checkpoint's)")
    parser.add_argument("--flux-ratio", type=float, default=None,
                        help="O/Ti flux ratio (default: the checkpoint's)")
    parser.add_argument("--lattice", type=int, nargs=3, action="append", default=None,
                        metavar=("LX", "LY", "LZ"),
                        help="box size, repeatable (default: the checkpoint's lattice)")
    parser.add_argument("--monolayers", type=float, nargs="+", default=None,
                        help=f"θ, ML deposited when an episode ends; one value or one per "
                             f"--lattice (default: {DEFAULT_MONOLAYERS})")
    parser.add_argument("--episodes", type=int, nargs="+", default=None,
                        help=f"episodes per policy and condition; one value or one per --lattice "
                             f"(default: {DEFAULT_EPISODES})")
    parser.add_argument("--max-steps", type=int, nargs="+", default=None,
                        help=f"step cap per episode, one value or one per --lattice (default: "
                             f"{DEFAULT_EVENTS_PER_ATOM} events per deposited atom, at least "
                             f"the checkpoint's max_steps)")
    parser.add_argument("--seed", type=int, default=0,
                        help=f"evaluation seed: PRNG key {EVAL_KEY_BASE} + seed")


# ------------------------------------------------------------------ statistics of one batch

def _mean_se(values) -> tuple[float, float]:
    """Mean and standard error (NaN for no values; NaN error for one)."""
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    s = mean_stderr(values)
    return s["mean"], float("nan") if s["stderr"] is None else s["stderr"]


def mean_weight_consistent(mean: float, stderr: float, z: float = 3.0) -> bool:
    """E_q[W] = 1 within ``z`` standard errors (exactly 1 when the error is 0, as for classical
    KMC). The batch ESS and k̂ only see how uneven the sampled weights are; a sample that has
    missed the trajectories carrying the weight has a mean far below 1 with a small error."""
    if not np.isfinite(stderr) or stderr == 0:
        return bool(mean == 1.0)
    return bool(abs(mean - 1.0) <= z * stderr)


def weight_summary(log_weight) -> dict:
    """Diagnostics of trajectory log-weights (n,): batch ESS, k̂, ``reliable``, E_q[W] ± s.e."""
    lw = np.asarray(log_weight, np.float64)
    diag = assess_weights(lw)
    w_mean, w_se = _mean_se(np.exp(lw))
    return {"batch_ess": diag["batch_ess"], "batch_ess_ratio": diag["batch_ess_ratio"],
            "khat": diag["khat"], "reliable": diag["reliable"],
            "unreliable_because": "; ".join(diag["reasons"]),
            "mean_weight": w_mean, "mean_weight_se": w_se,
            "mean_weight_consistent": mean_weight_consistent(w_mean, w_se),
            "log_weight_min": float(lw.min()), "log_weight_max": float(lw.max())}


def summarise(rec: dict, target: int) -> dict:
    """One table row from :func:`~swarm_jax.agents.evaluation.evaluate_episodes`' records.

    Weights are assessed over every episode (each ends at a stopping time, so E_q[W] = 1 holds
    for all of them); the observables at θ over the episodes that reached θ only.
    """
    end = rec["end"]
    reached = end == END_THICKNESS
    deposits = rec["kinds"][:, 0] + rec["kinds"][:, 1]
    row = {"episodes": int(end.size), "n_reached": int(reached.sum()),
           "n_ceiling": int((end == CEILING).sum()), "n_cap": int((end == END_STEP_CAP).sum()),
           "n_other_end": int((~reached & (end != CEILING) & (end != END_STEP_CAP)).sum()),
           "deposited_fraction": float(np.mean(deposits / target)),
           "deposited_at_theta_min": int(deposits[reached].min()) if reached.any() else None,
           "deposited_at_theta_max": int(deposits[reached].max()) if reached.any() else None,
           "ess_ratio": float(rec["ess_sum"].sum() / max(int(rec["length"].sum()), 1))}
    row.update(weight_summary(rec["log_weight"]))
    for name in OBSERVABLES:
        row[name], row[name + "_se"] = _mean_se(rec[name][reached])
    k = rec["kinds"][reached].sum(axis=0).astype(np.float64)
    row["o_deposit_fraction"] = float(k[1] / max(k[0] + k[1], 1.0))
    row["hops_per_episode"] = _mean_se(rec["kinds"][reached, 2])[0]
    other = sorted({END_REASON_NAMES.get(int(e), str(int(e))) for e in end[~reached]})
    row["ends_other_than_theta"] = ",".join(other)
    return row


def compare(trained: dict, uniform: dict, target: int) -> tuple[dict, dict]:
    """The trained and uniform rows of one condition (same keys, ``policy`` first)."""
    return ({"policy": "trained", **summarise(trained, target)},
            {"policy": "uniform", **summarise(uniform, target)})


# ------------------------------------------------------------------ conditions and the CLI

class UsageError(ValueError):
    """A flag that cannot be used (one line; the CLI exits 2)."""


def per_lattice(name: str, values, n_lattices: int) -> list:
    """``values`` (one, or one per lattice) expanded to one per lattice."""
    if values is None or len(values) == 1:
        return list(values or [None]) * n_lattices
    if len(values) != n_lattices:
        raise UsageError(f"--{name} {' '.join(map(str, values))}: give one value or one per "
                         f"--lattice ({n_lattices})")
    return list(values)


def _check_positive(name: str, values, integer: bool = False) -> None:
    for v in values or []:
        if v is None:
            continue
        if not np.isfinite(v) or v <= 0:
            kind = "an integer >= 1" if integer else "a finite number > 0"
            raise UsageError(f"--{name} = {v!r}: must be {kind}")


def _load(path: str):
    from swarm_jax.trained_policy import PolicyLoadError, load_policy
    from swarm_jax.training.config import ConfigError, config_from_dict

    try:
        policy = load_policy(path)
        cfg = config_from_dict(policy.config)
    except (PolicyLoadError, ConfigError) as err:
        raise UsageError(f"--checkpoint {path}: {err}") from None
    return policy, cfg


def _env_for(cfg, lattice, theta: float, cap: int, temperature: float, flux: float, ratio):
    """The evaluation env of one condition (the checkpoint's reward and physics overrides)."""
    from swarm_jax.training.config import ConfigError, with_overrides
    from swarm_jax.training.trainer import make_env

    overrides = {"environment.lattice_size": list(lattice), "environment.episode_ml": theta,
                 "environment.episode_time": 0.0, "environment.max_steps": cap,
                 "environment.temperature": temperature, "environment.deposition_rate": flux}
    if ratio is not None:
        overrides["environment.o_ti_flux_ratio"] = ratio
    try:
        return make_env(with_overrides(cfg, overrides))
    except (ConfigError, ValueError) as err:
        raise UsageError(str(err)) from None


def conditions(args, cfg) -> list[dict]:
    """Every (lattice, temperature, flux) condition with its θ, episodes and step cap."""
    e = cfg.environment
    lattices = [tuple(x) for x in (args.lattice or [e.lattice_size])]
    n = len(lattices)
    thetas = per_lattice("monolayers", args.monolayers, n)
    thetas = [DEFAULT_MONOLAYERS if t is None else t for t in thetas]
    episodes = [DEFAULT_EPISODES if k is None else k
                for k in per_lattice("episodes", args.episodes, n)]
    caps = per_lattice("max-steps", args.max_steps, n)
    _check_positive("monolayers", thetas)
    _check_positive("episodes", episodes, integer=True)
    _check_positive("max-steps", caps, integer=True)
    _check_positive("temperature", args.temperature)
    _check_positive("flux", args.flux)
    if args.flux_ratio is not None and not (np.isfinite(args.flux_ratio) and args.flux_ratio >= 0):
        raise UsageError(f"--flux-ratio = {args.flux_ratio!r}: must be a finite number >= 0")
    out = []
    for (lattice, theta, n_ep, cap) in zip(lattices, thetas, episodes, caps):
        target = deposit_target(lattice[0] * lattice[1], theta)
        cap = cap or max(e.max_steps, DEFAULT_EVENTS_PER_ATOM * target)
        for t, f in itertools.product(args.temperature or [e.temperature], args.flux or [e.deposition_rate]):
            out.append({"lattice": lattice, "theta": theta, "target": target, "episodes": n_ep,
                        "max_steps": cap, "temperature": t, "flux": f})
    return out


def evaluate_condition(policy, cfg, cond: dict, ratio, seed: int, env_cache: dict) -> list[dict]:
    """Trained and uniform rows of one condition (one env per lattice and cap: T, F are traced)."""
    env = _env_for(cfg, cond["lattice"], cond["theta"], cond["max_steps"], cond["temperature"],
                   cond["flux"], ratio)
    shape_key = (cond["lattice"], cond["episodes"])
    env_obj = env_cache.setdefault(shape_key, env)  # reuse the compiled one; params differ
    key = jax.random.key(EVAL_KEY_BASE + seed)
    recs = {p: evaluate_episodes(policy.params, policy.network, env_obj, env.default_params, key,
                                 cond["episodes"], p) for p in ("trained", "uniform")}
    head = {"lattice": "x".join(map(str, cond["lattice"])), "temperature": cond["temperature"],
            "flux": cond["flux"], "monolayers": cond["theta"], "target_atoms": cond["target"],
            "max_steps": cond["max_steps"]}
    rows = [{**head, **row} for row in compare(recs["trained"], recs["uniform"], cond["target"])]
    for row in rows:
        row["note"] = _note(row)
    return rows


def _note(row: dict) -> str:
    """What the row's observables at θ stand for, in words ("" when every episode reached θ)."""
    parts = []
    if row["n_cap"]:
        parts.append(f"θ not reached within {row['max_steps']} events in {row['n_cap']} of "
                     f"{row['episodes']} episodes (mean deposited: "
                     f"{100 * row['deposited_fraction']:.3g} % of θ)")
    if row["n_ceiling"]:
        parts.append(f"ceiling before θ in {row['n_ceiling']} of {row['episodes']} episodes")
    if row["n_other_end"]:
        parts.append(f"{row['n_other_end']} episodes ended otherwise "
                     f"({row['ends_other_than_theta']})")
    return "; ".join(parts)


def run(args) -> list[dict]:
    try:
        policy, cfg = _load(args.checkpoint)
        conds = conditions(args, cfg)
        ratio = args.flux_ratio
        _env_for(cfg, conds[0]["lattice"], conds[0]["theta"], conds[0]["max_steps"],
                 conds[0]["temperature"], conds[0]["flux"], ratio)  # bad values fail here, once
    except UsageError as err:
        print(f"bench evaluate: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"# checkpoint {policy.path} (trained at {cfg.environment.temperature:g} K, "
          f"{cfg.environment.deposition_rate:g} ML/s, lattice "
          f"{'x'.join(map(str, cfg.environment.lattice_size))})", flush=True)
    rows, cache = [], {}
    for cond in conds:
        pair = evaluate_condition(policy, cfg, cond, ratio, args.seed, cache)
        for r in pair:
            print(f"  {r['lattice']} {r['temperature']:g} K {r['flux']:g} ML/s θ={r['monolayers']:g}"
                  f" {r['policy']:>7}: reached {r['n_reached']}/{r['episodes']} (ceiling "
                  f"{r['n_ceiling']}, cap {r['n_cap']}), W {r['roughness']:.3f}±"
                  f"{r['roughness_se']:.2g}, ESS/step {r['ess_ratio']:.3f}, batch ESS "
                  f"{r['batch_ess']:.3g}, E[W] {r['mean_weight']:.3g}±{r['mean_weight_se']:.2g}",
                  flush=True)
        rows.extend(pair)
    return rows

