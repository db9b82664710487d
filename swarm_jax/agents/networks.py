"""Actor-critic networks for the SwarmThinkers policy (Flax linen, float32 throughout).

Observation contract (docs/physics.md, SwarmThinkers; ``swarm_jax.env``): a dict

* ``"candidates"``: ``(..., K, D)`` local feature vectors of the K candidate events,
* ``"global"``:     ``(..., G)`` lattice-level context,

with D and G fixed for every lattice size. The action is the index ``j in [0, K)`` of the chosen
candidate. Every network here maps an observation to ``(logits (..., K), value (...))``, float32.

Two families:

* :class:`SwarmActorCritic` (``kind="swarm"``): a *shared per-candidate actor* — one MLP ``f`` scores
  each candidate from ``[its features, global context]`` and the logits over K are those scores, so
  the policy is permutation-equivariant and the same weights serve any K and any lattice size
  (softmax over ``f`` = the SwarmThinkers reweighting ``exp(f(o_e)) Γ_e`` as K grows) — and a
  *centralised critic*: per-candidate embeddings, mean- and max-pooled over K (permutation
  invariant), concatenated with the global features, then an MLP to a scalar value.
* :class:`FlatActorCritic` (``kind="flat_mlp"``): Stable-Baselines3 ``MlpPolicy`` parity — the
  flattened candidates and the global vector are concatenated and fed to two *separate* MLPs
  (policy: K logits, value: 1). Tied to one K (and to the candidate order).

The KMC clock needs JAX's 64-bit mode (``swarm_jax.enable_x64``), which is process-wide; these
modules cast every observation leaf to float32 and declare ``dtype``/``param_dtype`` float32 on
every layer, so parameters, activations, logits and values are float32 regardless of that flag.

Initialisation follows PPO practice (PureJaxRL, SB3): orthogonal kernels with gain √2 on hidden
layers, 0.01 on the policy head (near-uniform initial policy, i.e. classical KMC at the start and
ESS ratio ≈ 1) and 1.0 on the value head; zero biases.

Optional tilt-structured actor (``NetworkConfig.tilt_head``, swarm network only): the logit of
candidate j gets the term ``s · d_j`` with ``d_j = swarm.rollout.tilt_logits(1, c_j)``, i.e.
``−(h_j − mean h)`` for a deposition and 0 for every other kind, so ``s`` is exactly the strength of
the hand-made exponential tilt ``π(j) ∝ exp(−s·(h_j − mean h))`` and the MLP is a correction on
top. ``s`` is one learned scalar (``"scalar"``) or affine in the global features (``"global"``);
its parameters start at 0, so the initial policy is still the near-uniform MLP.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from swarm_jax.swarm.features import CANDIDATE_LAYOUT
from swarm_jax.swarm.rollout import tilt_logits
from swarm_jax.validation import check_choice, check_int_list, fail

Array = jax.Array
Observation = dict  # {"candidates": (..., K, D), "global": (..., G)}

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "relu": nn.relu,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "elu": nn.elu,
}

#: ``NetworkConfig.activation`` choices.
ACTIVATIONS = tuple(_ACTIVATIONS)
#: ``NetworkConfig.kind`` choices.
NETWORK_KINDS = ("swarm", "flat_mlp")
#: ``NetworkConfig.tilt_head`` choices (YAML ``false`` / ``true`` mean ``"none"`` / ``"scalar"``).
TILT_HEADS = ("none", "scalar", "global")
#: Candidate-feature groups the tilt head reads (the event kind and the height above the mean).
TILT_FEATURE_GROUPS = ("kind", "z_above_mean")
#: The tilt strength is ``TILT_STRENGTH_SCALE × parameter``. Adam moves a parameter by about the
#: learning rate per step whatever its gradient's size, so this lets the strength (one coherent
#: scalar, of order 0.1–1 per layer) travel 10× faster than the MLP's weights at the same
#: learning rate: the small learning rate that keeps the MLP's logit noise low does not keep the
#: strength from reaching its optimum within a short run.
TILT_STRENGTH_SCALE = 10.0


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Architecture of the actor-critic; also the ``network`` section of a training config.

    Checked at construction; a problem raises :class:`swarm_jax.validation.ConfigError` (a
    ``ValueError``) naming ``network.<field>``.

    Attributes:
        kind: ``"swarm"`` (shared per-candidate actor + pooled critic, any K) or ``"flat_mlp"``
            (SB3 MlpPolicy parity over the flattened observation, one fixed K).
        hidden_sizes: widths of the hidden layers, used for every MLP of the network (actor,
            critic head; or the flat pi and vf nets). Default ``(64, 64)``: the actor runs once per
            candidate, i.e. ``n_envs × K`` times per env step and ``n_epochs`` more times per
            transition in the update; with the TiO2 features (D = 116) 2×64 costs ~11k
            multiply-adds per candidate (2×128: ~31k), and the update, not the KMC step, is what
            bounds training throughput on a CPU (``python -m swarm_jax.bench train`` shows the
            split). It learns the per-candidate scoring task of ``tests/mock_env.py``
            (``tests/test_ppo.py``), and it is SB3's MlpPolicy default, so both families are
            compared at equal width. Use ``(128, 128)`` on an accelerator or for richer feature sets.
        activation: one of ``"tanh"`` (default, as SB3/PureJaxRL), ``"relu"``, ``"gelu"``,
            ``"silu"``, ``"elu"``.
        candidate_features: names of the candidate-feature groups the network reads
            (keys of :data:`swarm_jax.swarm.features.CANDIDATE_LAYOUT`, kept in layout order), or
            ``None`` (default) for all of them. A subset is a smaller input and, in a jitted
            rollout, XLA drops the features nobody reads (e.g. the 19-site gathers when
            ``"sites"`` is left out), so a decision costs less; the global features are always read.
        tilt_head: ``"none"`` (default: the plain actor), ``"scalar"`` or ``"global"`` (swarm
            network only; YAML ``false``/``true`` are read as ``"none"``/``"scalar"``): add the
            exponential-tilt term ``s · d_j`` to each logit (module docstring), with ``s`` one
            learned scalar or ``s = b + w·g`` affine in the global features ``g``; the strength
            starts at 0. Needs the ``kind`` and ``z_above_mean`` groups among
            ``candidate_features``.
    """

    kind: str = "swarm"
    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    candidate_features: tuple[str, ...] | None = None
    tilt_head: str = "none"

    def __post_init__(self):
        # Names as in a training config's ``network`` section; YAML lists become tuples, so the
        # config stays hashable (it is a jit static argument).
        check_choice("network.kind", self.kind, NETWORK_KINDS)
        object.__setattr__(self, "hidden_sizes", check_int_list(
            "network.hidden_sizes", self.hidden_sizes, mins=lambda i: 1,
            allowed="a non-empty list of integers >= 1"))
        check_choice("network.activation", self.activation, ACTIVATIONS)
        if self.candidate_features is not None:
            object.__setattr__(self, "candidate_features", check_feature_groups(
                "network.candidate_features", self.candidate_features))
        object.__setattr__(self, "tilt_head", _check_tilt_head(self))


