"""Property tests: the incremental JAX engine against the from-scratch NumPy reference.

From random SOS films (several lattice shapes, temperatures and oxide patterns) and random event
sequences, after every event the engine's rates, sum tree, film and counters must equal what
``tests/reference.py`` computes from scratch, and the SOS invariant and bookkeeping must hold.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import swarm_jax  # noqa: F401  (64-bit mode: tests/conftest.py)
from swarm_jax.physics import (
    CEILING, NO_EVENTS, RUNNING, Event, PhysicsParams, apply_event, column_event_rates, film_arrays,
    from_arrays, init_flat, make_rate_tables, rebuild_rates, run, step_with_uniforms,
    trace,
)
from reference import (
    O, STATUS_CEILING, SUBSTRATE, TI, ReferenceLattice, check_sos,
)
from tree_reference import rate_tree, tree_leaves, tree_total

RTOL = 1e-12
# Few shapes: each new one costs several seconds of XLA compilation (from_arrays included).
SIZES = [(3, 3, 3), (4, 5, 6), (5, 3, 4)]
TEMPERATURES = [180.0, 300.0, 600.0]
# Besides the default parameters (docs/physics.md, Events and rates), a parameter set in which desorption and reactions compete
# with hops, so that every event kind is exercised by the sampled sequences.
LIVELY = dict(e_des_ti=0.75, e_des_o=0.8, e_react_scale=2.0, deposition_rate=50.0)

PROPERTY_SETTINGS = settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


# --------------------------------------------------------------------------- jitted engine calls


@jax.jit
def _all_rates(state, tables):
    cols = jnp.arange(state.n_columns, dtype=jnp.int32)
    return column_event_rates(state, tables, cols)[0]


@jax.jit
def _apply_slot(state, tables, column, slot):
    """Applies an explicitly chosen (column, slot), described as the sampler would describe it."""
    rates, top_sp, top_ox = column_event_rates(state, tables, column[None])
    event = Event(column=column, slot=slot, top_species=top_sp[0], top_oxide=top_ox[0], rate=rates[0, slot])
    return apply_event(state, tables, event)


_rebuild = jax.jit(rebuild_rates)
_step_u = jax.jit(step_with_uniforms)
_step_u_batch = jax.jit(jax.vmap(step_with_uniforms))


# --------------------------------------------------------------------------- strategies


@st.composite
def films(draw, sizes=SIZES, max_height_margin=1):
    """(heights, species, oxide) of a random SOS film, heights <= Lz - 1 - max_height_margin."""
    lx, ly, lz = draw(st.sampled_from(sizes))
    c = lx * ly
    heights = np.array(draw(st.lists(st.integers(0, lz - 1 - max_height_margin), min_size=c, max_size=c)))
    heights = heights.reshape(lx, ly)
    n_sites = c * (lz - 1)
    sp = np.array(draw(st.lists(st.sampled_from([TI, O]), min_size=n_sites, max_size=n_sites)))
    ox = np.array(draw(st.lists(st.booleans(), min_size=n_sites, max_size=n_sites)))
    z = np.arange(1, lz)[None, None, :]
    filled = z <= heights[..., None]
    species = np.zeros((lx, ly, lz), np.int8)
    species[..., 0] = SUBSTRATE
    species[..., 1:] = np.where(filled, sp.reshape(lx, ly, lz - 1), 0)
    oxide = np.zeros((lx, ly, lz), np.int8)
    oxide[..., 1:] = np.where(filled, ox.reshape(lx, ly, lz - 1), 0)
    return heights, species, oxide


@st.composite
def physics_params(draw):
    temperature = draw(st.sampled_from(TEMPERATURES))
    extra = LIVELY if draw(st.booleans()) else {}
    return PhysicsParams(temperature=temperature, **extra)


uniforms = st.floats(0.0, 1.0, exclude_max=True, allow_nan=False)


# --------------------------------------------------------------------------- comparison


def assert_tree_consistent(state, leaves):
    """Leaves equal ``leaves`` (C,), padding leaves are 0, every parent is the sum of its children."""
    tree = np.asarray(state.tree)
    c = leaves.shape[0]
    np.testing.assert_allclose(tree_leaves(tree, c), leaves, rtol=RTOL, atol=0)
    bottom = tree[-(-c // tree.shape[1]):].reshape(-1)
    assert np.all(bottom[c:] == 0.0)
    np.testing.assert_array_equal(tree, rate_tree(tree_leaves(tree, c), tree.shape[1]))
    assert float(state.total) == tree_total(tree)


def assert_matches_reference(state, tables, ref: ReferenceLattice):
    heights, species, oxide = (np.asarray(a) for a in film_arrays(state))
    np.testing.assert_array_equal(heights, ref.heights)
    np.testing.assert_array_equal(species, ref.species)
    np.testing.assert_array_equal(oxide, ref.oxide)
    check_sos(heights, species, oxide)
    # The engine's cached per-site reaction channels equal the reference's, site by site.
    c = ref.n_columns
    react_class = np.asarray(state.react_class)[:c].reshape(ref.species.shape)
    np.testing.assert_array_equal(react_class, ref.react_classes())

    ref_rates = ref.all_rates()
    rates = np.asarray(_all_rates(state, tables))
    np.testing.assert_allclose(rates, ref_rates, rtol=RTOL, atol=0)
    assert_tree_consistent(state, rates.sum(axis=1))
    np.testing.assert_allclose(tree_leaves(np.asarray(state.tree), ref.n_columns),
                               ref_rates.sum(axis=1), rtol=RTOL, atol=0)
    np.testing.assert_allclose(float(state.total), ref_rates.sum(), rtol=RTOL, atol=0)
    assert int(state.status) == ref.status

    # Bookkeeping: counters agree with each other, with the film and with the reference.
    present = np.array([(species == TI).sum(), (species == O).sum()])
    np.testing.assert_array_equal(np.asarray(state.deposited) - np.asarray(state.desorbed), present)
    assert int(state.n_oxide) == int(oxide.sum())
    assert int(np.asarray(state.event_counts).sum()) == int(state.n_events)
    np.testing.assert_array_equal(np.asarray(state.event_counts), ref.event_counts)
    np.testing.assert_array_equal(np.asarray(state.deposited), ref.deposited)
    np.testing.assert_array_equal(np.asarray(state.desorbed), ref.desorbed)
    assert int(state.n_events) == ref.n_events


def assert_rebuild_matches(state, tables):
    rebuilt = _rebuild(state, tables)
    c = state.n_columns
    np.testing.assert_array_equal(np.asarray(rebuilt.react_class)[:c], np.asarray(state.react_class)[:c])
    np.testing.assert_allclose(np.asarray(rebuilt.tree), np.asarray(state.tree), rtol=RTOL, atol=0)
    np.testing.assert_allclose(float(rebuilt.total), float(state.total), rtol=RTOL, atol=0)
    assert int(rebuilt.status) == int(state.status)


def assert_same_physical_state(a, b):
    """Every field equal, except the dummy column's species/oxide/react_class rows (write-only
    scratch that absorbs the writes of inactive events)."""
    c = a.n_columns

    def real(s):
        return s.replace(species=s.species[:c], oxide=s.oxide[:c], react_class=s.react_class[:c])

    _pytrees_equal(real(a), real(b))


def _pytrees_equal(a, b):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --------------------------------------------------------------------------- tests


@pytest.mark.slow
@PROPERTY_SETTINGS
@given(
    film=films(),
    params=physics_params(),
    us=st.lists(st.tuples(uniforms, uniforms, uniforms), min_size=1, max_size=20),
)
def test_sampled_events_match_reference(film, params, us):
    """BKL steps of the engine (its sampler picks the event), replayed on the reference:
    identical film, rates, tree, counters and clock after every event."""
    tables = make_rate_tables(params)
    state = from_arrays(*film, params)
    ref = ReferenceLattice(*film, params)
    assert_matches_reference(state, tables, ref)
    for u in us:
        if ref.status != 0:
            break
        ref_rates = ref.all_rates()
        total_before = ref_rates.sum()
        state, info = _step_u(state, tables, jnp.asarray(u, jnp.float64))
        event = info.event
        column, slot = int(event.column), int(event.slot)
        # The sampler only ever proposes possible events, and describes them correctly.
        assert bool(info.active)
        assert ref_rates[column, slot] > 0.0
        np.testing.assert_allclose(float(event.rate), ref_rates[column, slot], rtol=RTOL)
        x, y = ref.column_xy(column)
        assert int(event.top_species) == ref.species[x, y, ref.heights[x, y]]
        # Clock: -ln(1 - u) / Gamma_tot with the total from *before* the event.
        np.testing.assert_allclose(float(info.total_before), total_before, rtol=RTOL)
        # (atol: XLA on CPU flushes subnormal results, e.g. dt for u ~ 1e-308, to zero.)
        np.testing.assert_allclose(float(info.dt), -np.log1p(-u[2]) / total_before, rtol=1e-11, atol=1e-300)
        ref.time += -np.log1p(-u[2]) / total_before
        ref.apply(column, slot)
        assert_matches_reference(state, tables, ref)
        np.testing.assert_allclose(float(state.time), ref.time, rtol=1e-11, atol=1e-300)
        assert_rebuild_matches(state, tables)


@pytest.mark.slow
@PROPERTY_SETTINGS
@given(film=films(), params=physics_params(), picks=st.lists(uniforms, min_size=1, max_size=20))
def test_every_possible_event_matches_reference(film, params, picks):
    """Events picked uniformly among the *possible* ones (so rare kinds such as desorption and
    reactions with partners in every NN position are exercised), applied to both."""
    tables = make_rate_tables(params)
    state = from_arrays(*film, params)
    ref = ReferenceLattice(*film, params)
    for pick in picks:
        if ref.status != 0:
            break
        possible = np.argwhere(ref.all_rates() > 0.0)
        column, slot = (int(v) for v in possible[int(pick * len(possible))])
        state = _apply_slot(state, tables, jnp.int32(column), jnp.int32(slot))
        ref.apply(column, slot)
        assert_matches_reference(state, tables, ref)
    assert_rebuild_matches(state, tables)


# One lattice shape and one run length for all run/trace calls of this module: every new
# (shape, length) costs an XLA compilation of several seconds.
SHAPE = (3, 3, 3)
RUN_EVENTS = 20
TRACE_EVENTS = 5


@pytest.mark.slow
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), n_events=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_vmapped_batch_equals_one_by_one(data, n_events, seed):
    """A vmapped batch of states (each with its own temperature) steps exactly like a loop."""
    batch = 3
    films_ = [data.draw(films(sizes=[(4, 5, 6)])) for _ in range(batch)]
    params = [PhysicsParams(temperature=t) for t in TEMPERATURES[:batch]]
    states = [from_arrays(*f, p) for f, p in zip(films_, params)]
    tables = [make_rate_tables(p) for p in params]
    u = np.random.default_rng(seed).random((n_events, batch, 3))

    stack = lambda xs: jax.tree.map(lambda *leaves: jnp.stack(leaves), *xs)  # noqa: E731
    batched_state, batched_tables = stack(states), stack(tables)
    for i in range(n_events):
        batched_state, _ = _step_u_batch(batched_state, batched_tables, jnp.asarray(u[i]))
        states = [_step_u(s, t, jnp.asarray(u[i, b]))[0] for b, (s, t) in enumerate(zip(states, tables))]
        _pytrees_equal(batched_state, stack(states))

    keys = jax.random.split(jax.random.key(seed), batch)
    run_batch = jax.vmap(run, in_axes=(0, 0, 0, None))(batched_state, batched_tables, keys, RUN_EVENTS)
    run_single = [run(s, t, k, RUN_EVENTS) for s, t, k in zip(states, tables, keys)]
    _pytrees_equal(run_batch, stack(run_single))


@pytest.mark.slow
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_long_run_then_rebuild(temperature):
    """After a hundred engine events the incremental tree equals a from-scratch rebuild and
    the reference's from-scratch rates."""
    params = PhysicsParams(temperature=temperature)
    tables = make_rate_tables(params)
    state = init_flat((4, 5, 6), params)
    for i in range(5):
        state = run(state, tables, jax.random.fold_in(jax.random.key(int(temperature)), i), RUN_EVENTS)
    assert int(state.n_events) >= RUN_EVENTS
    assert_rebuild_matches(state, tables)
    ref = ReferenceLattice.from_engine(state, params)
    assert_matches_reference(state, tables, ref)


