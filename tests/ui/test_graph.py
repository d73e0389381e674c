"""The family tree's layout, from records alone: positions, lanes, edges, missing parents, 10,000 snapshots."""

from __future__ import annotations

from collections.abc import Sequence

import ckpt
from ckpt.model import Relation
from ckpt.ui._graph import COLUMN, LANE, MARGIN, layout

Family = tuple[ckpt.Store, dict[str, ckpt.Snapshot]]


def record(
    i: int, parents: Sequence[str] = (), relation: Relation = "continue", base: str | None = None
) -> ckpt.Snapshot:
    """A record with a made-up id (the layout reads ids, parents, relations and times only)."""
    return ckpt.Snapshot(
        id=f"{i:064x}",
        parents=tuple(parents),
        relation=relation if parents else "import",
        base=base,
        created_at=f"2026-01-01T00:00:00.{i:06d}Z",
        ckpt_version="0",
        table="0" * 64,
    )


def test_family_layout(family: Family) -> None:
    store, snaps = family
    lay = layout(store.snapshots(), store.branches())
    place = {n.snapshot.id: n for n in lay.nodes}
    assert len(place) == len(lay.nodes) == 15
    assert len({(n.x, n.y) for n in lay.nodes}) == 15
    order = [n.snapshot.id for n in lay.nodes]
    for e in lay.edges:  # topological order, columns grow along every edge
        assert order.index(e.source) < order.index(e.target)
        assert place[e.source].column < place[e.target].column
    assert {place[snaps[f"m{i}"].id].lane for i in range(1, 9)} == {0}
    assert [place[snaps[f"m{i}"].id].column for i in range(1, 9)] == list(range(8))
    assert len({place[snaps[k].id].lane for k in ("e1", "e2", "e3")}) == 1
    assert place[snaps["i1"].id].lane == place[snaps["i2"].id].lane != 0  # a fine-tune gets a row of its own
    assert place[snaps["merged"].id].column == place[snaps["lora"].id].column + 1
    n = place[snaps["m3"].id]
    assert (n.x, n.y) == (MARGIN + 2 * COLUMN, MARGIN)
    assert lay.height == 2 * MARGIN + (max(n.lane for n in lay.nodes)) * LANE


def test_edges_and_missing_parents() -> None:
    a, b, c = record(1), record(2, [f"{1:064x}"]), record(3, [f"{2:064x}"])
    adapter = record(4, [f"{3:064x}"], "adapter", base=f"{3:064x}")
    merge = record(5, [f"{4:064x}", f"{3:064x}"], "merge")
    detached = record(6, [f"{99:064x}"], "finetune", base=f"{98:064x}")
    lay = layout([merge, detached, adapter, c, b, a])
    kinds = sorted((e.source[-2:], e.target[-2:], e.kind, e.relation) for e in lay.edges)
    assert kinds == [
        ("01", "02", "parent", "continue"),
        ("02", "03", "parent", "continue"),
        ("03", "04", "parent", "adapter"),
        ("03", "05", "parent", "merge"),
        ("04", "05", "parent", "merge"),
    ]
    assert lay.missing == [f"{99:064x}", f"{98:064x}"]
    assert [n.snapshot.id[-2:] for n in lay.nodes][:3] == ["01", "02", "03"]


def test_branch_heads_keep_their_row() -> None:
    root = record(0)
    side = [record(1, [root.id]), record(2, [f"{1:064x}"])]  # older than main's saves, but not main
    main = [record(3, [root.id]), record(4, [f"{3:064x}"])]
    lay = layout([root, *main, *side], {"main": main[-1].id, "side": side[-1].id})
    lane = {n.snapshot.id: n.lane for n in lay.nodes}
    assert lane[root.id] == lane[main[0].id] == lane[main[1].id] == 0
    assert lane[side[0].id] == lane[side[1].id] == 1


def test_ten_thousand_snapshots() -> None:
    """A long run with a short branch every 100 saves: one node each, and rows reused once a branch ends."""
    snaps = [record(0)]
    for i in range(1, 9_000):
        snaps.append(record(i, [snaps[-1].id]))
    n = 9_000
    for start in range(50, 9_000, 100):
        prev = f"{start:064x}"
        for _ in range(11):
            snaps.append(record(n, [prev]))
            prev = f"{n:064x}"
            n += 1
    assert len(snaps) == 9_000 + 90 * 11 == 9_990
    lay = layout(snaps, {"main": f"{8_999:064x}"})
    assert len(lay.nodes) == len(snaps) and len(lay.edges) == len(snaps) - 1
    assert max(node.lane for node in lay.nodes) == 1  # every branch fits in the second row
    assert len({(node.x, node.y) for node in lay.nodes}) == len(snaps)