def _check_tilt_head(config: NetworkConfig) -> str:
    """``config.tilt_head`` as one of :data:`TILT_HEADS` (booleans mapped), checked against the
    network kind and the candidate-feature groups it needs."""
    value = config.tilt_head
    if isinstance(value, bool):
        value = "scalar" if value else "none"
    if value not in TILT_HEADS:
        raise fail("network.tilt_head", value, f"one of {', '.join(map(repr, TILT_HEADS))} "
                   "(or false / true for 'none' / 'scalar')")
    if value == "none":
        return value
    if config.kind != "swarm":
        raise fail("network.tilt_head", value, "'none' for network.kind 'flat_mlp' "
                   "(the tilt head is a swarm-network option)")
    groups = config.candidate_features
    missing = [g for g in TILT_FEATURE_GROUPS if groups is not None and g not in groups]
    if missing:
        raise fail("network.tilt_head", value, "'none' unless network.candidate_features reads "
                   f"{' and '.join(TILT_FEATURE_GROUPS)} (missing: {', '.join(missing)})")
    return value


def check_feature_groups(path: str, value: Any) -> tuple[str, ...]:
    """A non-empty list of distinct candidate-feature group names, returned in layout order."""
    allowed = f"a non-empty list of distinct names from {', '.join(CANDIDATE_LAYOUT)}"
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
        raise fail(path, value, allowed)
    for i, name in enumerate(value):
        check_choice(f"{path}[{i}]", name, tuple(CANDIDATE_LAYOUT))
    if len(set(value)) != len(value):
        raise fail(path, value, allowed)
    return tuple(name for name in CANDIDATE_LAYOUT if name in value)


