"""How a policy drives a batch of lattices, and the ``(init, step)`` pair of a production run.

The library interface, as in JAX-MD: :func:`simulator` returns a pair of functions ::

    init_fn(lattice=None) -> carry             # R bare substrates (or a batched LatticeState)
    step_fn(carry, keys, n_events) -> carry    # n_events KMC events on every replica

``carry`` is a pytree with a leading (R,) replica axis on every leaf (the classical engine's
:class:`~swarm_jax.physics.LatticeState` itself; a trained policy adds its running log weights
and caches); ``keys`` are (R,) PRNG keys and ``n_events`` a Python int (one compilation per
distinct value). ``step_fn`` is jitted, pure and donates ``carry`` (reassign it, as below); the
rate tables and network parameters are traced arguments, so one compilation serves every
temperature or checkpoint of the same shapes. :func:`lattice_of` gives the films back. A user
reloading a training checkpoint to grow 200×200×50 films from Python::

    import jax
    from swarm_jax.physics import observables
    from swarm_jax.production import SimulationConfig, fold_keys, lattice_of, simulator

    config = SimulationConfig(
        lattice_size=(200, 200, 50), temperature=180.0, deposition_rate=0.1,
        o_ti_flux_ratio=2.0, events=2_000_000, log_every=40_000, replicas=4, seed=0,
        out_dir="runs/film",                     # only read by the run loop, not by the pair
        policy="trained", checkpoint="runs/train/stage2_final", mode="candidates")
    init_fn, step_fn = simulator(config)         # loads the checkpoint, builds the rate tables
    carry = init_fn()
    replica_keys = jax.random.split(jax.random.key(config.seed), config.replicas)
    for i in range(50):                          # 50 chunks of 40 000 events per replica
        carry = step_fn(carry, fold_keys(replica_keys, i), 40_000)
    print(jax.vmap(observables)(lattice_of(carry)))   # mean height, roughness, ... per replica

The command line (:mod:`swarm_jax.simulate`) drives the same pair through
:mod:`swarm_jax.production.run`: chunk ``i`` uses ``fold_keys(replica_keys, i)`` and
:func:`~swarm_jax.production.run.next_chunk_events` events, so stepping the same way gives its
films bit for bit; the run loop adds logging, host checks, checkpoints and outputs.

Underneath, a policy is a :class:`PolicyRunner` built by a factory of :data:`POLICY_FACTORIES`
(``classical``: the BKL engine; ``trained``: a training checkpoint's actor in candidate or
full-lattice mode, docs/physics.md) around a chunk function (:data:`ChunkFn`).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from swarm_jax.physics import LatticeState, PhysicsParams, init_flat, make_rate_tables, run
from swarm_jax.production.config import SimulationConfig, UsageError, load_trained_policy
from swarm_jax.swarm import full_lattice
from swarm_jax.swarm.policy import CandidateCarry, CandidatePolicy, candidate_carry, candidates_step, film_stats
from swarm_jax.swarm.weights import batch_ess_ratio
from swarm_jax.training.driver import CompileClock

__all__ = [
    "ChunkFn", "PolicyRunner", "classical_chunk", "make_classical_runner", "CandidateCarry",
    "candidates_chunk", "full_chunk", "make_trained_runner", "POLICY_FACTORIES", "check_policy",
    "make_runner",
    "CompiledChunks", "initial_state", "fold_keys", "lattice_of", "Simulator", "simulator",
]

ChunkFn = Callable[..., object]
"""``chunk_fn(carry, keys, n_events, *operands) -> carry``: advances a batch of lattices by
``n_events`` events each (a Python int, static). ``carry`` is the runner's pytree (for the
classical engine the :class:`LatticeState` itself; a policy adds e.g. its running log weights),
every leaf with a leading (R,) replica axis; ``keys`` are (R,) PRNG keys. ``operands`` are pytrees
of arrays (rate tables, network parameters) passed as traced arguments, so one compilation
serves every temperature or checkpoint of the same shapes. Must be pure and jit-able, defined
once at module level (compiled code is cached per function), and leave stopped lattices
(status != RUNNING) unchanged."""


def _identity(x):
    return x


class PolicyRunner(NamedTuple):
    """How a policy drives the lattices.

    Attributes:
        chunk_fn: see :data:`ChunkFn`.
        operands: the extra traced arguments of ``chunk_fn``.
        weights: ``weights(carry) -> (log_weight (R,), ess (R,))`` host arrays: the trajectory
            log importance weight so far and the ESS ratio of docs/physics.md (0 and 1 classically).
        init: ``init(state) -> carry`` from the batched initial :class:`LatticeState`.
        lattice: ``lattice(carry) -> LatticeState`` (batched), for observables and outputs.
    """

    chunk_fn: ChunkFn
    operands: tuple
    weights: Callable
    init: Callable = _identity
    lattice: Callable = _identity


def classical_chunk(state, keys, n_events: int, tables):
    """BKL engine on every replica: ``vmap`` of ``swarm_jax.physics.run(state, tables, key, n)``."""
    return jax.vmap(lambda s, k: run(s, tables, k, n_events=n_events))(state, keys)


def _classical_weights(state):
    r = state.status.shape[0]
    return np.zeros(r), np.ones(r)


def make_classical_runner(config: SimulationConfig, tables) -> PolicyRunner:
    """The rejection-free BKL engine (uniform policy: log weight 0, ESS ratio 1)."""
    return PolicyRunner(chunk_fn=classical_chunk, operands=(tables,), weights=_classical_weights)


# ---------------------------------------------------------------- trained policy


def _actor_logits(network, params, features, global_):
    """Actor logits (M,) of ``network`` for features (M, D) and global features (G,)."""
    return network.apply(params, {"candidates": features, "global": global_})[0]


def candidates_chunk(carry: CandidateCarry, keys, n_events: int, policy: CandidatePolicy,
                     progress_scale):
    """Candidate mode on every replica: ``n_events`` decisions of K candidates each
    (:func:`swarm_jax.swarm.policy.candidates_step` with ``policy``).

    Event ``i`` of replica ``r`` uses the key ``fold_in(keys[r], i)``; progress (global feature) is
    ``n_events done x progress_scale``.
    """
    def one(c, key):
        def body(i, c):
            progress = jnp.minimum(c.lattice.n_events.astype(jnp.float64) * progress_scale, 1.0)
            return candidates_step(c, policy, jax.random.fold_in(key, i), progress)

        return jax.lax.fori_loop(0, n_events, body, c)

    return jax.vmap(one)(carry, keys)


def full_chunk(carry, keys, n_events: int, run: full_lattice.FullLatticeRun):
    """Full-lattice mode on every replica (:func:`swarm_jax.swarm.full_lattice.run_batch`)."""
    return full_lattice.run_batch(carry, run, keys, n_events)


@functools.lru_cache(maxsize=8)
def _logits_fn(network_config, n_swarm: int):
    """The trained actor's scoring function, one per architecture (compiled code is reused)."""
    from swarm_jax.agents.networks import make_network

    return functools.partial(_actor_logits, make_network(network_config, n_swarm))


