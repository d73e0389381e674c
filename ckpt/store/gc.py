"""Garbage collection, planned then executed.

Liveness: every snapshot reachable from a branch, a tag, or a reflog entry younger than ``expire_reflog``
(following parents and adapter bases) keeps its record and its tensor table; a live snapshot that is not
pruned also keeps its chunks. Anything else that is older than ``grace`` is deleted: snapshot records
first, then tables, then chunks, so that a crash part-way never leaves a record pointing at missing data.
Objects younger than ``grace`` are never deleted, so a GC running beside a slow save never takes its
fresh chunks.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict

from ckpt.errors import CkptError
from ckpt.model import parse_time, utcnow
from ckpt.storage import Backend, Entry
from ckpt.store import layout
from ckpt.store.objects import Objects
from ckpt.store.refs import Refs

__all__ = ["GcPlan", "GcReport", "live_snapshots", "plan_gc"]


class GcReport(BaseModel):
    """What a garbage collection removed (or, for a dry run, would remove).

    Attributes:
        dry_run: nothing was deleted.
        snapshots: unreachable snapshot records removed.
        tables: tensor tables removed.
        chunks: chunks removed.
        other: temporary files and stale markers removed.
        freed_bytes: bytes freed.
        kept_chunks: chunks still needed.
        kept_bytes: bytes of the chunks kept.
    """

    model_config = ConfigDict(frozen=True)

    dry_run: bool
    snapshots: int
    tables: int
    chunks: int
    other: int
    freed_bytes: int
    kept_chunks: int
    kept_bytes: int


class GcPlan(BaseModel):
    """A frozen list of what to delete; ``execute()`` deletes it in a crash-safe order."""

    model_config = ConfigDict(frozen=True)

    planned_at: datetime
    snapshot_paths: tuple[str, ...]
    table_paths: tuple[str, ...]
    chunk_paths: tuple[str, ...]
    other_paths: tuple[str, ...]
    freed_bytes: int
    kept_chunks: int
    kept_bytes: int

    def report(self, *, dry_run: bool) -> GcReport:
        """The report of this plan."""
        return GcReport(
            dry_run=dry_run,
            snapshots=len(self.snapshot_paths),
            tables=len(self.table_paths),
            chunks=len(self.chunk_paths),
            other=len(self.other_paths),
            freed_bytes=self.freed_bytes,
            kept_chunks=self.kept_chunks,
            kept_bytes=self.kept_bytes,
        )

    def execute(self, backend: Backend) -> GcReport:
        """Delete records, then tables, then chunks, then the rest.

        Chunks touched since the plan was made (a save found them and reuses them) are spared.
        """
        backend.delete(list(self.snapshot_paths))
        backend.delete(list(self.table_paths))
        doomed = set(self.chunk_paths)
        fresh = {
            e.path for e in backend.list(layout.CHUNKS) if e.path in doomed and e.mtime and e.mtime > self.planned_at
        }
        backend.delete([p for p in self.chunk_paths if p not in fresh])
        backend.delete(list(self.other_paths))
        return self.report(dry_run=False)


def _roots(refs: Refs, now: datetime, expire_reflog: timedelta | None) -> set[str]:
    roots = set(refs.branches().values())
    roots.update(t.id for t in refs.tags().values())
    for entry in refs.reflog():
        if expire_reflog is not None and now - parse_time(entry.time) > expire_reflog:
            continue
        roots.update(x for x in (entry.old, entry.new) if x)
    return roots


def live_snapshots(
    objects: Objects, roots: Iterable[str], broken: set[str] | None = None
) -> dict[str, tuple[str, bool]]:
    """Snapshot id → (table digest, pruned?) for every snapshot reachable from ``roots``.

    Ids whose record cannot be read (missing or damaged) are added to ``broken`` when it is given.
    """
    pruned = {layout.digest_from_path(e.path) for e in objects.backend.list(layout.PRUNED)}
    live: dict[str, tuple[str, bool]] = {}
    todo = list(roots)
    while todo:
        sid = todo.pop()
        if sid in live:
            continue
        try:
            snap = objects.get_snapshot(sid)
        except CkptError:
            if broken is not None:
                broken.add(sid)
            continue  # missing or damaged: verify reports it; gc only keeps what it can prove live
        live[sid] = (snap.table, sid in pruned)
        todo.extend(snap.parents)
        if snap.base:
            todo.append(snap.base)
    return live


def plan_gc(
    objects: Objects, refs: Refs, *, grace: timedelta, expire_reflog: timedelta | None = timedelta(days=30)
) -> GcPlan:
    """Work out what a GC would delete, without deleting anything."""
    now = utcnow()
    backend = objects.backend

    def old(e: Entry) -> bool:
        return e.mtime is None or now - e.mtime >= grace

    live = live_snapshots(objects, _roots(refs, now, expire_reflog))
    live_tables = {table for table, _ in live.values()}
    live_chunks: set[str] = set()
    for table_digest, is_pruned in live.values():
        if is_pruned:
            continue
        try:
            live_chunks |= objects.get_table(table_digest).chunk_digests()
        except CkptError:
            continue

    dead_snapshots = [
        e for e in backend.list(layout.SNAPSHOTS) if layout.digest_from_path(e.path) not in live and old(e)
    ]
    dead_tables = [
        e for e in backend.list(layout.TABLES) if layout.digest_from_path(e.path) not in live_tables and old(e)
    ]
    snapshot_paths = [e.path for e in dead_snapshots]
    table_paths = [e.path for e in dead_tables]
    freed = sum(e.size for e in dead_snapshots) + sum(e.size for e in dead_tables)
    chunk_paths = []
    kept_chunks = kept_bytes = 0
    for e in backend.list(layout.CHUNKS):
        if layout.digest_from_path(e.path) in live_chunks or not old(e):
            kept_chunks += 1
            kept_bytes += e.size
        else:
            chunk_paths.append(e.path)
            freed += e.size
    other = [e.path for e in backend.list(layout.TMP) if old(e)]
    gone = {layout.digest_from_path(p) for p in snapshot_paths}
    other += [e.path for e in backend.list(layout.PRUNED) if layout.digest_from_path(e.path) in gone]
    return GcPlan(
        planned_at=now,
        snapshot_paths=tuple(snapshot_paths),
        table_paths=tuple(table_paths),
        chunk_paths=tuple(chunk_paths),
        other_paths=tuple(other),
        freed_bytes=freed,
        kept_chunks=kept_chunks,
        kept_bytes=kept_bytes,
    )
