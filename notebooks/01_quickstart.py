# ---
# jupyter:
#   accelerator: GPU
#   colab:
#     name: 01_quickstart.ipynb
#     provenance: []
#   jupytext:
#     cell_metadata_filter: -all
#     notebook_metadata_filter: kernelspec,language_info,colab,accelerator
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   language_info:
#     name: python
# ---

# %% [markdown]
# # 01 · Quickstart: train a SwarmThinkers policy and grow a film with it
#
# This notebook trains curriculum stage 1 (8×8×5 lattice, 180 K) with PPO, shows the learning
# curves (TensorBoard in Colab, a plot everywhere), then grows a film with the trained policy and
# with the uniform policy (which *is* classical kinetic Monte Carlo) and compares their height maps.
#
# **Budget.** `SWARM_JAX_NOTEBOOK_BUDGET=full` (default) trains stage 1 exactly as
# `configs/stage1_small.yaml` says (48 PPO updates; minutes on a Colab GPU). `ci` trains three tiny
# updates so the notebook runs top to bottom on a laptop CPU in a couple of minutes.
#
# **In Colab:** *Runtime → Change runtime type → GPU*, set `REPO_URL` in the first cell, run all.
# Outputs go to `runs/notebooks/01_quickstart/` (or `$SWARM_JAX_NOTEBOOK_OUT`); notebook 02 reloads
# the checkpoint written here.

# %%
# Set-up. In Colab: clone the repository and install it (skipped when swarm_jax is importable).
# Elsewhere: use the installed package, or a source checkout at or above the working directory.
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

IN_COLAB = "google.colab" in sys.modules
# Colab only: the git URL of the swarm_jax repository. Fill it in here, e.g.
# REPO_URL = "https://github.com/<owner>/<repository>.git", or set SWARM_JAX_REPO.
REPO_URL = os.environ.get("SWARM_JAX_REPO", "")


def find_checkout(start=None):
    """The nearest folder at or above ``start`` (default: cwd) holding swarm_jax's sources."""
    start = Path(start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "swarm_jax" / "__init__.py").is_file():
            return folder
    return None


if importlib.util.find_spec("swarm_jax") is None:
    checkout = find_checkout()
    if checkout is None and IN_COLAB:
        if not REPO_URL:
            raise RuntimeError("set REPO_URL in this cell (or the environment variable "
                               "SWARM_JAX_REPO) to the git URL of the swarm_jax repository")
        checkout = Path("/content/swarm_jax")
        if not checkout.exists():
            subprocess.run(["git", "clone", "--depth", "1", REPO_URL, str(checkout)], check=True)
        # Editable, so the configs/ folder next to the package is found.
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", str(checkout)],
                       check=True)
    if checkout is None:
        raise ModuleNotFoundError("swarm_jax is not importable: `pip install -e .` in the "
                                  "repository, or start Jupyter inside the checkout")
    sys.path.insert(0, str(checkout))

import swarm_jax  # noqa: E402

swarm_jax.enable_x64()  # the KMC clock, selection and rate totals are float64
import jax  # noqa: E402
from swarm_jax.compile_cache import enable_compilation_cache  # noqa: E402

# JAX's persistent compilation cache: a second session compiles in seconds
# (SWARM_JAX_CACHE_DIR moves it; SWARM_JAX_CACHE_DIR=off turns it off).
CACHE_DIR = enable_compilation_cache()
print(f"swarm_jax {swarm_jax.__version__}, jax {jax.__version__}, backend {jax.default_backend()}, "
      f"compilation cache {CACHE_DIR or 'off'}")

# %%
# Budget and output folder.
BUDGET = os.environ.get("SWARM_JAX_NOTEBOOK_BUDGET", "full").strip().lower()
if BUDGET not in ("ci", "full"):
    raise ValueError(f"SWARM_JAX_NOTEBOOK_BUDGET = {BUDGET!r}: must be 'ci' or 'full'")
CI = BUDGET == "ci"
REPO_ROOT = find_checkout(Path(swarm_jax.__file__).parent) or Path.cwd()
OUT_ROOT = Path(os.environ.get("SWARM_JAX_NOTEBOOK_OUT") or REPO_ROOT / "runs" / "notebooks")
RUN_DIR = OUT_ROOT / "01_quickstart"
RUN_DIR.mkdir(parents=True, exist_ok=True)
print(f"budget {BUDGET!r}; outputs in {RUN_DIR}")

