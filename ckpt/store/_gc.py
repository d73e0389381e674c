"""Garbage collection: planned, then executed; fail-closed.

Liveness: every snapshot reachable from a branch, a tag, or a reflog entry younger than ``expire_reflog``
(following parents and adapter bases) keeps its record and its tensor table; a live snapshot that is not
pruned also keeps its chunks. A frozen release, and the adapter bases it needs, always keep their chunks, even
if a pruned marker says otherwise. Anything else that is older than ``grace`` is deleted: snapshot records
first, then tables, then chunks, so that a crash part-way never leaves a record pointing at missing data.
Objects younger than ``grace`` are never deleted, so a GC running beside a slow save never takes its fresh
chunks; the report says how many were spared and why.

Fail-closed: gc deletes only what it can prove unneeded. Anything on the way that it cannot read (a ref, a
reflog entry, a snapshot record, a tensor table, a pruned marker) or that is missing (a ref or a parent pointing
at no record, a live table) makes it refuse with ``IntegrityError`` naming the damage, before deleting anything
(``on_damage="refuse"``, the default). With ``on_damage="keep"`` it goes ahead but keeps everything the damaged
objects might need: an unreadable ref or reflog entry could name any snapshot, so every record counts as a
root; an unreadable record could have any parents and any table, so every record, table and chunk is kept; an
unreadable table keeps every chunk; an unreadable pruned marker does not prune.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ckpt.errors import CkptError, IntegrityError, RecordError
from ckpt.model import utcnow
from ckpt.storage import Backend, Entry
from ckpt.store import _layout as layout
from ckpt.store._chains import reference_closure
from ckpt.store._liveness import scan_liveness
from ckpt.store._parts import StoreParts
from ckpt.store._reports import Damage, damage_kind

__all__ = ["GcPlan", "GcReport", "OnDamage", "collect", "plan_gc"]

#: What gc does when it meets damage: refuse (default), or keep everything the damage might hide.
OnDamage = Literal["refuse", "keep"]


class GcReport(BaseModel):
    """What a garbage collection removed (or, for a dry run, would remove), and what it kept and why.

    Every byte figure counts bytes as stored (a chunk with its 16-byte header), as ``verify`` and
    ``Store.stats`` do.

    Attributes:
        dry_run: nothing was deleted.
        snapshots: unreachable snapshot records removed.
        tables: tensor tables removed.
        chunks: chunks removed.
        other: temporary files and stale markers removed.
        freed_bytes: bytes freed.
        kept_chunks: chunks kept (needed, younger than the grace period, or reused by a save meanwhile).
        kept_bytes: bytes of the chunks kept.
        grace_seconds: the grace period, in seconds.
        young_chunks: chunks no live snapshot needs, kept because they are younger than the grace period (a
            save running now may be about to use them; the next gc after the grace period takes them).
        young_bytes: bytes of those chunks.
        young_records: snapshot records, tables and temporary files no one needs, kept for the same reason.
        reused_chunks: chunks planned for deletion but spared because a save reused them while gc ran.
        reused_bytes: bytes of those chunks.
        damage: with ``on_damage="keep"``, what could not be read; everything it might need was kept.
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
    grace_seconds: float = 0.0
    young_chunks: int = 0
    young_bytes: int = 0
    young_records: int = 0
    reused_chunks: int = 0
    reused_bytes: int = 0
    damage: tuple[Damage, ...] = ()


