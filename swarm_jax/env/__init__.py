"""Environment layer: the gymnax ``TiO2GrowthEnv`` and its reward functions."""

from swarm_jax.env.reward import RewardConfig, compute_reward, ess_penalty, morphology_terms, reward_metrics
from swarm_jax.env.tio2_env import EnvParams, EnvState, TiO2GrowthEnv, batched_step

__all__ = [name for name in dir() if not name.startswith("_")]