def select_candidate_features(candidates: Array, groups: Sequence[str] | None) -> Array:
    """The columns of ``candidates (..., D)`` in ``groups`` (all when None), as static slices so a
    jitted caller never computes the dropped features."""
    if groups is None:
        return candidates
    return jnp.concatenate([candidates[..., CANDIDATE_LAYOUT[name]] for name in groups], axis=-1)


def _dense(features: int, scale: float, name: str | None = None) -> nn.Dense:
    """A float32 Dense layer with orthogonal(scale) kernel and zero bias."""
    return nn.Dense(
        features,
        kernel_init=nn.initializers.orthogonal(scale),
        bias_init=nn.initializers.zeros,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        name=name,
    )


class MLP(nn.Module):
    """Hidden layers only: ``x (..., F) -> (..., hidden_sizes[-1])``, activation after each."""

    hidden_sizes: Sequence[int]
    activation: str = "tanh"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        act = _ACTIVATIONS[self.activation]
        for width in self.hidden_sizes:
            x = act(_dense(width, np.sqrt(2.0))(x))
        return x


def _as_float32(obs: Observation) -> tuple[Array, Array]:
    candidates = jnp.asarray(obs["candidates"], dtype=jnp.float32)
    global_ = jnp.asarray(obs["global"], dtype=jnp.float32)
    if candidates.ndim < 2 or candidates.shape[:-2] != global_.shape[:-1]:
        raise ValueError(
            "observation must be {'candidates': (..., K, D), 'global': (..., G)} with matching "
            f"batch dims; got {candidates.shape} and {global_.shape}"
        )
    return candidates, global_


class SwarmActorCritic(nn.Module):
    """Shared per-candidate actor + centralised pooled critic. Works for any K.

    ``__call__(obs) -> (logits (..., K), value (...))``, both float32.

    Actor: ``logit_j = f([c_j, g])`` with one MLP ``f`` for all j (permutation-equivariant). Its
    first layer is split as ``W_c c_j + W_g g + b`` (the same function as a Dense layer on the
    concatenation), so the global part is computed once per observation, not once per candidate.
    Critic: ``V = ψ([mean_j c_j, max_j c_j, g])`` on the pooled candidate features
    (permutation-invariant). The actor is the only part that runs once per candidate, which
    keeps the learning cost per transition at about one actor pass over the K candidates.
    With ``tilt_head`` not ``"none"`` the actor's logits get ``+ s · d_j`` (:func:`tilt_direction`,
    :class:`TiltStrength`), which keeps the equivariance.
    """

    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "tanh"
    candidate_features: Sequence[str] | None = None
    tilt_head: str = "none"

    @nn.compact
    def __call__(self, obs: Observation) -> tuple[Array, Array]:
        all_candidates, global_ = _as_float32(obs)
        candidates = select_candidate_features(all_candidates, self.candidate_features)
        act = _ACTIVATIONS[self.activation]

        # Actor: score every candidate with the same MLP.
        first = self.hidden_sizes[0]
        h = _dense(first, np.sqrt(2.0), name="actor_in_candidate")(candidates)
        g = nn.Dense(first, use_bias=False, kernel_init=nn.initializers.orthogonal(np.sqrt(2.0)),
                     dtype=jnp.float32, param_dtype=jnp.float32, name="actor_in_global")(global_)
        h = act(h + g[..., None, :])
        h = MLP(self.hidden_sizes[1:], self.activation, name="actor_mlp")(h)
        logits = _dense(1, 0.01, name="actor_head")(h)[..., 0]
        if self.tilt_head != "none":
            strength = TiltStrength(self.tilt_head, name="tilt_strength")(global_)
            logits = logits + strength[..., None] * tilt_direction(all_candidates)

        # Critic: pooled candidate features + global context.
        pooled = jnp.concatenate([candidates.mean(axis=-2), candidates.max(axis=-2), global_], axis=-1)
        v = MLP(self.hidden_sizes, self.activation, name="critic_mlp")(pooled)
        value = _dense(1, 1.0, name="critic_head")(v)[..., 0]
        return logits, value


