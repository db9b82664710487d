"""One side of ``bench kmc --against``: times ``engine.run`` of whichever ``swarm_jax`` is first
on ``PYTHONPATH`` (the current checkout or an exported older revision), on a given film.

Run as a script: ``python kmc_worker.py FILM.npz LXxLYxLZ BATCH EVENTS TEMPERATURE RATE SEED HLO``.
It builds the state with ``from_arrays`` (public in every revision), compiles, writes the
compiled HLO text to ``HLO``, prints ``ready``, and then for every ``go`` line on stdin times one
run from the same start and prints ``EXECUTED SECONDS``. Uses only APIs every revision has.
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from swarm_jax.physics import PhysicsParams, engine, from_arrays, make_rate_tables


def main(argv):
    # The flag itself, not swarm_jax.enable_x64(): revisions before that function existed set
    # the flag on import, and this worker must run against them too.
    jax.config.update("jax_enable_x64", True)
    film, size, batch, n_events, temperature, rate, seed, hlo_path = argv
    batch, n_events, seed = int(batch), int(n_events), int(seed)
    params = PhysicsParams(temperature=float(temperature), deposition_rate=float(rate))
    tables = make_rate_tables(params)
    data = np.load(film)
    state = from_arrays(data["heights"], data["species"], data["oxide"], params)
    key = jax.random.key(seed)
    if batch == 1:
        fn = jax.jit(lambda s, k: engine.run(s, tables, k, n_events))
        keys = key
    else:
        fn = jax.jit(jax.vmap(lambda s, k: engine.run(s, tables, k, n_events)))
        state = jax.tree.map(lambda x: jnp.broadcast_to(x, (batch,) + x.shape), state)
        keys = jax.random.split(key, batch)
    with open(hlo_path, "w") as f:
        f.write(jax.jit(lambda s, k: engine.run(s, tables, k, n_events)).lower(
            jax.tree.map(lambda x: x[0], state) if batch > 1 else state, key).compile().as_text())
    jax.block_until_ready(fn(state, keys))
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(state, keys))
        seconds = time.perf_counter() - t0
        executed = int(jnp.sum(out.n_events - state.n_events))
        print(f"{executed} {seconds!r}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
