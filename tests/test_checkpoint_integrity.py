"""Checkpoint integrity and disk faults: manifests, corrupt-checkpoint fallback, failed writes.

Every fault of issue 14's examples is injected into a real checkpoint: a truncated data file, a
truncated metadata (JSON) file, 8 flipped bytes, a missing manifest, and a write that hits the
file-size limit (``RLIMIT_FSIZE`` in a child process, SIGXFSZ ignored so writes fail with EFBIG).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from swarm_jax.training.checkpoint import (
    MANIFEST,
    CheckpointError,
    CheckpointStore,
    is_verified_checkpoint,
    load_params_only,
    read_config,
    restore_checkpoint,
    save_final,
    verify_checkpoint,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG = {"name": "t"}


def state(step: int) -> dict:
    """A small state whose values depend on ``step`` (float32 params, int64 counter)."""
    return {"params": {"w": np.arange(4096, dtype=np.float32) + step},
            "count": np.int64(step)}


def _store_with(tmp_path: Path, steps=(1, 2)) -> CheckpointStore:
    store = CheckpointStore(tmp_path / "ck", max_to_keep=5)
    for s in steps:
        store.save(s, state(s), CONFIG, {"step": s})
    return store


def _largest_data_file(ckpt: Path) -> Path:
    files = [p for p in (ckpt / "state").rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_8_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_every_save_writes_a_manifest_that_verifies(tmp_path):
    with _store_with(tmp_path) as store:
        for s in (1, 2):
            path = store.step_path(s)
            assert (path / MANIFEST).is_file()
            assert verify_checkpoint(path) is None
        assert store.verified_steps() == [1, 2]
    final = save_final(tmp_path / "final", state(9), CONFIG, {"step": 9})
    assert is_verified_checkpoint(final)
    assert not (tmp_path / "final.incoming").exists()


@pytest.mark.parametrize("fault, expected", [
    ("truncate_data", "truncated"),
    ("truncate_meta", "truncated"),
    ("flip_bytes", "SHA-256"),
    ("no_manifest", "no checksum manifest"),
])
def test_a_bad_newest_checkpoint_is_reported_and_the_previous_one_used(tmp_path, fault, expected):
    store = _store_with(tmp_path)
    store.close()
    newest = tmp_path / "ck" / "2"
    if fault == "truncate_data":
        _truncate(_largest_data_file(newest))
    elif fault == "truncate_meta":
        _truncate(newest / "meta" / "metadata")
    elif fault == "flip_bytes":
        _flip_8_bytes(_largest_data_file(newest))
    else:
        (newest / MANIFEST).unlink()
    problem = verify_checkpoint(newest)
    assert problem is not None and expected in problem

    lines: list[str] = []
    with CheckpointStore(tmp_path / "ck", max_to_keep=5) as store:
        step = store.latest_verified_step(report=lines.append)
        assert step == 1
        assert len(lines) == 1 and "\n" not in lines[0]
        assert str(newest) in lines[0] and expected in lines[0] and "ck/1" in lines[0]
        assert not newest.exists() and (tmp_path / "ck" / "2.corrupt").is_dir()  # kept aside
        restored, _, meta = store.restore(step, target=state(0))
        assert meta == {"step": 1}
        np.testing.assert_array_equal(np.asarray(restored["params"]["w"]), state(1)["params"]["w"])
        # The run goes on and writes step 2 again, verified.
        store.save(2, state(2), CONFIG, {"step": 2})
        assert store.verified_steps() == [1, 2]


@pytest.mark.parametrize("fault", ["truncate_data", "truncate_meta", "flip_bytes"])
def test_restoring_a_corrupt_checkpoint_by_name_is_one_checkpoint_error(tmp_path, fault):
    final = save_final(tmp_path / "final", state(3), CONFIG, {"step": 3})
    if fault == "truncate_data":
        _truncate(_largest_data_file(final))
    elif fault == "truncate_meta":
        _truncate(final / "meta" / "metadata")
    else:
        _flip_8_bytes(_largest_data_file(final))
    for call in (lambda: restore_checkpoint(final, target=state(0)),
                 lambda: restore_checkpoint(final),
                 lambda: read_config(final),
                 lambda: load_params_only(final)):
        with pytest.raises(CheckpointError, match="is corrupt") as info:
            call()
        assert "\n" not in str(info.value) and len(str(info.value)) < 400


def test_truncated_metadata_without_manifest_is_a_checkpoint_error_not_a_json_traceback(tmp_path):
    final = save_final(tmp_path / "final", state(3), CONFIG, {"step": 3})
    (final / MANIFEST).unlink()  # as written by an older version
    _truncate(final / "meta" / "metadata")
    with pytest.raises(CheckpointError, match="could not read the config/metadata"):
        read_config(final)


def test_no_verified_checkpoint_at_all_is_reported(tmp_path):
    store = _store_with(tmp_path, steps=(1,))
    store.close()
    _flip_8_bytes(_largest_data_file(tmp_path / "ck" / "1"))
    lines: list[str] = []
    with CheckpointStore(tmp_path / "ck") as store:
        assert store.latest_verified_step(report=lines.append) is None
    assert len(lines) == 1 and "no older verified checkpoint" in lines[0]


def test_async_saves_are_verified_after_wait_and_restore_exactly(tmp_path):
    with CheckpointStore(tmp_path / "ck", max_to_keep=2, async_save=True) as store:
        for s in (10, 20, 30):
            store.save(s, state(s), CONFIG, {"step": s})  # waits for the previous save first
        assert store.wait() == store.step_path(30)
        assert store.all_steps() == [20, 30] and store.verified_steps() == [20, 30]
        restored, _, meta = store.restore(30, target=state(0))
    assert meta == {"step": 30} and int(restored["count"]) == 30


_FSIZE_CHILD = """
import resource, signal, sys
import numpy as np
from swarm_jax.training.checkpoint import (
    CheckpointStore, CheckpointWriteError, quiet_orbax_write_failures, save_final,
)
quiet_orbax_write_failures()   # what the command-line tools do first
directory, mode = sys.argv[1], sys.argv[2]
store = CheckpointStore(directory, max_to_keep=3, async_save=(mode == "async"))
store.save(1, {"w": np.zeros(16, np.float32)}, {"name": "t"}, {"step": 1})
store.wait()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # writes past the limit fail with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
big = {"w": np.arange(1 << 20, dtype=np.float32)}   # 4 MB: over the limit
try:
    store.save(2, big, {"name": "t"}, {"step": 2})
    store.close()
