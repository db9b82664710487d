"""What a production run writes: the streamed time series, its rows, and the final outputs
(``timeseries.csv``, ``final_state.npz``, ``height_map.png``, ``summary.json``; see
:mod:`swarm_jax.simulate` for their contents and units).

Every output is written whole or not at all (:func:`write_outputs`: staged as ``.<name>.new``,
renamed into place together, summary.json last).
"""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import signal
from dataclasses import dataclass
from typing import Optional

import jax
import numpy as np

import swarm_jax
from swarm_jax.analysis import importance, plots
from swarm_jax.env.tio2_env import METRIC_KEYS
from swarm_jax.outdir import atomic_write_text, atomic_writer
from swarm_jax.physics import STATUS_NAMES
from swarm_jax.production.config import SimulationConfig, load_trained_policy
from swarm_jax.swarm import full_lattice

__all__ = [
    "SimulationResult", "TIMESERIES_COLUMNS", "LATTICE_CONSTANT_ANGSTROM", "FINAL_OBSERVABLES",
    "OUTPUT_FILES", "WEIGHTED_OBSERVABLES", "read_timeseries_rows", "replica_status_names", "log_rows",
    "TimeseriesStream", "write_timeseries", "write_final_state", "importance_estimates",
    "build_summary", "write_outputs",
]

LATTICE_CONSTANT_ANGSTROM = 4.59  # rutile TiO2 a, Å (docs/physics.md)
TIMESERIES_COLUMNS = (
    "replica", "event", "time", "mean_height", "roughness", "coverage", "n_ti", "n_o",
    "oxide_fraction", "o_ti_ratio", "n_deposited", "n_desorbed", "log_weight", "ess", "status",
)
FINAL_OBSERVABLES = ("mean_height", "roughness", "coverage", "o_ti_ratio", "oxide_fraction",
                     "n_ti", "n_o", "time")


_INT_COLUMNS = {"replica", "event", "n_ti", "n_o", "n_deposited", "n_desorbed"}


def read_timeseries_rows(path: str) -> list:
    """Rows of a time-series CSV written here, typed back (floats round-trip exactly)."""
    def typed(key, text):
        if key == "status":
            return text
        return int(text) if key in _INT_COLUMNS else float(text)

    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: typed(k, v) for k, v in row.items()} for row in csv.DictReader(fh)]


@dataclass
class SimulationResult:
    """What :func:`~swarm_jax.production.run.simulate` produced (host arrays; replica axis first).

    The time series is streamed to ``timeseries_path`` while the run goes (its size grows with
    the run, host memory does not); :attr:`rows` reads it back."""

    timeseries_path: str  # CSV, TIMESERIES_COLUMNS
    heights: np.ndarray  # (R, Lx, Ly) int32
    species: np.ndarray  # (R, Lx, Ly, Lz) int8
    oxide: np.ndarray  # (R, Lx, Ly, Lz) int8
    final: dict  # observable -> (R,) array, plus n_events, status
    status: str  # "completed", "ceiling", "no_events" or "interrupted"
    message: str
    engine_seconds: float
    loop_seconds: float
    compile_seconds: float
    resumed_from: Optional[int] = None  # events per replica of the checkpoint resumed, if any
    signal_name: Optional[str] = None  # "SIGINT" / "SIGTERM" when interrupted

    @property
    def exit_code(self) -> int:
        """The command line's exit status: 128 + the signal when interrupted (130 SIGINT, 143
        SIGTERM), else 0."""
        if self.status != "interrupted":
            return 0
        return 128 + int(signal.Signals[self.signal_name or "SIGINT"])

    @property
    def rows(self) -> list:
        """The time-series rows as dicts with typed values (int, float, str per column)."""
        return read_timeseries_rows(self.timeseries_path)


def _status_name(code: int) -> str:
    return STATUS_NAMES.get(int(code), f"status_{int(code)}")


