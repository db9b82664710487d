"""Stable-Baselines3 callbacks for SwarmThinkers training with SB3 (the original project's names).

* :class:`ESSMonitorCallback` logs ``custom/ess_ratio``, the mean per-step ESS ratio
  ``K² / Σ_j 1/π_j`` of the SB3 policy's distribution over the K candidates (docs/physics.md, SwarmThinkers;
  :func:`swarm_jax.swarm.weights.ess_ratio`) over each rollout, and stops training when it stays
  below ``threshold`` for ``patience`` consecutive rollouts.
* :class:`MorphologyLoggerCallback` logs the rollout means of the env's ``info`` morphology:
  ``custom/roughness`` (layers), ``custom/coverage``, ``custom/o_ti_ratio`` (and
  ``custom/mean_height``, ML), plus ``custom/final_<key>`` over the episodes that ended.

Both record through SB3's logger, so the values reach whatever outputs the model's logger has
(TensorBoard with ``tensorboard_log=...``, which needs the ``tensorboard`` package; CSV; stdout).
They can be combined with SB3's own callbacks, e.g. ``[CheckpointCallback(...), ESSMonitorCallback(0.3)]``.
"""

from __future__ import annotations

import numpy as np

from swarm_jax.gym import MISSING_EXTRA_MESSAGE

try:
    import torch as th
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.distributions import CategoricalDistribution
    from stable_baselines3.common.utils import obs_as_tensor
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(MISSING_EXTRA_MESSAGE) from err

import jax.numpy as jnp

from swarm_jax.env.tio2_env import METRIC_KEYS as MORPHOLOGY_KEYS
from swarm_jax.swarm.weights import ess_ratio
from swarm_jax.training.logging import ESSMonitor


def policy_log_probs(policy, observations, batch_size: int = 4096) -> np.ndarray:
    """Log-probabilities ``(N, K)`` of an SB3 policy with a ``Discrete(K)`` action space.

    Args:
      policy: an SB3 ``ActorCriticPolicy`` (or any policy whose ``get_distribution`` returns a
        ``CategoricalDistribution``).
      observations: ``(N, ...)`` numpy observations (or a dict of them).
      batch_size: forward-pass chunk size.
    """
    def rows(obs, sl):
        return {k: v[sl] for k, v in obs.items()} if isinstance(obs, dict) else obs[sl]

    n = len(next(iter(observations.values()))) if isinstance(observations, dict) else len(observations)
    out = []
    with th.no_grad():
        for start in range(0, n, batch_size):
            obs_t = obs_as_tensor(rows(observations, slice(start, start + batch_size)), policy.device)
            dist = policy.get_distribution(obs_t)
            if not isinstance(dist, CategoricalDistribution):
                raise TypeError("the policy's action distribution must be Categorical (Discrete(K) "
                                f"actions), got {type(dist).__name__}")
            # torch's Categorical keeps normalised logits, i.e. log-probabilities.
            out.append(dist.distribution.logits.double().cpu().numpy())
    return np.concatenate(out, axis=0)


def _flatten_buffer(obs):
    """Rollout-buffer observations ``(n_steps, n_envs, ...)`` -> ``(n_steps·n_envs, ...)``."""
    if isinstance(obs, dict):
        return {k: v.reshape((-1,) + v.shape[2:]) for k, v in obs.items()}
    return obs.reshape((-1,) + obs.shape[2:])


class ESSMonitorCallback(BaseCallback):
    """Logs the per-step ESS ratio of the policy's choice; optional early stop.

    After each rollout, the policy that collected it is evaluated on the rollout's observations;
    ``custom/ess_ratio`` is the mean of ``K² / Σ_j 1/π_j`` (1 for the uniform policy, i.e.
    classical KMC; falls as the policy sharpens) and ``custom/ess_ratio_min`` its minimum.

    Args:
      threshold: stop training when the rollout mean ESS ratio is below it for ``patience``
        consecutive rollouts (``None``: monitor only). The stop takes effect at the first env
        step of the next rollout (SB3 ignores the return value of ``on_rollout_end``). The rule
        is ``train.py``'s (:class:`swarm_jax.training.logging.ESSMonitor`): a NaN ESS counts as
        below the threshold.
      patience: consecutive rollouts below ``threshold`` before stopping (>= 1).
      verbose: 1 prints a message when stopping.

    Attributes:
      history: list of the rollout means, in order.
      stopped: whether the callback asked SB3 to stop.
    """

    def __init__(self, threshold: float | None = None, patience: int = 1, verbose: int = 0):
        super().__init__(verbose)
        self._monitor = ESSMonitor(threshold, patience)
        self.threshold = self._monitor.threshold
        self.patience = self._monitor.patience
        self.history: list[float] = []
        self.stopped = False

    def _on_step(self) -> bool:
        return not self.stopped

    def _on_rollout_end(self) -> None:
        buffer = self.model.rollout_buffer
        obs = _flatten_buffer(buffer.observations)
        log_probs = policy_log_probs(self.model.policy, obs)
        ess = np.asarray(ess_ratio(jnp.asarray(log_probs)))
        mean_ess = float(ess.mean())
        self.history.append(mean_ess)
        self.logger.record("custom/ess_ratio", mean_ess)
        self.logger.record("custom/ess_ratio_min", float(ess.min()))
        if self._monitor.update(mean_ess) and not self.stopped:
            self.stopped = True
            if self.verbose:
                print(f"ESSMonitorCallback: {self._monitor.reason} at {self.num_timesteps} steps")


class MorphologyLoggerCallback(BaseCallback):
    """Logs the env's morphology ``info`` (roughness, coverage, O/Ti, mean height) per rollout.

    ``custom/<key>``: mean over every env step of the rollout; ``custom/final_<key>``: mean over
    the last step of the episodes that ended during the rollout (logged when some did).

    Args:
      keys: ``info`` keys to log (those missing from an env's info are skipped).
      verbose: SB3 verbosity.
    """

    def __init__(self, keys=MORPHOLOGY_KEYS, verbose: int = 0):
        super().__init__(verbose)
        self.keys = tuple(keys)
        self._reset_sums()

    def _reset_sums(self):
        self._sums = dict.fromkeys(self.keys, 0.0)
        self._counts = dict.fromkeys(self.keys, 0)
        self._final: dict[str, list[float]] = {k: [] for k in self.keys}

    def _on_rollout_start(self) -> None:
        self._reset_sums()

    def _on_step(self) -> bool:
        dones = self.locals.get("dones")
        for i, info in enumerate(self.locals.get("infos", ())):
            done = bool(dones[i]) if dones is not None else False
            for k in self.keys:
                if k in info:
                    self._sums[k] += float(info[k])
                    self._counts[k] += 1
                    if done:
                        self._final[k].append(float(info[k]))
        return True

    def _on_rollout_end(self) -> None:
        for k in self.keys:
            if self._counts[k]:
                self.logger.record(f"custom/{k}", self._sums[k] / self._counts[k])
            if self._final[k]:
                self.logger.record(f"custom/final_{k}", float(np.mean(self._final[k])))
