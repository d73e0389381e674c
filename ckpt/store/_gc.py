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

Planning and deleting race with writers: between the two, another process may branch, tag, freeze or reset
onto a snapshot the plan found unreachable, or save a child of it. So just before deleting, gc reads every
ref and reflog again and spares whatever is reachable now (``GcReport.revived_snapshots``), refusing on any
damage it meets then as it would when planning; records, tables and chunks written or reused since the plan
(a newer modification time) are spared too. What is left is the window of the deletion itself; a ref made to
an unreachable snapshot in that instant finds it gone (``verify`` reports it), never a half-deleted one
reported sound.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ckpt.errors import CkptError, IntegrityError, RecordError
from ckpt.model import utcnow
from ckpt.storage import Backend, Entry
from ckpt.store import _layout as layout
from ckpt.store._chains import reference_closure
from ckpt.store._liveness import Liveness, scan_liveness
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
        revived_snapshots: snapshots the plan found unreachable that a ref reached before the deletion (another
            process branched, tagged, reset or saved onto them while gc ran): spared, with their data.
        damage: with ``on_damage="keep"``, what could not be read; everything it might need was kept.
        foreign: files in the store's object folders whose names are not ckpt's (a user's own files, e.g.
            after ``ckpt init`` in a folder that had a ``chunks/`` or ``tmp/`` of its own): never deleted,
            listed here (the first 100).
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
    revived_snapshots: int = 0
    damage: tuple[Damage, ...] = ()
    foreign: tuple[str, ...] = ()


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
    revived_snapshots: int = 0
    foreign: tuple[str, ...] = ()
    deltas: bool = False  # the store may hold deltas (format 2.0): chunks kept keep their references
    #: chunks whose delta chains the plan followed (and kept): a re-check follows only the others
    followed: frozenset[str] = Field(default=frozenset(), repr=False)

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
            revived_snapshots=self.revived_snapshots,
            damage=self.damage,
            foreign=self.foreign,
        )

    def execute(self, backend: Backend) -> GcReport:
        """Delete records, then tables, then chunks, then the rest.

        Chunks and tables touched since the plan was made (a save found them and reuses them: a table is
        content-addressed too, and a save of the same tree and tensors writes the same one) are spared.
        """
        planned_records = set(self.snapshot_paths)
        touched_records = {
            e.path
            for e in backend.list(layout.SNAPSHOTS)
            if e.path in planned_records and e.mtime and e.mtime >= self.planned_at
        }
        backend.delete([p for p in self.snapshot_paths if p not in touched_records])
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


def _needed(parts: StoreParts, *, expire_reflog: timedelta | None, now: datetime) -> tuple[Liveness, set[str]]:
    """What every ref and unexpired reflog entry reaches now, and the chunks of its unpruned snapshots."""
    state = scan_liveness(parts, expire_reflog=expire_reflog, now=now)
    live_chunks: set[str] = set()
    for sid, (table_digest, is_pruned) in state.live.items():
        try:
            table = parts.objects.get_table(table_digest, fresh=True)  # the store itself, never the record cache
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
    return state, live_chunks


