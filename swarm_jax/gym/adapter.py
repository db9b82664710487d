"""``TiO2GrowthGymEnv``: a Gymnasium (and Stable-Baselines3) view of the JAX growth environment.

The environment holds one :class:`~swarm_jax.env.TiO2GrowthEnv` state and calls one jitted step
function per ``step``; only numpy / Python values cross the API:

* observation: float32 vector of length ``K·D + G`` (``D = CANDIDATE_FEATURE_DIM = 116``,
  ``G = GLOBAL_FEATURE_DIM = 15``; 3727 for K = 32), ``concat(candidates.ravel(), global)`` —
  the flattening of the ``flat_mlp`` network (:class:`swarm_jax.agents.networks.FlatActorCritic`),
  see :func:`flatten_observation` / :func:`unflatten_observation`;
* action: ``Discrete(K)``, the index of the chosen candidate event;
* reward: Python ``float`` (the env's float32 reward); ``terminated`` / ``truncated``: ``bool``;
* info: Python scalars — the morphology (``roughness`` in layers, ``coverage``, ``mean_height``
  in ML, ``o_ti_ratio``, ``oxide_fraction``, ``fill_fraction``, ``n_ti``, ``n_o``), ``time`` and
  ``dt`` (s), ``event_kind``, ``termination_reason``, ``total_rate`` (Hz) and the reward terms.

**Seeding (deterministic key stream).** ``reset(seed=s)`` sets the stream ``key = jax.random.key(s)``
(``s`` taken modulo 2**63). Every reset from the stream does ``key, k = split(key)`` and
``TiO2GrowthEnv.reset(k)``; every step does ``key, k = split(key)`` and the gymnax step with ``k``
(which itself splits ``k`` into the event key and the auto-reset key). When an episode ends, the
gymnax auto-reset state drawn inside that step is kept and the next ``reset()`` *without* a seed
starts from it. Hence a run of this env under SB3 (which calls ``reset()`` after every episode)
reproduces ``TiO2GrowthEnv.step``'s auto-resetting trajectory exactly, and so does
:class:`swarm_jax.gym.TiO2GrowthVecEnv` (env ``i`` = this env seeded with ``seed + i``). A first
``reset()`` without any seed draws the stream's seed from ``self.np_random``.

At ``terminated or truncated`` the returned observation is the *true* last observation (gymnax's
``info["final_observation"]``), never the reset one; ``render()`` then shows the final film.

**64-bit mode.** Constructing this env (or :class:`~swarm_jax.gym.TiO2GrowthVecEnv`) calls
:func:`swarm_jax.enable_x64`: making a Gymnasium env of ours is an explicit act, and it is what
makes ``gymnasium.make`` and SB3's ``SubprocVecEnv`` workers (fresh processes) work without a
set-up line. The mode is process-wide: float32 JAX code of your own in the same process then
defaults to float64 (``docs/architecture.md``, "64-bit mode").
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any

import numpy as np

from swarm_jax.gym import MISSING_EXTRA_MESSAGE

try:
    import gymnasium as gym
    from gymnasium import spaces
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(MISSING_EXTRA_MESSAGE) from err

import jax
import jax.numpy as jnp

import swarm_jax
from swarm_jax.env.tio2_env import EnvParams, TiO2GrowthEnv
from swarm_jax.physics.film_observables import observables
from swarm_jax.physics.lattice import height_map, validate_lattice_size
from swarm_jax.swarm import features as F

#: gymnax info entries that are not passed on (the flags are returned, the final observation is
#: the returned observation / VecEnv ``terminal_observation``).
_DROPPED_INFO = ("final_observation", "terminated", "truncated")
_SEED_MODULUS = 2**63


# ---- observation layout ------------------------------------------------------------------------


def observation_size(n_swarm: int) -> int:
    """Length ``K·D + G`` of the flat observation."""
    return int(n_swarm) * F.CANDIDATE_FEATURE_DIM + F.GLOBAL_FEATURE_DIM


def flatten_observation(obs: dict) -> jax.Array:
    """``{"candidates": (..., K, D), "global": (..., G)}`` -> ``(..., K·D + G)`` float32.

    The same order as ``FlatActorCritic``: the candidates row-major, then the global vector.
    """
    cand = jnp.asarray(obs["candidates"], jnp.float32)
    glob = jnp.asarray(obs["global"], jnp.float32)
    return jnp.concatenate([cand.reshape(cand.shape[:-2] + (-1,)), glob], axis=-1)


def unflatten_observation(flat, n_swarm: int) -> dict:
    """Inverse of :func:`flatten_observation`: ``(..., K·D + G)`` -> the dict observation."""
    flat = jnp.asarray(flat, jnp.float32)
    k, d = int(n_swarm), F.CANDIDATE_FEATURE_DIM
    if flat.shape[-1] != observation_size(k):
        raise ValueError(f"flat observation has length {flat.shape[-1]}, expected {observation_size(k)}")
    return {
        "candidates": flat[..., : k * d].reshape(flat.shape[:-1] + (k, d)),
        "global": flat[..., k * d:],
    }


def observation_bounds(n_swarm: int) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)`` float32 vectors of the flat observation (the features are clipped to them)."""
    k = int(n_swarm)
    low = np.concatenate([np.tile(F.CANDIDATE_FEATURE_LOW, k), F.GLOBAL_FEATURE_LOW]).astype(np.float32)
    high = np.concatenate([np.tile(F.CANDIDATE_FEATURE_HIGH, k), F.GLOBAL_FEATURE_HIGH]).astype(np.float32)
    return low, high


