"""Text read from a store is shown as it is: never read as rich markup, never sent raw to the terminal.

A message, a model name, a tensor name, a metric or metadata key, an attached file's path or a ref name may hold
``[bold]``, ``[/]`` (rich markup), ESC sequences (colours, clearing the screen, window titles) or bidirectional
overrides. Every command that prints such text prints it literally, with control characters escaped.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import ckpt
from tests.cli.conftest import Invoke

MESSAGE = "[bold]x[/ \x1b[31mred\x1b[0m \x1b]0;title\x07 \u202eevil [/] :smile: \x9b2J"
MODEL = "[bold]m[/"
TENSOR = "[/]w\x1b[2J"
#: What must never reach the output: a raw ESC, BEL, a C1 CSI, a bidi override.
RAW = ("\x1b[2J", "\x1b[31mred", "\x07", "\x9b", "\u202e")


@pytest.fixture
def nasty(store: ckpt.Store, store_path: Path) -> ckpt.Store:
    """Two snapshots whose every free-text field holds markup and control characters; odd ref names."""
    a = store.save(
        {"model": {TENSOR: np.ones((4, 4), np.float32)}, "note": "[/]"},
        branch="main",
        model=MODEL,
        message=MESSAGE,
        metrics={"[/]loss": 1.0},
        metadata={"[b]k\x1b": "[/]"},
        files={"[/]cfg\u202e.json": b"{}"},
        step=1,
    )
    b = store.save(
        {"model": {TENSOR: np.zeros((4, 4), np.float32)}},
        branch="main",
        model=MODEL,
        message=MESSAGE,
        metrics={"[/]loss": 0.5},
        files={"[/]cfg\u202e.json": b"{ }"},
        step=2,
    )
    store.tag("x]", b.id, message=MESSAGE)
    store.branch("e\u202eb", at=a.id)
    # a ref made by hand (or by an older rule) whose name is markup: readable, so it is listed
    (store_path / "refs" / "heads" / "[b]z[").mkdir()
    shutil.copy(store_path / "refs" / "heads" / "main", store_path / "refs" / "heads" / "[b]z[" / "]")
    return store


COMMANDS = [
    (["log"], [MODEL, "[bold]x[/", "\\x1b[31mred", "\\u202eevil [/] :smile:", "[/]loss=0.5", "[b]z[/]"]),
    (["log", "--graph", "--all"], [MODEL, "[bold]x[/", "e\\u202eb", "tag: x]"]),
    (["show"], [MODEL, "[bold]x[/", "\\u202eevil", "[/]loss=0.5", "[b]z[/]"]),
    (["show", "x]", "--tensors"], ["model/[/]w\\x1b[2J", "tag: x]"]),
    (["show", "main~1"], ["[/]cfg\\u202e.json", "e\\u202eb", "[b]k\\x1b"]),
    (["ls"], ["[b]z[/]", "e\\u202eb", "x]", MODEL]),
    (["branch"], ["[b]z[/]", "e\\u202eb", MODEL]),
    (["tag"], ["x]", MODEL]),
    (["reflog"], ["e\\u202eb", "[bold]x[/ \\x1b[31mred"]),
    (["diff", "main~1", "main"], ["model/[/]w\\x1b[2J", "[/]cfg\\u202e.json"]),
    (["verify"], ["[b]z[/]"]),
]


@pytest.mark.parametrize("args,expected", COMMANDS, ids=[" ".join(c[0]) for c in COMMANDS])
def test_store_text_printed_literally(nasty: ckpt.Store, invoke: Invoke, args: list[str], expected: list[str]) -> None:
    result = invoke(*args, code=None)
    assert result.exit_code in (0, 1), result.output  # verify: the hand-made ref has no reflog entry
    out = result.stdout + result.stderr
    assert "Traceback" not in out and "MarkupError" not in out
    for raw in RAW:
        assert raw not in out, (raw, out)
    for text in expected:
        assert text in out, (text, out)


def test_colours_on_a_terminal_come_from_ckpt_only(nasty: ckpt.Store, invoke: Invoke) -> None:
    """With colours forced on, the only escape sequences are rich's own colour codes (SGR)."""
    for args in (["log"], ["show", "--tensors"], ["ls"], ["reflog"], ["diff", "main~1", "main"]):
        out = invoke(*args, env={"FORCE_COLOR": "1", "TTY_COMPATIBLE": "1"}).stdout
        assert "\x1b[1m" in out or "\x1b[33m" in out, out  # colours are on
        for raw in RAW:
            assert raw not in out, (args, raw)
        assert re.findall(r"\x1b(?!\[[0-9;]*m)", out) == [], args  # nothing but SGR colour codes


def test_json_escapes_every_control_character(nasty: ckpt.Store, invoke: Invoke) -> None:
    for args in (["log", "--json"], ["show", "--json"], ["reflog", "--json"], ["ls", "--json"]):
        out = invoke(*args).stdout
        for raw in RAW:
            assert raw not in out, (args, raw)
        json.loads(out)  # still a valid document
    records = json.loads(invoke("log", "--json").stdout)
    assert records[0]["message"] == MESSAGE  # escaped on the way out, the same string once parsed


def test_messages_and_errors_escape_names(nasty: ckpt.Store, invoke: Invoke) -> None:
    """Plain lines (click.echo) and error messages built from names escape them too."""
    result = invoke("show", "nope\x1b[2J", code=None)
    assert result.exit_code != 0
    assert "\x1b" not in result.stderr and "nope\\x1b[2J" in result.stderr
    out = invoke("branch", "-d", "e\u202eb").stdout
    assert "\u202e" not in out and "e\\u202eb" in out
