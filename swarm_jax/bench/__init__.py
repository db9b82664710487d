"""Benchmarks: ``python -m swarm_jax.bench {kmc,env,train,...}``.

Each suite is a module of this package exposing ``add_arguments(parser)`` and
``run(args) -> list[dict]`` (one dict per table row). The driver prints the rows as a table and
writes them, with the machine description, to JSON. Nothing here is a test: timings are reported,
never asserted.
"""
