"""A trained SwarmThinkers actor, loaded from a training checkpoint, as a pure scoring function.

An edge module (it reads training checkpoints and builds the agents' network): the stepping half
that uses the scores lives in :mod:`swarm_jax.swarm.policy`.

:func:`load_policy` reads any checkpoint the trainer writes (a ``stageN_final/`` directory, a
step directory ``checkpoints/stageN/<step>/``, or the store directory ``checkpoints/stageN/``
meaning its latest complete step), whatever device it was saved on (parameters are read as host
numpy arrays, then placed on the current default device). The architecture comes from the
checkpoint's saved config dict (``config_to_dict`` layout): ``network.kind``,
``network.hidden_sizes``, ``network.activation``, and ``environment.n_swarm`` (K). The parameters
are looked up at ``train_state.params`` (the trainer's whole-``RunnerState`` checkpoints), then at
``params`` (a bare parameter checkpoint); both the flax variables dict ``{"params": {...}}`` and
its inner dict are accepted. Every problem raises :class:`PolicyLoadError` with one readable line.

Scoring (:meth:`TrainedPolicy.logits`): ``logits(params, candidates (..., M, D), global (..., G))
-> (..., M)`` float32, the actor's logits of the network's own ``apply``. For the shared
per-candidate actor (``kind = "swarm"``) logit ``j`` is ``f([c_j, g])``, one MLP applied to each
candidate, so it is also the per-event score ``f(o_e)`` of the full-lattice mode and works for any
M. Under ``jit`` the critic's half of the network is dead code and costs nothing. The flat
(``flat_mlp``) network scores a whole K-set at once and needs exactly its trained K.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from swarm_jax.agents.networks import NetworkConfig, make_network
from swarm_jax.agents.params import check_tree_matches, network_template
from swarm_jax.swarm.features import CANDIDATE_FEATURE_DIM, GLOBAL_FEATURE_DIM

__all__ = ["PolicyLoadError", "TrainedPolicy", "load_policy", "network_config_from_dict",
           "find_params", "policy_from_params"]

# Where the trainer's checkpoints keep the network parameters, tried in this order.
PARAMS_SUBTREES = (("train_state", "params"), ("params",))


class PolicyLoadError(ValueError):
    """A checkpoint is missing, unreadable or incompatible with the policy networks."""


@dataclasses.dataclass(frozen=True)
class TrainedPolicy:
    """A trained actor ready to score candidates.

    Attributes:
        network: the flax module (``apply(params, obs) -> (logits, value)``).
        params: flax variables ``{"params": {...}}`` (float32 jax arrays).
        network_config: its architecture.
        n_swarm: K the policy was trained with (candidates per decision).
        path: the checkpoint directory that was read (a store resolves to its latest step).
        config: the checkpoint's saved run configuration (dict), ``{}`` if it had none.
    """

    network: nn.Module
    params: Any
    network_config: NetworkConfig
    n_swarm: int
    path: str
    config: dict = dataclasses.field(default_factory=dict)

    @property
    def per_candidate(self) -> bool:
        """True when the actor scores each candidate alone (any K, full-lattice mode possible)."""
        return self.network_config.kind == "swarm"

    def logits(self, params, candidates: jax.Array, global_: jax.Array) -> jax.Array:
        """Actor logits ``(..., M)`` float32 for candidate features ``(..., M, D)`` and global
        features ``(..., G)`` (pure; jit/vmap-able; ``params`` is traced)."""
        logits, _ = self.network.apply(params, {"candidates": candidates, "global": global_})
        return logits

    def summary(self) -> dict:
        """JSON-able description for run summaries."""
        env = self.config.get("environment", {}) if isinstance(self.config, Mapping) else {}
        return {
            "checkpoint": self.path,
            "network": {"kind": self.network_config.kind,
                        "hidden_sizes": list(self.network_config.hidden_sizes),
                        "activation": self.network_config.activation},
            "n_swarm": self.n_swarm,
            "n_params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(self.params))),
            "trained_stage": self.config.get("stage") if isinstance(self.config, Mapping) else None,
            "trained_environment": {k: env.get(k) for k in (
                "lattice_size", "temperature", "deposition_rate", "o_ti_flux_ratio", "physics")
                if k in env},
        }


def network_config_from_dict(config: Mapping) -> tuple[NetworkConfig, int]:
    """``(NetworkConfig, K)`` from a saved config dict (``network`` and ``environment.n_swarm``).

    Missing ``network`` keys take the :class:`NetworkConfig` defaults; a missing ``n_swarm`` is
    an error (K cannot be guessed for a flat network and would silently change a swarm policy).
    """
    if not isinstance(config, Mapping):
        raise PolicyLoadError(f"the checkpoint's config is a {type(config).__name__}, not a dict")
    net = config.get("network", {}) or {}
    if not isinstance(net, Mapping):
        raise PolicyLoadError(f"config 'network' is {net!r}, not a mapping")
    known = {f.name for f in dataclasses.fields(NetworkConfig)}
    try:  # NetworkConfig validates (and turns a saved list of widths into a tuple)
        net_cfg = NetworkConfig(**{k: v for k, v in net.items() if k in known})
    except (TypeError, ValueError) as err:
        raise PolicyLoadError(f"config 'network' = {dict(net)!r} is not a valid network: {err}") from None
    env = config.get("environment", {}) or {}
    k = env.get("n_swarm") if isinstance(env, Mapping) else None
    if isinstance(k, bool) or not isinstance(k, (int, float)) or int(k) != k or int(k) < 1:
        raise PolicyLoadError(
            f"config 'environment.n_swarm' = {k!r}: the checkpoint must record K, the number of "
            "candidates the policy was trained with (an integer >= 1)")
    return net_cfg, int(k)


def find_params(tree: Any) -> Any:
    """The network variables ``{"params": {...}}`` inside a raw restored checkpoint tree.

    Tries ``train_state.params`` then ``params``; accepts the variables dict or its inner dict.
    """
    tried = []
    for path in PARAMS_SUBTREES:
        node = tree
        for key in path:
            node = node.get(key) if isinstance(node, Mapping) else None
            if node is None:
                break
        tried.append(".".join(path))
        if isinstance(node, Mapping) and node:
            inner = node.get("params")
            if isinstance(inner, Mapping) and inner:
                return {"params": inner}
            return {"params": node}
    have = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
    raise PolicyLoadError(f"no network parameters at {' or '.join(tried)} (the saved state has {have})")


def policy_from_params(params: Any, network_config: NetworkConfig, n_swarm: int, path: str = "",
                       config: Mapping | None = None) -> TrainedPolicy:
    """A :class:`TrainedPolicy` from in-memory parameters (checked against the architecture)."""
    network = make_network(network_config, n_swarm)
    params = find_params({"params": params}) if "params" not in params else params
    template = network_template(network, {"candidates": (n_swarm, CANDIDATE_FEATURE_DIM),
                                          "global": (GLOBAL_FEATURE_DIM,)})
    check_tree_matches(params, template, f"checkpoint {path}" if path else "the parameters",
                       error=PolicyLoadError,
                       hint="(features or architecture changed since training?)")
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    return TrainedPolicy(network=network, params=params, network_config=network_config,
                         n_swarm=int(n_swarm), path=str(path), config=dict(config or {}))


def load_policy(path: str | Path) -> TrainedPolicy:
    """Loads the actor of a training checkpoint (see the module docstring).

    Raises:
        TypeError: ``path`` is not a path (``None``, a number, an empty string).
        PolicyLoadError: no checkpoint at ``path``, no parameters in it, a config without the
            network/K, or parameters that do not fit the network of the config.
    """
    from swarm_jax.training import checkpoint as ckpt  # orbax: imported only when needed

    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)) or not str(path):
        raise TypeError(f"load_policy(path={path!r}): path must be a checkpoint folder path "
                        f"(str or os.PathLike), not {type(path).__name__}")
    path = Path(path)
    if not path.exists():
        raise PolicyLoadError(f"{path}: no such file or directory")
    try:  # a store directory means its newest verified step
        resolved = ckpt.resolve_checkpoint(path)
    except ckpt.CheckpointError as err:
        raise PolicyLoadError(f"{path}: not a readable training checkpoint ({err})") from None
    try:
        tree, config, _ = ckpt.restore_checkpoint(resolved)
    except ckpt.CheckpointError as err:
        raise PolicyLoadError(f"{path}: not a readable training checkpoint ({err})") from None
    except Exception as err:  # noqa: BLE001  (orbax/json raise many types)
        raise PolicyLoadError(f"{path}: cannot read the checkpoint ({type(err).__name__}: {err})") from None
    net_cfg, k = network_config_from_dict(config)
    params = find_params(tree)
    return policy_from_params(params, net_cfg, k, path=str(resolved), config=config)
