"""``TiO2GrowthVecEnv``: an SB3 ``VecEnv`` that steps all environments in one jitted batched call.

Semantics are those of SB3's ``DummyVecEnv`` over :class:`~swarm_jax.gym.TiO2GrowthGymEnv`
instances, with environment ``i`` seeded with ``seed + i``:

* ``step`` returns ``(obs (n, K·D+G) float32, rewards (n,) float32, dones (n,) bool, infos)``;
  where ``done``, ``infos[i]["terminal_observation"]`` is the true last observation, the returned
  observation is the auto-reset one and ``reset_infos[i]`` is its reset info;
  ``infos[i]["TimeLimit.truncated"] = truncated and not terminated``.
* ``seed(s)`` (SB3 API) takes effect at the next ``reset()``, as do seeds given by SB3's ``learn``;
  an unseeded ``reset()`` continues each environment's key stream.

Each env carries its own PRNG key stream (documented in :mod:`swarm_jax.gym.adapter`), so the
transitions equal those of ``TiO2GrowthEnv.step`` called with the same keys, those of the
Gymnasium env, and those of a ``DummyVecEnv`` of Gymnasium envs, bit for bit.

All environments share one :class:`~swarm_jax.env.EnvParams` (``params``); per-env reset
``options`` are not supported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from swarm_jax.gym import MISSING_EXTRA_MESSAGE

try:
    from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(MISSING_EXTRA_MESSAGE) from err

import jax

import swarm_jax
from swarm_jax.env.tio2_env import EnvParams, TiO2GrowthEnv
from swarm_jax.gym.adapter import (
    _SEED_MODULUS,
    build_params,
    height_map_rgb,
    kernels,
    make_spaces,
    seed_to_int64,
    validate_actions,
)
from swarm_jax.physics.lattice import validate_lattice_size


def _row_dicts(batch: dict, n: int) -> list[dict]:
    """``{k: (n,) array}`` -> n dicts of Python scalars."""
    cols = {k: np.asarray(v).tolist() for k, v in batch.items()}
    return [{k: col[i] for k, col in cols.items()} for i in range(n)]


class TiO2GrowthVecEnv(VecEnv):
    """``n_envs`` growth environments stepped together (see the module docstring).

    Args:
      n_envs: number of environments.
      lattice_size, n_swarm, render_mode, params, render_cell_px, **overrides: as
        :class:`~swarm_jax.gym.TiO2GrowthGymEnv` (shared by all environments).

    Attributes:
      jax_env, params: the gymnax environment and its parameters;
      states: the batched ``EnvState`` (leading axis ``n_envs``).
    """

    def __init__(self, n_envs: int, lattice_size=(8, 8, 5), n_swarm: int = 32,
                 render_mode: str | None = None, params: EnvParams | None = None,
                 render_cell_px: int = 16, **overrides):
        swarm_jax.enable_x64()  # making a Gymnasium env of ours is the explicit act (adapter doc)
        if int(n_envs) < 1:
            raise ValueError(f"n_envs must be >= 1, got {n_envs}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.jax_env = TiO2GrowthEnv(lattice_size, n_swarm, **overrides)
        self.lattice_size = validate_lattice_size(lattice_size)
        self.n_swarm = self.jax_env.n_swarm
        self.params = build_params(params, self.jax_env)
        self.render_mode = render_mode  # read by VecEnv.__init__ through get_attr
        self.render_cell_px = int(render_cell_px)
        self._kernels = kernels(self.lattice_size, self.n_swarm)
        obs_space, act_space = make_spaces(self.n_swarm)
        super().__init__(int(n_envs), obs_space, act_space)
        self._keys = None
        self.states = None
        self._actions = None

    # ---- VecEnv API ------------------------------------------------------------------------------

    def reset(self) -> np.ndarray:
        if any(self._options):
            raise NotImplementedError("TiO2GrowthVecEnv does not support per-env reset options; "
                                      "set .params instead")
        n = self.num_envs
        seeded = np.array([s is not None for s in self._seeds])
        seeds = np.array([seed_to_int64(s) if s is not None else 0 for s in self._seeds], np.int64)
        if self._keys is None:
            # Never seeded: draw a seed for every env that has none (non-deterministic by design).
            fresh = np.random.default_rng().integers(_SEED_MODULUS, size=n, dtype=np.int64)
            seeds = np.where(seeded, seeds, fresh)
            seeded = np.ones(n, bool)
            keys = jax.vmap(self._kernels.key_from_seed)(seeds)
        else:
            keys = self._keys
        self._keys, obs, self.states, infos = self._kernels.vreset(keys, seeds, seeded, self.params)
        obs, infos = jax.device_get((obs, infos))
        self.reset_infos = _row_dicts(infos, n)
        self._reset_seeds()
        self._reset_options()
        return np.array(obs, np.float32)  # a writable copy (torch refuses read-only buffers)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = validate_actions(actions, self.n_swarm, (self.num_envs,))

    def step_wait(self):
        if self.states is None:
            raise RuntimeError("call reset() before step()")
        out = self._kernels.vstep(self._keys, self.states, self._actions, self.params)
        self._keys, obs, final_obs, self.states, rewards, term, trunc, infos, reset_infos = out
        obs, final_obs, rewards, term, trunc, infos, reset_infos = jax.device_get(
            (obs, final_obs, rewards, term, trunc, infos, reset_infos))
        n = self.num_envs
        term, trunc = np.asarray(term, bool), np.asarray(trunc, bool)
        dones = term | trunc
        info_list = _row_dicts(infos, n)
        for i in np.flatnonzero(dones):
            info_list[i]["terminal_observation"] = np.array(final_obs[i], np.float32)
            self.reset_infos[i] = {k: np.asarray(v[i]).item() for k, v in reset_infos.items()}
        for i in range(n):
            info_list[i]["TimeLimit.truncated"] = bool(trunc[i] and not term[i])
        self._actions = None
        return (np.array(obs, np.float32), np.array(rewards, np.float32), dones, info_list)

    def close(self) -> None:
        self.states = None

    def get_images(self) -> Sequence[np.ndarray | None]:
        """Height maps of all environments as uint8 RGB arrays (``render_mode="rgb_array"``)."""
        if self.render_mode != "rgb_array":
            return [None] * self.num_envs
        if self.states is None:
            raise RuntimeError("call reset() before rendering")
        heights = np.asarray(jax.device_get(self._kernels.vheights(self.states)))
        return [height_map_rgb(h, self.lattice_size[2], self.render_cell_px) for h in heights]

    # The sub-environments share every attribute: they are read from / written to this object.
    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = getattr(self, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        if sorted(self._get_indices(indices)) != list(range(self.num_envs)):
            raise ValueError("TiO2GrowthVecEnv shares its attributes across envs: set them for all")
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs):
        idx = list(self._get_indices(indices))
        if method_name == "render":
            images = self.get_images()
            return [images[i] for i in idx]
        method = getattr(self, method_name)
        return [method(*method_args, **method_kwargs) for _ in idx]

    def env_is_wrapped(self, wrapper_class, indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]
