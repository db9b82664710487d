"""``python -m swarm_jax.bench [SUITE] --help`` reads as plain text: no RST markup, every option
explained, each default stated once and never as ``None``."""

from __future__ import annotations

import re

import pytest

from swarm_jax.bench import plain_text
from swarm_jax.bench.__main__ import SUITES, main

# Options whose help text is still to be written (bench/learning.py is edited elsewhere). Each
# entry must still lack help, so the list shrinks as they are fixed.
PENDING_HELP: set = set()


def _help(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def _option_helps(text: str) -> dict[str, str]:
    """{"--option": its help text} from argparse's "options:" block (metavars of several words,
    e.g. ``--lattice LX LY LZ`` or ``--flux FLUX [FLUX ...]``, included)."""
    block = text.split("\noptions:\n", 1)[1]
    helps: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        match = re.match(r"^  (-\S+)(?: [A-Za-z_{},.\[\]]+)*(?:, (--\S+)(?: [A-Za-z_{},.\[\]]+)*)?(?:\s{2,}(.*))?$", line)
        if match:
            current = match.group(2) or match.group(1)
            helps[current] = (match.group(3) or "").strip()
        elif current is not None and line.startswith("    "):
            helps[current] = (helps[current] + " " + line.strip()).strip()
    return helps


def test_plain_text_strips_rst_markup():
    doc = "Uses :func:`~swarm_jax.physics.engine.run` and :mod:`swarm_jax.swarm`, ``x = 1``.\nSecond line."
    assert plain_text(doc) == "Uses run and swarm_jax.swarm, x = 1.\nSecond line."


def test_top_level_help_is_plain_text(capsys):
    text = _help(capsys, [])
    assert "``" not in text and ":func:" not in text
    for suite in SUITES:
        assert suite in text


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_suite_help_explains_every_option_once(suite, capsys):
    text = _help(capsys, [suite])
    assert "``" not in text and re.search(r":[a-z]+:`", text) is None, "RST markup in the help"
    helps = _option_helps(text)
    assert "--json" in helps
    for option, help_text in helps.items():
        if option in ("-h", "--help"):
            continue
        assert "(default: None)" not in help_text, f"{suite} {option}: {help_text}"
        assert help_text.count("default") <= 1, f"{suite} {option} states its default twice: {help_text}"
        if (suite, option) in PENDING_HELP:
            assert help_text == "", f"{suite} {option} has help now: remove it from PENDING_HELP"
        else:
            assert help_text, f"{suite} {option} has no help text"
