"""Every option of every subcommand says what it does and what it defaults to."""

import argparse
import re

import pytest

from csrs.cli import build_parser


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_option_has_help_and_shows_its_default(command):
    parser = _subcommands()[command]
    formatter = parser._get_formatter()
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        text = formatter._get_help_string(action) if action.help else ""
        if not text:
            missing.append(f"{'/'.join(action.option_strings) or action.dest}: no help")
        elif action.option_strings and not action.required and "default" not in text:
            missing.append(f"{'/'.join(action.option_strings)}: no default shown")
    assert not missing, missing


def test_the_demo_help_names_what_the_demo_runs():
    text = " ".join(re.sub(r"-\s+", "-", _subcommands()["demo"].format_help()).split())
    for name in ("cohen", "csrs", "margin-cs", "smoothadv-cs", "digits", "breast-cancer",
                 "n = 2000"):
        assert name in text