def _recheck(parts: StoreParts, plan: GcPlan, *, expire_reflog: timedelta | None, on_damage: OnDamage) -> GcPlan:
    """The plan less whatever refs and reflogs reach now (read again just before deleting).

    Raises:
        IntegrityError: with ``on_damage="refuse"``, something gc must read is damaged or missing now.
    """
    state, live_chunks = _needed(parts, expire_reflog=expire_reflog, now=plan.planned_at)
    if state.damage and on_damage != "keep":
        raise _refusal(state.damage)
    live_tables = {table for table, _ in state.live.values()}
    if plan.deltas and not state.all_chunks:
        # a doomed delta that is live again keeps its doomed references, and so does a chunk a save wrote since
        # the plan (a delta against a doomed chunk: the reference of a save onto a pruned snapshot)
        doomed = {layout.digest_from_path(p) for p in plan.chunk_paths}
        unfollowed = live_chunks - plan.followed
        refs, problems = reference_closure(parts.backend, unfollowed, doomed | unfollowed)
        live_chunks |= refs
        if problems:
            state.all_chunks = True  # cannot prove a chain: delete no chunk this time
    records = tuple(
        p for p in plan.snapshot_paths if not (state.all_records or layout.digest_from_path(p) in state.live)
    )
    tables = tuple(p for p in plan.table_paths if not (state.all_tables or layout.digest_from_path(p) in live_tables))
    chunks = [
        (p, n)
        for p, n in zip(plan.chunk_paths, plan.chunk_sizes, strict=True)
        if not (state.all_chunks or layout.digest_from_path(p) in live_chunks)
    ]
    if (
        len(records) == len(plan.snapshot_paths)
        and len(tables) == len(plan.table_paths)
        and len(chunks) == len(plan.chunk_paths)
    ):
        return plan
    gone = {layout.pruned_path(layout.digest_from_path(p)) for p in records}
    spared_markers = {layout.pruned_path(layout.digest_from_path(p)) for p in plan.snapshot_paths} - gone
    spared_bytes = sum(plan.chunk_sizes) - sum(n for _, n in chunks)
    return plan.model_copy(
        update={
            "snapshot_paths": records,
            "table_paths": tables,
            "chunk_paths": tuple(p for p, _ in chunks),
            "chunk_sizes": tuple(n for _, n in chunks),
            "other_paths": tuple(p for p in plan.other_paths if p not in spared_markers),
            "kept_chunks": plan.kept_chunks + len(plan.chunk_paths) - len(chunks),
            "kept_bytes": plan.kept_bytes + spared_bytes,
            "revived_snapshots": len(plan.snapshot_paths) - len(records),
        }
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
    backend = parts.backend

    def old(e: Entry) -> bool:
        return e.mtime is None or now - e.mtime >= grace

    foreign: list[str] = []

    def listing(prefix: str) -> list[Entry]:
        """The objects under ``prefix`` named as ckpt names them; any other file is set aside, never deleted."""
        entries = []
        for e in backend.list(prefix):
            if layout.is_object_path(e.path):
                entries.append(e)
            else:
                foreign.append(e.path)
        return entries

    state, live_chunks = _needed(parts, expire_reflog=expire_reflog, now=now)
    if state.damage and on_damage != "keep":
        raise _refusal(state.damage)
    live = state.live
    live_tables = {table for table, _ in live.values()}

    snapshot_paths: list[str] = []
    table_paths: list[str] = []
    record_bytes = young_records = 0
    for e in listing(layout.SNAPSHOTS):
        if state.all_records or layout.digest_from_path(e.path) in live:
            continue
        if old(e):
            snapshot_paths.append(e.path)
            record_bytes += e.size
        else:
            young_records += 1
    for e in listing(layout.TABLES):
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
    chunk_entries = listing(layout.CHUNKS)
    deltas = parts.config.major >= 2
    followed: frozenset[str] = frozenset()
    if deltas and not state.all_chunks:  # a kept delta keeps its chain (format 2.0)
        present = {layout.digest_from_path(e.path) for e in chunk_entries}
        kept = live_chunks | {layout.digest_from_path(e.path) for e in chunk_entries if not old(e)}
        refs, problems = reference_closure(backend, kept, present)
        live_chunks |= refs
        followed = frozenset((kept & present) | refs)  # a chunk missing now may be written by then
        if problems:
            state.damage += [Damage(kind="corrupt", object="chunk", digest=d, message=m) for d, m in problems]
            if on_damage != "keep":
                raise _refusal(state.damage)
            state.all_chunks = True
    for e in chunk_entries:
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
    for e in listing(layout.TMP):
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
        foreign=tuple(foreign[:100]),
        deltas=deltas,
        followed=followed,
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
    if dry_run:
        return plan.report(dry_run=True)
    plan = _recheck(parts, plan, expire_reflog=expire_reflog, on_damage=on_damage)
    return plan.execute(parts.backend)