@pytest.mark.slow
def test_ceiling_state_is_frozen():
    """A stopped state (CEILING) is left unchanged by further runs and traces."""
    params = PhysicsParams(temperature=300.0)
    tables = make_rate_tables(params)
    lx, ly, lz = SHAPE
    heights = np.zeros((lx, ly), np.int64)
    heights[1, 2] = lz - 1
    species = np.zeros((lx, ly, lz), np.int8)
    species[..., 0] = SUBSTRATE
    species[1, 2, 1:] = [TI, O]
    species[0, 1, 1] = TI
    heights[0, 1] = 1
    state = from_arrays(heights, species, np.zeros_like(species), params)
    assert int(state.status) == CEILING
    assert_same_physical_state(run(state, tables, jax.random.key(0), RUN_EVENTS), state)
    _, info = trace(state, tables, jax.random.key(1), TRACE_EVENTS)
    assert not np.any(np.asarray(info.active))
    assert np.all(np.asarray(info.dt) == 0.0) and np.all(np.asarray(info.kind) == -1)


@pytest.mark.slow
def test_run_reaching_ceiling_stops():
    """A run that fills a column stops there: status CEILING, and nothing changes afterwards."""
    params = PhysicsParams(temperature=180.0)
    tables = make_rate_tables(params)
    state = run(init_flat(SHAPE, params), tables, jax.random.key(3), RUN_EVENTS)
    assert int(state.status) == CEILING
    heights = np.asarray(film_arrays(state)[0])
    assert heights.max() == SHAPE[2] - 1
    assert int(state.n_events) < RUN_EVENTS
    ref = ReferenceLattice.from_engine(state, params)
    assert ref.status == STATUS_CEILING
    assert_matches_reference(state, tables, ref)
    assert_same_physical_state(run(state, tables, jax.random.key(4), RUN_EVENTS), state)


