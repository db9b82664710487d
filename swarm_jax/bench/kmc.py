"""KMC engine throughput: events/s of the JAX engine vs the from-scratch NumPy reference.

For each lattice size the engine first grows about one monolayer at 300 K (so the surface has
steps, bonds, oxide units and reaction channels, not a bare substrate), then times further events
at ``--temperature`` (default 600 K, where hops dominate, so long timed runs do not fill the box;
the step is branch-free, so its cost does not depend on which kind of event is drawn) with the
compile excluded. Batches are run with ``jax.vmap`` and, on CPU, sharded over the host devices
(one per core, set by the driver unless ``XLA_FLAGS`` is set) so all cores work. The NumPy
reference (``tests/reference.py``: recomputes every rate of the lattice before each event, as the
prototype this project replaces did) is timed on the same single lattices in the same run.

Accounting: events/s and µs per event count *executed* events only (a lattice that stopped at
the ceiling executes no more, and its remaining steps are not counted as events);
``kernels_per_event`` is the number of top-level operations of the compiled event loop body
(:mod:`swarm_jax.bench.hlo_count`). ``--against REV`` exports git revision REV's package to a
temporary folder and times it side by side with the current code on the same grown films: each
side runs in its own worker process (``kmc_worker.py``), and the rounds alternate between them.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from swarm_jax.bench.common import block
from swarm_jax.bench.hlo_count import event_loop_kernels
from swarm_jax.distributed import batch_mesh, data_sharding
from swarm_jax.physics import (
    PhysicsParams, engine, estimate_state_bytes, film_arrays, init_flat, make_rate_tables,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

DEFAULT_CASES = "8x8x40:1,1024;20x20x10:1,256;50x50x20:1,64;200x200x50:1"


def add_arguments(parser) -> None:
    parser.add_argument("--cases", default=DEFAULT_CASES,
                        help="lattices and batch sizes, LXxLYxLZ:BATCH,BATCH;...")
    parser.add_argument("--events", type=int, default=200_000,
                        help="timed events per lattice for batch 1; batches use events/batch^0.5, at least 2000")
    parser.add_argument("--growth-events", type=int, default=None,
                        help="events of film growth at 300 K before timing (default: 6 per column, about 1 ML)")
    parser.add_argument("--temperature", type=float, default=600.0, help="temperature of the timed events, K")
    parser.add_argument("--deposition-rate", type=float, default=1.0, help="total deposition flux, ML/s")
    parser.add_argument("--reference-seconds", type=float, default=10.0,
                        help="wall-clock budget per lattice for the NumPy reference, s; 0 skips it")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed")
    parser.add_argument("--against", default=None, metavar="REV",
                        help="also time git revision REV of this checkout, alternated with the current code")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds per case with --against")


def parse_cases(text: str) -> list[tuple[tuple[int, int, int], list[int]]]:
    cases = []
    for item in text.split(";"):
        size, batches = item.split(":")
        lattice = tuple(int(v) for v in size.lower().split("x"))
        cases.append((lattice, [int(b) for b in batches.split(",")]))
    return cases


def load_reference():
    """The NumPy reference from the repository's tests/ (None when run outside a checkout)."""
    path = Path(__file__).resolve().parents[2] / "tests" / "reference.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("swarm_jax_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_events_per_s(reference, state, params, budget_s: float, seed: int) -> float:
    """Events/s of the NumPy reference started from the same grown film."""
    ref = reference.ReferenceLattice.from_engine(state, params)
    rng = np.random.default_rng(seed)
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < budget_s and ref.status == 0:
        ref.step(rng)
        n += 1
    return n / (time.perf_counter() - t0)


def _batched_runner(tables, n_events: int, batch: int):
    """The jitted batched run, with the batch split over the local devices (see batch_mesh)."""
    batched = jax.vmap(lambda s, k: engine.run(s, tables, k, n_events))
    mesh = batch_mesh(batch)
    if mesh is None:
        return jax.jit(batched), None, 1
    sharding = data_sharding(mesh)
    fn = jax.jit(batched, in_shardings=(sharding, sharding), out_shardings=sharding)
    return fn, sharding, mesh.size


