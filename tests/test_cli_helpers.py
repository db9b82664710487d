"""The command lines' shared pieces (swarm_jax.cli)."""

import argparse

import pytest

from swarm_jax.cli import OneLineParser, count


@pytest.mark.parametrize("text, value", [("100000", 100000), ("1e5", 100000), ("100_000", 100000),
                                         (" 7 ", 7), ("-3", -3), ("2.0", 2)])
def test_count_accepts_integers_in_any_spelling(text, value):
    assert count(text) == value


@pytest.mark.parametrize("text", ["1.5", "1e-3", "inf", "nan", "ten", "", "1e400"])
def test_count_refuses_what_is_not_an_integer(text):
    with pytest.raises(argparse.ArgumentTypeError, match="invalid integer"):
        count(text)


def test_one_line_parser_raises_its_error_class():
    class Bad(Exception):
        pass

    class Parser(OneLineParser):
        error_class = Bad

    p = Parser(prog="x")
    p.add_argument("--n", type=count)
    assert p.parse_args(["--n", "1e3"]).n == 1000
    with pytest.raises(Bad, match="invalid integer"):
        p.parse_args(["--n", "0.5"])
    with pytest.raises(Bad, match="unrecognized arguments"):
        p.parse_args(["--m", "1"])
