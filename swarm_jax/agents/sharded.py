"""Device placement for PPO: the same program on one device or split over a ``"data"`` mesh.

:mod:`~swarm_jax.agents.ppo` is written for one device; this module is the only place of the
agents layer that knows about meshes. ``make_train(..., mesh=...)`` (or ``n_devices=``) jits the
same program with its inputs laid out on a 1-D ``"data"`` mesh (:mod:`swarm_jax.distributed`):

* env states, observations and per-env counters (:data:`PER_ENV_FIELDS` of the runner state,
  and the per-env discounted returns of the reward normaliser) are split over the devices along
  the env axis; parameters, optimiser state, PRNG key and global counters are replicated;
* each device steps its own environments (:meth:`EnvLayout.per_device`: the batched step under
  ``shard_map``, so each device resets its own done envs and no env state crosses devices);
* the minibatches of :func:`~swarm_jax.agents.ppo.shuffle_into_minibatches` are pinned split
  over the devices along their env-major axis (:meth:`EnvLayout.split_envs`; when
  ``batch_size`` is a multiple of the device count no transition moves between devices), and
  since the loss is a mean over the global minibatch XLA inserts the all-reduce of the
  gradients (and of the advantage statistics).

Random numbers do not depend on the layout (``jax_threefry_partitionable``), so for the same
config and seed a sharded run gives the parameters of the single-device run up to
floating-point summation order.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from swarm_jax import distributed as _dist

#: Runner-state fields whose leaves have a leading ``n_envs`` axis (split over the mesh).
PER_ENV_FIELDS = frozenset({"env_state", "last_obs", "traj_log_weight", "ep_return", "ep_length",
                            "ep_partial", "episodes"})


@dataclasses.dataclass(frozen=True)
class EnvLayout:
    """Where the env batch lives: one device (``mesh=None``) or split over a ``"data"`` mesh.

    Every method is the identity without a mesh, so the algorithm calls them unconditionally.
    """

    mesh: Optional[Mesh] = None

    @property
    def n_devices(self) -> int:
        """Devices the env batch is split over (1 without a mesh)."""
        return 1 if self.mesh is None else int(self.mesh.size)

    def split_envs(self, tree: Any, axis: int = 0) -> Any:
        """Pin ``tree``'s leaves split over the devices along ``axis`` (their env axis)."""
        if self.mesh is None:
            return tree
        spec = P(*([None] * axis), _dist.DATA_AXIS)
        return jax.lax.with_sharding_constraint(tree, NamedSharding(self.mesh, spec))

    def per_device(self, step: Callable) -> Callable:
        """``step(keys, state, action, params)`` run by each device on its own shard of envs
        (``shard_map``; ``params`` replicated)."""
        if self.mesh is None:
            return step
        data = P(_dist.DATA_AXIS)
        return jax.shard_map(step, mesh=self.mesh, in_specs=(data, data, data, P()),
                             out_specs=data, check_vma=False)


def resolve_layout(n_envs: int, batch_size: int, mesh: Optional[Mesh],
                   n_devices: Optional[int]) -> EnvLayout:
    """The :class:`EnvLayout` of ``make_train(mesh=..., n_devices=...)``.

    Raises:
        ValueError: the mesh is not 1-D over ``"data"``, or ``n_envs`` / ``batch_size`` is not a
            multiple of its size (every device holds the same number of envs and transitions).
    """
    if mesh is None and n_devices is not None:
        mesh = _dist.make_data_mesh(n_devices, n_envs)
    if mesh is None:
        return EnvLayout()
    if tuple(mesh.axis_names) != (_dist.DATA_AXIS,):
        raise ValueError(f"mesh axes {mesh.axis_names}: expected one axis {_dist.DATA_AXIS!r}")
    for name, value in (("n_envs", n_envs), ("batch_size", batch_size)):
        if int(value) % mesh.size:
            raise ValueError(f"PPOConfig.{name}={value} must be a multiple of the "
                             f"{mesh.size} devices of the mesh")
    return EnvLayout(mesh)


def runner_state_sharding(abstract: Any, mesh: Mesh) -> Any:
    """A runner state of shardings: :data:`PER_ENV_FIELDS` over ``"data"``, the rest replicated."""
    data, repl = _dist.data_sharding(mesh), _dist.replicated_sharding(mesh)
    out = abstract.replace(**{
        f.name: jax.tree.map(lambda _, s=(data if f.name in PER_ENV_FIELDS else repl): s,
                             getattr(abstract, f.name))
        for f in dataclasses.fields(abstract)
    })
    return out.replace(reward_norm=out.reward_norm.replace(returns=data))


def place_state(state: Any, sharding: Any) -> Any:
    """Lay ``state`` out as ``sharding`` (a state of shardings) says; ``sharding=None``: unchanged.

    Leaves already in place are kept; the result is rebuilt on ``sharding``'s tree (so a state
    restored into another trainer's template carries this trainer's static fields and does not
    trigger a recompile).
    """
    if sharding is None:
        return state
    leaves = jax.tree.leaves(state)
    shardings = jax.tree.leaves(sharding)
    if len(leaves) != len(shardings):
        raise ValueError(
            f"runner state has {len(leaves)} leaves, this trainer's has {len(shardings)}"
        )
    if all(getattr(x, "sharding", None) == s for x, s in zip(leaves, shardings)):
        return state
    return jax.tree.unflatten(
        jax.tree.structure(sharding),
        [x if getattr(x, "sharding", None) == s else _dist.put(x, s)
         for x, s in zip(leaves, shardings)],
    )


def jit_entry_points(init: Callable, chunk: Callable, collect: Callable,
                     layout: EnvLayout) -> dict:
    """``init(key)``, ``chunk(state, n_updates)`` (``n_updates`` static) and ``collect(state)``
    jitted, on the mesh's layout when there is one.

    Returns ``dict(_init_fn, _chunk_fn, _rollout_fn, state_sharding)`` (the fields of
    :class:`~swarm_jax.agents.ppo.PPOTrainer`; ``state_sharding`` is None without a mesh).
    """
    mesh = layout.mesh
    if mesh is None:
        return dict(_init_fn=jax.jit(init), _chunk_fn=jax.jit(chunk, static_argnums=(1,)),
                    _rollout_fn=jax.jit(collect), state_sharding=None)
    state_sharding = runner_state_sharding(jax.eval_shape(init, jax.random.PRNGKey(0)), mesh)
    repl = _dist.replicated_sharding(mesh)
    init_jit = jax.jit(init, in_shardings=repl, out_shardings=state_sharding)
    return dict(
        _init_fn=lambda key: init_jit(_dist.put(key, repl)),
        _chunk_fn=jax.jit(chunk, static_argnums=(1,), in_shardings=(state_sharding,),
                          out_shardings=(state_sharding, repl)),
        _rollout_fn=jax.jit(collect, in_shardings=(state_sharding,),
                            out_shardings=(state_sharding,
                                           NamedSharding(mesh, P(None, _dist.DATA_AXIS)))),
        state_sharding=state_sharding,
    )