# %% [markdown]
# ## 1. The stage-1 configuration
#
# `load_config` validates the YAML; `for_backend` applies the file's `cpu_overrides` (fewer, longer
# environments) when JAX runs on the CPU. The `ci` budget shrinks the PPO budget only: same lattice,
# temperature, flux, K and network.

# %%
from swarm_jax.training.config import for_backend, load_config, resolve_config_path, with_overrides

cfg = for_backend(load_config(resolve_config_path("stage1_small")))
if CI:
    cfg = with_overrides(cfg, {
        "training.cpu_overrides": {},  # already applied; the tiny budget below replaces them
        "training.n_envs": 4, "ppo.n_steps": 16, "ppo.batch_size": 32, "ppo.n_epochs": 2,
        "training.total_timesteps": 192, "training.checkpoint_freq": 64, "training.log_every": 1,
    })
env_cfg = cfg.environment
print(f"lattice {env_cfg.lattice_size}, T = {env_cfg.temperature} K, F = {env_cfg.deposition_rate} ML/s, "
      f"K = {env_cfg.n_swarm} candidates")
print(f"{cfg.ppo.n_envs} envs x {cfg.ppo.n_steps} steps = {cfg.rollout_size} transitions per "
      f"update, {cfg.num_updates} updates, network {cfg.network.kind} {list(cfg.network.hidden_sizes)}")

# %% [markdown]
# ## 2. Train stage 1
#
# `run_stage` is what `python train.py --stage 1` runs: jitted chunks of PPO updates, TensorBoard
# scalars, periodic orbax checkpoints and a final one in `train/stage1_final/`. Re-running the cell
# reuses a finished run and resumes an interrupted one (set `RETRAIN = True` to start over).

# %%
import shutil

from swarm_jax.training.checkpoint import is_complete_checkpoint
from swarm_jax.training.trainer import StagePaths, complete_steps, run_stage

RETRAIN = False
TRAIN_DIR = RUN_DIR / "train"
paths = StagePaths(TRAIN_DIR, 1)
if RETRAIN and TRAIN_DIR.exists():
    shutil.rmtree(TRAIN_DIR)

if is_complete_checkpoint(paths.final):
    print(f"reusing the finished run in {paths.final} (RETRAIN = True trains again)")
else:
    resume = bool(complete_steps(paths.checkpoints))
    if not resume and TRAIN_DIR.exists():
        shutil.rmtree(TRAIN_DIR)  # an attempt that never reached a checkpoint
    result = run_stage(cfg, TRAIN_DIR, stage=1, resume=resume, progress=not CI)
    print(result.message)
    print({k: round(v, 2) for k, v in result.timings.items()})
    assert result.finished, result.status
CHECKPOINT = paths.final

# %% [markdown]
# ## 3. Learning curves
#
# In Colab the TensorBoard extension shows the live dashboard (`%load_ext tensorboard`,
# `%tensorboard --logdir ...`). Everywhere, the same metrics are read back from the trainer's
# `metrics_stage1.csv` with `read_metrics` and plotted with `plot_learning_curves`.

# %%
if IN_COLAB:  # the magics %load_ext tensorboard and %tensorboard --logdir ..., Colab only
    ipython = get_ipython()  # noqa: F821  (defined in IPython kernels)
    ipython.run_line_magic("load_ext", "tensorboard")
    ipython.run_line_magic("tensorboard", f"--logdir {TRAIN_DIR / 'tensorboard'}")
else:
    print(f"live dashboard: tensorboard --logdir {TRAIN_DIR / 'tensorboard'}")

# %%
from IPython.display import Image, display

from swarm_jax.training.logging import plot_learning_curves, read_metrics

metrics = read_metrics(paths.metrics_csv)
for name in ("ep_rew_mean", "entropy", "ess_ratio", "roughness", "fps"):
    points = metrics.get(name, [])
    if points:
        print(f"{name:12s} {len(points):3d} points, last {points[-1][1]:.4g} at step {points[-1][0]}")
