"""swarm_jax/physics/local_access.py: element reads and writes through dynamic slices equal
gather and scatter, and the engine gives the same states bit for bit whichever path it takes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import swarm_jax  # noqa: F401  (64-bit mode: tests/conftest.py)
from swarm_jax.physics import PhysicsParams, engine, init_flat, local_access, make_rate_tables

BIG = (700, 400)  # int8, 280 kB: above SPLIT_BYTES, so the sliced path is taken


def _big_array(seed):
    return jnp.asarray(np.random.default_rng(seed).integers(-100, 100, BIG), jnp.int8)


def test_big_array_takes_the_sliced_path():
    a = _big_array(0)
    assert local_access._sliced(a, 8, local_access.MAX_TAKEN)
    assert not local_access._sliced(a[:10], 8, local_access.MAX_TAKEN)
    assert not local_access._sliced(a, local_access.MAX_TAKEN + 1, local_access.MAX_TAKEN)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, local_access.MAX_TAKEN))
def test_take_equals_gather(seed, n):
    rng = np.random.default_rng(seed)
    a = _big_array(seed)
    rows = jnp.asarray(rng.integers(0, BIG[0], n), jnp.int32)
    cols = jnp.asarray(rng.integers(0, BIG[1], n), jnp.int32)
    take = jax.jit(local_access.take)
    np.testing.assert_array_equal(take(a, rows, cols), a[rows, cols])
    np.testing.assert_array_equal(take(a, rows), a[rows])  # whole rows
    np.testing.assert_array_equal(take(a, rows[:, None], cols[:, None]), a[rows[:, None], cols[:, None]])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 24))
def test_put_equals_scatter(seed, n):
    rng = np.random.default_rng(seed)
    a = _big_array(seed)
    rows = rng.integers(0, BIG[0], n)
    cols = rng.integers(0, BIG[1], n)
    rows[-1], cols[-1] = rows[0], cols[0]  # a duplicate index
    idx = [jnp.asarray(rows, jnp.int32), jnp.asarray(cols, jnp.int32)]
    vals = jnp.asarray(rng.integers(-100, 100, n), jnp.int8)
    vals_set = vals.at[-1].set(vals[0])  # duplicates carry identical values with set
    put = jax.jit(local_access.put, static_argnames="add")
    np.testing.assert_array_equal(put(a, idx, vals_set), a.at[tuple(idx)].set(vals_set))
    np.testing.assert_array_equal(put(a, idx, vals, add=True), a.at[tuple(idx)].add(vals))


def _run_fn(tables, n_events):
    """A fresh jitted event loop (a new function object, so it is traced with the current
    ``local_access`` settings)."""
    def run(state, key):
        def body(i, s):
            u = jax.random.uniform(jax.random.fold_in(key, i), (3,), jnp.float64)
            return engine.step_with_uniforms(s, tables, u)[0]
        return jax.lax.fori_loop(0, n_events, body, state)
    return jax.jit(run)


@pytest.mark.parametrize("size,seed", [((6, 5, 6), 0), ((8, 8, 10), 1)])
def test_engine_is_bit_identical_on_the_sliced_path(monkeypatch, size, seed):
    """Forcing the sliced path on a small lattice (SPLIT_BYTES = 0) must not change a single
    bit of the trajectory: the gather/scatter path is the one checked against the NumPy
    reference in tests/test_engine_properties.py."""
    params = PhysicsParams(temperature=300.0)
    tables = make_rate_tables(params)
    key = jax.random.key(seed)
    grown = engine.run(init_flat(size, params), tables, jax.random.fold_in(key, 1), 6 * size[0] * size[1])
    hot = make_rate_tables(params.replace(temperature=600.0))
    grown = engine.rebuild_rates(grown, hot)
    assert int(grown.status) == 0  # running
    plain = _run_fn(hot, 600)(grown, key)
    monkeypatch.setattr(local_access, "SPLIT_BYTES", 0)
    sliced = _run_fn(hot, 600)(grown, key)
    assert int(sliced.n_events) > int(grown.n_events)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(sliced)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rebuilt = engine.rebuild_rates(sliced, hot)
    np.testing.assert_array_equal(np.asarray(rebuilt.tree), np.asarray(sliced.tree))
    c = sliced.n_columns  # the dummy column's scratch rows are not state
    np.testing.assert_array_equal(np.asarray(rebuilt.react_class[:c]), np.asarray(sliced.react_class[:c]))
