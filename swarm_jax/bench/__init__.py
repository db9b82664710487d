"""Benchmarks: ``python -m swarm_jax.bench {kmc,env,train,scaling,learning,evaluate,sampling}``.

Each suite is a module of this package exposing ``add_arguments(parser)`` and
``run(args) -> list[dict]`` (one dict per table row). The driver prints the rows as a table and
writes them, with the machine description, to JSON. Nothing here is a test: timings are reported,
never asserted.
"""

from __future__ import annotations

import argparse
import re

_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")  # :func:`~a.b.c` -> a.b.c (shortened below)


def plain_text(doc: str | None) -> str:
    """A module docstring as plain text for ``--help``: RST roles and double backticks removed.

    ``:func:`~a.b.c``` becomes ``c``, ``:mod:`a.b``` becomes ``a.b`` and ````x```` becomes ``x``;
    line breaks are kept.
    """

    def role(match):
        target = match.group(1)
        return target.rsplit(".", 1)[-1] if match.group(0).split("`", 1)[1].startswith("~") else target

    return _ROLE.sub(role, (doc or "").strip()).replace("``", "")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's line breaks and appends ``(default: X)`` to an option's help.

    Nothing is appended when the help already states its default (it contains "default"), when
    the default is ``None`` (the help says what happens then) or a flag's ``False``.
    """

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or action.default is None or action.default is argparse.SUPPRESS
                or isinstance(action.default, bool) or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"
