"""Run safety: numeric fault detection and clean interruption of a training loop.

Both are host-side and meant to be used *between* jitted chunks of updates::

    with GracefulInterrupt() as interrupt:
        while step < total:
            runner_state, metrics = train_chunk(runner_state)
            fault = check_finite(runner_state.params, "params") or check_finite(metrics, "metrics")
            if fault:
                raise NumericalFault(f"update {step}: {fault}")  # last good checkpoint stays
            ...
            if interrupt.requested:
                store.save(step, runner_state, config)  # then leave the loop cleanly
                break
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["GracefulInterrupt", "NumericalFault", "assert_finite", "check_finite"]


class NumericalFault(RuntimeError):
    """A NaN or infinity appeared in the training state or metrics."""


@jax.jit
def _finite_flags(leaves: list[jax.Array]) -> jax.Array:
    """(n_leaves,) bool: whether every entry of each leaf is finite (computed on device)."""
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


def _is_inexact(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return isinstance(x, (float, complex))
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return False
    return jnp.issubdtype(dtype, jnp.inexact)


def _describe(values: np.ndarray) -> tuple[str, str]:
    """('NaN' if any entry is NaN else 'inf', a count of each kind of non-finite entry)."""
    n_nan = int(np.isnan(values).sum())
    n_pos = int(np.isposinf(values).sum()) if np.isrealobj(values) else 0
    n_neg = int(np.isneginf(values).sum()) if np.isrealobj(values) else 0
    if not np.isrealobj(values):  # complex: whatever is not finite counts as NaN/inf
        n_nan = int((~np.isfinite(values)).sum())
    kind = "NaN" if n_nan else "inf"
    parts = [f"{n} {name}" for n, name in ((n_nan, "NaN"), (n_pos, "+inf"), (n_neg, "-inf")) if n]
    return kind, f"{', '.join(parts)} of {values.size} entries"


def check_finite(tree: Any, where: str = "") -> str | None:
    """None if all floating-point leaves of ``tree`` are finite, else a message naming the first.

    The message reads e.g. ``"NaN in params['actor']['Dense_0']['kernel'] (3 NaN of 12 entries)"``:
    ``where`` followed by the leaf's path (:func:`jax.tree_util.keystr`). Integer, boolean and
    PRNG-key leaves are skipped. Device arrays are reduced on device; only the offending leaf is
    copied to the host.
    """
    flat = [
        (path, leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
        if _is_inexact(leaf)
    ]
    if not flat:
        return None
    on_device = [isinstance(x, jax.Array) for _, x in flat]
    ok = np.ones(len(flat), dtype=bool)
    if any(on_device):
        ok[np.asarray(on_device)] = np.asarray(
            _finite_flags([x for (_, x), d in zip(flat, on_device) if d])
        )
    for i, ((_, x), d) in enumerate(zip(flat, on_device)):
        if not d:
            ok[i] = bool(np.all(np.isfinite(np.asarray(x))))
    if ok.all():
        return None
    path, leaf = flat[int(np.argmin(ok))]
    kind, counts = _describe(np.asarray(jax.device_get(leaf)))
    return f"{kind} in {where}{jax.tree_util.keystr(path)} ({counts})"


def assert_finite(tree: Any, where: str = "") -> None:
    """Raise :class:`NumericalFault` with the message of :func:`check_finite` if not finite."""
    message = check_finite(tree, where)
    if message is not None:
        raise NumericalFault(message)


class GracefulInterrupt:
    """Turn the first SIGINT/SIGTERM into a flag the training loop polls between chunks.

    Inside the ``with`` block the first SIGINT (Ctrl-C) or SIGTERM (scheduler pre-emption) only
    sets :attr:`requested` (and records :attr:`signal_name`), so the loop can finish the current
    chunk, save a checkpoint and exit cleanly. A second SIGINT raises :class:`KeyboardInterrupt`
    at once (the user insists); repeated SIGTERMs keep the flag set. The previous handlers are
    restored on exit. Outside the main thread (where Python cannot install signal handlers) the
    context does nothing and :attr:`installed` is False.

    Args:
        signals: the signals to intercept (default SIGINT and SIGTERM).
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)):
        self.signals = tuple(signals)
        self.requested = False
        self.signal_name: str | None = None
        self.installed = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping immediately")
        if not self.requested:
            self.requested = True
            self.signal_name = signal.Signals(signum).name

    @property
    def message(self) -> str | None:
        """A line for the log once a signal arrived, else None."""
        if not self.requested:
            return None
        return (f"received {self.signal_name}: saving a checkpoint and stopping "
                "(send SIGINT again to stop immediately)")

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
            self.installed = True
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        self.installed = False

    def __bool__(self) -> bool:
        return self.requested


def available_memory_bytes() -> int | None:
    """Memory a new allocation can get, in bytes: the accelerator's free memory (``bytes_limit -
    bytes_in_use`` of device 0) when JAX runs on one that reports it, else ``MemAvailable`` of
    ``/proc/meminfo``; None where neither can be read."""
    try:
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            stats = device.memory_stats() or {}
            if "bytes_limit" in stats:
                return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    except Exception:  # noqa: BLE001  (no backend, or a backend without memory statistics)
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