def validate_actions(actions, n_swarm: int, shape: tuple, what: str = "actions") -> np.ndarray:
    """``actions`` as an int32 array of ``shape``, each an integer in ``[0, n_swarm)``.

    Raises:
        ValueError: a wrong shape, a non-number, a fractional value (``3.7``), NaN/inf, or a
            value outside ``[0, n_swarm)``; the message names the first offending value.
    """
    a = np.asarray(actions)
    if a.size != int(np.prod(shape, dtype=np.int64)):
        raise ValueError(f"{what}: expected {int(np.prod(shape, dtype=np.int64))} value(s) "
                         f"(shape {shape}), got shape {a.shape}")
    a = a.reshape(shape)
    kind = "an integer" if shape == () else "integers"
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer)
                                   or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{what} must be {kind} in [0, {n_swarm}), got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.floating):
        bad = ~np.isfinite(a) | (a != np.floor(np.where(np.isfinite(a), a, 0)))
        if np.any(bad):
            raise ValueError(f"{what} must be {kind} in [0, {n_swarm}), got "
                             f"{a[bad].ravel()[0].item()!r}")
    out_of_range = (a < 0) | (a >= n_swarm)
    if np.any(out_of_range):
        raise ValueError(f"{what} must be in [0, {n_swarm}), got "
                         f"{a[out_of_range].ravel()[0].item()!r}")
    return a.astype(np.int32)


def make_spaces(n_swarm: int) -> tuple[spaces.Box, spaces.Discrete]:
    """Gymnasium ``(observation_space, action_space)`` for K = ``n_swarm`` candidates."""
    low, high = observation_bounds(n_swarm)
    return spaces.Box(low, high, dtype=np.float32), spaces.Discrete(int(n_swarm))


# ---- rendering ---------------------------------------------------------------------------------


def height_map_rgb(heights, lz: int, cell_px: int = 16, colormap: str = "viridis") -> np.ndarray:
    """Height map ``(Lx, Ly)`` (layers) -> uint8 RGB image ``(Lx·cell_px, Ly·cell_px, 3)``.

    Colour = ``colormap(h / (Lz − 1))``: bare substrate at the bottom of the map, the ceiling
    (a full column) at its top. Rows are x, columns y.
    """
    from matplotlib import colormaps  # a core dependency; imported here to keep imports light

    h = np.asarray(heights, np.float64)
    frac = np.clip(h / max(int(lz) - 1, 1), 0.0, 1.0)
    rgb = (colormaps[colormap](frac)[..., :3] * 255.0).round().astype(np.uint8)
    px = max(int(cell_px), 1)
    return np.repeat(np.repeat(rgb, px, axis=0), px, axis=1)


# ---- jitted kernels (one set per lattice size and K, shared by all instances) -------------------


def _scalar_info(info: dict) -> dict:
    return {k: v for k, v in info.items() if k not in _DROPPED_INFO}


def _reset_info(state) -> dict:
    return dict(observables(state.lattice))