def _batch_weights(log_weight):
    """(log_weight (R,), batch ESS ratio repeated (R,)) as host arrays."""
    log_w = np.asarray(jax.device_get(log_weight), np.float64)
    ess = float(batch_ess_ratio(jnp.asarray(log_w))) if log_w.size > 1 else 1.0
    return log_w, np.full(log_w.shape, ess)


def make_trained_runner(config: SimulationConfig, tables) -> PolicyRunner:
    """A trained policy (``--checkpoint``) in candidate or full-lattice mode (docs/physics.md)."""
    policy = load_trained_policy(config.checkpoint)
    physics = config.physics_params()
    mode = config.mode or "candidates"
    # The chunk functions are module-level and the scoring function is cached per architecture,
    # so compiled code is reused across runs of a process.
    chunk_fn = full_chunk if mode == "full" else candidates_chunk
    progress_scale = jnp.float64(1.0 / config.expected_events)
    if mode == "full":
        score_fn = _logits_fn(policy.network_config, policy.n_swarm)
        react_slots = config.react_slots

        @jax.jit
        def v_init(state, tables, physics, params):
            return jax.vmap(lambda s: full_lattice.init(s, tables, physics, score_fn, params,
                                                        react_slots=react_slots))(state)

        def init(state):
            return v_init(state, tables, physics, policy.params)

        operands = (full_lattice.FullLatticeRun(
            tables=tables, physics=physics, params=policy.params,
            refresh_every=jnp.int64(config.context_refresh), progress_scale=progress_scale,
            score_fn=score_fn, react_slots=react_slots),)
    else:
        def init(state):
            return candidate_carry(state, jax.jit(jax.vmap(film_stats))(state))

        operands = (CandidatePolicy(tables=tables, physics=physics, params=policy.params,
                                    logits_fn=_logits_fn(policy.network_config, policy.n_swarm),
                                    n_swarm=policy.n_swarm), progress_scale)
    return PolicyRunner(chunk_fn=chunk_fn, operands=operands,
                        weights=lambda carry: _batch_weights(carry.log_weight), init=init,
                        lattice=lambda carry: carry.lattice)


