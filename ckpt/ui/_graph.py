"""The family tree as a picture: a layered layout of every snapshot, computed from records alone.

Columns are generations (a snapshot sits one column right of its furthest parent or adapter base), rows are
*lanes*. A lane holds one chain: a snapshot's first child that continues it (``continue`` first, then the
oldest) stays in its lane, every other child (a branch point, a fine-tune, an adapter, a merge) opens a
chain of its own. Chains are packed into as few lanes as their column ranges allow (interval partitioning),
so a store of many short-lived branches stays compact. The cost is ``O(n log n)`` in the number of snapshots
and nothing but records is read: 10,000 snapshots lay out in a fraction of a second.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ckpt.model import Snapshot

__all__ = ["Edge", "Layout", "Node", "layout"]

#: Pixels between columns and between lanes in the SVG.
COLUMN = 64
LANE = 46
MARGIN = 40


@dataclass(frozen=True)
class Node:
    """One snapshot's place in the picture.

    Attributes:
        snapshot: the record.
        column: its generation (0 for a root).
        lane: its row.
        x: horizontal position in pixels.
        y: vertical position in pixels.
    """

    snapshot: Snapshot
    column: int
    lane: int
    x: int
    y: int


@dataclass(frozen=True)
class Edge:
    """A line from a parent (or an adapter's base) to a child.

    Attributes:
        source: the parent's id.
        target: the child's id.
        kind: ``parent`` (one per entry of the child's ``parents``) or ``base`` (an adapter base that is not
            among the parents).
        relation: what the edge means: the child's ``relation`` for its first parent, ``merge`` for further
            parents, ``base`` for a base edge.
        index: the position of ``source`` in the child's parents (0 for the first parent and for base edges).
    """

    source: str
    target: str
    kind: str
    relation: str
    index: int = 0


@dataclass
class Layout:
    """Nodes and edges with positions, and the picture's size.

    Attributes:
        nodes: one per snapshot, in topological order (parents before children).
        edges: one per parent of every snapshot whose parent is in the store, plus adapter-base edges.
        missing: parents or bases named by a record but not in the store (a partial sync, a damaged store).
        width: pixels.
        height: pixels.
    """

    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    width: int = 0
    height: int = 0


def _sources(s: Snapshot) -> list[str]:
    out = list(s.parents)
    if s.base and s.base not in out:
        out.append(s.base)
    return out


def _topological(snaps: Sequence[Snapshot], by_id: Mapping[str, Snapshot]) -> list[Snapshot]:
    """Parents before children, oldest first among those ready (Kahn's algorithm, records only)."""
    pending = {s.id: sum(1 for p in set(_sources(s)) if p in by_id) for s in snaps}
    children: dict[str, list[str]] = {}
    for s in snaps:
        for p in set(_sources(s)):
            if p in by_id:
                children.setdefault(p, []).append(s.id)
    ready = [(s.created_at, s.id) for s in snaps if pending[s.id] == 0]
    heapq.heapify(ready)
    out: list[Snapshot] = []
    while ready:
        _, sid = heapq.heappop(ready)
        out.append(by_id[sid])
        for c in children.get(sid, ()):
            pending[c] -= 1
            if pending[c] == 0:
                heapq.heappush(ready, (by_id[c].created_at, c))
    if len(out) < len(snaps):  # a cycle cannot be built from content-addressed ids; draw what is left anyway
        placed = {s.id for s in out}
        out.extend(sorted((s for s in snaps if s.id not in placed), key=lambda s: s.created_at))
    return out


def layout(
    snapshots: Sequence[Snapshot],
    branches: Mapping[str, str] | None = None,
) -> Layout:
    """Lay out every snapshot as a node of a left-to-right DAG.

    Args:
        snapshots: the records to draw (``store.snapshots()``).
        branches: branch name → id; a branch head's chain is preferred when a snapshot has several continuing
            children (``main``'s first), so each branch reads as a straight line.

    Returns:
        The layout: columns by generation, lanes packed, pixel positions.
    """
    by_id = {s.id: s for s in snapshots}
    order = _topological(snapshots, by_id)
    heads = set((branches or {}).values())

    column: dict[str, int] = {}
    for s in order:
        column[s.id] = 1 + max((column[p] for p in _sources(s) if p in column), default=-1)

    # every snapshot on a branch head's first-parent chain (each walk stops where an earlier one passed)
    leads_to_head: set[str] = set()
    main_line: set[str] = set()
    ordered_heads = sorted(heads, key=lambda h: h != (branches or {}).get("main"))
    for head in ordered_heads:
        sid: str | None = head
        while sid is not None and sid in by_id and sid not in leads_to_head:
            leads_to_head.add(sid)
            if head == ordered_heads[0] and "main" in (branches or {}):
                main_line.add(sid)
            parents = by_id[sid].parents
            sid = parents[0] if parents else None
    first_children: dict[str, list[Snapshot]] = {}
    for s in order:
        if s.parents and s.parents[0] in by_id:
            first_children.setdefault(s.parents[0], []).append(s)

    def preference(c: Snapshot) -> tuple[bool, int, str]:
        rank = 0 if c.id in main_line else 1 if c.id in leads_to_head else 2
        return (c.relation != "continue", rank, c.created_at)

    # only a ``continue`` child carries its parent's line on; a fine-tune, an adapter … starts a row of its own
    heir: dict[str, str] = {
        pid: min(kids, key=preference).id
        for pid, kids in first_children.items()
        if any(c.relation == "continue" for c in kids)
    }

    # chains: a snapshot joins its first parent's chain when it is that parent's heir
    chain_of: dict[str, int] = {}
    chains: list[list[str]] = []
    for s in order:
        p = s.parents[0] if s.parents else None
        if p is not None and p in chain_of and heir.get(p) == s.id:
            chain_of[s.id] = chain_of[p]
            chains[chain_of[p]].append(s.id)
        else:
            chain_of[s.id] = len(chains)
            chains.append([s.id])

    # interval partitioning: a chain occupies its columns, and its parent's column when it hangs off one
    spans = []
    for i, chain in enumerate(chains):
        first = by_id[chain[0]]
        start = column[chain[0]]
        sources = [column[p] for p in _sources(first) if p in column]
        if sources:  # from the parent's column on, so a new line never sits in its parent's row right after it
            start = min(start, max(sources))
        spans.append((start, column[chain[-1]], i))
    spans.sort()
    busy: list[tuple[int, int]] = []  # (last column, lane)
    free: list[int] = []
    lanes = 0
    lane_of_chain: dict[int, int] = {}
    for start, end, i in spans:
        while busy and busy[0][0] < start:
            heapq.heappush(free, heapq.heappop(busy)[1])
        if free:
            lane = heapq.heappop(free)
        else:
            lane = lanes
            lanes += 1
        lane_of_chain[i] = lane
        heapq.heappush(busy, (end, lane))

    out = Layout()
    seen_missing: set[str] = set()
    for s in order:
        lane = lane_of_chain[chain_of[s.id]]
        c = column[s.id]
        out.nodes.append(Node(snapshot=s, column=c, lane=lane, x=MARGIN + c * COLUMN, y=MARGIN + lane * LANE))
        for index, p in enumerate(s.parents):
            if p in by_id:
                relation = s.relation if index == 0 else "merge"
                out.edges.append(Edge(source=p, target=s.id, kind="parent", relation=relation, index=index))
            elif p not in seen_missing:
                seen_missing.add(p)
                out.missing.append(p)
        if s.base and s.base not in s.parents:
            if s.base in by_id:
                out.edges.append(Edge(source=s.base, target=s.id, kind="base", relation="base"))
            elif s.base not in seen_missing:
                seen_missing.add(s.base)
                out.missing.append(s.base)
    columns = 1 + max(column.values(), default=-1)
    out.width = 2 * MARGIN + max(columns - 1, 0) * COLUMN + 160  # room for the last labels
    out.height = 2 * MARGIN + max(lanes - 1, 0) * LANE
    return out
