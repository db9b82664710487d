"""SIGINT/SIGTERM at every moment of train.py and simulate: one line, exit 128 + signal, no
traceback, and the command that resumes once something resumable exists (issue 22, case 1).

Every kill is driven by an event the process reports (a line it prints, a file it writes),
never by a clock; the time limits below are only guards against a hung process.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from train_script import REPO, TINY, cache_copy_env

HANG_GUARD_S = 1800  # a loaded 2-core machine makes these slower, never red


class Proc:
    """A subprocess whose stdout+stderr lines are read by a thread, so the test can wait for a
    line (an event) and still see everything printed."""

    def __init__(self, argv, env=None, cwd=None):
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, env=env, cwd=cwd, bufsize=1)
        self.lines: list[str] = []
        self._q: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def wait_for(self, predicate, what: str) -> str:
        """Blocks until a printed line satisfies ``predicate`` (returns it)."""
        while True:
            try:
                line = self._q.get(timeout=HANG_GUARD_S)
            except queue.Empty:
                self.p.kill()
                raise AssertionError(f"hang guard: no {what} in {HANG_GUARD_S} s") from None
            if line is None:
                raise AssertionError(f"the process ended before {what}:\n" + "\n".join(self.lines))
            self.lines.append(line)
            if predicate(line):
                return line

    def finish(self) -> tuple[int, list[str]]:
        """Exit status and every line printed."""
        rc = self.p.wait(timeout=HANG_GUARD_S)
        while True:
            line = self._q.get(timeout=HANG_GUARD_S)
            if line is None:
                return rc, self.lines
            self.lines.append(line)


def _env(tmp_path: Path, **extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "SWARM_JAX_CACHE_DIR": str(tmp_path / "jax_cache"), "PYTHONUNBUFFERED": "1",
            "PYTHONWARNINGS": "ignore", **extra}


def _assert_one_line_exit(rc: int, lines: list[str], before: list[str], sig: int, *texts):
    after = lines[len(before):]
    assert rc == 128 + sig, (rc, lines)
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    assert len(after) == 1, after
    for text in texts:
        assert text in after[0], after[0]


def _train(tmp_path: Path, out: Path, *extra, env: dict | None = None) -> Proc:
    return Proc([sys.executable, str(REPO / "train.py"), "--config", str(TINY), "--out", str(out),
                 "--no-progress", *extra], env=env or _env(tmp_path), cwd=tmp_path)


@pytest.fixture(scope="module")
def filled_cache(tmp_path_factory) -> Path:
    """A compilation cache filled by one tiny train.py run that ends normally: the start-up
    (``_init``) and the update (``_train_chunk``) of configs/tiny_test.yaml."""
    root = tmp_path_factory.mktemp("filled")
    run = subprocess.run([sys.executable, str(REPO / "train.py"), "--config", str(TINY), "--out",
                          str(root / "run"), "--total-timesteps", "64", "--no-progress"],
                         env=_env(root, SWARM_JAX_CACHE_DIR=str(root / "jax_cache")), cwd=root,
                         capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert run.returncode == 0, run.stderr[-3000:]
    names = [f.name for f in (root / "jax_cache").iterdir()]
    assert any("_init" in n for n in names) and any("train_chunk" in n for n in names), names
    return root / "jax_cache"


def _env_with_cache_copy(tmp_path: Path, filled: Path, leave_out: str | None = None) -> dict:
    """``_env`` for a train.py process that a test signals: a private copy of ``filled_cache``
    (:func:`train_script.cache_copy_env`)."""
    return _env(tmp_path, **cache_copy_env(filled, tmp_path / "jax_cache", leave_out))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_train_signal_during_the_first_compilation_is_one_line(tmp_path, sig, filled_cache):
    """The signal arrives right after 'compiling the update' is printed: inside the first
    compilation (and JAX's compilation-cache read), before any checkpoint. The process's cache
    holds the start-up but not the update, so the update is certainly compiled after that line."""
    out = tmp_path / "run"
    proc = _train(tmp_path, out,
                  env=_env_with_cache_copy(tmp_path, filled_cache, leave_out="train_chunk"))
    proc.wait_for(lambda s: "compiling the update" in s, "compile line")
    before = list(proc.lines)
    proc.p.send_signal(sig)
    rc, lines = proc.finish()
    # Either the compile was cut short (nothing to resume) or the first chunk finished under the
    # graceful stop (a checkpoint and its resume command): both are one line, never a traceback.
    assert rc == 128 + sig and not any("Traceback" in line for line in lines), lines
    tail = [line for line in lines[len(before):] if not line.startswith("[stage")]
    assert "interrupted" in tail[-1] or "received" in " ".join(tail), lines
    if "resume with" not in " ".join(lines[len(before):]):
        _assert_one_line_exit(rc, lines, before, sig, f"interrupted by {signal.Signals(sig).name}",
                              "nothing to resume")
        resume = subprocess.run([sys.executable, str(REPO / "train.py"), "--resume", "--out",
                                 str(out), "--config", str(TINY), "--no-progress"],
                                env=_env(tmp_path), cwd=tmp_path, capture_output=True, text=True,
                                timeout=HANG_GUARD_S)
        assert resume.returncode == 2 and "nothing to resume" in resume.stderr


_ANNOUNCE_IMPORT = """
import runpy, sys

class Announce:
    def find_spec(self, name, path=None, target=None):
        if name == "jax":
            print("importing jax", flush=True)
            sys.meta_path.remove(self)
        return None

sys.meta_path.insert(0, Announce())
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_train_signal_while_importing_jax_is_one_line(tmp_path, sig):
    """The signal arrives when the first import of JAX begins (announced by an import hook)."""
    out = tmp_path / "run"
    proc = Proc([sys.executable, "-c", _ANNOUNCE_IMPORT, str(REPO / "train.py"), "--config",
                 str(TINY), "--out", str(out), "--no-progress"], env=_env(tmp_path), cwd=tmp_path)
    proc.wait_for(lambda s: s == "importing jax", "the import of JAX")
    before = list(proc.lines)
    proc.p.send_signal(sig)
    rc, lines = proc.finish()
    _assert_one_line_exit(rc, lines, before, sig, f"interrupted by {signal.Signals(sig).name}")
    assert not (out / "checkpoints").exists()


@pytest.mark.slow
def test_simulate_signal_while_importing_is_one_line(tmp_path):
    """python -m swarm_jax.simulate: SIGINT when its first own import of JAX code begins (the
    package itself is imported by Python before the module runs)."""
    hook = _ANNOUNCE_IMPORT.replace('name == "jax"', 'name == "swarm_jax.production"')
    proc = Proc([sys.executable, "-c", hook, str(REPO / "swarm_jax" / "simulate.py"),
                 *_simulate_argv(tmp_path / "sim")[3:]], env=_env(tmp_path), cwd=tmp_path)
    proc.wait_for(lambda s: s == "importing jax", "the import of swarm_jax.production")
    before = list(proc.lines)
    proc.p.send_signal(signal.SIGINT)
    rc, lines = proc.finish()
    _assert_one_line_exit(rc, lines, before, signal.SIGINT, "interrupted by SIGINT")


@pytest.mark.slow
def test_train_signal_after_a_checkpoint_prints_the_resume_command(tmp_path, filled_cache):
    """Checkpoints after every update; SIGINT once the first is on disk: the run stops with the
    command that resumes it (graceful in the chunk loop, or at once during a checkpoint write).
    The programs come from a copy of ``filled_cache`` (the same start-up and update)."""
    import yaml

    cfg = yaml.safe_load(TINY.read_text())
    cfg["training"]["checkpoint_freq"] = 32
    cfg["training"]["checkpoint_every_s"] = 0
    config = tmp_path / "every_update.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    proc = Proc([sys.executable, str(REPO / "train.py"), "--config", str(config), "--out",
                 str(out), "--no-progress"], env=_env_with_cache_copy(tmp_path, filled_cache),
                cwd=tmp_path)
    proc.wait_for(lambda s: "update 2/" in s, "the first chunk's log line")
    proc.p.send_signal(signal.SIGINT)
    rc, lines = proc.finish()
    text = "\n".join(lines)
    assert rc == 130 and "Traceback" not in text, text
    assert "resume with: " in lines[-1] and "--resume" in lines[-1], text