def run(args) -> list[dict]:
    if args.against:
        return run_against(args)
    params = PhysicsParams(temperature=args.temperature, deposition_rate=args.deposition_rate)
    tables = make_rate_tables(params)
    growth_params = params.replace(temperature=300.0)
    growth_tables = make_rate_tables(growth_params)
    reference = load_reference() if args.reference_seconds > 0 else None
    rows = []
    key = jax.random.key(args.seed)
    for lattice, batches in parse_cases(args.cases):
        lx, ly, lz = lattice
        sites = lx * ly * lz
        growth = args.growth_events if args.growth_events is not None else 6 * lx * ly
        grown = engine.run(init_flat(lattice, params), growth_tables, jax.random.fold_in(key, 1), growth)
        grown = block(engine.rebuild_rates(grown, tables))  # same film, rates at the timed temperature
        ref_eps = None
        if reference is not None:
            ref_eps = reference_events_per_s(reference, grown, params, args.reference_seconds, args.seed)
        for batch in batches:
            n_events = args.events if batch == 1 else max(2000, int(args.events / batch ** 0.5))
            if batch == 1:
                fn = jax.jit(lambda s, k: engine.run(s, tables, k, n_events))
                state, keys, n_dev = grown, jax.random.fold_in(key, 2), 1
                kernels = event_loop_kernels(fn.lower(state, keys).compile().as_text(), grown.species.shape)
            else:
                fn, sharding, n_dev = _batched_runner(tables, n_events, batch)
                kernels = None
                state = jax.tree.map(lambda x: jnp.broadcast_to(x, (batch,) + x.shape), grown)
                keys = jax.random.split(jax.random.fold_in(key, 2), batch)
                if sharding is not None:
                    state, keys = jax.device_put((state, keys), sharding)
            t0 = time.perf_counter()
            out = block(fn(state, keys))
            compile_s = time.perf_counter() - t0
            best = float("inf")
            for _ in range(2):
                t0 = time.perf_counter()
                out = block(fn(state, keys))
                best = min(best, time.perf_counter() - t0)
            executed = int(jnp.sum(out.n_events - state.n_events))
            eps = executed / best
            row = {
                "lattice": f"{lx}x{ly}x{lz}",
                "batch": batch,
                "devices": n_dev,
                "events_per_s": eps,
                "executed_events": executed,
                "requested_events": n_events * batch,
                "us_per_event_per_lattice": 1e6 * best * batch / max(executed, 1),
                "kernels_per_event": kernels["ops"] if kernels else None,
                "bytes_per_site": estimate_state_bytes(lattice) / sites,
                "compile_s": compile_s + 0.0,
                "numpy_ref_events_per_s": ref_eps if batch == 1 else None,
                "speedup_vs_numpy": (eps / ref_eps) if (batch == 1 and ref_eps) else None,
            }
            rows.append(row)
            print(f"  {row['lattice']} batch {batch}: {eps:,.0f} events/s", flush=True)
    return rows


# --------------------------------------------------------------------------- --against REV


def export_revision(rev: str, folder: Path) -> Path:
    """``git archive REV swarm_jax`` of this checkout, unpacked into ``folder``."""
    if not (REPO_ROOT / ".git").exists():
        raise SystemExit(f"--against: {REPO_ROOT} is not a git checkout")
    archive = folder / "rev.tar"
    with open(archive, "wb") as f:
        done = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", rev, "swarm_jax"], stdout=f,
                              stderr=subprocess.PIPE)
    if done.returncode != 0:
        raise SystemExit(f"--against: git archive {rev} failed: {done.stderr.decode().strip()}")
    with tarfile.open(archive) as tar:
        tar.extractall(folder / "src", filter="data")
    return folder / "src"


class Worker:
    """A ``kmc_worker.py`` process timing one package (``pythonpath``) on one film."""

    def __init__(self, pythonpath: Path, argv: list[str]):
        env = dict(os.environ, PYTHONPATH=str(pythonpath))
        script = Path(__file__).with_name("kmc_worker.py")
        self.proc = subprocess.Popen([sys.executable, str(script), *argv], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"worker for {pythonpath} failed to start (said {line!r})")

    def time_once(self) -> tuple[int, float]:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        executed, seconds = self.proc.stdout.readline().split()
        return int(executed), float(seconds)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def run_against(args) -> list[dict]:
    """Current code vs revision ``args.against``, same films, alternated rounds (best of each)."""
    params = PhysicsParams(temperature=args.temperature, deposition_rate=args.deposition_rate)
    growth_tables = make_rate_tables(params.replace(temperature=300.0))
    key = jax.random.key(args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sides = {"new": REPO_ROOT, "base": export_revision(args.against, tmp)}
        for lattice, batches in parse_cases(args.cases):
            lx, ly, lz = lattice
            growth = args.growth_events if args.growth_events is not None else 6 * lx * ly
            grown = engine.run(init_flat(lattice, params), growth_tables, jax.random.fold_in(key, 1), growth)
            film = tmp / f"film_{lx}x{ly}x{lz}.npz"
            heights, species, oxide = (np.asarray(a) for a in film_arrays(block(grown)))
            np.savez(film, heights=heights, species=species, oxide=oxide)
            for batch in batches:
                n_events = args.events if batch == 1 else max(2000, int(args.events / batch ** 0.5))
                row = {"lattice": f"{lx}x{ly}x{lz}", "batch": batch, "events": n_events}
                workers = {}
                for side, path in sides.items():
                    argv = [str(film), f"{lx}x{ly}x{lz}", str(batch), str(n_events), str(args.temperature),
                            str(args.deposition_rate), str(args.seed), str(tmp / f"{side}.hlo")]
                    workers[side] = Worker(path, argv)
                best = {side: float("inf") for side in sides}
                executed = {}
                for r in range(args.rounds):
                    order = list(sides) if r % 2 == 0 else list(sides)[::-1]
                    for side in order:
                        executed[side], seconds = workers[side].time_once()
                        best[side] = min(best[side], seconds)
                for side, worker in workers.items():
                    worker.close()
                    kernels = event_loop_kernels((tmp / f"{side}.hlo").read_text(), (lx * ly + 1, lz))
                    row[f"{side}_events_per_s"] = executed[side] / best[side]
                    row[f"{side}_us_per_event"] = 1e6 * best[side] * batch / max(executed[side], 1)
                    row[f"{side}_kernels_per_event"] = kernels["ops"]
                    row[f"{side}_executed"] = executed[side]
                row["speedup"] = row["new_events_per_s"] / row["base_events_per_s"]
                rows.append(row)
                print(f"  {row['lattice']} batch {batch}: {row['new_events_per_s']:,.0f} vs "
                      f"{row['base_events_per_s']:,.0f} events/s ({row['speedup']:.2f}x), kernels "
                      f"{row['new_kernels_per_event']} vs {row['base_kernels_per_event']}", flush=True)
    return rows
