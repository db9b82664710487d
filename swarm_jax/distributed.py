"""Multi-device and multi-host plumbing on JAX's own machinery (``jax.distributed``, ``jax.sharding``).

The data-parallel layout used throughout the package is one 1-D :class:`~jax.sharding.Mesh` with
the axis :data:`DATA_AXIS` (``"data"``):

* per-environment (per-replica) arrays — env states, observations, per-env counters, lattices of
  a batched simulation — are split along their leading axis over the mesh
  (``NamedSharding(mesh, P("data"))``, :func:`shard_batch`);
* everything else — network parameters, optimiser state, PRNG keys, global counters — is
  replicated on every device (``NamedSharding(mesh, P())``, :func:`replicate`).

A ``jax.jit`` function fed such arrays is compiled once for the whole mesh (SPMD): XLA runs each
device's share of the batch locally and inserts the collectives a global reduction needs (e.g. the
all-reduce of gradients when a loss is a mean over a sharded minibatch). The results are those of
the same program on one device up to floating-point summation order.

Multi-host: call :func:`initialize_distributed` first thing in the program (before any JAX
computation), on every host. Afterwards ``jax.devices()`` lists the devices of all hosts and a
mesh from :func:`make_data_mesh` spans them; every process runs the same program on the same
inputs (same seed), writes logs only if :func:`is_main_process`, and takes part in every
checkpoint save (orbax coordinates the hosts).

Example (2 hosts × 4 GPUs; host 0 is reachable as ``node0``)::

    # on node0
    SWARM_JAX_COORDINATOR=node0:12345 SWARM_JAX_NUM_PROCESSES=2 SWARM_JAX_PROCESS_ID=0 python train.py ...
    # on node1
    SWARM_JAX_COORDINATOR=node0:12345 SWARM_JAX_NUM_PROCESSES=2 SWARM_JAX_PROCESS_ID=1 python train.py ...

Under SLURM (``srun -N 2 --ntasks-per-node=1 python train.py ...``) or Open MPI (``mpirun -np 2``)
no address is needed: JAX detects the cluster itself.
"""

from __future__ import annotations

import os
import re
import socket
import time
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = [
    "DATA_AXIS",
    "ENV_COORDINATOR",
    "ENV_NUM_PROCESSES",
    "ENV_PROCESS_ID",
    "ENV_TIMEOUT",
    "DistributedError",
    "initialize_distributed",
    "is_main_process",
    "make_data_mesh",
    "data_sharding",
    "replicated_sharding",
    "shard_batch",
    "replicate",
    "put",
]

#: Name of the mesh axis the batch (environments, replicas) is split over.
DATA_AXIS = "data"

ENV_COORDINATOR = "SWARM_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "SWARM_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "SWARM_JAX_PROCESS_ID"
ENV_TIMEOUT = "SWARM_JAX_DISTRIBUTED_TIMEOUT"

#: Seconds a process waits for the coordinator (and JAX for every process to join) by default.
DEFAULT_TIMEOUT_S = 300.0

_initialized = False


class DistributedError(ValueError):
    """Invalid multi-process settings or an impossible device layout."""


# --------------------------------------------------------------------------------------------
# Multi-host start-up
# --------------------------------------------------------------------------------------------


def _int_setting(value: Any, name: str) -> Optional[int]:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DistributedError(f"{name} = {value!r}: must be an integer") from None


def _cluster_detected() -> bool:
    """Whether a multi-task launcher JAX can read by itself started this process (SLURM, Open MPI)."""
    for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        try:
            if int(os.environ.get(var, "1")) > 1:
                return True
        except ValueError:
            continue
    return False


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def wait_for_coordinator(address: str, timeout_s: float, poll_s: float = 0.5) -> None:
    """Block until a TCP connection to ``address`` (``host:port``) succeeds.

    JAX's own start-up waits for the coordinator and then aborts the process with a native stack
    trace; checking first turns an unreachable or mistyped ``--coordinator`` into one line.

    Raises:
        DistributedError: no connection within ``timeout_s`` seconds (the last reason is named).
    """
    host, port = _split_address(address)
    deadline = time.monotonic() + float(timeout_s)
    reason = "no attempt"
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(min(left, 5.0), 0.05)):
                return
        except OSError as err:
            reason = err.strerror or type(err).__name__
        if time.monotonic() + poll_s > deadline:
            raise DistributedError(
                f"coordinator {address} unreachable for {float(timeout_s):g} s ({reason}); start "
                f"process 0 first, check the host name and that port {port} is open, or raise "
                f"the timeout ({ENV_TIMEOUT} or --coordinator-timeout)")
        time.sleep(poll_s)