class GcPlan(BaseModel):
    """A frozen list of what to delete; ``execute()`` deletes it in a crash-safe order."""

    model_config = ConfigDict(frozen=True)

    planned_at: datetime
    snapshot_paths: tuple[str, ...]
    table_paths: tuple[str, ...]
    chunk_paths: tuple[str, ...]
    chunk_sizes: tuple[int, ...]
    other_paths: tuple[str, ...]
    record_bytes: int
    kept_chunks: int
    kept_bytes: int
    grace_seconds: float
    young_chunks: int
    young_bytes: int
    young_records: int
    damage: tuple[Damage, ...]
    deltas: bool = False  # the store may hold deltas (format 2.0): chunks kept keep their references

    @property
    def freed_bytes(self) -> int:
        """Bytes the plan frees."""
        return self.record_bytes + sum(self.chunk_sizes)

    def report(self, *, dry_run: bool, reused: Mapping[str, int] | None = None, reused_tables: int = 0) -> GcReport:
        """The report of this plan (``reused``: chunk path → size of the chunks spared at execution)."""
        reused = reused or {}
        return GcReport(
            dry_run=dry_run,
            snapshots=len(self.snapshot_paths),
            tables=len(self.table_paths) - reused_tables,
            chunks=len(self.chunk_paths) - len(reused),
            other=len(self.other_paths),
            freed_bytes=self.freed_bytes - sum(reused.values()),
            kept_chunks=self.kept_chunks + len(reused),
            kept_bytes=self.kept_bytes + sum(reused.values()),
            grace_seconds=self.grace_seconds,
            young_chunks=self.young_chunks,
            young_bytes=self.young_bytes,
            young_records=self.young_records,
            reused_chunks=len(reused),
            reused_bytes=sum(reused.values()),
            damage=self.damage,
        )

    def execute(self, backend: Backend) -> GcReport:
        """Delete records, then tables, then chunks, then the rest.

        Chunks and tables touched since the plan was made (a save found them and reuses them: a table is
        content-addressed too, and a save of the same tree and tensors writes the same one) are spared.
        """
        backend.delete(list(self.snapshot_paths))
        planned_tables = set(self.table_paths)
        touched = {
            e.path
            for e in backend.list(layout.TABLES)
            if e.path in planned_tables and e.mtime and e.mtime >= self.planned_at
        }
        backend.delete([p for p in self.table_paths if p not in touched])
        doomed = dict(zip(self.chunk_paths, self.chunk_sizes, strict=True))
        reused = {
            e.path: doomed[e.path]
            for e in backend.list(layout.CHUNKS)
            if e.path in doomed and e.mtime and e.mtime >= self.planned_at
        }
        if self.deltas and reused:  # a reused delta needs its chain: spare it too
            by_digest = {layout.digest_from_path(p): p for p in doomed}
            refs, _ = reference_closure(backend, [layout.digest_from_path(p) for p in reused], set(by_digest))
            reused.update({by_digest[d]: doomed[by_digest[d]] for d in refs if d in by_digest})
        backend.delete([p for p in self.chunk_paths if p not in reused])
        backend.delete(list(self.other_paths))
        return self.report(dry_run=False, reused=reused, reused_tables=len(touched))


def _refusal(damage: list[Damage]) -> IntegrityError:
    shown = "; ".join(f"{d.kind} {d.object} {d.digest[:40]}: {d.message}" for d in damage[:3])
    more = f" (and {len(damage) - 3} more)" if len(damage) > 3 else ""
    return IntegrityError(
        f"gc refused to delete anything: {len(damage)} object{'s' if len(damage) != 1 else ''} it must read "
        f"{'are' if len(damage) != 1 else 'is'} damaged or missing, so it cannot prove what is unneeded: "
        f"{shown}{more}",
        hint="see all damage with store.verify() and put it back from a good copy with store.repair(good_copy); "
        "to collect anyway, keeping everything the damaged objects might need, use gc(on_damage='keep')",
        cli_hint="run `ckpt verify` to see all damage and `ckpt repair --from URL` to put it back from a good copy; "
        "to collect anyway, keeping everything the damaged objects might need, use `ckpt gc --keep-damaged`",
    )


