"""The family tree drawn by ``ckpt log --graph``: one lane per line of descent, newest snapshot first.

Edges go from a snapshot to its parents and, for an adapter, to its base. Lanes keep their column: a branch that
split off shows as a lane joining its parent's lane (``├─╯``), a merge (or an adapter's base that is not its
first parent) as a lane opening to the right (``├─╮``). Pruned snapshots are drawn ``○``, the others ``●``.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from rich.text import Text

if TYPE_CHECKING:
    from ckpt.model import Snapshot

__all__ = ["edges", "graph_rows", "topological"]

_PALETTE = ("red", "green", "yellow", "blue", "magenta", "cyan")
_Link = Literal["join", "new", "into"]


def edges(snap: Snapshot, known: set[str] | dict[str, Snapshot]) -> list[str]:
    """The ids a snapshot's edges lead to, among ``known``: its parents, then its base if not a parent."""
    out: list[str] = []
    for p in (*snap.parents, *((snap.base,) if snap.base else ())):
        if p in known and p not in out:
            out.append(p)
    return out


def topological(snaps: Sequence[Snapshot]) -> list[Snapshot]:
    """The snapshots ordered children before parents, newest first where the edges leave a choice."""
    by_id = {s.id: s for s in snaps}
    out_edges = {s.id: edges(s, by_id) for s in by_id.values()}
    waiting = Counter(p for ps in out_edges.values() for p in ps)
    heap = [(-s.created.timestamp(), s.id) for s in by_id.values() if waiting[s.id] == 0]
    heapq.heapify(heap)
    order: list[Snapshot] = []
    while heap:
        _, sid = heapq.heappop(heap)
        order.append(by_id[sid])
        for p in out_edges[sid]:
            waiting[p] -= 1
            if waiting[p] == 0:
                heapq.heappush(heap, (-by_id[p].created.timestamp(), p))
    return order


def _style(lane: int) -> str:
    return _PALETTE[lane % len(_PALETTE)]


def _node_row(lanes: list[str | None], col: int, snap: Snapshot) -> Text:
    out = Text()
    for j, lane in enumerate(lanes):
        if j:
            out.append(" ")
        if j == col:
            out.append("○" if snap.pruned else "●", style="bold red" if snap.pruned else "bold")
        elif lane is not None:
            out.append("│", style=_style(j))
        else:
            out.append(" ")
    return out


def _link_row(lanes: list[str | None], col: int, links: dict[int, _Link]) -> Text:
    lo, hi = min(col, *links), max(col, *links)
    chars: list[tuple[str, int]] = []
    for j, lane in enumerate(lanes):
        if j:
            chars.append(("─" if lo <= j - 1 < hi else " ", max(links)))
        if j == col:
            left, right = any(k < col for k in links), any(k > col for k in links)
            chars.append(("┼" if left and right else "├" if right else "┤", j))
        elif j in links:
            if j in (lo, hi):  # the far end of the line
                glyph = {"join": "╯╰", "new": "╮╭", "into": "┤├"}[links[j]]
                chars.append((glyph[0] if j > col else glyph[1], j))
            else:  # the line goes on past it
                chars.append(({"join": "┴", "new": "┬", "into": "┼"}[links[j]], j))
        elif lo < j < hi:
            chars.append(("┼" if lane is not None else "─", j))
        else:
            chars.append(("│" if lane is not None else " ", j))
    while chars and chars[-1][0] == " ":
        chars.pop()
    out = Text()
    for ch, lane_index in chars:
        out.append(ch, style=_style(lane_index) if ch != " " else "")
    return out


def _gap_row(lanes: list[str | None]) -> Text:
    """A row with no snapshot: the lanes that go on, and nothing where one ended."""
    out = Text()
    for j, lane in enumerate(lanes):
        if j:
            out.append(" ")
        out.append("│" if lane is not None else " ", style=_style(j) if lane is not None else "")
    out.rstrip()
    return out


def _free(lanes: list[str | None], after: int) -> int:
    for k in range(after + 1, len(lanes)):
        if lanes[k] is None:
            return k
    lanes.append(None)
    return len(lanes) - 1


def graph_rows(snaps: Sequence[Snapshot]) -> list[tuple[Text, Snapshot | None]]:
    """Rows of the graph: ``(drawing, snapshot)`` for a snapshot's row, ``(drawing, None)`` for a connector.

    Args:
        snaps: the snapshots to draw; edges to snapshots not in the list are left out.

    Returns:
        The rows, top to bottom (children before parents).
    """
    order = topological(snaps)
    known = {s.id for s in order}
    lanes: list[str | None] = []
    rows: list[tuple[Text, Snapshot | None]] = []
    ended: int | None = None  # the column where the last row's snapshot was a root (its lane ended there)
    for snap in order:
        waiting = [i for i, x in enumerate(lanes) if x == snap.id]
        if waiting:
            col, others = waiting[0], waiting[1:]
        else:
            col, others = next((i for i, x in enumerate(lanes) if x is None), len(lanes)), []
            if col == len(lanes):
                lanes.append(None)
            if col == ended:  # an unrelated history starts right under a root: a gap, not a line between them
                rows.append((_gap_row(lanes), None))
            lanes[col] = snap.id
        if others:
            rows.append((_link_row(lanes, col, dict.fromkeys(others, "join")), None))
            for o in others:
                lanes[o] = None
            while lanes and lanes[-1] is None:
                lanes.pop()
        rows.append((_node_row(lanes, col, snap), snap))
        targets = edges(snap, known)
        lanes[col] = targets[0] if targets else None
        ended = None if targets else col
        links: dict[int, _Link] = {}
        for p in targets[1:]:
            if p in lanes and lanes.index(p) != col:
                links[lanes.index(p)] = "into"
            else:
                k = _free(lanes, col)
                lanes[k] = p
                links[k] = "new"
        if links:
            rows.append((_link_row(lanes, col, links), None))
        while lanes and lanes[-1] is None:
            lanes.pop()
    return rows
