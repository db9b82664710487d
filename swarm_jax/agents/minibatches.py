"""One epoch's minibatches of a PPO rollout, laid out so that sharding does not change them.

Each epoch shuffles the ``n_steps`` transitions of every environment independently, lays the
rollout out env-major (flat index ``i = e·n_steps + t'``, ``t'`` the shuffled position) and puts ``i`` into minibatch ``i mod n_minibatches``: every
transition is used once per epoch, minibatch membership is random, and each minibatch draws an
(almost) equal share from every environment. The layout does not depend on how the environments
are spread over devices, which is what makes a sharded run equal a single-device one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from swarm_jax.agents.sharded import EnvLayout

Array = jax.Array


def shuffle_into_minibatches(
    batch: Any, key: Array, n_minibatches: int, layout: EnvLayout = EnvLayout()
) -> Any:
    """One epoch's minibatches from an env-major rollout (see the module docstring).

    The steps of each env are permuted independently (``permutation(key, ..., axis=1,
    independent=True)`` of an ``(n_envs, n_steps)`` arange); the result, flattened env-major, puts
    flat position ``i`` into minibatch ``i mod n_minibatches``, slot ``i // n_minibatches``.
    With the envs split over D devices and D dividing the minibatch size, every gather and
    reshape here stays within a device's block of envs.

    Args:
        batch: pytree of ``(n_envs, n_steps, ...)`` arrays.
        key: PRNG key of the epoch.
        n_minibatches: M; must divide ``n_envs * n_steps``.
        layout: where the envs live (:class:`~swarm_jax.agents.sharded.EnvLayout`; pins the
            env-major axes split over the devices, the identity on one device).

    Returns:
        The same pytree with leaves ``(M, n_envs * n_steps // M, ...)``.
    """
    n_envs, n_steps = jax.tree.leaves(batch)[0].shape[:2]
    batch_size = n_envs * n_steps // n_minibatches
    steps = jax.random.permutation(
        key, jnp.broadcast_to(jnp.arange(n_steps), (n_envs, n_steps)), axis=1, independent=True
    )
    steps = layout.split_envs(steps)

    def one(x):
        x = jax.vmap(lambda xe, se: jnp.take(xe, se, axis=0))(x, steps)
        x = x.reshape((batch_size, n_minibatches) + x.shape[2:])
        return layout.split_envs(jnp.swapaxes(x, 0, 1), axis=1)

    return jax.tree.map(one, batch)


def minibatch_indices(key: Array, n_envs: int, n_steps: int, n_minibatches: int) -> Array:
    """``(env, step)`` of every slot of the epoch's minibatches: ``(M, batch_size, 2)`` int32,
    the layout :func:`shuffle_into_minibatches` produces for this key (for inspection and tests)."""
    envs, steps = jnp.meshgrid(jnp.arange(n_envs), jnp.arange(n_steps), indexing="ij")
    return shuffle_into_minibatches(jnp.stack([envs, steps], axis=-1), key, n_minibatches)