png = plot_learning_curves(metrics, RUN_DIR / "learning_curves.png", title="stage 1")
display(Image(filename=str(png)))

# %% [markdown]
# ## 4. A film grown by the trained policy vs the uniform policy
#
# Both policies act through the same `TiO2GrowthEnv`: at every event K candidates are drawn from
# the physical distribution Γ_e/Γ_tot and the policy picks one. The uniform choice is exactly
# classical KMC; the trained policy's choices carry the importance weight
# `w = 1/(K π_j)` (`docs/physics.md`, SwarmThinkers), so we also report the trajectory log-weight and the mean
# per-step ESS ratio. The policy is lattice-size independent, so we grow a larger film than it was
# trained on, at the training temperature and flux.

# %%
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from swarm_jax.env.tio2_env import TiO2GrowthEnv
from swarm_jax.physics import observables
from swarm_jax.trained_policy import load_policy
from swarm_jax.swarm.weights import ess_ratio, step_log_weight

policy = load_policy(CHECKPOINT)
K = policy.n_swarm
DEMO_SIZE = (12, 12, 14) if CI else (32, 32, 24)
MONOLAYERS = 2 if CI else 4
N_EVENTS = MONOLAYERS * DEMO_SIZE[0] * DEMO_SIZE[1]  # at 180 K nearly every event is a deposition
env = TiO2GrowthEnv(DEMO_SIZE, n_swarm=K, physics=env_cfg.physics_params(),
                    max_steps_in_episode=N_EVENTS)
env_params = env.default_params


def uniform_log_probs(obs):
    return jnp.full((K,), -jnp.log(K), jnp.float64)


def trained_log_probs(obs):
    logits = policy.logits(policy.params, obs["candidates"], obs["global"])
    return jax.nn.log_softmax(logits.astype(jnp.float64))


def grow(log_probs_fn, key):
    """N_EVENTS events of one lattice under a policy: (final lattice, log W, mean step ESS)."""
    key_reset, key_run = jax.random.split(key)
    obs, state = env.reset_env(key_reset, env_params)

    def body(carry, k):
        obs, state, log_w = carry
        k_act, k_env = jax.random.split(k)
        log_probs = log_probs_fn(obs)
        action = jax.random.categorical(k_act, log_probs)
        log_w = log_w + step_log_weight(log_probs, action)
        obs, state, _, _, _ = env.step_env(k_env, state, action, env_params)  # no auto-reset
        return (obs, state, log_w), ess_ratio(log_probs)

    init = (obs, state, jnp.zeros((), jnp.float64))
    (_, state, log_w), ess = jax.lax.scan(body, init, jax.random.split(key_run, N_EVENTS))
    return state.lattice, log_w, ess.mean()


films = {}
for name, fn in (("uniform (classical KMC)", uniform_log_probs), ("trained policy", trained_log_probs)):
    lattice, log_w, ess = jax.jit(lambda k, fn=fn: grow(fn, k))(jax.random.key(7))
    obs = {k: float(v) for k, v in observables(lattice).items()}
    films[name] = lattice
    print(f"{name:24s} h = {obs['mean_height']:.3f} ML, W = {obs['roughness']:.3f} layers, "
          f"coverage {obs['coverage']:.3f}, O/Ti {obs['o_ti_ratio']:.3f}, t = {obs['time']:.3g} s, "
          f"log W = {float(log_w):.2f}, mean step ESS {float(ess):.3f}")

# %%
from swarm_jax.physics import height_map

maps = {name: np.asarray(height_map(lattice)) for name, lattice in films.items()}
vmin = min(m.min() for m in maps.values())
vmax = max(m.max() for m in maps.values())
fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
for ax, (name, h) in zip(axes, maps.items()):
    im = ax.imshow(h.T, origin="lower", cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_title(f"{name}\nW = {h.std():.3f} layers")
    ax.set_xlabel("x (sites, a = 4.59 Å)")
    ax.set_ylabel("y (sites)")
fig.colorbar(im, ax=axes, label="height (layers)")
fig.savefig(RUN_DIR / "height_maps.png", dpi=100)
plt.show()

# %% [markdown]
# Next: `02_reload_and_simulate.ipynb` reloads this checkpoint with orbax and runs a production
# simulation with it from the command-line entry points.
