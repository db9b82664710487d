"""Agents layer: Flax actor-critic networks and a PureJaxRL-style PPO (float32 learning).

Imports flow physics -> swarm -> env -> agents -> training; nothing here imports
``swarm_jax.training``.
"""

from swarm_jax.agents.networks import (
    FlatActorCritic,
    NetworkConfig,
    SwarmActorCritic,
    count_params,
    entropy_from_log_probs,
    log_probs_from_logits,
    make_network,
    select_log_prob,
)
from swarm_jax.agents.ppo import (
    DEFAULT_INFO_KEYS,
    PPOConfig,
    PPOTrainer,
    RunnerState,
    Transition,
    batch_ess_ratio_from_sums,
    compute_gae,
    evaluate,
    make_train,
    resolve_ess_term,
)

__all__ = [
    "DEFAULT_INFO_KEYS",
    "FlatActorCritic",
    "NetworkConfig",
    "PPOConfig",
    "PPOTrainer",
    "RunnerState",
    "SwarmActorCritic",
    "Transition",
    "batch_ess_ratio_from_sums",
    "compute_gae",
    "count_params",
    "entropy_from_log_probs",
    "evaluate",
    "log_probs_from_logits",
    "make_network",
    "make_train",
    "resolve_ess_term",
    "select_log_prob",
]
