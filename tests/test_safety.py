"""Numeric fault detection (check_finite) and the SIGINT/SIGTERM GracefulInterrupt."""

from __future__ import annotations

import os
import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from swarm_jax.training.safety import GracefulInterrupt, NumericalFault, assert_finite, check_finite


@struct.dataclass
class Runner:
    params: dict
    key: jax.Array
    count: jax.Array


def make_params():
    return {
        "actor": {"Dense_0": {"kernel": jnp.ones((3, 4), jnp.float32),
                              "bias": jnp.zeros((4,), jnp.float32)}},
        "critic": {"Dense_0": {"kernel": jnp.ones((4, 1), jnp.float32)}},
    }


def test_finite_tree_passes_and_non_float_leaves_are_skipped():
    tree = Runner(make_params(), jax.random.key(0), jnp.int32(2**31 - 1))
    assert check_finite(tree, "runner") is None
    assert check_finite({"a": np.arange(3), "b": True, "c": 1.5, "d": None}, "m") is None
    assert check_finite({}, "empty") is None
    assert_finite(tree, "runner")  # no exception


def test_nan_is_located_by_path_and_counted():
    params = make_params()
    kernel = params["actor"]["Dense_0"]["kernel"].at[0, 1].set(jnp.nan).at[2, 3].set(jnp.nan)
    params["actor"]["Dense_0"]["kernel"] = kernel
    assert check_finite(params, "params") == (
        "NaN in params['actor']['Dense_0']['kernel'] (2 NaN of 12 entries)"
    )
    # a dataclass field shows as an attribute; the first bad leaf in flattening order is named
    params["actor"]["Dense_0"]["bias"] = jnp.array([0.0, -jnp.inf, 1.0, jnp.inf], jnp.float32)
    msg = check_finite(Runner(params, jax.random.key(0), jnp.int32(0)), "runner_state")
    assert msg == ("inf in runner_state.params['actor']['Dense_0']['bias'] "
                   "(1 +inf, 1 -inf of 4 entries)")


def test_host_numpy_and_python_float_leaves_are_checked():
    assert check_finite({"loss": 0.5, "kl": float("inf")}, "metrics") == (
        "inf in metrics['kl'] (1 +inf of 1 entries)"
    )
    metrics = {"approx_kl": np.array([0.1, np.nan]), "entropy": jnp.float64(1.0)}
    assert check_finite(metrics, "metrics") == "NaN in metrics['approx_kl'] (1 NaN of 2 entries)"


def test_assert_finite_raises_numerical_fault():
    with pytest.raises(NumericalFault, match=r"NaN in value\['v'\]") as info:
        assert_finite({"v": jnp.array([jnp.nan])}, "value")
    assert isinstance(info.value, RuntimeError)


def test_graceful_interrupt_sets_flag_on_first_sigint_and_raises_on_second():
    before = signal.getsignal(signal.SIGINT)
    with GracefulInterrupt() as interrupt:
        assert interrupt.installed and not interrupt.requested and interrupt.message is None
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the handler runs in the main thread between bytecodes
            if interrupt.requested:
                break
        assert interrupt.requested and bool(interrupt)
        assert interrupt.signal_name == "SIGINT" and "SIGINT" in interrupt.message
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass
    assert signal.getsignal(signal.SIGINT) is before  # previous handler restored


def test_graceful_interrupt_sigterm_keeps_flag_and_restores_handler():
    before = signal.getsignal(signal.SIGTERM)
    with GracefulInterrupt() as interrupt:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):
            if interrupt.requested:
                break
        assert interrupt.signal_name == "SIGTERM"
        os.kill(os.getpid(), signal.SIGTERM)  # repeated SIGTERM: still just the flag
        for _ in range(1000):
            pass
        assert interrupt.requested and interrupt.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_graceful_interrupt_outside_main_thread_is_inert():
    seen = {}

    def body():
        with GracefulInterrupt() as interrupt:
            seen["installed"] = interrupt.installed

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == {"installed": False}
