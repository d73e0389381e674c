"""What each page shows, as JSON-ready data, read through the public Python API.

The web app's ``/api/`` endpoints return these dicts; the pages only draw them. Nothing here writes to the
store, and only the snapshot page (its tensor table) and the diff view (the tensors it compares) read more
than snapshot records. Non-finite numbers become the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``,
as in the store's own records, so every document is strict JSON.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ckpt._version import __version__
from ckpt.diff import diff as diff_snapshots
from ckpt.diff import layer_of, tensor_order
from ckpt.errors import CkptError, MissingObjectError, RecordError
from ckpt.model import RESERVED_FILE_PREFIX, Snapshot, TagRecord
from ckpt.plot import Scope, metric_group, metric_names, monitored_metric, run_history, series_of, x_axis
from ckpt.ui._graph import layout

if TYPE_CHECKING:
    from ckpt.store import Store

__all__ = [
    "RefIndex",
    "diff_view",
    "graph_view",
    "json_safe",
    "parse_diff_spec",
    "record",
    "run_view",
    "snapshot_view",
    "snapshots_page",
    "store_view",
]

#: The longest message the tree sends per node (the snapshot page shows it whole).
_MESSAGE_PREVIEW = 160


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``."""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _safe(document: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json_safe(document)
    return out


class RefIndex:
    """Branches and tags by the snapshot they point at."""

    def __init__(self, branches: Mapping[str, str], tags: Mapping[str, TagRecord]) -> None:
        self.branches = dict(branches)
        self.tags = dict(tags)
        self._branches_at: dict[str, list[str]] = {}
        self._tags_at: dict[str, list[dict[str, Any]]] = {}
        for name, sid in sorted(self.branches.items()):
            self._branches_at.setdefault(sid, []).append(name)
        for name, tag in sorted(self.tags.items()):
            self._tags_at.setdefault(tag.id, []).append({"name": name, "frozen": tag.frozen})

    @classmethod
    def of(cls, store: Store) -> RefIndex:
        """The refs of a store, read now."""
        return cls(store.branches(), store.tags())

    def at(self, snapshot_id: str) -> dict[str, Any]:
        """``{"branches": [...], "tags": [{"name", "frozen"}]}`` pointing at a snapshot."""
        return {"branches": self._branches_at.get(snapshot_id, []), "tags": self._tags_at.get(snapshot_id, [])}


def record(snap: Snapshot, refs: RefIndex | None = None) -> dict[str, Any]:
    """A snapshot's whole record, with its id, short id, pruned flag and the refs pointing at it."""
    out: dict[str, Any] = {"id": snap.id, "short_id": snap.short_id, "pruned": snap.pruned}
    out.update(snap.model_dump(mode="json"))
    if refs is not None:
        out["refs"] = refs.at(snap.id)
    return out


def _brief(snap: Snapshot, refs: RefIndex | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": snap.id,
        "short_id": snap.short_id,
        "relation": snap.relation,
        "model": snap.model,
        "step": snap.step,
        "pruned": snap.pruned,
        "created_at": snap.created_at,
    }
    if refs is not None:
        out["refs"] = refs.at(snap.id)
    return out


def store_view(store: Store) -> dict[str, Any]:
    """The store's location, ckpt's version, branches and tags (refs only: no record is read)."""
    refs = RefIndex.of(store)
    return {
        "url": store.url,
        "ckpt_version": __version__,
        "branches": refs.branches,
        "tags": {
            name: {"id": t.id, "frozen": t.frozen, "created_at": t.created_at, "message": t.message}
            for name, t in sorted(refs.tags.items())
        },
    }


def _preview(text: str | None) -> str | None:
    if text is None:
        return None
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= _MESSAGE_PREVIEW else first[: _MESSAGE_PREVIEW - 1] + "…"


def graph_view(store: Store, snapshots: Sequence[Snapshot] | None = None) -> dict[str, Any]:
    """The family tree: every snapshot as a positioned node, every parent and adapter base as an edge.

    Reads every snapshot record (``store.snapshots()``) and the refs, never a tensor table.
    """
    refs = RefIndex.of(store)
    snaps = list(store.snapshots() if snapshots is None else snapshots)
    lay = layout(snaps, refs.branches)
    by_id = {s.id: s for s in snaps}
    nodes = []
    for n in lay.nodes:
        s = n.snapshot
        parent = by_id.get(s.parents[0]) if s.parents else None
        nodes.append(
            {
                "id": s.id,
                "x": n.x,
                "y": n.y,
                "relation": s.relation,
                "model": s.model,
                "step": s.step,
                "epoch": s.epoch,
                "message": _preview(s.message),
                "created_at": s.created_at,
                "pruned": s.pruned,
                "base": s.base,
                "line_start": parent is None or s.relation != "continue" or parent.model != s.model,
                "metrics": s.model_dump(mode="json")["metrics"],
                "refs": refs.at(s.id),
            }
        )
    return {
        "url": store.url,
        "width": lay.width,
        "height": lay.height,
        "nodes": nodes,
        "edges": [{"source": e.source, "target": e.target, "kind": e.kind, "relation": e.relation} for e in lay.edges],
        "missing": lay.missing,
        "branches": refs.branches,
        "tags": {name: {"id": t.id, "frozen": t.frozen} for name, t in sorted(refs.tags.items())},
    }


def snapshots_page(store: Store, *, offset: int = 0, limit: int = 100) -> dict[str, Any]:
    """Snapshot records newest first, ``limit`` from ``offset`` (reads every record to sort them)."""
    if offset < 0 or not 1 <= limit <= 10_000:
        raise RecordError(f"offset must be >= 0 and limit 1..10000, got {offset} and {limit}")
    refs = RefIndex.of(store)
    snaps = store.snapshots()
    return {
        "total": len(snaps),
        "offset": offset,
        "limit": limit,
        "snapshots": [json_safe(record(s, refs)) for s in snaps[offset : offset + limit]],
    }


def _family(chain: Sequence[Snapshot]) -> list[tuple[Snapshot, int]]:
    """The model family along first parents, root first: the root, each line's start and the snapshot it
    started from, and the last one; each with the number of first-parent steps from the entry before."""
    chain = list(reversed(chain))
    keep = {0, len(chain) - 1}
    for i, s in enumerate(chain):
        if i and s.relation != "continue":
            keep.update((i - 1, i))
    positions = sorted(keep)
    return [(chain[i], i - positions[k - 1] if k else 0) for k, i in enumerate(positions)]


def _commands(store: Store, snap: Snapshot) -> list[dict[str, str]]:
    """How to get this snapshot back, on the command line and in Python."""
    if snap.pruned:
        return []
    where = f"--store {shlex.quote(store.url)} "
    open_ = f"ckpt.open({store.url!r})"
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", snap.model or "snapshot").strip("-.") or "snapshot"
    folder = shlex.quote(f"./{name}-{snap.short_id}")
    out = [
        {"label": "restore to files", "text": f"ckpt {where}restore {snap.short_id} --to {folder}"},
        {"label": "inspect", "text": f"ckpt {where}show {snap.short_id} --tensors"},
    ]
    if snap.relation == "adapter":
        out.append({"label": "load merged into its base", "text": f"state = ckpt.load_merged({open_}, {snap.id!r})"})
    out.append({"label": "load the state tree", "text": f"state = {open_}.load({snap.id!r})"})
    out.append({"label": "into a torch module", "text": f"ckpt.restore(model, {open_}, {snap.id!r})"})
    return out


def _stored_bytes(store: Store, snapshot_id: str) -> int | None:
    """What the snapshot's chunks take in the store, compressed or not (``Store.footprint``); ``None`` when it
    cannot be told (a chunk missing: ``ckpt verify`` says which)."""
    try:
        footprint = store.footprint(snapshot_id)
    except CkptError:
        return None
    return None if footprint.missing else footprint.stored_bytes


def snapshot_view(store: Store, rev: str) -> dict[str, Any]:
    """One snapshot in full: record, refs, parents, base, children, lineage, files, tensors by layer, commands.

    Reads the snapshot's record and tensor table, the records along its first-parent lineage and, for its
    children, every record; never a tensor.

    Raises:
        RevisionNotFoundError: ``rev`` names nothing.
        AmbiguousRevisionError: an id prefix matches several snapshots.
    """
    snap = store.resolve(rev)
    refs = RefIndex.of(store)
    parents = [store.get(p) for p in snap.parents]
    base = store.get(snap.base) if snap.base else None
    chain = store.lineage(snap.id)
    children = store.children(snap.id)
    tensors: dict[str, Any]
    files: list[dict[str, Any]] = []
    try:
        table = store.table(snap.id)
    except MissingObjectError as e:  # pruned, then collected: the record stays, the table is gone
        tensors = {"available": False, "note": str(e)}
    else:
        layers: dict[str, dict[str, Any]] = {}
        by_dtype: dict[str, dict[str, int]] = {}
        for name in tensor_order(table):
            entry = table.tensors[name]
            layer = layers.setdefault(layer_of(name), {"layer": layer_of(name), "count": 0, "bytes": 0, "tensors": []})
            layer["count"] += 1
            layer["bytes"] += entry.nbytes
            layer["tensors"].append(
                {"name": name, "dtype": entry.dtype, "shape": list(entry.shape), "bytes": entry.nbytes}
            )
            slot = by_dtype.setdefault(entry.dtype, {"count": 0, "bytes": 0})
            slot["count"] += 1
            slot["bytes"] += entry.nbytes
        tensors = {
            "available": True,
            "note": "pruned: the tensors' bytes are released (gc deletes them); their names, dtypes and shapes stay"
            if snap.pruned
            else None,
            "count": len(table.tensors),
            "bytes": table.nbytes,
            "stored_bytes": _stored_bytes(store, snap.id),
            "by_dtype": [{"dtype": k, **v} for k, v in sorted(by_dtype.items(), key=lambda kv: -kv[1]["bytes"])],
            "layers": list(layers.values()),
        }
        files = [
            {"path": p, "size": f.size}
            for p, f in sorted(table.files.items())
            if not p.startswith(RESERVED_FILE_PREFIX)
        ]
    return _safe(
        {
            "rev": rev,
            "snapshot": record(snap, refs),
            "parents": [_brief(p, refs) for p in parents],
            "base": _brief(base, refs) if base else None,
            "children": [_brief(c, refs) for c in children],
            "lineage": [{**_brief(s, refs), "steps": steps} for s, steps in _family(chain)],
            "history_length": len(chain),
            "files": files,
            "tensors": tensors,
            "commands": _commands(store, snap),
            "url": store.url,
        }
    )


def run_view(store: Store, rev: str, *, scope: Scope = "run") -> dict[str, Any]:
    """A run's saves and metrics for the curves: one entry per save (oldest first), metric groups, best saves.

    Reads the records of the run's saves only.

    Raises:
        RevisionNotFoundError: ``rev`` names nothing.
    """
    history = run_history(store, rev, scope=scope)
    refs = RefIndex.of(store)
    x_label, xs = x_axis(history)
    names = sorted(metric_names(history))
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(metric_group(name), []).append(name)
    monitor = monitored_metric(history)
    series = {}
    for name in names:
        s = series_of(history, name, rev=rev)
        series[name] = {"mode": s.mode, "best": s.best, "since_best": s.since_best, "points": len(s.points)}
    ordered_groups = sorted(groups.items(), key=lambda kv: (monitor not in kv[1], kv[0]))
    return _safe(
        {
            "rev": rev,
            "head": history[-1].id if history else None,
            "scope": scope,
            "x_label": x_label,
            "saves": [
                {
                    "id": s.id,
                    "short_id": s.short_id,
                    "x": x,
                    "step": s.step,
                    "epoch": s.epoch,
                    "relation": s.relation,
                    "created_at": s.created_at,
                    "pruned": s.pruned,
                    "message": _preview(s.message),
                    "metrics": dict(s.metrics),
                    "refs": refs.at(s.id),
                }
                for s, x in zip(history, xs, strict=True)
            ],
            "metrics": names,
            "groups": [{"group": g, "metrics": m} for g, m in ordered_groups],
            "monitor": monitor,
            "series": series,
            "branches": sorted(refs.branches),
        }
    )


def parse_diff_spec(spec: str) -> tuple[str, str]:
    """``A..B`` → ``(A, B)``.

    Raises:
        RecordError: not of the form ``A..B`` with both sides given.
    """
    a, sep, b = spec.partition("..")
    if not sep or not a or not b or ".." in b:
        raise RecordError(f"a diff is written A..B, got {spec!r}", hint="e.g. /diff/main~1..main")
    return a, b


def diff_view(store: Store, a: str, b: str) -> dict[str, Any]:
    """The tensor-level difference from A to B (``ckpt.diff.diff`` with norms), with both records.

    Reads both tensor tables and, for each changed floating-point tensor, both versions of it.

    Raises:
        RevisionNotFoundError: a revision names nothing.
        MissingObjectError: a tensor needed for a norm was pruned and collected.
    """
    refs = RefIndex.of(store)
    sa, sb = store.resolve(a), store.resolve(b)
    d = diff_snapshots(store, sa.id, sb.id, norms=True)
    briefs = {"a_snapshot": _brief(sa, refs), "b_snapshot": _brief(sb, refs)}
    return _safe({**d.model_dump(mode="json"), "a_rev": a, "b_rev": b, **briefs})