def plan_gc(
    parts: StoreParts,
    *,
    grace: timedelta,
    expire_reflog: timedelta | None = timedelta(days=30),
    on_damage: OnDamage = "refuse",
) -> GcPlan:
    """Work out what a GC would delete, without deleting anything.

    Raises:
        IntegrityError: with ``on_damage="refuse"``, something gc must read is damaged or missing.
    """
    now = utcnow()
    objects, backend = parts.objects, parts.backend

    def old(e: Entry) -> bool:
        return e.mtime is None or now - e.mtime >= grace

    state = scan_liveness(parts, expire_reflog=expire_reflog, now=now)
    live = state.live
    live_tables = {table for table, _ in live.values()}
    live_chunks: set[str] = set()
    for sid, (table_digest, is_pruned) in live.items():
        try:
            table = objects.get_table(table_digest)
        except CkptError as err:
            state.damage.append(
                Damage(
                    kind=damage_kind(err), object="table", digest=table_digest, snapshots=(sid,), message=err.message
                )
            )
            if not is_pruned:
                state.all_chunks = True
            continue
        if not is_pruned:
            live_chunks |= table.chunk_digests()
    if state.damage and on_damage != "keep":
        raise _refusal(state.damage)

    snapshot_paths: list[str] = []
    table_paths: list[str] = []
    record_bytes = young_records = 0
    for e in backend.list(layout.SNAPSHOTS):
        if state.all_records or layout.digest_from_path(e.path) in live:
            continue
        if old(e):
            snapshot_paths.append(e.path)
            record_bytes += e.size
        else:
            young_records += 1
    for e in backend.list(layout.TABLES):
        if state.all_tables or layout.digest_from_path(e.path) in live_tables:
            continue
        if old(e):
            table_paths.append(e.path)
            record_bytes += e.size
        else:
            young_records += 1
    chunk_paths: list[str] = []
    chunk_sizes: list[int] = []
    kept_chunks = kept_bytes = young_chunks = young_bytes = 0
    listing = list(backend.list(layout.CHUNKS))
    deltas = parts.config.major >= 2
    if deltas and not state.all_chunks:  # a kept delta keeps its chain (format 2.0)
        present = {layout.digest_from_path(e.path) for e in listing}
        kept = live_chunks | {layout.digest_from_path(e.path) for e in listing if not old(e)}
        refs, problems = reference_closure(backend, kept, present)
        live_chunks |= refs
        if problems:
            state.damage += [Damage(kind="corrupt", object="chunk", digest=d, message=m) for d, m in problems]
            if on_damage != "keep":
                raise _refusal(state.damage)
            state.all_chunks = True
    for e in listing:
        if state.all_chunks or layout.digest_from_path(e.path) in live_chunks:
            kept_chunks += 1
            kept_bytes += e.size
        elif not old(e):
            kept_chunks += 1
            kept_bytes += e.size
            young_chunks += 1
            young_bytes += e.size
        else:
            chunk_paths.append(e.path)
            chunk_sizes.append(e.size)
    other: list[str] = []
    for e in backend.list(layout.TMP):
        if old(e):
            other.append(e.path)
            record_bytes += e.size
        else:
            young_records += 1
    gone = {layout.digest_from_path(p) for p in snapshot_paths}
    other += [layout.pruned_path(sid) for sid in sorted(gone & state.pruned)]
    return GcPlan(
        planned_at=now,
        snapshot_paths=tuple(snapshot_paths),
        table_paths=tuple(table_paths),
        chunk_paths=tuple(chunk_paths),
        chunk_sizes=tuple(chunk_sizes),
        other_paths=tuple(other),
        record_bytes=record_bytes,
        kept_chunks=kept_chunks,
        kept_bytes=kept_bytes,
        grace_seconds=grace.total_seconds(),
        young_chunks=young_chunks,
        young_bytes=young_bytes,
        young_records=young_records,
        damage=tuple(state.damage),
        deltas=deltas,
    )


def collect(
    parts: StoreParts, *, grace: timedelta, dry_run: bool, expire_reflog: timedelta | None, on_damage: OnDamage
) -> GcReport:
    """Plan a collection and, unless ``dry_run``, execute it; see ``Store.gc``.

    Raises:
        RecordError: ``on_damage`` is neither ``"refuse"`` nor ``"keep"``.
        IntegrityError: with ``on_damage="refuse"``, something gc must read is damaged or missing.
    """
    if on_damage not in ("refuse", "keep"):
        raise RecordError(f"on_damage must be 'refuse' or 'keep', got {on_damage!r}")
    plan = plan_gc(parts, grace=grace, expire_reflog=expire_reflog, on_damage=on_damage)
    return plan.report(dry_run=True) if dry_run else plan.execute(parts.backend)