except CheckpointWriteError as err:
    print("ERROR", err)
try:
    save_final(directory + "_final", big, {"name": "t"})
except CheckpointWriteError as err:
    print("FINAL", err)
"""


@pytest.mark.slow
def test_importing_installs_nothing_and_the_quiet_scope_is_undone():
    """No global hook or log filter on import: a child process imports the module and compares;
    then the explicit install is idempotent and its undo restores the previous state."""
    child = textwrap.dedent("""
        import logging, sys
        before = (sys.unraisablehook, list(logging.getLogger("absl").filters),
                  list(logging.getLogger("asyncio").filters))
        from swarm_jax.training import checkpoint
        after = (sys.unraisablehook, list(logging.getLogger("absl").filters),
                 list(logging.getLogger("asyncio").filters))
        print(before == after)
        with checkpoint.quiet_orbax_failures():
            inside = (sys.unraisablehook, logging.getLogger("absl").filters[:],
                      logging.getLogger("asyncio").filters[:])
            checkpoint.quiet_orbax_write_failures()()  # a second install adds (and undoes) nothing
            again = (sys.unraisablehook, logging.getLogger("absl").filters[:],
                     logging.getLogger("asyncio").filters[:])
            print(inside != before and again == inside and len(inside[1]) == len(before[1]) + 1)
        print((sys.unraisablehook, list(logging.getLogger("absl").filters),
               list(logging.getLogger("asyncio").filters)) == before)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "SWARM_JAX_CACHE_DIR": "off"}
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["True", "True", "True"], proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_write_past_the_file_size_limit_is_one_line_and_keeps_the_previous_checkpoint(
        tmp_path, mode):
    d = tmp_path / "ck"
    env = {**os.environ, "PYTHONPATH": str(REPO), "SWARM_JAX_CACHE_DIR": "off"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_FSIZE_CHILD), str(d), mode],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.strip().splitlines()
    assert [line.split()[0] for line in out] == ["ERROR", "FINAL"], proc.stdout
    assert "File too large" in out[0] and "EFBIG" in out[0], out[0]
    assert "File too large" in out[1], out[1]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    with CheckpointStore(d) as store:  # the previous checkpoint is intact and resumable
        assert store.all_steps() == [1] and store.latest_verified_step() == 1
        restored, _, meta = store.restore(1, target={"w": np.zeros(16, np.float32)})
    assert meta == {"step": 1}
    assert not (tmp_path / "ck_final").exists()
    assert not any(".orbax-checkpoint-tmp" in p.name for p in d.iterdir())
