# ---
# jupyter:
#   accelerator: GPU
#   colab:
#     name: 03_physics_checks.ipynb
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
# # 03 · Physics checks
#
# Three textbook checks of the engine and of the SwarmThinkers bookkeeping (`docs/physics.md`, SwarmThinkers and Validation),
# each with a plot and an explicit pass/fail test at 5 standard errors (fixed seeds):
#
# 1. **Random deposition.** Hops, desorption and reactions switched off: every event is a deposition
#    on a uniformly chosen column, and `⟨W²⟩ = θ (1 − 1/N)` exactly (N columns, θ monolayers).
# 2. **One adatom** on a flat substrate, no deposition: `⟨r²(t)⟩ = 4 Γ a² t` (Γ per direction).
# 3. **Importance weights.** A deliberately biased fixed policy through `TiO2GrowthEnv`: its plain
#    averages of roughness are wrong, its importance-weighted averages
#    (`w = 1/(K π_j)` per step) agree with the classical engine within error bars.
#
# **Budget.** `ci`: few replicas (a couple of minutes on a CPU); `full` (default): more replicas
# and longer runs for tighter error bars.

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
RUN_DIR = OUT_ROOT / "03_physics_checks"
RUN_DIR.mkdir(parents=True, exist_ok=True)
print(f"budget {BUDGET!r}; outputs in {RUN_DIR}")

# %%
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


# %% [markdown]
# ## 1. Random deposition: ⟨W²⟩ = θ(1 − 1/N)
#
# With hop, desorption and reaction barriers raised to 100 eV (rates ~e^-6000 ≈ 0), each event puts
# one atom on a column chosen uniformly: after θ·N events the heights are multinomial and
# `⟨W²⟩ = θ(1 − 1/N)` exactly. Replicas are independent lattices run with `jax.vmap`.

# %%
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

# %% [markdown]
# ## 2. One adatom: ⟨r²⟩ = 4Γa²t
#
# A single Ti adatom on the bare substrate, deposition off. Its only events are hops to the four
# lateral neighbours, each at `Γ = ν exp(−E_d(Ti)/k_B T)`, so the unwrapped displacement is a
# continuous-time random walk with `⟨r²(t)⟩ = 4Γa²t`. `trace` records every step; the walk is
# unwrapped from the hop directions and sampled on a fixed time grid.

# %%
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

# %% [markdown]
# ## 3. Importance-weighted estimates from a biased policy
#
# A fixed, hand-made policy that prefers to deposit on low columns: for each of the K physical
# candidates, logit `−b · h(column)` for a deposition and 0 for any other event, `π = softmax`.
# It smooths the film, so its plain averages of the roughness are biased. Each choice carries the
# exact weight `w = 1/(K π_j)`; with the trajectory weight `W = Π w_t`, the self-normalised estimate
# `Σ W_i A_i / Σ W_i` over replicas estimates the physical expectation (`docs/physics.md`, SwarmThinkers). The
# reference is the classical BKL engine (`swarm_jax.physics.step`), run separately.

# %%
from swarm_jax.env.tio2_env import TiO2GrowthEnv
from swarm_jax.physics import DEPOSIT_O, DEPOSIT_TI
from swarm_jax.swarm.weights import batch_ess_ratio, step_log_weight, weighted_mean

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
      f"{float(batch_ess_ratio(jnp.asarray(log_w[:, -1]))):.3f}")


# %%
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
