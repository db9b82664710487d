"""swarm_jax: JAX end-to-end SwarmThinkers policy optimisation for KMC of TiO2 thin-film growth.

Importing the package turns on JAX's 64-bit mode (``jax_enable_x64``): the KMC selection
arithmetic, the rate totals and the physical clock must be float64 (docs/physics.md, Clock and selection). Every
network in :mod:`swarm_jax.agents` declares float32 explicitly, so learning stays float32.

The layers, in the only direction imports flow::

    physics (lattice, rates, engine) -> swarm (candidates, features, weights)
      -> env (TiO2GrowthEnv, reward) -> agents (networks, PPO) -> training

Adapters (``swarm_jax.gym``), ``swarm_jax.simulate``, ``swarm_jax.analyze`` and the benchmarks
sit at the edges.
"""

import jax as _jax

_jax.config.update("jax_enable_x64", True)

from swarm_jax.physics import LatticeState, PhysicsParams  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "LatticeState",
    "PhysicsParams",
    "TiO2GrowthEnv",
    "EnvParams",
    "RewardConfig",
    "compute_reward",
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