class TiltStrength(nn.Module):
    """The tilt strength ``s (...)`` in 1/layer (float32) from the global features ``(..., G)``:
    ``TILT_STRENGTH_SCALE × θ`` for one parameter ``θ`` (mode ``"scalar"``) or
    ``TILT_STRENGTH_SCALE × (b + w·g)`` (mode ``"global"``); every parameter starts at 0."""

    mode: str = "scalar"

    @nn.compact
    def __call__(self, global_: Array) -> Array:
        if self.mode == "scalar":
            theta = self.param("theta", nn.initializers.zeros, (), jnp.float32)
            theta = jnp.broadcast_to(theta, global_.shape[:-1])
        else:
            theta = nn.Dense(1, kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros,
                             dtype=jnp.float32, param_dtype=jnp.float32, name="affine")(global_)[..., 0]
        return TILT_STRENGTH_SCALE * theta


def tilt_direction(candidates: Array) -> Array:
    """``d (..., K)`` float32 from the full candidate features ``(..., K, D)``: the hand-made tilt's
    logits at strength 1 (:func:`swarm_jax.swarm.rollout.tilt_logits`), ``−(h_j − mean h)`` for a
    deposition, 0 otherwise, so ``s · d`` is that tilt's logits at strength ``s``."""
    flat = candidates.reshape((-1, candidates.shape[-1]))
    return tilt_logits(1.0, flat, None).reshape(candidates.shape[:-1])


class FlatActorCritic(nn.Module):
    """SB3 MlpPolicy parity: separate pi and vf MLPs on ``concat(flatten(candidates), global)``.

    ``__call__(obs) -> (logits (..., num_actions), value (...))``; requires ``K == num_actions``.
    """

    num_actions: int
    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "tanh"

    @nn.compact
    def __call__(self, obs: Observation) -> tuple[Array, Array]:
        candidates, global_ = _as_float32(obs)
        if candidates.shape[-2] != self.num_actions:
            raise ValueError(
                f"flat_mlp network built for K={self.num_actions}, got K={candidates.shape[-2]}"
            )
        flat = candidates.reshape(candidates.shape[:-2] + (-1,))
        x = jnp.concatenate([flat, global_], axis=-1)
        pi = MLP(self.hidden_sizes, self.activation, name="pi_mlp")(x)
        logits = _dense(self.num_actions, 0.01, name="pi_head")(pi)
        vf = MLP(self.hidden_sizes, self.activation, name="vf_mlp")(x)
        value = _dense(1, 1.0, name="vf_head")(vf)[..., 0]
        return logits, value


def make_network(config: NetworkConfig, num_actions: int) -> nn.Module:
    """Build the actor-critic module described by ``config``.

    Args:
        config: the architecture.
        num_actions: K (``env.num_actions``). The swarm network does not depend on it (any K);
            the flat MLP's policy head has exactly ``num_actions`` outputs.

    Returns:
        A linen module with ``apply(params, obs) -> (logits (..., K), value (...))``.
    """
    if config.kind == "swarm":
        return SwarmActorCritic(hidden_sizes=config.hidden_sizes, activation=config.activation,
                                candidate_features=config.candidate_features,
                                tilt_head=config.tilt_head)
    if config.candidate_features is not None:
        raise fail("network.candidate_features", list(config.candidate_features),
                   "null for network.kind 'flat_mlp' (a feature subset is a swarm-network option)")
    return FlatActorCritic(
        num_actions=int(num_actions), hidden_sizes=config.hidden_sizes, activation=config.activation
    )


# ---- categorical-policy helpers (no distrax dependency) ---------------------------------------


def log_probs_from_logits(logits: Array) -> Array:
    """Normalised log-probabilities ``log π (..., K)`` (float32) from logits ``(..., K)``."""
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def entropy_from_log_probs(log_probs: Array) -> Array:
    """Entropy ``−Σ_j π_j log π_j`` in nats, shape ``(...)``."""
    return -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)


def select_log_prob(log_probs: Array, action: Array) -> Array:
    """``log π_a`` for integer actions ``(...)`` from ``log_probs (..., K)``."""
    return jnp.take_along_axis(log_probs, action[..., None].astype(jnp.int32), axis=-1)[..., 0]


def count_params(params: Any) -> int:
    """Number of scalar parameters in a pytree."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