def replica_status_names(codes, end_status: Optional[str]) -> list:
    """Status names per replica; replicas still running at the end of the run get the run's end
    (``done`` when completed, ``interrupted``, or ``stopped`` when another replica stopped it)."""
    names = [_status_name(s) for s in codes]
    if end_status is None:
        return names
    return [end_status if n == "running" else n for n in names]


def log_rows(values: dict, log_weight, ess, end_status: Optional[str] = None) -> list:
    statuses = replica_status_names(values["status"], end_status)
    rows = []
    for r in range(values["n_events"].shape[0]):
        rows.append(dict(
            replica=r, event=int(values["n_events"][r]), time=float(values["time"][r]),
            mean_height=float(values["mean_height"][r]), roughness=float(values["roughness"][r]),
            coverage=float(values["coverage"][r]), n_ti=int(values["n_ti"][r]),
            n_o=int(values["n_o"][r]), oxide_fraction=float(values["oxide_fraction"][r]),
            o_ti_ratio=float(values["o_ti_ratio"][r]), n_deposited=int(values["n_deposited"][r]),
            n_desorbed=int(values["n_desorbed"][r]), log_weight=float(log_weight[r]),
            ess=float(ess[r]), status=statuses[r],
        ))
    return rows


class TimeseriesStream:
    """Appends time-series rows to ``path`` (flushed per write, fsynced at checkpoints)."""

    def __init__(self, path: str, keep_bytes: Optional[int]):
        new = keep_bytes is None or not os.path.exists(path)
        self._fh = open(path, "w" if new else "r+", newline="", encoding="utf-8")
        if not new:
            self._fh.truncate(keep_bytes)
            self._fh.seek(keep_bytes)
        self._writer = csv.DictWriter(self._fh, fieldnames=list(TIMESERIES_COLUMNS))
        if new:
            self._writer.writeheader()
            self._fh.flush()

    def write(self, rows: list) -> None:
        self._writer.writerows(rows)
        self._fh.flush()

    def sync(self) -> int:
        """fsync and return the file length (bytes)."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        return self._fh.tell()

    @property
    def closed(self) -> bool:
        return self._fh.closed

    def close(self) -> None:
        self._fh.close()


# =========================================================================== outputs


def write_timeseries(path: str, source: str) -> None:
    """Copies the streamed time series ``source`` to ``path`` atomically."""
    def copy(fh):
        with open(source, "rb") as src:
            shutil.copyfileobj(src, fh)

    atomic_writer(path, copy, "wb")


def write_final_state(path: str, result: SimulationResult) -> None:
    """``heights``/``species``/``oxide`` with the replica axis dropped when R = 1 (atomic)."""
    squeeze = (lambda a: a[0]) if result.heights.shape[0] == 1 else (lambda a: a)
    atomic_writer(path, lambda fh: np.savez_compressed(
        fh, heights=squeeze(result.heights).astype(np.int32),
        species=squeeze(result.species).astype(np.int8),
        oxide=squeeze(result.oxide).astype(np.int8)), "wb")


WEIGHTED_OBSERVABLES = METRIC_KEYS  # the film observables learners report


def importance_estimates(final: dict, log_weight) -> dict:
    """Self-normalised importance estimates ``Σ W A / Σ W`` over replicas of the final roughness,
    coverage, O/Ti and mean height, each with its delta-method standard error (``None`` for one
    replica), plus the batch ESS, the PSIS tail shape ``khat`` and ``reliable``/``reasons``
    (:func:`swarm_jax.analysis.importance.weighted_estimates`)."""
    observables = {name: np.asarray(final[name], np.float64) for name in WEIGHTED_OBSERVABLES}
    return importance.weighted_estimates(observables, np.asarray(log_weight, np.float64))


def build_summary(config: SimulationConfig, result: SimulationResult, state_bytes: int,
                  estimated_bytes: int) -> dict:
    executed = [int(n) for n in result.final["n_events"]]
    total_events = sum(executed)
    final = {k: importance.mean_stderr(result.final[k]) for k in FINAL_OBSERVABLES if k != "time"}
    final["roughness_angstrom"] = importance.mean_stderr(
        np.asarray(result.final["roughness"]) * LATTICE_CONSTANT_ANGSTROM)
    return {
        "lattice_size": list(config.lattice_size),
        "lattice_constant_angstrom": LATTICE_CONSTANT_ANGSTROM,
        "temperature": config.temperature,
        "deposition_rate": config.deposition_rate,
        "o_ti_flux_ratio": config.o_ti_flux_ratio,
        "physics_overrides": dict(config.physics),
        "policy": config.policy,
        "mode": config.mode,
        "trained_policy": _policy_summary(config, result),
        "replicas": config.replicas,
        "seed": config.seed,
        "monolayers_requested": config.monolayers,
        "events_requested": config.events,
        "events_executed": executed,
        "n_events": executed[0] if config.replicas == 1 else executed,
        "log_every": config.log_every,
        "check_every": config.check_every,
        "resumed_from_events": result.resumed_from,
        "physical_time_s": importance.mean_stderr(result.final["time"]),
        "final": final,
        "log_weight": np.asarray(result.final["log_weight"], np.float64).tolist(),
        "ess": np.asarray(result.final["ess"], np.float64).tolist(),
        "importance_weighted": importance_estimates(result.final, result.final["log_weight"]),
        "status": result.status,
        "replica_status": result.final["status"],
        "message": result.message,
        "events_per_second": (total_events / result.engine_seconds
                              if result.engine_seconds > 0 else None),
        "events_per_second_with_logging": (total_events / result.loop_seconds
                                           if result.loop_seconds > 0 else None),
        "engine_seconds": result.engine_seconds,
        "compile_seconds": result.compile_seconds,
        "peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "state_bytes_per_replica": state_bytes,
        "estimated_run_bytes": estimated_bytes,
        "command": config.command,
        "package_version": swarm_jax.__version__,
        "jax_version": jax.__version__,
        "jax_backend": jax.default_backend(),
    }


def _policy_summary(config: SimulationConfig, result: SimulationResult) -> Optional[dict]:
    if config.policy != "trained":
        return None
    policy = dict(load_trained_policy(config.checkpoint).summary(), mode=config.mode)
    if config.mode == "full":
        policy.update(context_refresh_events=config.context_refresh,
                      react_slots=config.react_slots, score_clip=full_lattice.F_CLIP)
    if "step_ess_mean" in result.final:
        policy["step_ess_mean"] = np.asarray(result.final["step_ess_mean"], np.float64).tolist()
    return policy


OUTPUT_FILES = ("timeseries.csv", "final_state.npz", "height_map.png", "summary.json")


def write_outputs(config: SimulationConfig, result: SimulationResult, summary: dict) -> None:
    """Writes timeseries.csv, final_state.npz, height_map.png and summary.json into --out.

    Each file is first written whole (temporary file, fsync, rename) under a staging name
    ``.<name>.new``; only when all four are written are they renamed into place (summary.json
    last). Raises :class:`swarm_jax.outdir.OutputWriteError` (an ``OSError``) on failure, with
    the staged files removed and the previous outputs untouched."""
    out = config.out_dir
    os.makedirs(out, exist_ok=True)
    staged = {name: os.path.join(out, f".{name}.new") for name in OUTPUT_FILES}
    try:
        write_timeseries(staged["timeseries.csv"], result.timeseries_path)
        write_final_state(staged["final_state.npz"], result)
        title = f"Final height map, {config.temperature:g} K" + (
            " (replica 0)" if config.replicas > 1 else "")
        plots.plot_height_map(staged["height_map.png"], result.heights[0],
                              LATTICE_CONSTANT_ANGSTROM, title=title)
        atomic_write_text(staged["summary.json"],
                          json.dumps(summary, indent=2, allow_nan=False) + "\n")
        for name in OUTPUT_FILES:
            os.replace(staged[name], os.path.join(out, name))
    finally:
        for path in staged.values():
            if os.path.exists(path):
                os.unlink(path)
