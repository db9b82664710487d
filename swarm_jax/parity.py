"""Learning and speed parity of our JAX PPO against Stable-Baselines3 PPO (``[parity]`` extra).

``python -m swarm_jax.parity --budget STEPS --seeds 3 [--out DIR]`` trains, for each seed, SB3's
PPO and ours with matched hyper-parameters and the same network on the stage-1 environment
(``configs/stage1_small.yaml``: 8×8×5, 180 K, 0.1 ML/s, max_steps 1000, K = 32), evaluates both
final policies with one protocol, and writes ``DIR/parity.json`` and
``DIR/parity_learning_curve.png``.

Matched set-up
--------------
* Network: SB3 ``MlpPolicy`` with ``net_arch=dict(pi=[64, 64], vf=[64, 64])``, tanh, orthogonal
  init — our ``NetworkConfig(kind="flat_mlp", hidden_sizes=(64, 64), activation="tanh")`` is the
  same function of the same flat observation. This is checked: the SB3 policy's weights are
  copied into our network (:func:`sb3_to_flax_params`) and the logits and values compared
  (``architecture_check`` in the JSON).
* PPO: lr 3e-4 constant (no annealing), ``n_envs`` 8, ``n_steps`` per env, batch 64, 10 epochs,
  γ 0.99, λ 0.95, clip 0.2, no value clipping, ent 0.01, vf 0.5, max-grad-norm 0.5, Adam ε 1e-5,
  per-minibatch advantage normalisation, truncated episodes bootstrapped. Our learning reward's
  ESS term is switched off (``PPOConfig.w_ess = 0``): both optimise the env reward.
* Environment steps: SB3 collects from :class:`swarm_jax.gym.TiO2GrowthVecEnv` (one jitted
  ``vmap`` step for all envs, wrapped in ``VecMonitor``), so both pay the same KMC cost per step;
  with ``--sb3-dummy-steps`` SB3 is also timed on a ``DummyVecEnv`` of Gymnasium envs.
* Budget: ``--budget`` rounded down to whole rollouts (``n_envs·n_steps``), the same for both.

Protocol and figures
--------------------
* Evaluation: our :func:`swarm_jax.agents.evaluate` (the policy sampled, as in training) for both
  final policies — SB3's through the copied weights — on ``--eval-envs`` envs for
  ``--eval-steps`` steps with a fixed key per seed; the score is the mean return of the
  episodes that finished. The uniform policy (classical KMC) is evaluated as a reference.
* ``mean ± standard error`` across seeds (stderr = sample std / sqrt(n_seeds)).
  ``parity_holds``: ``ours − sb3 ≥ −2·sqrt(se_ours² + se_sb3²)`` (null with one seed).
* Throughput: training env steps per second of wall time. Ours: steady state (every update but
  each seed's first, which includes compilation at the first seed) and overall; SB3: ``learn``
  wall time (its env kernels are compiled before timing). ``speedup = ours / sb3``.
  ``rollout_sps``: the data-collection phase alone (ours: the jitted rollout; SB3:
  ``collect_rollouts``), ``rollout_speedup`` their ratio. With matched hyper-parameters the
  optimisation phase is the same arithmetic in both (10 epochs of batch-64 gradient steps through
  a 3727-input MLP, ~30 MFLOP per env step), which bounds the full-training speed-up on a CPU.
  SB3 runs with ``--torch-threads`` (default 1) threads.
* Learning curves: mean return of the training episodes that finished in each update's rollout,
  against env steps, mean ± stderr over seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

_METRIC = "ep_rew_mean"


# ---- the pieces --------------------------------------------------------------------------------


def stage_env_kwargs(config: str = "stage1_small") -> dict:
    """Environment keyword arguments (``TiO2GrowthEnv`` overrides) of a stage config: the keys of
    its environment section (physics overrides spread out) and of its reward section."""
    from swarm_jax.training.config import config_to_dict, load_config, resolve_config_path

    d = config_to_dict(load_config(resolve_config_path(config)))
    env = d["environment"]
    physics = env.pop("physics")
    return {**env, "lattice_size": tuple(env["lattice_size"]), **physics, **d["reward"]}


def sb3_to_flax_params(policy) -> dict:
    """The weights of an SB3 ``MlpPolicy`` (separate pi/vf ``[h, h]`` nets, Discrete(K)) as params
    of our ``FlatActorCritic`` (``{"params": {pi_mlp, pi_head, vf_mlp, vf_head}}``, float32)."""
    import torch as th

    def linears(seq):
        return [m for m in seq if isinstance(m, th.nn.Linear)]

    def dense(lin):
        return {"kernel": lin.weight.detach().cpu().numpy().T.astype(np.float32).copy(),
                "bias": lin.bias.detach().cpu().numpy().astype(np.float32).copy()}

    ext = policy.mlp_extractor
    pi, vf = linears(ext.policy_net), linears(ext.value_net)
    return {"params": {
        "pi_mlp": {f"Dense_{i}": dense(lin) for i, lin in enumerate(pi)},
        "pi_head": dense(policy.action_net),
        "vf_mlp": {f"Dense_{i}": dense(lin) for i, lin in enumerate(vf)},
        "vf_head": dense(policy.value_net),
    }}


def architecture_check(policy, network, flat_obs: np.ndarray, n_swarm: int) -> dict:
    """Max |Δ| between SB3's and our network's log-probabilities and values on ``flat_obs``."""
    import torch as th

    from swarm_jax.agents.networks import log_probs_from_logits
    from swarm_jax.gym.adapter import unflatten_observation

    with th.no_grad():
        obs_t = th.as_tensor(flat_obs, dtype=th.float32, device=policy.device)
        dist = policy.get_distribution(obs_t)
        sb3_logp = dist.distribution.logits.cpu().numpy()
        sb3_v = policy.predict_values(obs_t).cpu().numpy()[:, 0]
    logits, value = network.apply(sb3_to_flax_params(policy), unflatten_observation(flat_obs, n_swarm))
    ours_logp = np.asarray(log_probs_from_logits(logits))
    return {
        "max_abs_diff_log_probs": float(np.max(np.abs(ours_logp - sb3_logp))),
        "max_abs_diff_values": float(np.max(np.abs(np.asarray(value) - sb3_v))),
        "n_observations": int(flat_obs.shape[0]),
    }


def mean_stderr(values) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n); NaN for n < 2) of the finite values
    (:func:`swarm_jax.analysis.importance.mean_stderr` on them)."""
    from swarm_jax.analysis.importance import mean_stderr as _stats

    x = [v for v in values if v is not None and np.isfinite(v)]
    if not x:
        return float("nan"), float("nan")
    stats = _stats(x)
    return stats["mean"], float("nan") if stats["stderr"] is None else stats["stderr"]


