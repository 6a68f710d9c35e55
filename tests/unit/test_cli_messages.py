"""Every message that tells a user to run `mlre ...` names a command (and flags) that exist."""

from __future__ import annotations

import argparse
import ast
import re
from collections.abc import Iterator

import pytest

from cli.main import build_parser
from mlre.settings import PROJECT_ROOT

pytestmark = pytest.mark.unit

PACKAGES = ("mlre", "flows", "serving", "cli", "feature_repo")
# Functions whose string arguments a person reads: prints, echoes and log calls.
SPOKEN = {"print", "_echo", "echo", "debug", "info", "warning", "error", "exception", "critical"}
# A command as messages write one: `mlre promote --force`, (mlre apply), run mlre up, or mlre
# history; "Unknown mlre event" or "mlre prediction service" are names, not commands.
MENTION = re.compile(
    r"(?:^|[(`]|\b(?:run|or|with|use|try|X) )mlre ([a-z][a-z-]*)((?: +[^ ()`'\";,]+)*)"
)


def _text(node: ast.AST) -> str:
    """A string literal, or an f-string with its placeholders as `X`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(
            _text(part) if isinstance(part, ast.Constant) else "X" for part in node.values
        )
    return ""


def _strings(node: ast.AST) -> Iterator[str]:
    for child in ast.walk(node):
        text = _text(child)
        if text:
            yield text


def _called(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def messages() -> Iterator[tuple[str, int, str]]:
    """(file, line, text) of every string in a raise or a spoken call under the packages."""
    for package in PACKAGES:
        for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                spoken = isinstance(node, ast.Call) and _called(node) in SPOKEN
                if isinstance(node, ast.Raise) or spoken:
                    for text in _strings(node):
                        yield str(path.relative_to(PROJECT_ROOT)), node.lineno, text


def mentions() -> list[tuple[str, str, list[str]]]:
    """(where, command, flags) of every `mlre COMMAND [--flag ...]` in a message."""
    found: dict[tuple[str, str, tuple[str, ...]], None] = {}
    for file, line, text in messages():
        # Adjacent literals split across source lines are joined by the parser already.
        for match in MENTION.finditer(" ".join(text.split())):
            flags = [t.split("=")[0] for t in match.group(2).split() if t.startswith("--")]
            found[(f"{file}:{line}", match.group(1), tuple(flags))] = None
    return [(where, command, list(flags)) for where, command, flags in found]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the mlre parser has no subcommands")


def test_the_walk_finds_the_messages_it_checks() -> None:
    commands = {command for _, command, _ in mentions()}
    # The walk must see the messages we know about, or the check below checks nothing.
    assert {"promote", "apply", "generate"} <= commands


@pytest.mark.parametrize(("where", "command", "flags"), mentions(), ids=str)
def test_message_names_an_existing_command(where: str, command: str, flags: list[str]) -> None:
    subcommands = _subparsers(build_parser())
    assert command in subcommands, f"{where}: `mlre {command}` is not a command of the CLI"
    known = {o for action in subcommands[command]._actions for o in action.option_strings}
    unknown = [flag for flag in flags if flag not in known]
    assert not unknown, f"{where}: `mlre {command}` has no option(s) {unknown}"
