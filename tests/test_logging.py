"""TensorBoard logger (tags, what TensorBoard shows, purge on resume), metrics CSV read-back,
learning-curve plot, ESS early stop."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from swarm_jax.training.logging import (
    DEFAULT_PLOT_METRICS,
    METRIC_TAGS,
    ESSMonitor,
    TensorBoardLogger,
    metric_tag,
    plot_learning_curves,
    read_metrics,
)
from tensorboard_events import tensorboard_scalars

SEED_TAGS = {
    "ep_rew_mean": "rollout/ep_rew_mean", "ep_len_mean": "rollout/ep_len_mean",
    "policy_loss": "train/policy_loss", "value_loss": "train/value_loss",
    "entropy": "train/entropy", "approx_kl": "train/approx_kl",
    "clip_fraction": "train/clip_fraction", "ess_ratio": "custom/ess_ratio",
    "batch_ess": "custom/batch_ess", "roughness": "custom/roughness",
    "coverage": "custom/coverage", "o_ti_ratio": "custom/o_ti_ratio", "fps": "time/fps",
}
# The ESS constraint's multiplier and value, its loss term and the reward normaliser's scale.
LEARNING_TAGS = {
    "ess_lambda": "train/ess_lambda", "ess_constraint": "train/ess_constraint",
    "ess_loss": "train/ess_loss", "reward_scale": "train/reward_scale",
}
ALL_TAGS = {**SEED_TAGS, **LEARNING_TAGS}


def test_metric_tags_match_the_seed_names():
    assert METRIC_TAGS == ALL_TAGS  # the original project's names unchanged, plus the constraint's
    assert metric_tag("learning_rate") == "custom/learning_rate"
    assert metric_tag("train/learning_rate") == "train/learning_rate"


def metrics_at(i: int) -> dict:
    """Distinct, exactly float32-representable values per metric and step."""
    return {key: float(np.float32(0.125 * i + k)) for k, key in enumerate(ALL_TAGS)}


def test_logger_writes_every_tag_and_tensorboard_shows_them(tmp_path):
    steps = [0, 2048, 4096, 8192]
    with TensorBoardLogger(tmp_path) as logger:
        assert logger.active
        for i, step in enumerate(steps):
            m = metrics_at(i)
            m["ess_ratio"] = jnp.float32(m["ess_ratio"])  # device scalars are accepted
            m["entropy"] = np.array([m["entropy"]])  # so are size-1 arrays
            logger.log_scalars(step, {**m, "kl_coef": 0.5 * i, "skipped": None})
    scalars = tensorboard_scalars(tmp_path)
    assert set(scalars) == set(ALL_TAGS.values()) | {"custom/kl_coef"}
    for k, key in enumerate(ALL_TAGS):
        assert scalars[ALL_TAGS[key]] == [(s, 0.125 * i + k) for i, s in enumerate(steps)]
    assert scalars["custom/kl_coef"] == [(s, 0.5 * i) for i, s in enumerate(steps)]


def test_non_scalar_metric_is_rejected(tmp_path):
    with TensorBoardLogger(tmp_path) as logger, pytest.raises(ValueError, match="only scalars"):
        logger.log_scalars(0, {"roughness": np.zeros(3)})


def test_resume_with_purge_step_drops_duplicated_steps(tmp_path):
    with TensorBoardLogger(tmp_path) as first:
        for step in (100, 200, 300):
            first.log_scalars(step, {"roughness": step / 100})
    # the run crashed after step 300, its last checkpoint was at 200: it logs 300 again. Both
    # writers start within the same second: their files must still sort in creation order.
    with TensorBoardLogger(tmp_path, purge_step=300) as resumed:
        resumed.log_scalars(300, {"roughness": 30.0})
        resumed.log_scalars(400, {"roughness": 40.0})
    assert len(list(tmp_path.glob("*tfevents*"))) == 2
    assert tensorboard_scalars(tmp_path) == {
        "custom/roughness": [(100, 1.0), (200, 2.0), (300, 30.0), (400, 40.0)]
    }


def write_metrics_csv(path, n_rows: int = 6) -> None:
    """A file in the trainer's ``metrics_stageN.csv`` layout: every metric of metrics_at, plus an
    empty and a NaN cell (a chunk in which no episode finished)."""
    columns = ["env_steps", "update", *ALL_TAGS]
    lines = [",".join(columns)]
    for i in range(n_rows):
        m = metrics_at(i)
        m["ep_rew_mean"] = "" if i == 1 else ("nan" if i == 2 else m["ep_rew_mean"])
        lines.append(",".join(str(v) for v in [1000 * i, i + 1, *(m[k] for k in ALL_TAGS)]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_read_metrics_returns_every_column_by_env_steps(tmp_path):
    path = tmp_path / "metrics_stage1.csv"
    write_metrics_csv(path, n_rows=4)
    metrics = read_metrics(path)
    assert set(metrics) == {"update", *ALL_TAGS}
    assert metrics["update"] == [(1000 * i, i + 1.0) for i in range(4)]
    for k, key in enumerate(ALL_TAGS):
        expected = [(1000 * i, 0.125 * i + k) for i in range(4)]
        if key == "ep_rew_mean":  # the empty and the NaN cell have no point
            expected = [expected[0], expected[3]]
        assert metrics[key] == expected, key
    (tmp_path / "other.csv").write_text("step,x\n1,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no env_steps column"):
        read_metrics(tmp_path / "other.csv")
    with pytest.raises(FileNotFoundError):
        read_metrics(tmp_path / "missing.csv")


@pytest.mark.slow
def test_plot_learning_curves_writes_png(tmp_path):
    path = tmp_path / "metrics_stage1.csv"
    write_metrics_csv(path)
    out = plot_learning_curves(path, tmp_path / "plots" / "curves.png", title="stage 1")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    # from a metrics dict, with a metric that has no data (drawn as an empty panel)
    out2 = plot_learning_curves(read_metrics(path), tmp_path / "two.png",
                                metrics=["ess_ratio", "not_logged"])
    assert out2.read_bytes()[:4] == b"\x89PNG"
    assert set(DEFAULT_PLOT_METRICS) <= set(read_metrics(path))
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_learning_curves({}, tmp_path / "none.png")


def test_ess_monitor_stops_after_patience_consecutive_lows():
    mon = ESSMonitor(threshold=0.3, patience=3)
    decisions = [mon.update(x) for x in (0.2, 0.25, 0.5, 0.1, 0.29, 0.3, 0.0, 0.1)]
    assert decisions == [False] * 8  # a value at the threshold resets the run of lows
    assert mon.reason is None and mon.below_count == 2
    assert mon.update(jnp.float32(0.05)) is True
    assert mon.below_count == 3
    assert "0.05" in mon.reason and "0.3" in mon.reason and "3 consecutive" in mon.reason


def test_ess_monitor_counts_non_finite_as_low_and_can_be_disabled():
    mon = ESSMonitor(threshold=0.5, patience=2)
    assert mon.update(math.nan) is False and mon.update(0.4) is True
    off = ESSMonitor(threshold=None, patience=1)
    assert not off.enabled
    assert not any(off.update(x) for x in (0.0, math.nan, 0.01)) and off.reason is None
    assert ESSMonitor(0.9, patience=1).update(0.89) is True
    with pytest.raises(ValueError):
        ESSMonitor(0.5, patience=0)
    with pytest.raises(ValueError):
        ESSMonitor(1.5, patience=1)


def test_only_process_zero_writes(tmp_path, monkeypatch):
    import jax

    monkeypatch.setattr(jax, "process_index", lambda: 1)
    logger = TensorBoardLogger(tmp_path / "tb")
    assert not logger.active
    logger.log_scalars(0, {"roughness": 1.0})
    logger.close()
    assert not (tmp_path / "tb").exists()
    with pytest.raises(ValueError, match="only scalars"):  # bad metrics fail on every process
        logger.log_scalars(0, {"roughness": np.zeros(2)})