def _nan_to_none(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


# ---- training runs -----------------------------------------------------------------------------


def train_ours(trainer, seed: int) -> dict:
    """Our PPO, one update per jitted chunk (timed each); returns params, curve and timings."""
    import jax

    rs = jax.block_until_ready(trainer.init(jax.random.PRNGKey(seed)))
    curve, times, steps = [], [], []
    for _ in range(trainer.config.num_updates):
        t0 = time.perf_counter()
        rs, m = trainer.train_chunk(rs, 1)
        m = jax.device_get(m)
        times.append(time.perf_counter() - t0)
        steps.append(int(m["env_steps"]))
        curve.append(float(m[_METRIC]))
    per_update = trainer.config.rollout_size
    steady_t = sum(times[1:])
    jax.block_until_ready(trainer.collect_rollout(rs))  # compiled once (first seed)
    t0 = time.perf_counter()
    n_rollouts = 3
    for _ in range(n_rollouts):
        jax.block_until_ready(trainer.collect_rollout(rs))
    rollout_sps = n_rollouts * per_update / (time.perf_counter() - t0)
    return {
        "params": rs.train_state.params,
        "curve_steps": steps,
        "curve": curve,
        "env_steps": steps[-1],
        "wall_s": sum(times),
        "first_update_s": times[0],
        "sps": steps[-1] / sum(times),
        "sps_steady": (per_update * (len(times) - 1) / steady_t) if len(times) > 1 else float("nan"),
        "rollout_sps": rollout_sps,
    }


def _sb3_model(env, args, seed: int):
    import torch as th
    from stable_baselines3 import PPO

    return PPO(
        "MlpPolicy", env, learning_rate=args.learning_rate, n_steps=args.n_steps,
        batch_size=args.batch_size, n_epochs=args.n_epochs, gamma=args.gamma,
        gae_lambda=args.gae_lambda, clip_range=args.clip_range, clip_range_vf=None,
        normalize_advantage=True, ent_coef=args.ent_coef, vf_coef=args.vf_coef,
        max_grad_norm=args.max_grad_norm, seed=seed, device="cpu", verbose=0,
        policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[64, 64]), activation_fn=th.nn.Tanh,
                           ortho_init=True),
    )