@pytest.mark.slow
def test_no_events_state():
    """Without deposition a bare substrate has nothing to do: NO_EVENTS, and the clock stays finite."""
    params = PhysicsParams(temperature=300.0, deposition_rate=0.0)
    tables = make_rate_tables(params)
    for state in (init_flat(SHAPE, params), ReferenceLattice.flat(SHAPE, params).to_engine()):
        assert int(state.status) == NO_EVENTS
        assert float(state.total) == 0.0
        after = run(state, tables, jax.random.key(0), RUN_EVENTS)
        assert float(after.time) == 0.0 and int(after.n_events) == 0
        assert_same_physical_state(after, state)
        _, info = trace(state, tables, jax.random.key(1), TRACE_EVENTS)
        dt = np.asarray(info.dt)
        assert np.all(np.isfinite(dt)) and np.all(dt == 0.0)
        assert np.all(np.asarray(info.kind) == -1)
    assert ReferenceLattice.flat(SHAPE, params).status == 2


@pytest.mark.slow
def test_last_atom_desorbing_gives_no_events():
    """A single adatom that can only desorb (no deposition, hops barred): after it leaves, the
    state reports NO_EVENTS and further steps keep a finite clock."""
    params = PhysicsParams(temperature=600.0, deposition_rate=0.0, e_diff_ti=50.0, e_des_ti=0.5)
    tables = make_rate_tables(params)
    heights = np.zeros((3, 3), np.int64)
    heights[1, 1] = 1
    species = np.zeros((3, 3, 3), np.int8)
    species[..., 0] = SUBSTRATE
    species[1, 1, 1] = TI
    state = from_arrays(heights, species, np.zeros_like(species), params)
    assert int(state.status) == RUNNING
    state, info = trace(state, tables, jax.random.key(0), TRACE_EVENTS)
    assert np.asarray(info.kind).tolist() == [3] + [-1] * (TRACE_EVENTS - 1)
    assert int(state.status) == NO_EVENTS
    assert np.isfinite(float(state.time)) and float(state.time) > 0.0
    np.testing.assert_array_equal(np.asarray(state.desorbed), [1, 0])
