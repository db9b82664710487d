"""Training layer: configuration (typed YAML configs) and, beside it, the PPO training loop.

Only the lightweight configuration names are re-exported here; import the other training modules
(loop, checkpoints, logging, curriculum) from their own submodules.
"""

from swarm_jax.training.config import (
    ConfigError,
    EnvironmentConfig,
    TrainConfig,
    TrainingSection,
    apply_cpu_overrides,
    config_from_dict,
    config_to_dict,
    for_backend,
    load_config,
    resolve_config_path,
    stage_config_path,
    with_overrides,
)

__all__ = [
    "ConfigError",
    "EnvironmentConfig",
    "TrainConfig",
    "TrainingSection",
    "apply_cpu_overrides",
    "config_from_dict",
    "config_to_dict",
    "for_backend",
    "load_config",
    "resolve_config_path",
    "stage_config_path",
    "with_overrides",
]
