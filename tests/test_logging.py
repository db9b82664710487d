"""TensorBoard logger (tags, read-back, purge on resume), learning-curve plot, ESS early stop."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from swarm_jax.training.logging import (
    DEFAULT_PLOT_TAGS,
    METRIC_TAGS,
    ESSMonitor,
    TensorBoardLogger,
    metric_tag,
    plot_learning_curves,
    read_scalars,
)

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
    assert METRIC_TAGS == ALL_TAGS  # the seed's names unchanged, plus the constraint's
    assert metric_tag("learning_rate") == "custom/learning_rate"
    assert metric_tag("train/learning_rate") == "train/learning_rate"


def metrics_at(i: int) -> dict:
    """Distinct, exactly float32-representable values per metric and step."""
    return {key: float(np.float32(0.125 * i + k)) for k, key in enumerate(ALL_TAGS)}


def test_logger_writes_every_tag_and_read_scalars_returns_them(tmp_path):
    steps = [0, 2048, 4096, 8192]
    with TensorBoardLogger(tmp_path) as logger:
        assert logger.active
        for i, step in enumerate(steps):
            m = metrics_at(i)
            m["ess_ratio"] = jnp.float32(m["ess_ratio"])  # device scalars are accepted
            m["entropy"] = np.array([m["entropy"]])  # so are size-1 arrays
            logger.log_scalars(step, {**m, "kl_coef": 0.5 * i, "skipped": None})
    scalars = read_scalars(tmp_path)
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
    # the run crashed after step 300, its last checkpoint was at 200: it logs 300 again
    with TensorBoardLogger(tmp_path, purge_step=300) as resumed:
        resumed.log_scalars(300, {"roughness": 30.0})
        resumed.log_scalars(400, {"roughness": 40.0})
    assert len(list(tmp_path.glob("*tfevents*"))) == 2
    assert read_scalars(tmp_path) == {
        "custom/roughness": [(100, 1.0), (200, 2.0), (300, 30.0), (400, 40.0)]
    }


def test_read_scalars_ignores_a_truncated_tail(tmp_path):
    with TensorBoardLogger(tmp_path) as logger:
        for step in range(5):
            logger.log_scalars(step, {"coverage": float(step)})
    (event_file,) = tmp_path.glob("*tfevents*")
    data = event_file.read_bytes()
    event_file.write_bytes(data[:-7])  # a writer killed mid-record
    assert read_scalars(tmp_path)["custom/coverage"] == [(s, float(s)) for s in range(4)]


def test_read_scalars_without_event_files_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_scalars(tmp_path)


def test_plot_learning_curves_writes_png(tmp_path):
    logdir = tmp_path / "tb"
    with TensorBoardLogger(logdir) as logger:
        for i in range(6):
            logger.log_scalars(1000 * i, metrics_at(i))
    out = plot_learning_curves(logdir, tmp_path / "plots" / "curves.png", title="stage 1")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    # from a scalars dict, with a tag that has no data (drawn as an empty panel)
    out2 = plot_learning_curves(read_scalars(logdir), tmp_path / "two.png",
                                tags=["custom/ess_ratio", "custom/not_logged"])
    assert out2.read_bytes()[:4] == b"\x89PNG"
    assert set(DEFAULT_PLOT_TAGS) <= set(read_scalars(logdir))
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
