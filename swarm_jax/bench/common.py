"""Shared helpers for the benchmark suites: timing, machine description, table and JSON output."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import jax


def machine_info() -> dict:
    """Where the numbers were measured (named in every JSON and README table)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    devices = jax.devices()
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "devices": [d.device_kind for d in devices],
        "jax": jax.__version__,
        "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def block(tree):
    """Waits for every array in a pytree (jax.block_until_ready on all leaves)."""
    return jax.block_until_ready(tree)


def timed(fn, *args, repeats: int = 3):
    """Calls ``fn(*args)`` ``repeats`` times after one warm-up call; returns (best seconds, result)."""
    out = block(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = block(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best, out


def format_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Renders rows as a fixed-width text table (floats in compact scientific/plain form)."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0].keys())

    def fmt(v):
        if isinstance(v, float):
            if v == 0 or 1e-2 <= abs(v) < 1e5:
                return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
            return f"{v:.3e}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.rjust(w) for c, w in zip(columns, widths))
    sep = "  ".join("-" * w for w in widths)
    body = "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells)
    return f"{line}\n{sep}\n{body}"


def write_json(path: str | Path, suite: str, rows: list[dict], extra: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"suite": suite, "machine": machine_info(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows}
    if extra:
        payload.update(extra)
    path.write_text(json.dumps(payload, indent=2, default=float))
    return path
