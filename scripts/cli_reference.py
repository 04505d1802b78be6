"""Render the command-line reference from ``csrs.cli.build_parser()``.

The documentation site calls :func:`cli_reference` at build time (see ``scripts/mkdocs_hooks.py``),
so the reference shows exactly the options, help texts and defaults of the installed parser and
cannot drift from it. ``python scripts/cli_reference.py`` prints the same markdown.
"""

from __future__ import annotations

import argparse
import html
import sys

WIDTH = 100


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """Return (name, one-line help, parser) of each subcommand, in the parser's order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return []


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, "")
    return formatter.format_help().strip()


def _text(value: str) -> str:
    """Escape a help text for a markdown table cell."""
    return html.escape(" ".join(value.split()), quote=False).replace("|", "\\|")


def _names(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    names = ", ".join(f"`{name}`" for name in action.option_strings)
    if action.nargs != 0:
        names += f" `{action.metavar or action.dest.upper()}`"
    return names


def _default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "off" if isinstance(action, argparse._StoreTrueAction) else "on"
    if action.default is None or action.default is argparse.SUPPRESS:
        return "-"
    if isinstance(action.default, (tuple, list)):
        return "`" + ",".join(str(item) for item in action.default) + "`"
    return f"`{action.default}`"


def _details(action: argparse.Action) -> str:
    text = _text(action.help or "")
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        text = text.rstrip(".") + ("; one of " if text else "One of ") + ", ".join(
            f"`{c}`" for c in action.choices)
    if action.nargs in ("+", "*"):
        text += (" " if text else "") + ("(one or more)" if action.nargs == "+" else "(any number)")
    return text


def _options_table(actions: list[argparse.Action]) -> list[str]:
    lines = ["| option | default | what it does |", "|---|---|---|"]
    for action in actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        lines.append(f"| {_names(action)} | {_default(action)} | {_details(action)} |")
    return lines


def _command(name: str, summary: str, parser: argparse.ArgumentParser) -> list[str]:
    lines = [f"## `csrs {name}` {{#csrs-{name}}}", ""]
    if parser.description:
        lines += [_text(parser.description), ""]
    elif summary:
        lines += [_text(summary), ""]
    lines += ["```text", _usage(parser), "```", ""]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        title = group.title or "options"
        if title in ("positional arguments", "options", "optional arguments"):
            title = "arguments" if title.startswith("positional") else "options"
        lines += [f"**{title[0].upper() + title[1:]}**", "", *_options_table(actions), ""]
    return lines


def cli_reference(parser: argparse.ArgumentParser | None = None) -> str:
    """Return the markdown reference of every subcommand of ``csrs``."""
    if parser is None:
        from csrs.cli import build_parser

        parser = build_parser()
    lines = ["| command | what it does |", "|---|---|"]
    commands = _subcommands(parser)
    lines += [f"| [`csrs {name}`](#csrs-{name}) | {_text(summary)} |"
              for name, summary, _ in commands]
    lines.append("")
    for name, summary, sub in commands:
        lines += _command(name, summary, sub)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(cli_reference())