def _episode_curve_callback():
    from stable_baselines3.common.callbacks import BaseCallback

    class EpisodeCurve(BaseCallback):
        """Mean return of the episodes that finished in each rollout (VecMonitor ``episode``)."""

        def __init__(self):
            super().__init__()
            self.steps, self.curve, self._returns = [], [], []
            self.rollout_s, self._t0 = 0.0, 0.0

        def _on_rollout_start(self) -> None:
            self._t0 = time.perf_counter()

        def _on_step(self) -> bool:
            self._returns += [info["episode"]["r"] for info in self.locals["infos"] if "episode" in info]
            return True

        def _on_rollout_end(self) -> None:
            self.rollout_s += time.perf_counter() - self._t0
            self.steps.append(int(self.num_timesteps))
            self.curve.append(float(np.mean(self._returns)) if self._returns else float("nan"))
            self._returns = []

    return EpisodeCurve()


def train_sb3(args, env_kwargs: dict, env_params, seed: int, total_steps: int) -> dict:
    """SB3 PPO on a ``VecMonitor(TiO2GrowthVecEnv)``; returns the model, curve and timings."""
    from stable_baselines3.common.vec_env import VecMonitor

    from swarm_jax.gym import TiO2GrowthVecEnv

    venv = VecMonitor(TiO2GrowthVecEnv(args.n_envs, env_kwargs["lattice_size"], env_kwargs["n_swarm"],
                                       params=env_params))
    model = _sb3_model(venv, args, seed)
    cb = _episode_curve_callback()
    t0 = time.perf_counter()
    model.learn(total_timesteps=total_steps, callback=cb)
    wall = time.perf_counter() - t0
    venv.close()
    return {"model": model, "curve_steps": cb.steps, "curve": cb.curve,
            "env_steps": int(model.num_timesteps), "wall_s": wall, "sps": model.num_timesteps / wall,
            "rollout_s": cb.rollout_s, "rollout_sps": model.num_timesteps / cb.rollout_s}