def initialize_distributed(
    coordinator_address: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
    local_device_ids: Optional[Sequence[int]] = None,
    auto_detect: bool = True,
    timeout_s: Optional[float] = None,
    log: Optional[Callable[[str], None]] = None,
) -> bool:
    """Start JAX's multi-process runtime (``jax.distributed.initialize``) if this is a multi-host run.

    Settings come from the arguments, else from the environment variables
    ``SWARM_JAX_COORDINATOR`` (``host:port`` of process 0), ``SWARM_JAX_NUM_PROCESSES`` and
    ``SWARM_JAX_PROCESS_ID``. When none is set and ``auto_detect``, a SLURM or Open MPI job with
    more than one task is handed to JAX's own cluster detection (``jax.distributed.initialize()``
    with no arguments). Otherwise, or with ``num_processes == 1``, nothing is done: a single
    process uses its local devices.

    Must run before any JAX computation (JAX raises otherwise). Calling it again is a no-op.

    Args:
        coordinator_address: ``"host:port"`` on which process 0 listens (every process passes the
            same value).
        num_processes: total number of processes (typically one per host).
        process_id: this process's rank in ``[0, num_processes)``.
        local_device_ids: restrict this process to these local devices (default: all).
        auto_detect: allow JAX's cluster auto-detection when nothing is given.
        timeout_s: how long a process other than 0 waits for the coordinator to accept
            connections, and JAX for all processes to join (default ``SWARM_JAX_DISTRIBUTED_TIMEOUT``
            or 300 s). Past it, a process other than 0 raises :class:`DistributedError`; JAX
            itself ends a process that cannot complete the start-up.
        log: where a line saying what this process waits for goes (default: nowhere).

    Returns:
        True if the multi-process runtime is (now) running, False for a single-process run.

    Raises:
        DistributedError: incomplete or inconsistent settings (e.g. a process count without a
            coordinator address, a process id out of range, an address without a port), a bad
            timeout, or a coordinator that cannot be reached within the timeout.
    """
    global _initialized
    if _initialized:
        return True
    address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    n_proc = _int_setting(
        num_processes if num_processes is not None else os.environ.get(ENV_NUM_PROCESSES),
        "num_processes",
    )
    proc_id = _int_setting(
        process_id if process_id is not None else os.environ.get(ENV_PROCESS_ID), "process_id"
    )

    if address is None and n_proc is None and proc_id is None:
        if auto_detect and _cluster_detected():
            jax.distributed.initialize(local_device_ids=local_device_ids)
            _initialized = True
            return True
        return False
    if n_proc is not None and n_proc < 1:
        raise DistributedError(f"num_processes = {n_proc}: must be >= 1")
    if n_proc == 1 and proc_id in (None, 0):
        return False
    missing = [name for name, v in (("coordinator address", address),
                                    ("number of processes", n_proc),
                                    ("process id", proc_id)) if v is None]
    if missing:
        raise DistributedError(
            "incomplete multi-process settings: missing " + ", ".join(missing) + f" (pass them, or "
            f"set {ENV_COORDINATOR}, {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} on every host)"
        )
    if not re.fullmatch(r"\[?[^\s\[\]]+\]?:\d+", address):
        raise DistributedError(f"coordinator address {address!r}: expected host:port, e.g. node0:12345")
    if not 0 <= proc_id < n_proc:
        raise DistributedError(f"process id {proc_id} is outside [0, {n_proc})")
    timeout = _timeout_setting(timeout_s)
    if log is not None:
        log(f"process {proc_id} of {n_proc}: joining the coordinator {address} "
            f"(waiting up to {timeout:g} s for it and the other processes)")
    if proc_id != 0:
        wait_for_coordinator(address, timeout)
    jax.distributed.initialize(
        coordinator_address=address,
        num_processes=n_proc,
        process_id=proc_id,
        local_device_ids=local_device_ids,
        initialization_timeout=max(int(timeout), 1),
    )
    _initialized = True
    return True


