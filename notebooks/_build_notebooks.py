"""Writes the Colab notebooks of this folder from the cell sources below (``nbformat``).

    python notebooks/_build_notebooks.py        # regenerate 01_*.ipynb, 02_*.ipynb, 03_*.ipynb

The notebooks are generated, never edited by hand, so that a review reads plain Python here and
the committed ``.ipynb`` files carry no outputs. Every notebook

- starts with the same set-up cell: in Colab (``"google.colab" in sys.modules``) it clones the
  repository at ``REPO_URL`` (read from the environment variable ``SWARM_JAX_REPO``, or filled in
  by the user) and ``pip install -e``-s it, unless ``swarm_jax`` is already importable; outside
  Colab it finds a source checkout at or above the working directory;
- reads ``SWARM_JAX_NOTEBOOK_BUDGET``: ``ci`` (tiny, a couple of minutes on a 2-core CPU; what
  ``tests/test_notebooks.py`` runs) or ``full`` (the default: the real budget, meant for a Colab
  GPU);
- writes everything under ``$SWARM_JAX_NOTEBOOK_OUT`` if set, else ``<repository>/runs/notebooks/``
  (``runs/`` is git-ignored), never into tracked files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def _clean(text: str) -> str:
    return text.strip("\n")


def md(text: str):
    return new_markdown_cell(_clean(text))


def code(text: str):
    return new_code_cell(_clean(text))


# ============================================================================ shared cells

SETUP = r'''
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

import swarm_jax  # noqa: E402  (turns on JAX's 64-bit mode)
import jax  # noqa: E402
from swarm_jax.compile_cache import enable_compilation_cache  # noqa: E402

# JAX's persistent compilation cache: a second session compiles in seconds
# (SWARM_JAX_CACHE_DIR moves it; SWARM_JAX_CACHE_DIR=off turns it off).
CACHE_DIR = enable_compilation_cache()
print(f"swarm_jax {swarm_jax.__version__}, jax {jax.__version__}, backend {jax.default_backend()}, "
      f"compilation cache {CACHE_DIR or 'off'}")
'''


def budget_cell(run_name: str) -> str:
    return r'''
# Budget and output folder.
BUDGET = os.environ.get("SWARM_JAX_NOTEBOOK_BUDGET", "full").strip().lower()
if BUDGET not in ("ci", "full"):
    raise ValueError(f"SWARM_JAX_NOTEBOOK_BUDGET = {BUDGET!r}: must be 'ci' or 'full'")
CI = BUDGET == "ci"
REPO_ROOT = find_checkout(Path(swarm_jax.__file__).parent) or Path.cwd()
OUT_ROOT = Path(os.environ.get("SWARM_JAX_NOTEBOOK_OUT") or REPO_ROOT / "runs" / "notebooks")
RUN_DIR = OUT_ROOT / "__RUN__"
RUN_DIR.mkdir(parents=True, exist_ok=True)
print(f"budget {BUDGET!r}; outputs in {RUN_DIR}")
'''.replace("__RUN__", run_name)


# ============================================================================ 01 quickstart

NB01 = [
    md(r'''
# 01 · Quickstart: train a SwarmThinkers policy and grow a film with it

This notebook trains curriculum stage 1 (8×8×5 lattice, 180 K) with PPO, shows the learning
curves (TensorBoard in Colab, a plot everywhere), then grows a film with the trained policy and
with the uniform policy (which *is* classical kinetic Monte Carlo) and compares their height maps.

**Budget.** `SWARM_JAX_NOTEBOOK_BUDGET=full` (default) trains stage 1 exactly as
`configs/stage1_small.yaml` says (48 PPO updates; minutes on a Colab GPU). `ci` trains three tiny
updates so the notebook runs top to bottom on a laptop CPU in a couple of minutes.

**In Colab:** *Runtime → Change runtime type → GPU*, set `REPO_URL` in the first cell, run all.
Outputs go to `runs/notebooks/01_quickstart/` (or `$SWARM_JAX_NOTEBOOK_OUT`); notebook 02 reloads
the checkpoint written here.
'''),
    code(SETUP),
    code(budget_cell("01_quickstart")),
    md(r'''
## 1. The stage-1 configuration

`load_config` validates the YAML; `for_backend` applies the file's `cpu_overrides` (fewer, longer
environments) when JAX runs on the CPU. The `ci` budget shrinks the PPO budget only: same lattice,
temperature, flux, K and network.
'''),
    code(r'''
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
print(f"{cfg.training.n_envs} envs x {cfg.ppo.n_steps} steps = {cfg.rollout_size} transitions per "
      f"update, {cfg.num_updates} updates, network {cfg.network.kind} {list(cfg.network.hidden_sizes)}")
'''),
    md(r'''
## 2. Train stage 1

`run_stage` is what `python train.py --stage 1` runs: jitted chunks of PPO updates, TensorBoard
scalars, periodic orbax checkpoints and a final one in `train/stage1_final/`. Re-running the cell
reuses a finished run and resumes an interrupted one (set `RETRAIN = True` to start over).
'''),
    code(r'''
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
'''),
    md(r'''
## 3. Learning curves

In Colab the TensorBoard extension shows the live dashboard (`%load_ext tensorboard`,
`%tensorboard --logdir ...`). Everywhere, the same metrics are read back from the trainer's
`metrics_stage1.csv` with `read_metrics` and plotted with `plot_learning_curves`.
'''),
    code(r'''
if IN_COLAB:  # the magics %load_ext tensorboard and %tensorboard --logdir ..., Colab only
    ipython = get_ipython()  # noqa: F821  (defined in IPython kernels)
    ipython.run_line_magic("load_ext", "tensorboard")
    ipython.run_line_magic("tensorboard", f"--logdir {TRAIN_DIR / 'tensorboard'}")
else:
    print(f"live dashboard: tensorboard --logdir {TRAIN_DIR / 'tensorboard'}")
'''),
    code(r'''
from IPython.display import Image, display

from swarm_jax.training.logging import plot_learning_curves, read_metrics

metrics = read_metrics(paths.metrics_csv)
for name in ("ep_rew_mean", "entropy", "ess_ratio", "roughness", "fps"):
    points = metrics.get(name, [])
    if points:
        print(f"{name:12s} {len(points):3d} points, last {points[-1][1]:.4g} at step {points[-1][0]}")
png = plot_learning_curves(metrics, RUN_DIR / "learning_curves.png", title="stage 1")
display(Image(filename=str(png)))
'''),
    md(r'''
## 4. A film grown by the trained policy vs the uniform policy

Both policies act through the same `TiO2GrowthEnv`: at every event K candidates are drawn from
the physical distribution Γ_e/Γ_tot and the policy picks one. The uniform choice is exactly
classical KMC; the trained policy's choices carry the importance weight
`w = 1/(K π_j)` (`docs/physics.md`, SwarmThinkers), so we also report the trajectory log-weight and the mean
per-step ESS ratio. The policy is lattice-size independent, so we grow a larger film than it was
trained on, at the training temperature and flux.
'''),
    code(r'''
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
'''),
    code(r'''
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
'''),
    md(r'''
Next: `02_reload_and_simulate.ipynb` reloads this checkpoint with orbax and runs a production
simulation with it from the command-line entry points.
'''),
]


# ============================================================================ 02 reload + simulate

NB02 = [
    md(r'''
# 02 · Reload a checkpoint and run a production simulation

1. Reload the stage-1 checkpoint written by notebook 01 with orbax (a tiny policy is trained here
   if it is missing, so this notebook also runs on its own).
2. Run a production simulation with it through `swarm_jax.simulate` (`--policy trained`), and
   the classical engine on the same lattice for comparison.
3. Plot W(t) and the height maps, analyse both runs with `swarm_jax.analyze` (growth exponent β,
   roughness exponent α), and export/re-read the height map as a Gwyddion `.gsf` file.

**Budget.** `full` (default): a 200×200×50 lattice, 4 monolayers (meant for a GPU); `ci`: a
12×12×12 lattice and 2 monolayers, a couple of minutes on a CPU.
'''),
    code(SETUP),
    code(budget_cell("02_reload_and_simulate")),
    md(r'''
## 1. Find (or make) a checkpoint
'''),
    code(r'''
from swarm_jax.training.checkpoint import is_complete_checkpoint
from swarm_jax.training.config import load_config, resolve_config_path
from swarm_jax.training.trainer import StagePaths, run_stage

CHECKPOINT = StagePaths(OUT_ROOT / "01_quickstart" / "train", 1).final
if is_complete_checkpoint(CHECKPOINT):
    print(f"using the checkpoint of notebook 01: {CHECKPOINT}")
else:
    # Stand-alone: a tiny policy from configs/tiny_test.yaml (seconds of training, not a good
    # policy; run notebook 01 for a real one).
    fallback = StagePaths(RUN_DIR / "train", 1)
    if not is_complete_checkpoint(fallback.final):
        import shutil
        shutil.rmtree(fallback.root, ignore_errors=True)
        result = run_stage(load_config(resolve_config_path("tiny_test")), fallback.root, stage=1,
                           progress=False)
        assert result.finished, result.message
    CHECKPOINT = fallback.final
    print(f"notebook 01 has not been run: trained a tiny policy in {CHECKPOINT}")
'''),
    md(r'''
## 2. Reload it with orbax

A checkpoint holds the whole PPO `RunnerState` (network parameters, optimiser state, environment
states, PRNG key, counters), the run's config (JSON) and metadata. `restore_checkpoint` restores it
into a template built from that config (any device: a GPU checkpoint restores on a CPU), exactly
as `train.py --resume` does. `load_policy` reads only the actor, which is what simulations need.
'''),
    code(r'''
import jax.numpy as jnp
import numpy as np

from swarm_jax.trained_policy import find_params, load_policy
from swarm_jax.training.checkpoint import read_config, restore_checkpoint
from swarm_jax.training.config import config_from_dict
from swarm_jax.training.trainer import make_trainer

saved_config, meta = read_config(CHECKPOINT)
train_cfg = config_from_dict(saved_config)
trainer = make_trainer(train_cfg)
template = jax.eval_shape(trainer.init, jax.random.PRNGKey(train_cfg.training.seed))
runner_state, _, meta = restore_checkpoint(CHECKPOINT, target=template)
print(f"restored {type(runner_state).__name__}: update {int(runner_state.update_step)}, "
      f"{int(runner_state.env_steps)} env steps, status {meta['status']!r}, "
      f"trained on {meta.get('jax_backend')}")

policy = load_policy(CHECKPOINT)
restored_actor = find_params({"params": runner_state.train_state.params})  # {"params": {...}}
same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                    policy.params, restored_actor)
assert all(jax.tree.leaves(same)), "the actor read by load_policy differs from the restored state"
print(policy.summary())
'''),
    md(r'''
## 3. Production runs: trained policy and classical KMC

Both go through the command-line entry point `swarm_jax.simulate.main(argv)` (the same as
`python -m swarm_jax.simulate ...`), at the temperature and flux the policy was trained at.
Each run directory gets `timeseries.csv`, `final_state.npz`, `height_map.png` and `summary.json`.
The trained run uses the candidate mode (K physical candidates per event, the policy picks one;
`--mode full` weights every event of the lattice instead).
'''),
    code(r'''
from swarm_jax import simulate

env_saved = saved_config["environment"]
if CI:
    SIZE, MONOLAYERS, REPLICAS = (12, 12, 12), 2, 2
else:
    SIZE, MONOLAYERS, REPLICAS = (200, 200, 50), 4, 1
EVENTS = MONOLAYERS * SIZE[0] * SIZE[1]
common = [
    "--lattice-size", *map(str, SIZE),
    "--temperature", str(env_saved["temperature"]),
    "--deposition-rate", str(env_saved["deposition_rate"]),
    "--o-ti-ratio", str(env_saved["o_ti_flux_ratio"]),
    "--events", str(EVENTS), "--log-every", str(max(1, EVENTS // 40)),
    "--replicas", str(REPLICAS), "--seed", "0", "--overwrite", *(["--quiet"] if CI else []),
    *[arg for k, v in (env_saved.get("physics") or {}).items() for arg in ("--physics", f"{k}={v}")],
]
RUNS = {"trained": RUN_DIR / "sim_trained", "classical": RUN_DIR / "sim_classical"}
argv = {
    "trained": ["--policy", "trained", "--checkpoint", str(CHECKPOINT), "--mode", "candidates"],
    "classical": ["--policy", "classical"],
}
for name, out in RUNS.items():
    print("python -m swarm_jax.simulate", " ".join(argv[name] + common + ["--out", str(out)]))
    rc = simulate.main(argv[name] + common + ["--out", str(out)])
    assert rc == 0, f"simulate exited with status {rc}"
'''),
    code(r'''
import csv
import json


def read_timeseries(run_dir):
    """Columns of timeseries.csv as (R, T) float arrays (replica-major)."""
    with open(run_dir / "timeseries.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    n_rep = 1 + max(int(r["replica"]) for r in rows)
    cols = ("event", "time", "mean_height", "roughness", "log_weight")
    return {c: np.array([float(r[c]) for r in rows]).reshape(-1, n_rep).T for c in cols}


series = {name: read_timeseries(out) for name, out in RUNS.items()}
summaries = {name: json.loads((out / "summary.json").read_text()) for name, out in RUNS.items()}
for name, s in summaries.items():
    f = s["final"]
    print(f"{name:9s} status {s['status']}, t = {s['physical_time_s']['mean']:.4g} s, "
          f"h = {f['mean_height']['mean']:.3f}, W = {f['roughness']['mean']:.3f} layers, "
          f"{s['events_per_second'] or float('nan'):.3g} events/s; "
          f"importance-weighted W = {s['importance_weighted']['roughness']['estimate']:.3f}, "
          f"batch ESS ratio {s['importance_weighted']['batch_ess_ratio']:.3f}")
'''),
    md(r'''
## 4. Plots: W(t) and the final height maps
'''),
    code(r'''
import matplotlib.pyplot as plt

fig, (ax_t, ax_h) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
for name, s in series.items():
    ok = (s["time"] > 0) & (s["roughness"] > 0)
    for r in range(s["time"].shape[0]):
        ax_t.loglog(s["time"][r][ok[r]], s["roughness"][r][ok[r]], ".-", ms=3, lw=1,
                    color="C0" if name == "trained" else "C1",
                    label=name if r == 0 else None)
        ax_h.plot(s["mean_height"][r], s["roughness"][r] ** 2, lw=1,
                  color="C0" if name == "trained" else "C1", label=name if r == 0 else None)
theta = np.linspace(0, series["classical"]["mean_height"].max(), 50)
N = SIZE[0] * SIZE[1]
ax_h.plot(theta, theta * (1 - 1 / N), "k:", label=r"random deposition $\theta(1-1/N)$")
ax_t.set(xlabel="time t (s)", ylabel="roughness W (layers)", title="W(t)")
ax_h.set(xlabel=r"mean height $\theta$ (ML)", ylabel=r"$W^2$ (layers$^2$)", title=r"$W^2$ vs thickness")
ax_t.legend(); ax_h.legend(fontsize=8)
plt.show()

fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
maps = {name: np.load(out / "final_state.npz")["heights"] for name, out in RUNS.items()}
maps = {name: (h[0] if h.ndim == 3 else h) for name, h in maps.items()}
vmin, vmax = min(h.min() for h in maps.values()), max(h.max() for h in maps.values())
for ax, (name, h) in zip(axes, maps.items()):
    im = ax.imshow(h.T, origin="lower", cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set(title=f"{name} (W = {h.std():.3f} layers)", xlabel="x (sites)", ylabel="y (sites)")
fig.colorbar(im, ax=axes, label="height (layers)")
plt.show()
'''),
    md(r'''
## 5. Analysis: growth and roughness exponents

`swarm_jax.analyze.main([RUN_DIR, ...])` fits β to W(t) after the first monolayer and α to the
height–height correlation G(r) of the final map, weighting replicas by their importance weights
when the run carries them, and writes `analysis.json`, PNG figures and `height_map.gsf`.
'''),
    code(r'''
from IPython.display import Image, display

from swarm_jax import analyze

analyses = {}
for name, out in RUNS.items():
    rc = analyze.main([str(out), "--out", str(out / "analysis")])
    assert rc == 0, f"analyze exited with status {rc}"
    analyses[name] = json.loads((out / "analysis" / "analysis.json").read_text())


def fmt(fit):
    return "n/a" if fit is None else f"{fit['exponent']:.3f} ± {fit['stderr']:.3f}"


for name, a in analyses.items():
    print(f"{name:9s} beta(t) {fmt(a['beta'])}, beta(theta) {fmt(a['beta_vs_mean_height'])}, "
          f"alpha {fmt(a['alpha'])}, final W {a['final']['roughness_angstrom']:.2f} Å, "
          f"O/Ti {a['final']['o_ti_ratio'] or float('nan'):.3f}")
display(Image(filename=str(RUNS["trained"] / "analysis" / "roughness.png")))
display(Image(filename=str(RUNS["trained"] / "analysis" / "correlation.png")))
'''),
    md(r'''
## 6. Gwyddion export

`swarm_jax.analysis.gsf.write_gsf` writes a height map as a Gwyddion Simple Field (heights and
lateral sizes in metres, a = 4.59 Å); `read_gsf` reads it back. We export the trained run's map
and check the round trip, and read back the file `analyze` wrote as well.
'''),
    code(r'''
from swarm_jax.analysis import gsf

A_M = 4.59e-10  # lattice constant, m
h = maps["trained"]
path = gsf.write_gsf(RUN_DIR / "trained_height_map.gsf", h, lattice_constant_m=A_M,
                     title="swarm_jax trained-policy film")
z, header = gsf.read_gsf(path)
print({k: header[k] for k in ("XRes", "YRes", "XReal", "YReal", "XYUnits", "ZUnits", "Title")})
np.testing.assert_allclose(z, (h * A_M).astype(np.float32), rtol=1e-6)
z_analyze, _ = gsf.read_gsf(RUNS["trained"] / "analysis" / "height_map.gsf")
np.testing.assert_allclose(z_analyze, z, rtol=1e-6)
print(f"round trip ok: {z.shape} map, heights {z.min() * 1e10:.2f} .. {z.max() * 1e10:.2f} Å; "
      "open the .gsf file in Gwyddion")
'''),
]


# ============================================================================ 03 physics checks

NB03 = [
    md(r'''
# 03 · Physics checks

Three textbook checks of the engine and of the SwarmThinkers bookkeeping (`docs/physics.md`, SwarmThinkers and Validation),
each with a plot and an explicit pass/fail test at 5 standard errors (fixed seeds):

1. **Random deposition.** Hops, desorption and reactions switched off: every event is a deposition
   on a uniformly chosen column, and `⟨W²⟩ = θ (1 − 1/N)` exactly (N columns, θ monolayers).
2. **One adatom** on a flat substrate, no deposition: `⟨r²(t)⟩ = 4 Γ a² t` (Γ per direction).
3. **Importance weights.** A deliberately biased fixed policy through `TiO2GrowthEnv`: its plain
   averages of roughness are wrong, its importance-weighted averages
   (`w = 1/(K π_j)` per step) agree with the classical engine within error bars.

**Budget.** `ci`: few replicas (a couple of minutes on a CPU); `full` (default): more replicas
and longer runs for tighter error bars.
'''),
    code(SETUP),
    code(budget_cell("03_physics_checks")),
    code(r'''
import dataclasses

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from swarm_jax.physics import (
    PhysicsParams, from_arrays, init_flat, make_rate_tables, observables, run, step, trace,
)

A_ANGSTROM = 4.59  # lattice constant a, Å


def check(name, value, expected, stderr, n_sigma=5.0):
    """Prints and asserts |value - expected| <= n_sigma * stderr."""
    z = (value - expected) / stderr
    ok = abs(z) <= n_sigma
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {value:.5g} vs {expected:.5g} "
          f"(stderr {stderr:.2g}, {z:+.2f} sigma)")
    assert ok, f"{name} is {z:+.1f} standard errors from {expected}"
'''),
    md(r'''
## 1. Random deposition: ⟨W²⟩ = θ(1 − 1/N)

With hop, desorption and reaction barriers raised to 100 eV (rates ~e^-6000 ≈ 0), each event puts
one atom on a column chosen uniformly: after θ·N events the heights are multinomial and
`⟨W²⟩ = θ(1 − 1/N)` exactly. Replicas are independent lattices run with `jax.vmap`.
'''),
    code(r'''
if CI:
    RD_SIZE, RD_THETA_MAX, RD_REPLICAS = (8, 8, 26), 4, 256
else:
    RD_SIZE, RD_THETA_MAX, RD_REPLICAS = (32, 32, 60), 16, 1024
frozen = PhysicsParams(temperature=300.0, deposition_rate=1.0, e_diff_ti=100.0, e_diff_o=100.0,
                       e_des_ti=100.0, e_des_o=100.0, e_react_scale=100.0)
tables = make_rate_tables(frozen)
n_cols = RD_SIZE[0] * RD_SIZE[1]
EVENTS_PER_POINT = n_cols // 4  # a quarter monolayer between points


@jax.jit
def random_deposition(keys):
    def one(key):
        def body(state, k):
            state = run(state, tables, k, n_events=EVENTS_PER_POINT)
            h = state.heights[:n_cols].astype(jnp.float64)
            return state, (h.mean(), h.var(), state.event_counts)
        keys_t = jax.random.split(key, 4 * RD_THETA_MAX)
        return jax.lax.scan(body, init_flat(RD_SIZE, frozen), keys_t)[1]
    return jax.vmap(one)(keys)


theta, w2, counts = random_deposition(jax.random.split(jax.random.key(0), RD_REPLICAS))
theta, w2, counts = np.asarray(theta), np.asarray(w2), np.asarray(counts)
assert np.all(counts[..., 2:] == 0), "only depositions may happen in the frozen regime"
assert np.allclose(theta, theta[0]), "every replica has the same thickness"
theta = theta[0]
w2_mean = w2.mean(axis=0)
w2_err = w2.std(axis=0, ddof=1) / np.sqrt(RD_REPLICAS)
w2_theory = theta * (1 - 1 / n_cols)

fig, ax = plt.subplots(figsize=(5.5, 4))
ax.errorbar(theta, w2_mean, yerr=w2_err, fmt="o", ms=3, label=f"simulation ({RD_REPLICAS} replicas)")
ax.plot(theta, w2_theory, "k--", label=r"$\theta(1-1/N)$")
ax.set(xlabel=r"$\theta$ (ML)", ylabel=r"$\langle W^2\rangle$ (layers$^2$)",
       title=f"random deposition, {RD_SIZE[0]}x{RD_SIZE[1]}")
ax.legend()
plt.show()

for i in (len(theta) // 4 - 1, len(theta) // 2 - 1, len(theta) - 1):
    check(f"<W^2> at theta = {theta[i]:.2f}", w2_mean[i], w2_theory[i], w2_err[i])
beta = np.polyfit(np.log(theta), np.log(np.sqrt(w2_mean)), 1)[0]
print(f"beta from a log-log fit of sqrt<W^2> vs theta: {beta:.3f} (exactly 1/2 in theory)")
'''),
    md(r'''
## 2. One adatom: ⟨r²⟩ = 4Γa²t

A single Ti adatom on the bare substrate, deposition off. Its only events are hops to the four
lateral neighbours, each at `Γ = ν exp(−E_d(Ti)/k_B T)`, so the unwrapped displacement is a
continuous-time random walk with `⟨r²(t)⟩ = 4Γa²t`. `trace` records every step; the walk is
unwrapped from the hop directions and sampled on a fixed time grid.
'''),
    code(r'''
if CI:
    ADATOM_REPLICAS, ADATOM_EVENTS = 1000, 120
else:
    ADATOM_REPLICAS, ADATOM_EVENTS = 8000, 400
T_ADATOM = 300.0
lone = PhysicsParams(temperature=T_ADATOM, deposition_rate=0.0)
lone_tables = make_rate_tables(lone)
gamma = float(lone_tables.hop[0, 0, 0, 0, 0])  # isolated Ti, not oxide, no step, no neighbours
print(f"hop rate per direction at {T_ADATOM:g} K: Gamma = {gamma:.4g} Hz")

size = (8, 8, 3)
heights = np.zeros(size[:2], np.int32)
heights[0, 0] = 1
species = np.zeros(size, np.int8)
species[..., 0] = 3  # substrate
species[0, 0, 1] = 1  # Ti
start = from_arrays(heights, species, np.zeros(size, np.int8), lone)

infos = jax.jit(jax.vmap(lambda k: trace(start, lone_tables, k, ADATOM_EVENTS)[1]))(
    jax.random.split(jax.random.key(1), ADATOM_REPLICAS))
slot, kind = np.asarray(infos.event.slot), np.asarray(infos.kind)
assert np.all((slot >= 2) & (slot <= 5)), "an isolated adatom can only hop"
dx = np.select([slot == 2, slot == 3], [1, -1], 0).cumsum(axis=1)  # directions +x, -x, +y, -y
dy = np.select([slot == 4, slot == 5], [1, -1], 0).cumsum(axis=1)
t_events = np.asarray(infos.dt).cumsum(axis=1)

# Position at time t = position after the last event at or before t.
t_grid = np.linspace(0, 0.8 * t_events[:, -1].min(), 25)[1:]
idx = np.stack([np.searchsorted(t_events[r], t_grid, side="right") for r in range(ADATOM_REPLICAS)])
pad = lambda a: np.concatenate([np.zeros((ADATOM_REPLICAS, 1)), a], axis=1)
rows = np.arange(ADATOM_REPLICAS)[:, None]
r2 = (pad(dx)[rows, idx] ** 2 + pad(dy)[rows, idx] ** 2) * A_ANGSTROM**2  # Å²
r2_mean, r2_err = r2.mean(axis=0), r2.std(axis=0, ddof=1) / np.sqrt(ADATOM_REPLICAS)
r2_theory = 4 * gamma * A_ANGSTROM**2 * t_grid

fig, ax = plt.subplots(figsize=(5.5, 4))
ax.errorbar(t_grid * 1e3, r2_mean, yerr=r2_err, fmt="o", ms=3, label=f"{ADATOM_REPLICAS} walks")
ax.plot(t_grid * 1e3, r2_theory, "k--", label=r"$4\Gamma a^2 t$")
ax.set(xlabel="t (ms)", ylabel=r"$\langle r^2\rangle$ (Å$^2$)", title=f"one Ti adatom, {T_ADATOM:g} K")
ax.legend()
plt.show()
for i in (len(t_grid) // 3, 2 * len(t_grid) // 3, len(t_grid) - 1):
    check(f"<r^2> at t = {t_grid[i] * 1e3:.3g} ms", r2_mean[i], r2_theory[i], r2_err[i])
D = np.polyfit(t_grid, r2_mean, 1)[0] / 4
print(f"diffusion coefficient D = <r^2>/(4t): {D:.4g} Å²/s (Gamma a^2 = {gamma * A_ANGSTROM**2:.4g} Å²/s)")
'''),
    md(r'''
## 3. Importance-weighted estimates from a biased policy

A fixed, hand-made policy that prefers to deposit on low columns: for each of the K physical
candidates, logit `−b · h(column)` for a deposition and 0 for any other event, `π = softmax`.
It smooths the film, so its plain averages of the roughness are biased. Each choice carries the
exact weight `w = 1/(K π_j)`; with the trajectory weight `W = Π w_t`, the self-normalised estimate
`Σ W_i A_i / Σ W_i` over replicas estimates the physical expectation (`docs/physics.md`, SwarmThinkers). The
reference is the classical BKL engine (`swarm_jax.physics.step`), run separately.
'''),
    code(r'''
from swarm_jax.env.tio2_env import TiO2GrowthEnv
from swarm_jax.physics import DEPOSIT_O, DEPOSIT_TI
from swarm_jax.swarm.weights import batch_ess, step_log_weight, weighted_mean

IW_SIZE, K, BIAS, IW_STEPS = (5, 5, 8), 8, 0.25, 40
IW_REPLICAS = 1000 if CI else 8000
iw_physics = PhysicsParams(temperature=180.0, deposition_rate=1.0)
iw_tables = make_rate_tables(iw_physics)
env = TiO2GrowthEnv(IW_SIZE, n_swarm=K, physics=iw_physics, max_steps_in_episode=IW_STEPS)
env_params = env.default_params


def biased_log_probs(state):
    """(K,) log pi of the fixed policy: prefers depositions on low columns."""
    cand = state.candidates
    is_dep = (cand.kind == DEPOSIT_TI) | (cand.kind == DEPOSIT_O)
    h = state.lattice.heights[cand.column].astype(jnp.float64)
    return jax.nn.log_softmax(jnp.where(is_dep, -BIAS * h, 0.0))


def biased_run(key):
    key_reset, key_run = jax.random.split(key)
    _, state = env.reset_env(key_reset, env_params)

    def body(carry, k):
        state, log_w = carry
        k_act, k_env = jax.random.split(k)
        log_probs = biased_log_probs(state)
        action = jax.random.categorical(k_act, log_probs)
        log_w = log_w + step_log_weight(log_probs, action)
        _, state, _, _, info = env.step_env(k_env, state, action, env_params)
        return (state, log_w), (info["mean_height"], info["roughness"], log_w)

    init = (state, jnp.zeros((), jnp.float64))
    return jax.lax.scan(body, init, jax.random.split(key_run, IW_STEPS))[1]


def classical_run(key):
    def body(state, k):
        state, _ = step(state, iw_tables, k)
        obs = observables(state)
        return state, (obs["mean_height"], obs["roughness"])

    return jax.lax.scan(body, init_flat(IW_SIZE, iw_physics), jax.random.split(key, IW_STEPS))[1]


h_b, w_b, log_w = (np.asarray(a) for a in jax.jit(jax.vmap(biased_run))(
    jax.random.split(jax.random.key(2), IW_REPLICAS)))
h_c, w_c = (np.asarray(a) for a in jax.jit(jax.vmap(classical_run))(
    jax.random.split(jax.random.key(3), IW_REPLICAS)))
print(f"{IW_REPLICAS} replicas x {IW_STEPS} events; batch ESS ratio after {IW_STEPS} events: "
      f"{float(batch_ess(jnp.asarray(log_w[:, -1]))):.3f}")
'''),
    code(r'''
def estimates(values, log_weights):
    """Per step: classical-style plain mean and error, and the weighted estimate and error."""
    plain = values.mean(axis=0), values.std(axis=0, ddof=1) / np.sqrt(values.shape[0])
    weighted = jax.vmap(weighted_mean, in_axes=(1, 1))(jnp.asarray(values), jnp.asarray(log_weights))
    return plain, tuple(np.asarray(x) for x in weighted)


steps = np.arange(1, IW_STEPS + 1)
fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
for ax, name, biased, classical in ((axes[0], "mean height (ML)", h_b, h_c),
                                     (axes[1], "roughness W (layers)", w_b, w_c)):
    (c_mean, c_err), _ = estimates(classical, np.zeros_like(classical))
    (u_mean, u_err), (iw_mean, iw_err) = estimates(biased, log_w)
    ax.fill_between(steps, c_mean - 2 * c_err, c_mean + 2 * c_err, color="0.8", label="classical BKL (±2σ)")
    ax.plot(steps, c_mean, "k-", lw=1)
    ax.errorbar(steps, u_mean, yerr=2 * u_err, fmt="s", ms=3, color="C3", label="biased policy, plain mean")
    ax.errorbar(steps + 0.3, iw_mean, yerr=2 * iw_err, fmt="o", ms=3, color="C0",
                label="biased policy, importance-weighted")
    ax.set(xlabel="events", ylabel=name)
    ax.legend(fontsize=8)
plt.show()

(c_mean, c_err), _ = estimates(w_c, np.zeros_like(w_c))
(u_mean, u_err), (iw_mean, iw_err) = estimates(w_b, log_w)
(hc_mean, hc_err), _ = estimates(h_c, np.zeros_like(h_c))
_, (ih_mean, ih_err) = estimates(h_b, log_w)
last = IW_STEPS - 1
print("final roughness (layers): classical "
      f"{c_mean[last]:.4f} ± {c_err[last]:.4f}, plain {u_mean[last]:.4f} ± {u_err[last]:.4f}, "
      f"weighted {iw_mean[last]:.4f} ± {iw_err[last]:.4f}")
check("importance-weighted W vs classical", iw_mean[last], c_mean[last], np.hypot(iw_err[last], c_err[last]))
check("importance-weighted mean height vs classical", ih_mean[last], hc_mean[last],
      np.hypot(ih_err[last], hc_err[last]))
z_plain = (u_mean[last] - c_mean[last]) / np.hypot(u_err[last], c_err[last])
print(f"plain (unweighted) W is {z_plain:+.1f} sigma from the classical value")
assert abs(z_plain) > 5, "the biased policy should visibly bias the plain average"
'''),
]


NOTEBOOKS = {
    "01_quickstart.ipynb": NB01,
    "02_reload_and_simulate.ipynb": NB02,
    "03_physics_checks.ipynb": NB03,
}


def build(name: str, cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
        "colab": {"name": name, "provenance": []},
        "accelerator": "GPU",
    }
    for i, cell in enumerate(nb.cells):  # stable ids: regenerating gives identical files
        cell["id"] = f"{Path(name).stem[:2]}-{i:02d}"
    nbformat.validate(nb)
    return nb


def main(out_dir: Path = HERE) -> list[Path]:
    written = []
    for name, cells in NOTEBOOKS.items():
        path = Path(out_dir) / name
        nbformat.write(build(name, cells), path)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(f"wrote {p}")