def _simulate_argv(out: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "swarm_jax.simulate", "--lattice-size", "6", "6", "auto",
            "--monolayers", "200", "--log-every", "1024", "--check-every", "1024",
            "--checkpoint-every", "2048", "--out", str(out), "--quiet", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_simulate_signal_after_a_checkpoint_is_one_line_and_resumable(tmp_path, sig):
    out = tmp_path / "sim"
    hook = tmp_path / "hook.py"
    hook.write_text("import sys\nfrom swarm_jax import simulate\n"
                    "simulate._after_checkpoint = lambda p: print('checkpoint', p.done, "
                    "flush=True)\nsys.exit(simulate.main(sys.argv[1:]))\n")
    argv = _simulate_argv(out)
    proc = Proc([sys.executable, str(hook), *argv[3:]], env=_env(tmp_path), cwd=tmp_path)
    proc.wait_for(lambda s: s.startswith("checkpoint"), "the first checkpoint")
    before = list(proc.lines)
    proc.p.send_signal(sig)
    rc, lines = proc.finish()
    after = [line for line in lines[len(before):] if not line.startswith("checkpoint")]
    assert rc == 128 + sig, (rc, lines)
    assert not any("Traceback" in line for line in lines), lines
    assert len(after) == 1 and "--resume" in after[0], after
    assert (out / "checkpoints" / "run.json").is_file()


@pytest.mark.slow
def test_simulate_signal_during_compilation_is_one_line(tmp_path):
    """SIGTERM right after the run starts compiling (announced by the first progress line)."""
    out = tmp_path / "sim"
    hook = tmp_path / "hook.py"
    hook.write_text(
        "import sys\nfrom swarm_jax.production import runners\n"
        "orig = runners.CompiledChunks.__call__\n"
        "def announce(self, *a, **k):\n"
        "    print('compiling', flush=True)\n"
        "    return orig(self, *a, **k)\n"
        "runners.CompiledChunks.__call__ = announce\n"
        "from swarm_jax import simulate\nsys.exit(simulate.main(sys.argv[1:]))\n")
    argv = _simulate_argv(out)
    proc = Proc([sys.executable, str(hook), *argv[3:]], env=_env(tmp_path), cwd=tmp_path)
    proc.wait_for(lambda s: s == "compiling", "the compile announcement")
    before = list(proc.lines)
    proc.p.send_signal(signal.SIGTERM)
    rc, lines = proc.finish()
    after = [line for line in lines[len(before):] if line != "compiling"]
    assert rc == 143 and not any("Traceback" in line for line in lines), lines
    assert len(after) == 1 and "SIGTERM" in after[0], after
