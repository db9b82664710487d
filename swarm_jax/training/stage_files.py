"""The files a training stage writes besides its checkpoints: where they go
(:class:`StagePaths`), the effective configuration as YAML (:func:`write_config_yaml`), the
check of a resumed run's configuration (:func:`resume_differences`) and ``metrics_stageN.csv``
(:class:`MetricsCSV`, one row per chunk)."""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from swarm_jax.training.config import TrainConfig, config_to_dict

__all__ = ["RUN_CONTROL_KEYS", "MetricsCSV", "StagePaths", "resume_differences",
           "write_config_yaml"]

#: Config entries a resumed run may change (they steer the run, not what it computes).
RUN_CONTROL_KEYS = (
    "name",
    "training.total_timesteps",
    "training.checkpoint_freq",
    "training.checkpoint_every_s",
    "training.keep_checkpoints",
    "training.log_every",
    "training.ess_threshold",
    "training.ess_patience",
    "training.cpu_overrides",
)

_CSV_FIRST = ("env_steps", "update", "time_s", "fps")
_CSV_ORDER = (
    "ep_rew_mean", "ep_len_mean", "n_episodes", "reward", "policy_loss", "value_loss", "entropy",
    "approx_kl", "clip_fraction", "loss", "learning_rate", "ess_ratio", "ess_penalty", "batch_ess",
    "batch_ess_running", "roughness", "coverage", "o_ti_ratio", "mean_height", "ess_lambda",
    "ess_constraint", "ess_loss", "reward_scale", "learn_reward",
)


@dataclasses.dataclass(frozen=True)
class StagePaths:
    """Where stage ``stage`` of a run rooted at ``root`` writes (see the module docstring)."""

    root: Path
    stage: int

    @property
    def label(self) -> str:
        return f"stage{self.stage}"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard" / self.label

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints" / self.label

    @property
    def final(self) -> Path:
        return self.root / f"{self.label}_final"

    @property
    def config_yaml(self) -> Path:
        return self.root / f"config_{self.label}.yaml"

    @property
    def metrics_csv(self) -> Path:
        return self.root / f"metrics_{self.label}.csv"

    @property
    def learning_curve(self) -> Path:
        return self.root / f"learning_curve_{self.label}.png"


class _ConfigDumper(yaml.SafeDumper):
    """Block-style mappings, flow-style lists (``lattice_size: [8, 8, 5]``)."""


_ConfigDumper.add_representer(
    list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def write_config_yaml(cfg: TrainConfig, path: Path, header: str = "") -> Path:
    """Write ``cfg`` as YAML (loadable with ``load_config`` / ``train.py --config``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.dump(config_to_dict(cfg), Dumper=_ConfigDumper, sort_keys=False)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    path.write_text(comment + text, encoding="utf-8")
    return path


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and k not in ("physics", "cpu_overrides"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = dict(v) if isinstance(v, Mapping) else v
    return out


def _norm(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _norm(x) for k, x in v.items()}
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return v


def resume_differences(cfg: TrainConfig, saved: Mapping) -> list[str]:
    """Entries (``"key: checkpoint value -> config value"``) where ``cfg`` differs from a
    checkpoint's saved config in something a resumed run may not change (anything but
    :data:`RUN_CONTROL_KEYS`; ``total_timesteps`` neither when the LR is annealed). A key the
    checkpoint lacks (added to the config format after it was written) counts as its default."""
    now, then = _flatten(config_to_dict(cfg)), _flatten(saved)
    defaults = _flatten(config_to_dict(TrainConfig()))
    allowed = set(RUN_CONTROL_KEYS)
    if cfg.ppo.anneal_lr:
        allowed.discard("training.total_timesteps")  # the LR schedule depends on it
    diffs = []
    for key in sorted(set(now) | set(then)):
        if key in allowed or key == "stage":
            continue
        if key not in then and key in defaults:
            then[key] = defaults[key]
        a, b = then.get(key, "<missing>"), now.get(key, "<missing>")
        if _norm(a) != _norm(b):
            diffs.append(f"{key}: {a!r} -> {b!r}")
    return diffs


class MetricsCSV:
    """``metrics_stageN.csv``: one row per log; on resume, rows after the checkpoint are dropped."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = Path(path)
        self.columns: list[str] | None = None
        kept: list[dict] = []
        if resume_step is not None and self.path.is_file():
            with self.path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or []) or None
                kept = [row for row in reader if int(float(row["env_steps"])) <= resume_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="", encoding="utf-8") as f:
            if self.columns:
                writer = csv.DictWriter(f, self.columns)
                writer.writeheader()
                writer.writerows(kept)

    def append(self, row: Mapping[str, Any]) -> None:
        if self.columns is None:
            rest = [k for k in row if k not in _CSV_FIRST]
            ordered = [k for k in _CSV_ORDER if k in rest]
            self.columns = list(_CSV_FIRST) + ordered + sorted(set(rest) - set(ordered))
            with self.path.open("w", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, self.columns).writeheader()
        with self.path.open("a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, self.columns, extrasaction="ignore", restval="")
            writer.writerow({k: _csv_value(v) for k, v in row.items()})


def _csv_value(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(int(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "nan" if math.isnan(v) else repr(float(v))
    return str(v)
