"""swarm_jax.compile_cache: where the persistent compilation cache goes, and how it is disabled."""

from __future__ import annotations

from pathlib import Path

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache

from swarm_jax.compile_cache import ENV_CACHE_DIR, default_cache_dir, enable_compilation_cache


@pytest.mark.parametrize("value", ["off", "OFF", "0", "none", "false", "", "  "])
def test_the_env_var_disables_the_cache(monkeypatch, value):
    monkeypatch.setenv(ENV_CACHE_DIR, value)
    assert default_cache_dir() is None
    assert enable_compilation_cache() is None


def test_the_env_var_moves_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"


def test_default_is_under_the_users_cache_directory(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_CACHE_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "swarm_jax" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "swarm_jax" / "jax"


def test_enable_sets_jax_config_and_an_unusable_folder_leaves_it_off(tmp_path):
    before = jax.config.jax_compilation_cache_dir
    try:
        jax.jit(lambda x: x * 3.0)(1.0)  # something compiled before: the cache is initialised
        assert enable_compilation_cache(tmp_path / "cache") == tmp_path / "cache"
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
        assert (tmp_path / "cache").is_dir()
        # The folder set after that first compilation is the one the next compilation writes to.
        jax.jit(lambda x: x * 5.0 + 1.0)(2.0)
        assert any((tmp_path / "cache").iterdir())
        if Path("/proc/self").is_dir():  # a folder that cannot be created: silently off
            assert enable_compilation_cache("/proc/swarm_jax_cache") is None
    finally:
        compilation_cache.reset_cache()
        compilation_cache.set_cache_dir(before)


def test_the_module_uses_no_private_jax_api():
    source = (Path(__file__).resolve().parents[1] / "swarm_jax" / "compile_cache.py").read_text()
    assert "jax._src" not in source