@dataclasses.dataclass(frozen=True)
class Kernels:
    """Jitted functions of one ``(lattice_size, n_swarm)``; env parameters are arguments.

    Single env (the Gymnasium env):
      ``key_from_seed(seed int64) -> key``;
      ``reset(key, params) -> (key', obs_flat, state, info)``;
      ``step(key, state, action, params) -> (key', obs_flat, state, reset_obs_flat, reset_state,
      reward, terminated, truncated, info, reset_info)``: the gymnax step with the pre-reset
      (``obs``, ``state``) and the auto-reset pair kept apart.
    Batched (the VecEnv; leading axis n_envs on keys, states, actions, seeds):
      ``vreset(keys, seeds, seeded, params) -> (keys', obs, states, infos)`` (env ``i`` restarts
      its stream from ``seeds[i]`` where ``seeded[i]``);
      ``vstep(keys, states, actions, params) -> (keys', obs, final_obs, states, rewards,
      terminated, truncated, infos, reset_infos)``: ``TiO2GrowthEnv.step_batch`` (``vmap`` of
      ``step``'s outputs, resetting only the done envs);
      ``vheights(states) -> (n, Lx, Ly)``.
    """

    env: TiO2GrowthEnv
    key_from_seed: Any
    reset: Any
    step: Any
    vreset: Any
    vstep: Any
    vheights: Any


@functools.lru_cache(maxsize=None)
def kernels(lattice_size: tuple[int, int, int], n_swarm: int) -> Kernels:
    """The (cached) :class:`Kernels` of one lattice size and K."""
    env = TiO2GrowthEnv(lattice_size, n_swarm)

    def reset(key, params):
        key, k = jax.random.split(key)
        obs, state = env.reset(k, params)
        return key, flatten_observation(obs), state, _reset_info(state)

    def step(key, state, action, params):
        # TiO2GrowthEnv.step (gymnax) with the pre-reset state kept: same keys, same arithmetic.
        key, k = jax.random.split(key)
        key_step, key_reset = jax.random.split(k)
        obs_st, state_st, reward, terminated, info = env.step_env(key_step, state, action, params)
        truncated = env.is_truncated(state_st, params)
        obs_re, state_re = env.reset_env(key_reset, params)
        return (key, flatten_observation(obs_st), state_st, flatten_observation(obs_re), state_re,
                reward, terminated, truncated, _scalar_info(info), _reset_info(state_re))

    def reset_one(key, seed, seeded, params):
        seeded_key = jax.random.key_data(jax.random.key(seed))
        key = jax.random.wrap_key_data(jnp.where(seeded, seeded_key, jax.random.key_data(key)))
        return reset(key, params)

    def vstep(keys, states, actions, params):
        # Each env's key splits as in step; the batch steps through TiO2GrowthEnv.step_batch
        # (vmap(env.step)'s outputs, resetting only the envs that are done).
        split = jax.vmap(jax.random.split)(keys)
        obs, states, reward, terminated, truncated, info = env.step_batch(
            split[:, 1], states, actions, params)
        return (split[:, 0], flatten_observation(obs),
                flatten_observation(info["final_observation"]), states, reward, terminated,
                truncated, _scalar_info(info), jax.vmap(_reset_info)(states))

    return Kernels(
        env=env,
        key_from_seed=jax.jit(jax.random.key),
        reset=jax.jit(reset),
        step=jax.jit(step),
        vreset=jax.jit(jax.vmap(reset_one, in_axes=(0, 0, 0, None))),
        vstep=jax.jit(vstep),
        vheights=jax.jit(jax.vmap(lambda s: height_map(s.lattice))),
    )


def to_python(value):
    """A 0-d numpy/JAX value -> Python ``float`` / ``int`` / ``bool``."""
    return np.asarray(value).item()


def seed_to_int64(seed: int) -> np.int64:
    """A non-negative integer seed -> the int64 fed to ``jax.random.key`` (modulo 2**63)."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (numbers.Integral, np.integer)):
        raise TypeError(f"seed = {seed!r}: must be a non-negative integer, not "
                        f"{type(seed).__name__}")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed = {seed}: must be a non-negative integer")
    return np.int64(seed % _SEED_MODULUS)


def build_params(params: EnvParams | None, jax_env: TiO2GrowthEnv) -> EnvParams:
    """``params`` or the env's defaults; checks the type."""
    params = jax_env.default_params if params is None else params
    if not isinstance(params, EnvParams):
        raise TypeError(f"params must be an EnvParams, got {type(params).__name__}")
    return params


# ---- the Gymnasium environment -----------------------------------------------------------------