def _timeout_setting(timeout_s: Optional[float]) -> float:
    raw = timeout_s if timeout_s is not None else os.environ.get(ENV_TIMEOUT, DEFAULT_TIMEOUT_S)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise DistributedError(f"distributed timeout = {raw!r}: must be a number of seconds") from None
    if not 0 < value <= 86400:
        raise DistributedError(f"distributed timeout = {raw!r}: must be in (0, 86400] s")
    return value


def is_main_process() -> bool:
    """True on process 0 (the one that logs and writes files other than checkpoints)."""
    return jax.process_index() == 0


# --------------------------------------------------------------------------------------------
# Mesh and shardings
# --------------------------------------------------------------------------------------------


def make_data_mesh(
    n_devices: Optional[int] = None, n_envs: Optional[int] = None, platform: Optional[str] = None
) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``n_devices`` devices per process.

    Args:
        n_devices: devices to use on each process (default: all local devices). In a multi-host
            run the mesh holds ``n_devices × jax.process_count()`` devices, process by process.
        n_envs: global batch (environments, replicas) that will be split over the mesh; if
            given, it must be a multiple of the mesh size.
        platform: device platform (``"cpu"``, ``"gpu"``, ...); default: JAX's default backend.

    Raises:
        DistributedError: ``n_devices`` < 1 or more than the devices available on a process, or
            ``n_envs`` not a multiple of the mesh size.
    """
    devices = jax.devices(platform) if platform else jax.devices()
    per_process: dict[int, list] = {}
    for d in devices:
        per_process.setdefault(d.process_index, []).append(d)
    available = min(len(v) for v in per_process.values())
    if n_devices is None:
        n_devices = available
    n_devices = int(n_devices)
    if n_devices < 1:
        raise DistributedError(f"n_devices = {n_devices}: must be >= 1")
    if n_devices > available:
        kind = devices[0].platform
        hint = (
            " (for several CPU devices set XLA_FLAGS=--xla_force_host_platform_device_count=N "
            "before JAX starts)" if kind == "cpu" else ""
        )
        raise DistributedError(
            f"n_devices = {n_devices} but only {available} {kind} device(s) are available "
            f"per process{hint}"
        )
    chosen = [d for p in sorted(per_process) for d in per_process[p][:n_devices]]
    if n_envs is not None and int(n_envs) % len(chosen):
        raise DistributedError(
            f"n_envs = {n_envs} is not divisible by the {len(chosen)} devices of the mesh: each "
            "device must hold the same number of environments (choose n_envs as a multiple)"
        )
    return Mesh(np.asarray(chosen), (DATA_AXIS,))


def batch_mesh(batch: int) -> Optional[Mesh]:
    """A data mesh over the largest number of local devices that divides ``batch``, or None
    when that is one device (batched replicas and benchmark batches are split this way)."""
    n = max(d for d in range(1, jax.local_device_count() + 1) if batch % d == 0)
    return make_data_mesh(n, n_envs=batch) if n > 1 else None


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over ``"data"``, other axes whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, P())


def put(x: Any, sharding: NamedSharding) -> jax.Array:
    """Place one array (jax or numpy, typed PRNG keys included) with ``sharding``.

    Single-process: ``jax.device_put``. Multi-process: built from this process's copy of the full
    value with ``jax.make_array_from_callback`` (every process must pass the same value).
    """
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(x)
        return jax.random.wrap_key_data(put(jax.random.key_data(x), sharding), impl=impl)
    arr = np.asarray(x)
    return jax.make_array_from_callback(arr.shape, sharding, lambda index: arr[index])


def shard_batch(tree: Any, mesh: Mesh) -> Any:
    """Every leaf of ``tree`` split along its leading (batch) axis over the mesh's ``"data"`` axis.

    Raises:
        DistributedError: a leaf is a scalar or its leading axis is not a multiple of the mesh size.
    """
    sharding = data_sharding(mesh)
    size = mesh.size

    def one(path, x):
        shape = np.shape(x)
        if len(shape) == 0 or shape[0] % size:
            raise DistributedError(
                f"leaf {jax.tree_util.keystr(path)} with shape {tuple(shape)} cannot be split over "
                f"{size} devices along its leading axis"
            )
        return put(x, sharding)

    return jax.tree_util.tree_map_with_path(one, tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf of ``tree`` copied whole onto each device of the mesh."""
    sharding = replicated_sharding(mesh)
    return jax.tree.map(lambda x: put(x, sharding), tree)
