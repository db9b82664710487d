"""swarm_jax: JAX end-to-end SwarmThinkers policy optimisation for KMC of TiO2 thin-film growth.

The KMC selection arithmetic, the rate totals and the physical clock must be float64
(docs/physics.md, "Clock and selection"), so JAX's 64-bit mode must be on: call
:func:`enable_x64` once, first thing in the program (importing the package changes nothing in
the process). The constructors that need it (``physics.make_rate_tables``, ``init_flat``,
``from_arrays``, ``TiO2GrowthEnv``) refuse with one line (:class:`~swarm_jax.validation.X64Error`)
when it is off. Our entry points (``train.py``, the CLIs, the Gymnasium adapter's constructors,
the notebooks' set-up cell) call it. Every network in :mod:`swarm_jax.agents` declares float32
explicitly, so learning stays float32.

The layers, in the only direction imports flow::

    physics (lattice, rates, engine) -> swarm (candidates, features, weights)
      -> env (TiO2GrowthEnv, reward) -> agents (networks, PPO) -> training

Adapters (``swarm_jax.gym``), ``swarm_jax.simulate``, ``swarm_jax.analyze`` and the benchmarks
sit at the edges.
"""

import jax as _jax

from swarm_jax.physics import LatticeState, PhysicsParams


def enable_x64() -> None:
    """Turn on JAX's 64-bit mode for this process (``jax.config.update("jax_enable_x64", True)``).

    Call it once, before building anything of this package (and before creating JAX arrays of
    your own that should keep their dtype: afterwards ``jnp.zeros(3)`` is float64 process-wide).
    ``with jax.enable_x64(True):`` around our calls works too (``docs/architecture.md``,
    "64-bit mode").
    """
    _jax.config.update("jax_enable_x64", True)


__version__ = "0.1.0"

__all__ = [
    "LatticeState",
    "PhysicsParams",
    "TiO2GrowthEnv",
    "EnvParams",
    "RewardConfig",
    "compute_reward",
    "enable_x64",
    "__version__",
]


def __getattr__(name):
    # The environment layer pulls in gymnax (and, through it, matplotlib): import it lazily so
    # `import swarm_jax` stays light for users of the engine alone.
    if name in ("TiO2GrowthEnv", "EnvParams"):
        from swarm_jax.env import tio2_env

        return getattr(tio2_env, name)
    if name in ("RewardConfig", "compute_reward"):
        from swarm_jax.env import reward

        return getattr(reward, name)
    raise AttributeError(f"module 'swarm_jax' has no attribute {name!r}")