def sb3_dummy_sps(args, env_kwargs: dict, env_params, steps: int) -> dict:
    """SB3 PPO throughput with a ``DummyVecEnv`` of Gymnasium envs (one jit call per env step)."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv

    from swarm_jax.gym import TiO2GrowthGymEnv

    size, k = env_kwargs["lattice_size"], env_kwargs["n_swarm"]
    venv = make_vec_env(lambda: TiO2GrowthGymEnv(size, k, params=env_params), n_envs=args.n_envs,
                        seed=0, vec_env_cls=DummyVecEnv)
    venv.reset()
    venv.step(np.zeros(args.n_envs, np.int64))  # compile the single-env kernels before timing
    model = _sb3_model(venv, args, 0)
    t0 = time.perf_counter()
    model.learn(total_timesteps=steps)
    wall = time.perf_counter() - t0
    venv.close()
    return {"env_steps": int(model.num_timesteps), "wall_s": wall, "sps": model.num_timesteps / wall}


# ---- plot --------------------------------------------------------------------------------------


def plot_curves(path: Path, curves: dict, title: str) -> None:
    """``curves[name] = (steps (U,), returns (n_seeds, U))`` -> PNG of mean ± stderr."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for name, (steps, ys) in curves.items():
        ys = np.asarray(ys, np.float64)
        with warnings.catch_warnings():  # all-NaN columns (no episode finished) are expected
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(ys, axis=0)
            n = np.sum(np.isfinite(ys), axis=0)
            se = np.where(n > 1, np.nanstd(ys, axis=0, ddof=1) / np.sqrt(np.maximum(n, 1)), 0.0)
        ax.plot(steps, mean, label=name)
        ax.fill_between(steps, mean - se, mean + se, alpha=0.25)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("training episode return (mean ± s.e. over seeds)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---- CLI ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m swarm_jax.parity", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--budget", type=int, default=20_000, help="env steps per training run (all envs)")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ... + --seed0)")
    p.add_argument("--seed0", type=int, default=0)
    p.add_argument("--config", default="stage1_small", help="stage config whose environment is used")
    p.add_argument("--lattice-size", type=int, nargs=3, default=None, help="override Lx Ly Lz")
    p.add_argument("--n-swarm", type=int, default=None, help="override K")
    p.add_argument("--max-steps", type=int, default=None, help="override the episode length")
    p.add_argument("--n-envs", type=int, default=8)
    p.add_argument("--n-steps", type=int, default=128, help="rollout steps per env per update")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-epochs", type=int, default=10)
    p.add_argument("--learning-rate", type=float, default=3e-4)
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--gae-lambda", type=float, default=0.95)
    p.add_argument("--clip-range", type=float, default=0.2)
    p.add_argument("--ent-coef", type=float, default=0.01)
    p.add_argument("--vf-coef", type=float, default=0.5)
    p.add_argument("--max-grad-norm", type=float, default=0.5)
    p.add_argument("--eval-envs", type=int, default=16)
    p.add_argument("--eval-steps", type=int, default=400, help="steps per eval env (episodes ~60 steps at stage 1)")
    p.add_argument("--sb3-dummy-steps", type=int, default=2048,
                   help="also time SB3 on a DummyVecEnv of Gymnasium envs for this many steps (0: skip)")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch.set_num_threads for SB3 (0: torch's default). One thread is SB3's fastest "
                        "setting for this small MLP on a shared 2-core CPU")
    p.add_argument("--out", default="parity_results", help="output folder")
    p.add_argument("--no-plot", action="store_true")
    return p


def _versions() -> dict:
    import gymnasium
    import stable_baselines3
    import torch

    return {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "stable_baselines3": stable_baselines3.__version__, "gymnasium": gymnasium.__version__,
            "numpy": np.__version__, "platform": platform.platform()}


