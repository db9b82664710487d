"""Output-folder claims and atomic writes (swarm_jax.outdir)."""

import os
import subprocess
import sys

import pytest

from swarm_jax.outdir import (
    OutputDirError, OutputWriteError, atomic_write_json, atomic_write_text, atomic_writer,
    check_output_dir, claim_output_dir,
)


def test_empty_path_refused():
    with pytest.raises(OutputDirError, match="empty path"):
        check_output_dir("")


def test_file_refused(tmp_path):
    f = tmp_path / "README.md"
    f.write_text("x")
    with pytest.raises(OutputDirError, match="not a folder"):
        claim_output_dir(f)
    with pytest.raises(OutputDirError, match="is a file"):
        claim_output_dir(f / "sub")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(OutputDirError, match="not writable"):
        claim_output_dir(ro / "out")


def test_second_claim_refused_then_free_after_release(tmp_path):
    lock = claim_output_dir(tmp_path / "run")
    with pytest.raises(OutputDirError, match="already in use by process"):
        claim_output_dir(tmp_path / "run")
    lock.release()
    with claim_output_dir(tmp_path / "run"):
        pass


@pytest.mark.slow
def test_claim_of_other_process_refused_and_freed_by_kill(tmp_path):
    out = tmp_path / "run"
    code = ("import sys,time; from swarm_jax.outdir import claim_output_dir; "
            f"l = claim_output_dir({str(out)!r}); print('ok', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ok"
        with pytest.raises(OutputDirError, match=f"process {proc.pid}"):
            claim_output_dir(out)
    finally:
        proc.kill()
        proc.wait()
    claim_output_dir(out).release()  # a killed owner leaves the folder claimable


def test_atomic_write_replaces_whole(tmp_path):
    p = tmp_path / "a.json"
    atomic_write_json(p, {"x": 1})
    atomic_write_text(p, "new\n")
    assert p.read_text() == "new\n"
    assert [q.name for q in tmp_path.iterdir()] == ["a.json"]


def test_failed_write_keeps_previous_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write_text(p, "old")

    def boom(fh):
        fh.write("partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputWriteError, match="No space left"):
        atomic_writer(p, boom, "w")
    assert p.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["a.txt"]
