"""Reading history: ``log``, ``show`` and ``diff``."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import click
from rich.text import Text

from ckpt.cli._commands._common import default_rev, json_option
from ckpt.cli._graph import graph_rows, topological
from ckpt.cli._output import (
    RefIndex,
    age,
    console,
    count,
    echo,
    emit_json,
    human_bytes,
    metrics_text,
    print_table,
    ref_text,
    shown,
    snapshot_json,
    snapshot_line,
    table,
)
from ckpt.cli._state_changes import tree_changes

if TYPE_CHECKING:
    from ckpt.cli._context import CliState
    from ckpt.diff import SnapshotDiff
    from ckpt.model import Snapshot, TensorTable
    from ckpt.store import Store

__all__ = ["diff", "log", "show"]


def _ancestry(store: Store, revs: list[str]) -> list[Snapshot]:
    """The snapshots of ``revs`` and every snapshot they descend from through parents and adapter bases."""
    seen: dict[str, Snapshot] = {}
    todo: deque[Snapshot] = deque()
    for rev in revs:
        start = store.resolve(rev)
        if start.id not in seen:
            seen[start.id] = start
            todo.append(start)
    while todo:
        snap = todo.popleft()
        for sid in (*snap.parents, *((snap.base,) if snap.base else ())):
            if sid not in seen:
                seen[sid] = store.get(sid)
                todo.append(seen[sid])
    return list(seen.values())


def _histories(store: Store, revs: list[str], limit: int | None) -> list[Snapshot]:
    """The first-parent histories of ``revs`` together, each snapshot once, newest first."""
    if len(revs) == 1:
        return store.log(revs[0], limit=limit)
    found: dict[str, Snapshot] = {}
    for rev in revs:
        for snap in store.log(rev, limit=limit):
            found.setdefault(snap.id, snap)
    return sorted(found.values(), key=lambda s: s.created_at, reverse=True)


def _default_revs(refs: RefIndex) -> list[str]:
    """What ``ckpt log`` shows without REV: main; else the only branch; else every branch (else every tag)."""
    if "main" in refs.branches:
        return ["main"]
    names = sorted(refs.branches) or sorted(refs.tags)
    if len(refs.branches) == 1:
        echo(f"no branch 'main': showing {names[0]}, the only branch", err=True)
    elif refs.branches:
        echo(f"no branch 'main': showing every branch ({', '.join(names)}); `ckpt log BRANCH` shows one", err=True)
    elif names:
        echo("no branch yet: showing the history of every tag", err=True)
    return names


@click.command()
@click.argument("rev", required=False)
@click.option("-n", "--max-count", "limit", type=click.IntRange(min=0), metavar="N", help="Show at most N snapshots.")
@click.option("--graph", is_flag=True, help="Draw the family tree: parents, branches splitting off, adapter bases.")
@click.option("--all", "all_", is_flag=True, help="Every snapshot in the store, not only REV's history.")
@json_option
@click.pass_obj
def log(state: CliState, rev: str | None, limit: int | None, graph: bool, all_: bool, as_json: bool) -> None:
    """History of REV, newest first, one line a snapshot.

    Without REV: main; in a store with no branch main, its only branch, or every branch together.

    Each line shows the short id, the refs pointing at it (frozen releases marked), the relation to its parent,
    the model, step/epoch, key metrics, the message and the age. Without --graph, history follows first parents;
    --graph follows every parent and adapter base; --graph --all draws the whole family of models.

    \b
    Examples:
      ckpt log
      ckpt log exp/lr-3e-4 -n 5
      ckpt log --graph --all
      ckpt log main~3 --json
    """
    if rev is not None and all_:
        raise click.UsageError("give REV or --all, not both")
    store = state.store()
    refs = RefIndex(store.branches(), store.tags())
    revs = [rev] if rev is not None else [] if all_ else _default_revs(refs)
    if not revs and not all_:
        if as_json:
            emit_json([])
        else:
            echo(
                "no branch or tag yet: save or `ckpt import` a snapshot (`ckpt log --all` lists every record)", err=True
            )
        return
    if all_:
        snaps = store.snapshots()
        if graph:
            snaps = topological(snaps)
    elif graph:
        snaps = topological(_ancestry(store, revs))
    else:
        snaps = _histories(store, revs, limit)
    whole = snaps  # the sparklines draw whole runs, whatever -n shows of them
    if limit is not None:
        snaps = snaps[:limit]
    if as_json:
        emit_json([snapshot_json(s, refs) for s in snaps])
        return
    from ckpt.cli._sparkline import print_sparklines  # records and metrics: read commands only

    spark_rev = None if all_ or len(revs) != 1 else revs[0]
    out = console()

    def runs() -> list[Snapshot]:
        """What the sparklines are drawn from: the whole histories (read again only when -n cut them)."""
        if not out.is_terminal:  # piped: no sparklines, nothing more to read
            return []
        if limit is not None and not (all_ or graph):
            return _histories(store, revs, None)
        return whole

    if not graph:
        for s in snaps:
            out.print(snapshot_line(s, refs))
        print_sparklines(out, runs(), refs.branches, rev=spark_rev)
        return
    for drawing, snap in graph_rows(snaps):
        if snap is None:
            out.print(drawing)
            continue
        line = Text.assemble(drawing, " ", snapshot_line(snap, refs))
        extra = [p[:12] for p in snap.parents[1:]]
        if extra:
            line.append(f" merge of {snap.parents[0][:12]} + {', '.join(extra)}", style="dim")
        if snap.base and snap.base not in snap.parents:
            line.append(f" base {snap.base[:12]}", style="dim")
        out.print(line)
    print_sparklines(out, runs(), refs.branches, rev=spark_rev)


def _tensor_summary(table: TensorTable, *, listing: bool) -> dict[str, Any]:
    from ckpt.diff import group_of, tensor_order  # numpy: imported by the commands that need it only

    by_dtype: dict[str, dict[str, int]] = {}
    by_group: dict[str, dict[str, int]] = {}
    for name, entry in table.tensors.items():
        for key, bucket in ((entry.dtype, by_dtype), (group_of(name), by_group)):
            slot = bucket.setdefault(key, {"count": 0, "bytes": 0})
            slot["count"] += 1
            slot["bytes"] += entry.nbytes
    out: dict[str, Any] = {
        "count": len(table.tensors),
        "bytes": table.nbytes,
        "by_dtype": dict(sorted(by_dtype.items(), key=lambda kv: -kv[1]["bytes"])),
        "by_group": by_group,
    }
    if listing:
        out["list"] = [
            {"name": n, "dtype": e.dtype, "shape": list(e.shape), "bytes": e.nbytes}
            for n, e in ((n, table.tensors[n]) for n in tensor_order(table))
        ]
    return out


def _brief(snap: Snapshot) -> dict[str, Any]:
    return {
        "id": snap.id,
        "short_id": snap.short_id,
        "relation": snap.relation,
        "model": snap.model,
        "step": snap.step,
        "pruned": snap.pruned,
    }


def _describe(snap: Snapshot) -> str:
    bits = [shown(snap.model) if snap.model else "no model name"]
    if snap.step is not None:
        bits.append(f"step {snap.step}")
    if snap.pruned:
        bits.append("pruned")
    return f"{snap.short_id} ({', '.join(bits)})"


def _lineage(store: Store, snap: Snapshot) -> tuple[list[tuple[Snapshot, int]], int]:
    """The model family along first parents, root first, and the chain's length.

    Each entry is a snapshot and how many first-parent steps lead to it from the entry before (0 for the root).
    The entries are the root, then for every line of the family (a relation other than ``continue``) the
    snapshot it started from and its first snapshot, then ``snap``.
    """
    chain = list(reversed(store.lineage(snap.id)))
    keep = {0, len(chain) - 1}
    for i, s in enumerate(chain):
        if i and s.relation != "continue":
            keep.update((i - 1, i))
    positions = sorted(keep)
    family = [(chain[i], i - (positions[k - 1] if k else i)) for k, i in enumerate(positions)]
    return family, len(chain)


def _lineage_text(family: list[tuple[Snapshot, int]], current: Snapshot) -> Text:
    """``tiny-lm 40f2 ─continue ×3→ tiny-lm 4d29 ─finetune→ tiny-lm-instruct 8216``."""
    text = Text()
    for s, steps in family:
        if steps == 1:
            text.append(f" ─{s.relation}→ ", style="magenta")
        elif steps > 1:
            text.append(f" ─continue ×{steps}→ ", style="dim")
        text.append(f"{shown(s.model or '(no model name)')} {s.short_id}", style="bold" if s.id == current.id else "")
    return text


@click.command()
@click.argument("rev", required=False)
@click.option("--tensors", "list_tensors", is_flag=True, help="List every tensor: name, dtype, shape, bytes.")
@json_option
@click.pass_obj
def show(state: CliState, rev: str | None, list_tensors: bool, as_json: bool) -> None:
    """One snapshot in full: record, lineage, files, tensors by dtype and by group.

    REV defaults to main (in a store with no branch main, its only branch).

    \b
    Examples:
      ckpt show main
      ckpt show tiny-llama-2026-11-28 --tensors
      ckpt show 5f0c6a1d --json
    """
    from ckpt.model import RESERVED_FILE_PREFIX

    store = state.store()
    snap = store.resolve(rev if rev is not None else default_rev(store))
    refs = RefIndex(store.branches(), store.tags())
    tensor_table = store.table(snap.id)
    parents = [store.get(p) for p in snap.parents]
    base = store.get(snap.base) if snap.base else None
    family, depth = _lineage(store, snap)
    summary = _tensor_summary(tensor_table, listing=list_tensors)
    files: list[dict[str, Any]] = [
        {"path": p, "size": f.size} for p, f in tensor_table.files.items() if not p.startswith(RESERVED_FILE_PREFIX)
    ]
    foot = None if snap.pruned else store.footprint(snap.id)
    storage = None if foot is None else foot.model_dump()
    if as_json:
        emit_json(
            {
                "snapshot": snapshot_json(snap, refs),
                "parents": [_brief(p) for p in parents],
                "base": _brief(base) if base else None,
                "lineage": [{**_brief(s), "steps": steps} for s, steps in family],
                "history_length": depth,
                "files": files,
                "tensors": summary,
                "storage": storage,
            }
        )
        return

    out = console()
    head = Text.assemble(("snapshot ", "bold"), (snap.id, "yellow"))
    r = ref_text(refs.refs(snap.id))
    if r:
        head.append(" ")
        head.append_text(r)
    if snap.pruned:
        head.append(" [pruned: tensors released, record kept]", style="bold red")
    out.print(head)
    fields: list[tuple[str, str | Text]] = []

    def row(key: str, value: str | Text | None) -> None:
        if value is not None and str(value) != "":
            fields.append((key, value))

    row("relation", snap.relation)
    row("model", shown(snap.model or ""))
    row("step", None if snap.step is None else str(snap.step))
    row("epoch", None if snap.epoch is None else str(snap.epoch))
    row("metrics", metrics_text(snap.metrics, limit=None))
    row("message", shown(snap.message or "", newlines=True))
    row("created", f"{snap.created_at} ({age(snap.created_at)})")
    row("parents", ", ".join(_describe(p) for p in parents) or "none (a root)")
    if base:
        row("base", _describe(base))
    row("lineage", _lineage_text(family, snap))
    row("history", f"{count(depth, 'snapshot')} from the root to here along first parents")
    row("metadata", ", ".join(shown(k) for k in snap.metadata) if snap.metadata else None)
    row("ckpt version", snap.ckpt_version)
    row("tensors", f"{summary['count']} ({human_bytes(summary['bytes'])})")
    if foot is not None and foot.raw_bytes:
        ratio = foot.stored_bytes / foot.raw_bytes
        gone = f", {count(foot.missing, 'chunk')} missing" if foot.missing else ""
        row(
            "stored",
            f"{human_bytes(foot.stored_bytes)} for {human_bytes(foot.raw_bytes)} raw ({ratio:.2f}), "
            f"{count(foot.chunks, 'chunk')}{gone}",
        )
    width = max(len(k) for k, _ in fields) + 2
    for key, value in fields:
        out.print(Text.assemble((key.ljust(width), "bold"), value))

    if files:
        ft = table("files")
        ft.add_column("path")
        ft.add_column("size", justify="right")
        for f in files:
            ft.add_row(shown(f["path"]), human_bytes(f["size"]))
        print_table(ft, out)
    for title, key, label in (("by dtype", "by_dtype", "dtype"), ("by group", "by_group", "group")):
        if summary[key]:
            t = table(f"tensors {title}")
            t.add_column(label)
            t.add_column("tensors", justify="right")
            t.add_column("bytes", justify="right")
            for k, v in summary[key].items():
                t.add_row(shown(k), str(v["count"]), human_bytes(v["bytes"]))
            print_table(t, out)
    if list_tensors:
        t = table("tensors")
        t.add_column("name", overflow="fold")
        t.add_column("dtype")
        t.add_column("shape")
        t.add_column("bytes", justify="right")
        for item in summary["list"]:
            t.add_row(shown(item["name"]), item["dtype"], str(tuple(item["shape"])), human_bytes(item["bytes"]))
        print_table(t, out)


def _change(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3e}" if 0 < value < 1e-3 else f"{value:.4f}"


def _print_diff(d: SnapshotDiff, a: str, b: str, trees: tuple[Any, Any] | None = None) -> None:
    out = console()
    out.print(
        Text.assemble(
            ("diff ", "bold"), (d.a[:12], "yellow"), f" ({shown(a)}) → ", (d.b[:12], "yellow"), f" ({shown(b)})"
        )
    )
    stored = ""
    if d.added_stored_bytes is not None and d.added_bytes:
        ratio = d.added_stored_bytes / d.added_bytes
        stored = f", stored as {human_bytes(d.added_stored_bytes)} ({ratio:.2f} of raw),"
    out.print(
        f"tensors: {d.added} added, {d.removed} removed, {d.changed} changed, {d.unchanged} unchanged; "
        f"B adds {human_bytes(d.added_bytes)} ({count(d.added_chunks, 'chunk')}){stored} to a store holding A"
    )
    if d.state_changed:
        changes = tree_changes(*trees) if trees is not None else []
        out.print("the state tree differs outside tensors" + (":" if changes else " (structure or non-tensor values)"))
        for line in changes:
            out.print(f"  {line}")
    touched = [layer for layer in d.layers if layer.added or layer.removed or layer.changed]
    if touched:
        t = table("by layer")
        for col in ("layer", "added", "removed", "changed", "unchanged", "max ‖B−A‖/‖A‖"):
            t.add_column(col, justify="left" if col == "layer" else "right")
        for layer in touched:
            t.add_row(
                shown(layer.layer),
                str(layer.added),
                str(layer.removed),
                str(layer.changed),
                str(layer.unchanged),
                _change(layer.max_relative_change),
            )
        print_table(t, out)
    differing = [x for x in d.tensors if x.status != "unchanged"]
    if differing:
        t = table("tensors")
        for col in ("", "tensor", "dtype", "shape", "‖B−A‖/‖A‖"):
            t.add_column(col, justify="right" if col.startswith("‖") else "left", overflow="fold")
        marks = {"added": ("+", "green"), "removed": ("-", "red"), "changed": ("~", "yellow")}
        for x in differing:
            mark, style = marks[x.status]
            dtype = x.dtype_b or x.dtype_a or ""
            if x.dtype_changed:
                dtype = f"{x.dtype_a} → {x.dtype_b}"
            shape_a = None if x.shape_a is None else str(tuple(x.shape_a))
            shape_b = None if x.shape_b is None else str(tuple(x.shape_b))
            shape = f"{shape_a} → {shape_b}" if x.shape_changed else (shape_b or shape_a or "")
            change = _change(x.relative_change) if x.relative_change is not None else (x.note or "")
            if x.status != "changed":
                change = ""
            t.add_row(Text(mark, style=style), shown(x.name), dtype, shape, change)
        print_table(t, out)
    else:
        out.print("no tensor differs")
    for f in d.files:
        sizes = " → ".join(human_bytes(s) for s in (f.size_a, f.size_b) if s is not None)
        out.print(f"file {f.status}: {shown(f.path)} ({sizes})")


@click.command()
@click.argument("a")
@click.argument("b")
@click.option("--no-norms", is_flag=True, help="Compare tables only; do not read tensors for ‖B−A‖/‖A‖.")
@json_option
@click.pass_obj
def diff(state: CliState, a: str, b: str, no_norms: bool, as_json: bool) -> None:
    """Tensor-level difference from A to B.

    Lists added, removed and changed tensors (dtype and shape changes), the relative change ‖B−A‖/‖A‖ of
    changed floating-point tensors, counts by layer, changed attached files, and how many bytes B adds to a
    store that holds A: raw, and as stored (compressed chunks and deltas at their size on disk). Needs no
    torch: bf16 is decoded with numpy; fp8 norms are skipped (and say so).

    \b
    Examples:
      ckpt diff main~1 main
      ckpt diff tiny-llama-2026-11-28 instruct --json
    """
    from ckpt.diff import diff as diff_snapshots

    store = state.store()
    result = diff_snapshots(store, a, b, norms=not no_norms)
    if as_json:
        emit_json(result.model_dump(mode="json"))
        return
    trees = (store.table(result.a).tree, store.table(result.b).tree) if result.state_changed else None
    _print_diff(result, a, b, trees)
