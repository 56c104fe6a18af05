"""Every command and every option of the ``owlgate`` CLI is documented in docs/cli.md."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.core import TyperGroup

from owlgate.codecs.cli import app
from tests.conftest import REPO


def _walk(command: Any, path: str) -> list[tuple[str, Any]]:
    found = [(path, command)]
    if isinstance(command, TyperGroup):
        ctx = typer.Context(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, f"{path} {name} is listed but cannot be loaded"
            found.extend(_walk(sub, f"{path} {name}"))
    return found


COMMANDS = _walk(typer.main.get_command(app), "owlgate")
DOC = (REPO / "docs" / "cli.md").read_text()


def test_every_part_is_a_command() -> None:
    names = {path for path, _ in COMMANDS}
    assert {"owlgate decode", "owlgate bench", "owlgate demo"} <= names


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[path for path, _ in COMMANDS])
def test_command_and_options_are_documented(path: str, command: Any) -> None:
    assert f"`{path}" in DOC, f"docs/cli.md does not mention `{path}`"
    for param in command.params:
        for opt in getattr(param, "opts", []):
            if opt.startswith("--") and opt not in {"--help", "--version"}:
                assert f"`{opt}" in DOC, f"docs/cli.md does not document {opt} of {path}"


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_relative_links_resolve(page: Path) -> None:
    for target in LINK.findall(page.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
