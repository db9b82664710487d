"""The building blocks of a training run from a :class:`~swarm_jax.training.config.TrainConfig`:
the environment (:func:`make_env`), the cached PPO trainer (:func:`make_trainer`), the memory
estimate and check (:func:`check_training_memory`), the chunk schedule (:func:`iter_chunk_sizes`)
and a fresh runner state (:func:`initial_runner_state`)."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Any

import jax

from swarm_jax.agents.networks import NetworkConfig
from swarm_jax.agents.ppo import PPOConfig, PPOTrainer, RunnerState, make_train
from swarm_jax.env.reward import RewardConfig
from swarm_jax.env.tio2_env import TiO2GrowthEnv
from swarm_jax.training.checkpoint import default_device
from swarm_jax.training.config import EnvironmentConfig, TrainConfig
from swarm_jax.training.driver import check_memory_need
from swarm_jax.training.stage_result import TrainError

__all__ = ["canonical_state", "check_training_memory", "chunk_sizes", "count_chunks",
           "estimate_network_params", "estimate_training_bytes", "initial_runner_state",
           "iter_chunk_sizes", "make_env", "make_trainer", "resolve_devices"]


def make_env(cfg: TrainConfig) -> TiO2GrowthEnv:
    """The gymnax environment of ``cfg.environment`` with ``cfg.reward`` as default params."""
    return _env(cfg.environment, cfg.reward)


def _env(e: EnvironmentConfig, reward: RewardConfig) -> TiO2GrowthEnv:
    return TiO2GrowthEnv(e.lattice_size, n_swarm=e.n_swarm, physics=e.physics_params(),
                         max_steps_in_episode=e.max_steps, reward=reward,
                         episode_ml=e.episode_ml, episode_time=e.episode_time)


@functools.lru_cache(maxsize=4)
def _cached_trainer(environment: EnvironmentConfig, reward: RewardConfig, ppo: PPOConfig,
                    network: NetworkConfig, n_devices: int | None):
    mesh = None
    if n_devices is not None and n_devices * jax.process_count() > 1:
        from swarm_jax.distributed import make_data_mesh

        mesh = make_data_mesh(n_devices, n_envs=ppo.n_envs)
    return make_train(ppo, network, _env(environment, reward), mesh=mesh)


def resolve_devices(n_devices: int | None, cfg: TrainConfig) -> int | None:
    """Devices per process to shard the env batch over: ``n_devices`` (``None`` = every local
    device, reduced to the largest count that divides ``n_envs`` and the minibatch size)."""
    if n_devices is not None:
        return int(n_devices)
    local = jax.local_device_count()
    n = max(d for d in range(1, local + 1)
            if cfg.ppo.n_envs % (d * jax.process_count()) == 0
            and cfg.ppo.batch_size % (d * jax.process_count()) == 0)
    return n if n * jax.process_count() > 1 else None


def make_trainer(cfg: TrainConfig, n_devices: int | None = None) -> PPOTrainer:
    """The :class:`PPOTrainer` of ``cfg``.

    Trainers are cached on the parts of the config that define the computation (environment,
    reward, ppo with its n_envs and total_timesteps, network), so runs of the same setup in one process
    (a resumed run, tests, notebooks) reuse the compiled chunk functions.
    """
    return _cached_trainer(cfg.environment, cfg.reward, cfg.ppo, cfg.network,
                           resolve_devices(n_devices, cfg))


def estimate_network_params(cfg: TrainConfig) -> int:
    """Parameters of the actor-critic of ``cfg.network``: the leaves of its init tree from
    :func:`jax.eval_shape` (:func:`~swarm_jax.agents.params.network_template`; nothing is
    allocated, and the count is a Python int, so absurd widths cannot overflow)."""
    from swarm_jax.agents.networks import make_network
    from swarm_jax.agents.params import network_template

    env = make_env(cfg)
    template = network_template(make_network(cfg.network, env.num_actions), env.obs_shapes)
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(template))


def estimate_training_bytes(cfg: TrainConfig, parts: dict | None = None) -> int:
    """Bytes a training run of ``cfg`` needs beyond the JAX runtime (an estimate, rounded up).

    * lattices: the ``n_envs`` lattice states four times (runner state, the step's output,
      gymnax's auto-reset select, a checkpoint's host copy);
    * rollout: the rollout buffer twice (observations of ``n_steps × n_envs`` transitions,
      float32 ``K × D + G`` each, and their minibatch shuffle);
    * network: float32 parameters five times (parameters, gradients, Adam's two moments, a
      checkpoint's host copy) plus the activations of one minibatch (forward and backward, per
      candidate for the ``swarm`` network).

    Args:
        parts: if given, filled with the three terms (``lattices``, ``rollout``, ``network``).
    """
    from swarm_jax.physics import estimate_state_bytes
    from swarm_jax.swarm.features import CANDIDATE_FEATURE_DIM, GLOBAL_FEATURE_DIM

    e, t = cfg.environment, cfg.ppo
    states = 4 * t.n_envs * estimate_state_bytes(e.lattice_size)
    obs = 4 * (e.n_swarm * CANDIDATE_FEATURE_DIM + GLOBAL_FEATURE_DIM)
    rollout = 2 * cfg.ppo.n_steps * t.n_envs * (obs + 64)
    rows = cfg.ppo.batch_size * (e.n_swarm if cfg.network.kind == "swarm" else 1)
    activations = 3 * 4 * rows * sum(cfg.network.hidden_sizes) * 2  # actor + critic
    network = 5 * 4 * estimate_network_params(cfg) + activations
    if parts is not None:
        parts.update(lattices=int(states), rollout=int(rollout), network=int(network))
    return int(states + rollout + network)


def check_training_memory(cfg: TrainConfig, available: int | None = None) -> int:
    """The estimate of :func:`estimate_training_bytes`; raises :class:`TrainError` (before any
    allocation) when it exceeds the memory available (``available``, default device memory on
    an accelerator, else MemAvailable; :func:`~swarm_jax.training.driver.check_memory_need`).
    The message names the network when it alone cannot fit, else the lattices and rollout."""
    parts: dict = {}
    need = estimate_training_bytes(cfg, parts)

    def refusal(limit: int) -> str:
        if parts["network"] > limit:  # the network alone cannot fit
            n = estimate_network_params(cfg)
            return (f"network.hidden_sizes = {list(cfg.network.hidden_sizes)} gives a "
                    f"{cfg.network.kind} network of {n:.3g} parameters; with its gradients, "
                    "Adam's two moments and the activations of a ppo.batch_size = "
                    f"{cfg.ppo.batch_size} minibatch training needs about {need / 1e9:.3g} GB, "
                    f"more than the {limit / 1e9:.3g} GB available; reduce network.hidden_sizes")
        lx, ly, lz = cfg.environment.lattice_size
        return (f"training.n_envs = {cfg.ppo.n_envs} lattices of {lx}x{ly}x{lz} with "
                f"ppo.n_steps = {cfg.ppo.n_steps} need about {need / 1e9:.3g} GB (network and "
                f"optimiser included), more than the {limit / 1e9:.3g} GB available; reduce "
                "training.n_envs or ppo.n_steps")

    return check_memory_need(need, available, refusal, TrainError)


def iter_chunk_sizes(start_update: int, num_updates: int, log_every: int) -> Iterator[int]:
    """Updates per chunk from ``start_update`` to ``num_updates``, lazily (memory O(1) whatever
    the budget): chunks end at the multiples of ``log_every`` (counted from update 0) and at
    ``num_updates``, whatever the start."""
    u = int(start_update)
    while u < num_updates:
        n = min(log_every - u % log_every, num_updates - u)
        yield n
        u += n


def count_chunks(start_update: int, num_updates: int, log_every: int) -> int:
    """``len(list(iter_chunk_sizes(...)))``, computed arithmetically."""
    start, end = int(start_update), int(num_updates)
    if start >= end:
        return 0
    # chunk ends: every multiple of log_every in (start, end), plus end itself
    return (end - 1) // log_every - start // log_every + 1


def chunk_sizes(start_update: int, num_updates: int, log_every: int) -> list[int]:
    """The list of :func:`iter_chunk_sizes` (for small budgets and tests; the training loop
    iterates lazily)."""
    return list(iter_chunk_sizes(start_update, num_updates, log_every))


def initial_runner_state(trainer: PPOTrainer, cfg: TrainConfig, init_params: Any = None
                         ) -> RunnerState:
    """The runner state a fresh run starts from: ``trainer.init(PRNGKey(seed))``, with the
    network parameters replaced by ``init_params`` if given and then a *fresh* optimiser state
    for them (Adam moments zero, step counts zero)."""
    runner_state = trainer.init(jax.random.PRNGKey(cfg.training.seed))
    if init_params is not None:
        runner_state = runner_state.replace(train_state=runner_state.train_state.replace(
            params=init_params, opt_state=trainer.tx.init(init_params)))
    return canonical_state(runner_state)


def canonical_state(runner_state: RunnerState) -> RunnerState:
    """The state committed to the run's device without weak types: fresh and restored states
    must look alike to jit, or a resumed run would compile its chunk function a second time."""
    return jax.device_put(_drop_weak_types(runner_state), default_device())


def _drop_weak_types(tree: Any) -> Any:
    """``tree`` with weakly typed leaves made strong: a state restored from a checkpoint has no
    weak types, so this keeps fresh and restored states on one compiled chunk function."""
    return jax.tree.map(lambda x: x.astype(x.dtype) if getattr(x, "weak_type", False) else x, tree)

