# ---
# jupyter:
#   accelerator: GPU
#   colab:
#     name: 02_reload_and_simulate.ipynb
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
# # 02 · Reload a checkpoint and run a production simulation
#
# 1. Reload the stage-1 checkpoint written by notebook 01 with orbax (a tiny policy is trained here
#    if it is missing, so this notebook also runs on its own).
# 2. Run a production simulation with it through `swarm_jax.simulate` (`--policy trained`), and
#    the classical engine on the same lattice for comparison.
# 3. Plot W(t) and the height maps, analyse both runs with `swarm_jax.analyze` (growth exponent β,
#    roughness exponent α), and export/re-read the height map as a Gwyddion `.gsf` file.
#
# **Budget.** `full` (default): a 200×200×50 lattice, 4 monolayers (meant for a GPU); `ci`: a
# 12×12×12 lattice and 2 monolayers, a couple of minutes on a CPU.

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
RUN_DIR = OUT_ROOT / "02_reload_and_simulate"
RUN_DIR.mkdir(parents=True, exist_ok=True)
print(f"budget {BUDGET!r}; outputs in {RUN_DIR}")

# %% [markdown]
# ## 1. Find (or make) a checkpoint

# %%
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

# %% [markdown]
# ## 2. Reload it with orbax
#
# A checkpoint holds the whole PPO `RunnerState` (network parameters, optimiser state, environment
# states, PRNG key, counters), the run's config (JSON) and metadata. `restore_checkpoint` restores it
# into a template built from that config (any device: a GPU checkpoint restores on a CPU), exactly
# as `train.py --resume` does. `load_policy` reads only the actor, which is what simulations need.

# %%
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

# %% [markdown]
# ## 3. Production runs: trained policy and classical KMC
#
# Both go through the command-line entry point `swarm_jax.simulate.main(argv)` (the same as
# `python -m swarm_jax.simulate ...`), at the temperature and flux the policy was trained at.
# Each run directory gets `timeseries.csv`, `final_state.npz`, `height_map.png` and `summary.json`.
# The trained run uses the candidate mode (K physical candidates per event, the policy picks one;
# `--mode full` weights every event of the lattice instead).

# %%
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

# %%
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

# %% [markdown]
# ## 4. Plots: W(t) and the final height maps

# %%
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

# %% [markdown]
# ## 5. Analysis: growth and roughness exponents
#
# `swarm_jax.analyze.main([RUN_DIR, ...])` fits β to W(t) after the first monolayer and α to the
# height–height correlation G(r) of the final map, weighting replicas by their importance weights
# when the run carries them, and writes `analysis.json`, PNG figures and `height_map.gsf`.

# %%
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

# %% [markdown]
# ## 6. Gwyddion export
#
# `swarm_jax.analysis.gsf.write_gsf` writes a height map as a Gwyddion Simple Field (heights and
# lateral sizes in metres, a = 4.59 Å); `read_gsf` reads it back. We export the trained run's map
# and check the round trip, and read back the file `analyze` wrote as well.

# %%
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
