"""Gymnasium / Stable-Baselines3 adapters of the JAX growth environment (optional ``[parity]`` extra).

Everything here is for users of the PyTorch ecosystem; the JAX training stack never imports it.

* :class:`TiO2GrowthGymEnv` (``adapter``): a ``gymnasium.Env`` over one JAX
  :class:`~swarm_jax.env.TiO2GrowthEnv` — flat float32 ``Box`` observation, ``Discrete(K)``
  action, Python ``float`` reward and ``bool`` flags, the true last observation at episode end,
  ``render_mode="rgb_array"`` height maps. Passes SB3's ``check_env`` without warnings.
* :class:`TiO2GrowthVecEnv` (``vec_env``): an SB3 ``VecEnv`` stepping all environments in one
  jitted ``vmap`` call, with ``DummyVecEnv`` semantics.
* :class:`ESSMonitorCallback`, :class:`MorphologyLoggerCallback` (``callbacks``): SB3 callbacks
  logging ``custom/ess_ratio`` (with early stop) and ``custom/roughness``, ``custom/coverage``,
  ``custom/o_ti_ratio``.

Install the extra with ``pip install 'swarm_jax[parity]'`` (install a CPU ``torch`` first to avoid
a CUDA download). Names are imported lazily, so ``import swarm_jax.gym`` always works and a
missing dependency raises an ``ImportError`` naming the extra when a class is first used.

Multiprocessing: JAX is multithreaded and does not survive ``fork``; with SB3's
``SubprocVecEnv`` use ``start_method="spawn"`` (or ``"forkserver"``). Each worker then imports
JAX and compiles its own step function once (seconds). :class:`TiO2GrowthVecEnv` needs no worker
processes at all and is the fast path.
"""

from __future__ import annotations

import importlib

MISSING_EXTRA_MESSAGE = (
    "swarm_jax.gym needs the optional dependencies gymnasium, stable-baselines3 and torch: "
    "pip install 'swarm_jax[parity]' (install a CPU build of torch first to avoid a CUDA download)"
)

_EXPORTS = {
    "TiO2GrowthGymEnv": "adapter",
    "flatten_observation": "adapter",
    "unflatten_observation": "adapter",
    "observation_bounds": "adapter",
    "height_map_rgb": "adapter",
    "TiO2GrowthVecEnv": "vec_env",
    "ESSMonitorCallback": "callbacks",
    "MorphologyLoggerCallback": "callbacks",
}

__all__ = sorted(_EXPORTS) + ["MISSING_EXTRA_MESSAGE"]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'swarm_jax.gym' has no attribute {name!r}")
    return getattr(importlib.import_module(f"swarm_jax.gym.{module}"), name)


def __dir__():
    return __all__
