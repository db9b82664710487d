"""swarm_jax.compile_cache: where the persistent compilation cache goes, and how it is disabled."""

from __future__ import annotations

from pathlib import Path

import jax
import pytest

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
        assert enable_compilation_cache(tmp_path / "cache") == tmp_path / "cache"
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
        assert (tmp_path / "cache").is_dir()
        if Path("/proc/self").is_dir():  # a folder that cannot be created: silently off
            assert enable_compilation_cache("/proc/swarm_jax_cache") is None
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
        from jax._src import compilation_cache

        compilation_cache.reset_cache()