# Policy name -> factory(config, tables) -> PolicyRunner.
POLICY_FACTORIES: dict[str, Callable[[SimulationConfig, object], PolicyRunner]] = {
    "classical": make_classical_runner,
    "trained": make_trained_runner,
}


@functools.lru_cache(maxsize=None)
def _jitted(chunk_fn: ChunkFn):
    return jax.jit(chunk_fn, static_argnums=2, donate_argnums=0)


class CompiledChunks:
    """Calls a runner's ``chunk_fn``, compiling it ahead of time (and timing that with the driver's
    :class:`~swarm_jax.training.driver.CompileClock`) once per
    distinct chunk length; compiled code is reused across runs of a process. The run loop's
    ``step_fn``: the same jitted function as :func:`simulator`'s, with the same arguments."""

    def __init__(self, runner: PolicyRunner):
        self._jitted = _jitted(runner.chunk_fn)
        self._operands = runner.operands
        self._compiled: dict[int, Callable] = {}
        self.compile_seconds = 0.0

    def __call__(self, carry, keys, n_events: int):
        fn = self._compiled.get(n_events)
        if fn is None:
            with CompileClock() as clock:  # tracing, lowering and compilation (jax.monitoring)
                fn = self._jitted.lower(carry, keys, n_events, *self._operands).compile()
            self.compile_seconds += clock.total
            self._compiled[n_events] = fn
        return fn(carry, keys, *self._operands)


fold_keys = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))
"""``fold_keys(keys, i)``: the (R,) keys ``fold_in(keys[r], i)`` (chunk ``i`` of a run whose
replica keys are ``keys``)."""


def initial_state(config: SimulationConfig, params: PhysicsParams) -> LatticeState:
    """R bare substrates, every leaf with a leading (R,) replica axis."""
    one = init_flat(config.lattice_size, params)
    return jax.tree.map(lambda x: jnp.tile(x[None], (config.replicas,) + (1,) * x.ndim), one)


def check_policy(config: SimulationConfig) -> None:
    """``config.policy`` must name a factory of :data:`POLICY_FACTORIES` (the one check of the
    command line and of :func:`make_runner` / :func:`simulator`); one :class:`UsageError`."""
    if config.policy not in POLICY_FACTORIES:
        raise UsageError(f"policy {config.policy!r}: must be one of "
                         f"{', '.join(map(repr, POLICY_FACTORIES))}")


def make_runner(config: SimulationConfig) -> PolicyRunner:
    """The :class:`PolicyRunner` of ``config.policy`` (:data:`POLICY_FACTORIES`), with the rate
    tables of ``config``'s physics."""
    check_policy(config)
    return POLICY_FACTORIES[config.policy](config, make_rate_tables(config.physics_params()))


def lattice_of(carry) -> LatticeState:
    """The batched films of a built-in runner's carry (the carry itself for the classical engine,
    ``carry.lattice`` for a trained policy's); a :class:`PolicyRunner`'s own ``lattice(carry)``
    is the general form."""
    return carry if isinstance(carry, LatticeState) else carry.lattice


class Simulator(NamedTuple):
    """The ``(init, step)`` pair of a production run (module docstring).

    Attributes:
        init_fn: ``init_fn(lattice=None) -> carry``: the runner's carry for a batched
            :class:`LatticeState` (every leaf with a leading (R,) axis), by default
            :func:`initial_state` (R bare substrates).
        step_fn: ``step_fn(carry, keys, n_events) -> carry``: ``n_events`` (a Python int) events
            on every replica with the (R,) PRNG keys ``keys``; jitted, ``carry`` donated.
    """

    init_fn: Callable
    step_fn: Callable


def simulator(config: SimulationConfig, runner: Optional[PolicyRunner] = None) -> Simulator:
    """The ``(init_fn, step_fn)`` pair of ``config`` (lattice size, replicas, physics, policy);
    ``runner`` defaults to :func:`make_runner` ``(config)``."""
    runner = make_runner(config) if runner is None else runner
    params = config.physics_params()

    def init_fn(lattice: Optional[LatticeState] = None):
        return runner.init(initial_state(config, params) if lattice is None else lattice)

    jitted = _jitted(runner.chunk_fn)

    def step_fn(carry, keys, n_events: int):
        return jitted(carry, keys, n_events, *runner.operands)

    return Simulator(init_fn=init_fn, step_fn=step_fn)
