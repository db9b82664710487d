"""A tiny gymnax environment with the TiO2GrowthEnv observation/action contract, for learner tests.

Observation ``{"candidates": float32 (K, D), "global": float32 (G,)}``, action ``j in [0, K)``.
Every step draws K fresh i.i.d. standard-normal candidate feature vectors. Choosing candidate
``a`` pays ``reward = reward_scale * candidates[a, 0] + reward_offset`` (defaults 1 and 0: a
uniform policy earns 0 per step in expectation and the best choice earns E[max of K normals],
≈ 1.42 for K = 8), and *terminates* the episode
when ``candidates[a, 1] > terminate_threshold``; the base class *truncates* at
``max_steps_in_episode``. Because the features are exchangeable, a per-candidate scorer can
learn the task for any K. ``info`` carries stand-ins for the morphology keys of the real env
(``roughness``, ``coverage``, ``o_ti_ratio``, ``mean_height``) so metric plumbing is exercised.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces


@struct.dataclass
class MockEnvState(environment.EnvState):
    candidates: jax.Array  # (K, D) float32
    total_reward: jax.Array  # () float32, running sum used for the fake mean_height


@struct.dataclass
class MockEnvParams(environment.EnvParams):
    max_steps_in_episode: int = 16
    terminate_threshold: float = 1.5
    reward_scale: float = 1.0
    reward_offset: float = 0.0


class MockSwarmEnv(environment.Environment):
    """K candidates with D features each; feature 0 is the reward, feature 1 may terminate."""

    metric_keys = ("roughness", "coverage", "o_ti_ratio", "mean_height")

    def __init__(self, num_candidates: int = 8, feature_dim: int = 4, global_dim: int = 3):
        super().__init__()
        self.k = num_candidates
        self.d = feature_dim
        self.g = global_dim

    @property
    def default_params(self) -> MockEnvParams:
        return MockEnvParams()

    @property
    def num_actions(self) -> int:
        return self.k

    def _draw(self, key):
        return jax.random.normal(key, (self.k, self.d), dtype=jnp.float32)

    def _obs(self, state: MockEnvState, params: MockEnvParams):
        frac = jnp.asarray(state.time, jnp.float32) / params.max_steps_in_episode
        glob = jnp.zeros((self.g,), jnp.float32).at[0].set(frac).at[-1].set(1.0)
        return {"candidates": state.candidates, "global": glob}

    def reset_env(self, key, params):
        state = MockEnvState(time=0, candidates=self._draw(key), total_reward=jnp.float32(0.0))
        return self._obs(state, params), state

    def step_env(self, key, state, action, params):
        chosen = state.candidates[action]
        reward = jnp.asarray(params.reward_scale * chosen[0] + params.reward_offset, jnp.float32)
        terminated = chosen[1] > params.terminate_threshold
        new_state = MockEnvState(
            time=state.time + 1,
            candidates=self._draw(key),
            total_reward=state.total_reward + reward,
        )
        info = {
            "roughness": jnp.abs(chosen[2]),
            "coverage": jnp.asarray(new_state.time, jnp.float32) / params.max_steps_in_episode,
            "o_ti_ratio": 2.0 + chosen[3],
            "mean_height": new_state.total_reward,
        }
        return self._obs(new_state, params), new_state, reward, terminated, info

    def action_space(self, params=None):
        return spaces.Discrete(self.k)

    def observation_space(self, params):
        return spaces.Dict(
            {
                "candidates": spaces.Box(-jnp.inf, jnp.inf, (self.k, self.d), jnp.float32),
                "global": spaces.Box(-jnp.inf, jnp.inf, (self.g,), jnp.float32),
            }
        )
