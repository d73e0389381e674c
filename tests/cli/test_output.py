"""Rendering helpers: the graph layout, ages, sizes, snapshot lines."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from ckpt.cli._graph import graph_rows, topological
from ckpt.cli._output import RefIndex, age, human_bytes, metrics_text, snapshot_json, snapshot_line
from ckpt.model import Snapshot, TagRecord, format_time

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)


def snap(sid: str, *parents: str, minute: int, base: str | None = None, pruned: bool = False, **kw: object) -> Snapshot:
    return Snapshot(
        id=_id(sid),
        parents=tuple(_id(p) for p in parents),
        relation=kw.pop("relation", "continue" if parents else "import"),  # type: ignore[arg-type]
        created_at=format_time(T0 + timedelta(minutes=minute)),
        ckpt_version="0",
        table="0" * 64,
        base=_id(base) if base else None,
        pruned=pruned,
        **kw,  # type: ignore[arg-type]
    )


def _id(letter: str) -> str:
    """A valid snapshot id for a one-letter name (ids are 64 hex characters)."""
    return letter * 64 if letter in "0123456789abcdef" else f"{ord(letter):02x}" * 32


def _letter(s: Snapshot) -> str:
    return s.id[0] if len(set(s.id)) == 1 else chr(int(s.id[:2], 16))


def drawing(snaps: list[Snapshot]) -> list[str]:
    return [f"{d.plain} {_letter(s) if s else ''}".rstrip() for d, s in graph_rows(snaps)]


def test_linear_history() -> None:
    snaps = [snap("a", minute=0), snap("b", "a", minute=1), snap("c", "b", minute=2)]
    assert drawing(snaps) == ["● c", "● b", "● a"]


def test_unrelated_histories_are_not_drawn_as_one_line() -> None:
    """A root, then the tip of another history in the same column: a gap between them, not a line."""
    snaps = [snap("a", minute=0), snap("b", "a", minute=1), snap("x", minute=2), snap("y", "x", minute=3)]
    assert drawing(snaps) == ["● y", "● x", "", "● b", "● a"]
    snaps = [*snaps, snap("c", "a", minute=4)]  # a lane going on beside the gap keeps its line
    assert drawing(snaps) == ["● c", "│ ● y", "│ ● x", "│", "│ ● b", "├─╯", "● a"]


def test_branch_splitting_off() -> None:
    snaps = [snap("a", minute=0), snap("b", "a", minute=1), snap("c", "a", minute=2), snap("d", "b", minute=3)]
    assert drawing(snaps) == ["● d", "│ ● c", "● │ b", "├─╯", "● a"]


def test_merge_and_pruned() -> None:
    snaps = [
        snap("a", minute=0, pruned=True),
        snap("b", "a", minute=1),
        snap("x", "a", minute=2),
        snap("m", "b", "x", minute=3, relation="merge"),
    ]
    assert drawing(snaps) == ["● m", "├─╮", "│ ● x", "● │ b", "├─╯", "○ a"]


def test_adapter_base_edge_and_three_way_join() -> None:
    snaps = [
        snap("r", minute=0),
        snap("b", "r", minute=1),
        snap("c", "r", minute=2),
        snap("d", "r", minute=3),
        snap("l", "d", minute=4, base="b", relation="adapter"),
    ]
    rows = drawing(snaps)
    assert rows[0] == "● l" and rows[1] == "├─╮"
    assert rows[-2] == "├─┴─╯" and rows[-1] == "● r"
    assert [r[-1] for r in rows if r[-1].isalpha()] == ["l", "d", "c", "b", "r"]


def test_topological_puts_children_first_even_with_skewed_clocks() -> None:
    snaps = [snap("a", minute=10), snap("b", "a", minute=0)]  # the child's clock is behind
    assert [_letter(s) for s in topological(snaps)] == ["b", "a"]


def test_edges_outside_the_set_are_left_out() -> None:
    assert drawing([snap("b", "a", minute=1)]) == ["● b"]


def test_age() -> None:
    stamp = format_time(T0)
    assert age(stamp, now=T0 + timedelta(seconds=10)) == "just now"
    assert age(stamp, now=T0 + timedelta(seconds=70)) == "1 minute ago"
    assert age(stamp, now=T0 + timedelta(hours=3)) == "3 hours ago"
    assert age(stamp, now=T0 + timedelta(days=1)) == "1 day ago"
    assert age(stamp, now=T0 + timedelta(days=90)) == "2026-11-28"


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1024, 5 * 2**30, 3 * 2**40)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "5.0 GiB",
        "3.0 TiB",
    ]


def test_snapshot_line_and_json() -> None:
    s = snap("c", "b", minute=0, model="m", step=5, epoch=1, metrics={"loss": float("nan"), "a": 1, "b": 2, "c": 3})
    tag = TagRecord(id=s.id, frozen=True, created_at=format_time(T0))
    other = TagRecord(id="f" * 64, created_at=format_time(T0))
    refs = RefIndex({"main": s.id}, {"m-2026-11-28": tag, "other": other})
    line = snapshot_line(s, refs, now=T0 + timedelta(hours=2)).plain
    assert (
        line
        == "cccccccccccc (main, frozen: m-2026-11-28) continue m step 5 epoch 1 loss=nan a=1 b=2 +1 more (2 hours ago)"
    )
    assert metrics_text({"x": float("-inf")}) == "x=-inf"
    data = snapshot_json(s, refs)
    assert data["metrics"]["loss"] == "NaN" and data["refs"][1] == {
        "kind": "tag",
        "name": "m-2026-11-28",
        "frozen": True,
    }