class TiO2GrowthGymEnv(gym.Env):
    """Gymnasium env over :class:`~swarm_jax.env.TiO2GrowthEnv` (see the module docstring).

    Args:
      lattice_size: (Lx, Ly, Lz) sites.
      n_swarm: K, candidates per decision (= number of actions).
      render_mode: ``None`` or ``"rgb_array"`` (height map, uint8 ``(Lx·cell_px, Ly·cell_px, 3)``).
      params: full :class:`~swarm_jax.env.EnvParams` (overrides ``**overrides``).
      render_cell_px: pixels per lattice column in the rendered image.
      **overrides: ``TiO2GrowthEnv`` parameter overrides: PhysicsParams fields (``temperature`` K,
        ``deposition_rate`` ML/s, ...), RewardConfig fields (``w_roughness``, ...), ``max_steps``.

    Attributes:
      jax_env: the underlying gymnax environment; ``params``: its parameters;
      state: the current ``EnvState`` (after a terminal step: the terminal state).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, lattice_size=(8, 8, 5), n_swarm: int = 32, render_mode: str | None = None,
                 params: EnvParams | None = None, render_cell_px: int = 16, **overrides):
        swarm_jax.enable_x64()  # making a Gymnasium env of ours is the explicit act (module doc)
        super().__init__()
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, "
                             f"got {render_mode!r}")
        self.jax_env = TiO2GrowthEnv(lattice_size, n_swarm, **overrides)
        self.lattice_size = validate_lattice_size(lattice_size)
        self.n_swarm = self.jax_env.n_swarm
        self.params = build_params(params, self.jax_env)
        self.render_mode = render_mode
        if (isinstance(render_cell_px, bool) or not isinstance(render_cell_px, numbers.Integral)
                or not 1 <= render_cell_px <= 1024):
            raise ValueError(f"render_cell_px = {render_cell_px!r}: must be an integer in [1, 1024]")
        self.render_cell_px = int(render_cell_px)
        self.observation_space, self.action_space = make_spaces(self.n_swarm)
        self._kernels = kernels(self.lattice_size, self.n_swarm)
        self._key = None
        self.state = None
        self._pending = None  # (obs, state, info) of the auto-reset drawn at the last episode end

    # ---- gymnasium API ---------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Starts an episode. ``options`` may hold ``{"params": EnvParams}`` (kept from then on)."""
        super().reset(seed=seed)
        if options:
            unknown = set(options) - {"params"}
            if unknown:
                raise ValueError(f"unknown reset option(s) {sorted(unknown)}; supported: 'params'")
            self.params = build_params(options["params"], self.jax_env)
        if seed is not None:
            self._key = self._kernels.key_from_seed(seed_to_int64(seed))
        elif self._pending is not None and not options:
            obs, self.state, info = self._pending
            self._pending = None
            return obs, info
        elif self._key is None:
            self._key = self._kernels.key_from_seed(seed_to_int64(self.np_random.integers(_SEED_MODULUS)))
        self._pending = None
        self._key, obs, self.state, info = self._kernels.reset(self._key, self.params)
        obs, info = jax.device_get((obs, info))
        return np.array(obs, np.float32), {k: to_python(v) for k, v in info.items()}

    def step(self, action):
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        action = int(validate_actions(action, self.n_swarm, (), "action"))
        out = self._kernels.step(self._key, self.state, np.int32(action), self.params)
        self._key, obs, self.state, obs_re, state_re, reward, term, trunc, info, reset_info = out
        obs, obs_re, reward, term, trunc, info, reset_info = jax.device_get(
            (obs, obs_re, reward, term, trunc, info, reset_info))
        terminated, truncated = bool(term), bool(trunc)
        self._pending = None
        if terminated or truncated:
            self._pending = (np.array(obs_re, np.float32), state_re,
                             {k: to_python(v) for k, v in reset_info.items()})
        return (np.array(obs, np.float32), float(reward), terminated, truncated,
                {k: to_python(v) for k, v in info.items()})

    def render(self):
        """The height map of the current film as an RGB ``uint8`` array (``render_mode="rgb_array"``)."""
        if self.render_mode is None:
            gym.logger.warn("render() called with render_mode=None; construct the env with "
                            "render_mode='rgb_array'")
            return None
        if self.state is None:
            raise RuntimeError("call reset() before render()")
        heights = np.asarray(jax.device_get(height_map(self.state.lattice)))
        return height_map_rgb(heights, self.lattice_size[2], self.render_cell_px)

    def close(self):
        self.state = None
        self._pending = None
