"""python -m swarm_jax.bench SUITE [options]: run one benchmark suite, print a table, write JSON.

Each suite has its own options: python -m swarm_jax.bench SUITE --help."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from swarm_jax.bench import HelpFormatter, plain_text

SUITES = {
    "kmc": "swarm_jax.bench.kmc",
    "env": "swarm_jax.bench.env",
    "train": "swarm_jax.bench.train",
    "scaling": "swarm_jax.bench.scaling",
    "learning": "swarm_jax.bench.learning",
    "sampling": "swarm_jax.bench.sampling",
    "evaluate": "swarm_jax.bench.evaluate",
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["kmc"] and "XLA_FLAGS" not in os.environ:
        # One XLA thread per lattice and one host device per core: XLA's
        # intra-op threading slows the tiny ops of a KMC step, and batches use every core as
        # shards. Set before any suite is imported: importing gymnax starts JAX's backend.
        os.environ["XLA_FLAGS"] = (f"--xla_cpu_multi_thread_eigen=false "
                                   f"--xla_force_host_platform_device_count={os.cpu_count() or 1}")
    parser = argparse.ArgumentParser(prog="python -m swarm_jax.bench", description=__doc__,
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="suite", required=True)
    modules = {}
    for name, module_name in SUITES.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:  # a suite whose module is missing is simply not offered
            if err.name != module_name:
                raise
            continue
        modules[name] = module
        doc = plain_text(module.__doc__)
        p = sub.add_parser(name, help=doc.splitlines()[0], description=doc, formatter_class=HelpFormatter)
        p.add_argument("--json", default=f"bench_results/{name}.json", help="where to write the JSON results")
        module.add_arguments(p)
    args = parser.parse_args(argv)
    import swarm_jax

    swarm_jax.enable_x64()  # before any suite builds arrays
    from swarm_jax.bench.common import format_table, machine_info, write_json
    from swarm_jax.training.checkpoint import quiet_orbax_write_failures

    quiet_orbax_write_failures()  # the learning suite trains (and checkpoints) a policy

    module = modules[args.suite]
    info = machine_info()
    print(f"# {args.suite} benchmark on {info['cpu']} ({info['cpu_count']} cores), backend {info['backend']}, jax {info['jax']}")
    rows = module.run(args)
    print(format_table(rows, getattr(module, "TABLE_COLUMNS", None)))
    path = write_json(args.json, args.suite, rows)
    print(f"# wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
