"""The compiled event loop must update the lattice in place.

XLA keeps a scatter in place only when every read of the old buffer feeds that scatter; if not,
it silently copies the whole array on every event (the in-place note of swarm_jax/physics/engine.py). This
test compiles the engine's run loop and the vmapped batch loop and asserts that no instruction
inside a while-loop body copies an array of the state's size.
"""

import re

import jax
import pytest

from swarm_jax.physics import PhysicsParams, engine, init_flat, make_rate_tables

pytestmark = pytest.mark.slow  # not in the quick tier: compiles the run loops to read their HLO


def _while_bodies(hlo_text: str) -> list[str]:
    """Text of every computation that is used as a while body (or is called from inside one)."""
    computations = {}
    name = None
    for line in hlo_text.splitlines():
        header = re.match(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if header and "=" not in line.split("{")[0]:
            name = header.group(1)
            computations[name] = []
        elif name is not None:
            computations[name].append(line)
    bodies = set()
    for lines in computations.values():
        for line in lines:
            for m in re.finditer(r"body=%?([\w.\-]+)", line):
                bodies.add(m.group(1))
    # Follow calls made from the bodies (XLA wraps loop bodies in called computations).
    frontier = list(bodies)
    while frontier:
        current = frontier.pop()
        for line in computations.get(current, []):
            for m in re.finditer(r"(?:to_apply|calls|body|condition)=%?([\w.\-]+)", line):
                if m.group(1) not in bodies:
                    bodies.add(m.group(1))
                    frontier.append(m.group(1))
    return ["\n".join(computations[b]) for b in bodies if b in computations]


def _state_sized_copies(hlo_text: str, state) -> list[str]:
    big = {
        str(state.species.shape[0]),  # rows of species/oxide/react_class and heights
        str(state.tree.shape[0]),
    }
    found = []
    for body in _while_bodies(hlo_text):
        for line in body.splitlines():
            if " copy(" not in line and "copy-start" not in line:
                continue
            dims = re.search(r"=\s*\w+\[([\d,]*)\]", line)
            if dims and any(d in big for d in dims.group(1).split(",")):
                found.append(line.strip()[:160])
    return found


@pytest.mark.parametrize("size", [(8, 8, 5), (50, 50, 20)])
def test_run_loop_has_no_state_sized_copy(size):
    params = PhysicsParams(temperature=300.0)
    tables = make_rate_tables(params)
    state = init_flat(size, params)
    hlo = engine.run.lower(state, tables, jax.random.key(0), 2048).compile().as_text()
    assert _while_bodies(hlo), "no while loop found in the compiled run"
    assert _state_sized_copies(hlo, state) == []


def test_batched_run_loop_has_no_state_sized_copy():
    params = PhysicsParams(temperature=300.0)
    tables = make_rate_tables(params)
    state = jax.vmap(lambda _: init_flat((20, 20, 10), params))(jax.numpy.arange(4))
    keys = jax.random.split(jax.random.key(0), 4)
    batched = jax.jit(jax.vmap(lambda s, k: engine.run(s, tables, k, 1024)))
    hlo = batched.lower(state, keys).compile().as_text()
    assert _while_bodies(hlo)
    single = jax.tree.map(lambda x: x[0], state)
    assert _state_sized_copies(hlo, single) == []


def test_detector_sees_a_planted_copy():
    """The check must be able to fail: a loop that reads the old buffer after writing it."""
    params = PhysicsParams()
    state = init_flat((8, 8, 5), params)

    def body(i, s):
        new_species = s.species.at[i % 64, 1].set(1)
        # Reading the *old* species after the scatter forces XLA to keep both buffers.
        return s.replace(species=new_species, time=s.time + s.species[(i + 7) % 64, 1])

    looped = jax.jit(lambda s: jax.lax.fori_loop(0, 100, body, s))
    hlo = looped.lower(state).compile().as_text()
    assert _state_sized_copies(hlo, state) != []