def main(argv=None) -> dict:
    """Runs the parity study; returns the ``parity.json`` payload (see the module docstring)."""
    args = build_parser().parse_args(argv)
    try:
        import stable_baselines3  # noqa: F401
        import torch  # noqa: F401
    except ImportError as err:
        from swarm_jax.gym import MISSING_EXTRA_MESSAGE

        raise SystemExit(MISSING_EXTRA_MESSAGE) from err

    import jax
    import torch

    import swarm_jax

    swarm_jax.enable_x64()  # the KMC clock
    from swarm_jax.agents import NetworkConfig, PPOConfig, evaluate, make_train
    from swarm_jax.bench.common import machine_info
    from swarm_jax.env import TiO2GrowthEnv
    from swarm_jax.gym import TiO2GrowthVecEnv

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    load_before = os.getloadavg()
    env_kwargs = stage_env_kwargs(args.config)
    if args.lattice_size:
        env_kwargs["lattice_size"] = tuple(args.lattice_size)
    if args.n_swarm:
        env_kwargs["n_swarm"] = args.n_swarm
    if args.max_steps:
        env_kwargs["max_steps"] = args.max_steps
    size, k = env_kwargs["lattice_size"], env_kwargs["n_swarm"]
    env = TiO2GrowthEnv(size, k, **{key: v for key, v in env_kwargs.items()
                                    if key not in ("lattice_size", "n_swarm")})
    env_params = env.default_params

    rollout = args.n_envs * args.n_steps
    total_steps = (args.budget // rollout) * rollout
    if total_steps < rollout:
        raise SystemExit(f"--budget {args.budget} is below one rollout (n_envs*n_steps = {rollout})")
    ppo_cfg = PPOConfig(
        n_envs=args.n_envs, n_steps=args.n_steps, batch_size=args.batch_size, n_epochs=args.n_epochs,
        learning_rate=args.learning_rate, anneal_lr=False, gamma=args.gamma, gae_lambda=args.gae_lambda,
        clip_range=args.clip_range, clip_range_vf=None, normalize_advantage=True, ent_coef=args.ent_coef,
        vf_coef=args.vf_coef, max_grad_norm=args.max_grad_norm, adam_eps=1e-5, w_ess=0.0,
        # SB3's PPO has none of these: no ESS constraint, no shaping, raw rewards, lockstep starts.
        ess_constraint=False, reward_shaping="none", normalize_reward=False,
        stagger_episodes=False, total_timesteps=total_steps,
    )
    net_cfg = NetworkConfig(kind="flat_mlp", hidden_sizes=(64, 64), activation="tanh")
    trainer = make_train(ppo_cfg, net_cfg, env, env_params)
    network = trainer.network

    # Compile SB3's env kernels (shared by every TiO2GrowthVecEnv of this size) before timing.
    warm = TiO2GrowthVecEnv(args.n_envs, size, k, params=env_params)
    warm.seed(0)
    warm.reset()
    warm.step(np.zeros(args.n_envs, np.int64))
    n_env_only = 50
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    for _ in range(n_env_only):
        warm.step(rng.integers(k, size=args.n_envs))
    vec_env_only_sps = n_env_only * args.n_envs / (time.perf_counter() - t0)
    warm.close()

    def eval_policy(params, seed, policy="trained"):
        return evaluate(params, network, env, env_params, jax.random.PRNGKey(10_000 + seed),
                        args.eval_envs, args.eval_steps, policy=policy)

    seeds = [args.seed0 + i for i in range(args.seeds)]
    per_seed, arch = [], None
    for s in seeds:
        print(f"[parity] seed {s}: our PPO ({total_steps} steps) ...", flush=True)
        ours = train_ours(trainer, s)
        ours_eval = eval_policy(ours["params"], s)
        print(f"[parity] seed {s}: ours {ours_eval[_METRIC]:.3f} at {ours['sps_steady']:.0f} steps/s "
              f"(steady); SB3 PPO ...", flush=True)
        sb3 = train_sb3(args, env_kwargs, env_params, s, total_steps)
        sb3_params = sb3_to_flax_params(sb3["model"].policy)
        sb3_eval = eval_policy(sb3_params, s)
        print(f"[parity] seed {s}: sb3 {sb3_eval[_METRIC]:.3f} at {sb3['sps']:.0f} steps/s", flush=True)
        if arch is None:
            venv = TiO2GrowthVecEnv(args.n_envs, size, k, params=env_params)
            venv.seed(s)
            arch = architecture_check(sb3["model"].policy, network, venv.reset(), k)
        per_seed.append({
            "seed": s,
            "ours": {"eval": ours_eval, **{key: ours[key] for key in (
                "env_steps", "wall_s", "first_update_s", "sps", "sps_steady", "rollout_sps",
                "curve_steps", "curve")}},
            "sb3": {"eval": sb3_eval, **{key: sb3[key] for key in (
                "env_steps", "wall_s", "sps", "rollout_sps", "curve_steps", "curve")}},
        })
    uniform_eval = eval_policy(None, seeds[0], policy="uniform")

    ours_m, ours_se = mean_stderr([r["ours"]["eval"][_METRIC] for r in per_seed])
    sb3_m, sb3_se = mean_stderr([r["sb3"]["eval"][_METRIC] for r in per_seed])
    se_diff = math.sqrt(ours_se**2 + sb3_se**2) if len(per_seed) > 1 else float("nan")
    parity_holds = (bool(ours_m - sb3_m >= -2.0 * se_diff) if math.isfinite(se_diff) else None)
    ours_sps = float(np.mean([r["ours"]["sps_steady"] for r in per_seed]))
    if not math.isfinite(ours_sps):
        ours_sps = float(np.mean([r["ours"]["sps"] for r in per_seed]))
    ours_sps_overall = float(np.mean([r["ours"]["sps"] for r in per_seed]))
    sb3_sps = float(np.mean([r["sb3"]["sps"] for r in per_seed]))
    ours_rollout_sps = float(np.mean([r["ours"]["rollout_sps"] for r in per_seed]))
    sb3_rollout_sps = float(np.mean([r["sb3"]["rollout_sps"] for r in per_seed]))
    dummy = (sb3_dummy_sps(args, env_kwargs, env_params, max(args.sb3_dummy_steps, rollout))
             if args.sb3_dummy_steps > 0 else None)

    result = {
        "suite": "parity",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {**machine_info(), **_versions(), "load_average_1_5_15_before": list(load_before),
                    "load_average_1_5_15_after": list(os.getloadavg())},
        "command": "python -m swarm_jax.parity " + " ".join(sys.argv[1:] if argv is None else argv),
        "environment": {**{key: (list(v) if isinstance(v, tuple) else v) for key, v in env_kwargs.items()},
                        "config": args.config},
        "hyperparameters": {
            "n_envs": args.n_envs, "n_steps": args.n_steps, "batch_size": args.batch_size,
            "n_epochs": args.n_epochs, "learning_rate": args.learning_rate, "anneal_lr": False,
            "gamma": args.gamma, "gae_lambda": args.gae_lambda, "clip_range": args.clip_range,
            "clip_range_vf": None, "ent_coef": args.ent_coef, "vf_coef": args.vf_coef,
            "max_grad_norm": args.max_grad_norm, "adam_eps": 1e-5, "normalize_advantage": True,
            "ours_w_ess": 0.0, "network": "flat MLP, pi [64, 64] and vf [64, 64], tanh",
            "total_env_steps": total_steps, "budget": args.budget,
        },
        "evaluation": {"protocol": "swarm_jax.agents.evaluate, sampled policy, mean return of the "
                                   "finished episodes", "n_envs": args.eval_envs,
                       "n_steps": args.eval_steps, "uniform_policy": uniform_eval},
        "architecture_check": arch,
        "per_seed": per_seed,
        "ours": {"mean_return": ours_m, "stderr": ours_se, "sps": ours_sps,
                 "sps_including_compile": ours_sps_overall, "rollout_sps": ours_rollout_sps},
        "sb3": {"mean_return": sb3_m, "stderr": sb3_se, "sps": sb3_sps, "rollout_sps": sb3_rollout_sps,
                "env": "TiO2GrowthVecEnv", "torch_threads": torch.get_num_threads()},
        "sb3_dummy_vec_env": dummy,
        "vec_env_only_sps": vec_env_only_sps,
        "return_difference": ours_m - sb3_m,
        "return_difference_stderr": se_diff,
        "parity_holds": parity_holds,
        "speedup": ours_sps / sb3_sps,
        "speedup_including_compile": ours_sps_overall / sb3_sps,
        "rollout_speedup": ours_rollout_sps / sb3_rollout_sps,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "parity.json").write_text(json.dumps(_nan_to_none(result), indent=2, default=float))
    if not args.no_plot:
        curves = {
            "ours (JAX PPO)": (per_seed[0]["ours"]["curve_steps"], [r["ours"]["curve"] for r in per_seed]),
            "SB3 PPO": (per_seed[0]["sb3"]["curve_steps"], [r["sb3"]["curve"] for r in per_seed]),
        }
        title = (f"{'x'.join(map(str, size))}, K={k}, {len(seeds)} seed(s): ours {ours_m:.2f} ± {ours_se:.2f}, "
                 f"SB3 {sb3_m:.2f} ± {sb3_se:.2f}; {ours_sps:,.0f} vs {sb3_sps:,.0f} steps/s")
        plot_curves(out / "parity_learning_curve.png", curves, title)
    print(f"[parity] ours {ours_m:.3f} ± {ours_se:.3f}, sb3 {sb3_m:.3f} ± {sb3_se:.3f}, "
          f"parity_holds={parity_holds}; {ours_sps:,.0f} vs {sb3_sps:,.0f} env-steps/s "
          f"(speedup {ours_sps / sb3_sps:.1f}x; rollouts alone {ours_rollout_sps:,.0f} vs "
          f"{sb3_rollout_sps:,.0f}, {ours_rollout_sps / sb3_rollout_sps:.1f}x); wrote {out / 'parity.json'}",
          flush=True)
    return result


if __name__ == "__main__":
    main()
