"""``train.py`` (a script at the repository root, not a package module) loaded once for the tests
that call its ``main``/``build_parser`` in-process, and the check of its one-line errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny_test.yaml"

_spec = importlib.util.spec_from_file_location("train_cli", REPO / "train.py")
train_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_cli)


def one_error_line(capsys) -> str:
    """The one line ``train.py`` wrote to stderr (``train.py: error: ...``); fails otherwise."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("train.py: error: "), err
    return err[0]
