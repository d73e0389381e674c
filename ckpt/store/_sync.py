"""Copying snapshots between stores (local ↔ S3 …), sending only the chunks the destination lacks.

The copy follows the commit protocol on the destination: every chunk first, then tensor tables and snapshot
records, ancestors first, and refs last. A record on the destination therefore implies that its data and its
ancestors are there too, which makes an interrupted sync safe to rerun: it resumes where it stopped (chunks
already copied are not sent again). Every
chunk is verified on the way. Branches only fast-forward; a branch that diverged is reported, never
overwritten. Tags are copied as they are (a frozen tag stays frozen); a tag of the same name on another
snapshot is reported.

Fail closed: a ref is created or moved on the destination only once every chunk its snapshot needs (and its
adapter base's, if any) is there whole — found whole (present, the right length, a valid header) or written
by this sync. A chunk the destination holds damaged is written again, never counted as present. A ref whose
snapshot is pruned in the source (its chunks may be gone) or pruned in the destination is not copied: it is
reported in ``conflicts``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from pydantic import BaseModel, ConfigDict

from ckpt.errors import (
    CkptError,
    CorruptChunkError,
    FormatVersionError,
    MissingObjectError,
    RefConflictError,
    RefError,
)
from ckpt.model import Snapshot, TagRecord, TensorTable, digest_bytes, parse_record
from ckpt.store import _layout as layout
from ckpt.store._io import io_workers, is_remote
from ckpt.store._objects import CHUNK_HEADER_SIZE, Objects
from ckpt.store._parts import StoreParts, read_snapshots
from ckpt.store._signatures import copy_signatures
from ckpt.store._sync_chunks import Need, copy_chunks
from ckpt.store._types import Progress

__all__ = ["SyncReport", "sync_parts"]


class SyncReport(BaseModel):
    """What a sync did. Chunk counts are of distinct chunks: a chunk shared by several snapshots counts once.

    ``bytes`` counts chunks as written (each with its 16-byte header, compressed or not), the figure ``verify``
    and ``gc`` report; ``bytes_skipped`` counts the chunks not sent at their raw length plus the header (what
    the destination holds of them is not read to size them).

    Attributes:
        snapshots: snapshot records copied (0: the destination had every snapshot asked for).
        chunks: chunks copied.
        bytes: bytes of the chunks written to the destination.
        chunks_skipped: chunks the copied snapshots need that the destination held already (from earlier
            syncs or saves), so they were not sent.
        bytes_skipped: raw bytes of those chunks, plus 16 bytes of header each.
        refs: refs created or fast-forwarded on the destination (``refs/heads/main`` …).
        conflicts: refs left alone because they diverged, with the reason.
    """

    model_config = ConfigDict(frozen=True)

    snapshots: int
    chunks: int
    bytes: int
    chunks_skipped: int
    bytes_skipped: int = 0
    refs: tuple[str, ...]
    conflicts: tuple[str, ...]


#: A walk that has read this many records one at a time from an object store reads the rest in one batch.
_BATCH_AFTER = 4


def _closure(src: StoreParts, roots: Sequence[str], dst: StoreParts, pruned: set[str]) -> list[Snapshot]:
    """Snapshots to copy, ancestors (and adapter bases) before the snapshots that need them.

    On an object store a long walk does not go one request at a time: once it has read ``_BATCH_AFTER`` source
    records that the record cache lacked, it reads every source record in one batched read; once it has found
    that many snapshots missing from the destination, it lists the destination's records instead of asking
    for each one.
    """
    order: list[Snapshot] = []
    seen: set[str] = set()
    stack: list[tuple[str, bool]] = [(r, False) for r in reversed(roots)]
    read: dict[str, Snapshot] = {}
    listed: set[str] | None = None
    misses = absent = 0

    def get(sid: str) -> Snapshot:
        nonlocal misses
        found = read.get(sid) or src.objects.cached_snapshot(sid, sid in pruned)
        if found is None and is_remote(src.backend):
            misses += 1
            if misses == _BATCH_AFTER:
                got = read_snapshots(src.objects, src.objects.snapshot_ids(), pruned)
                read.update({i: v for i, v in got.items() if isinstance(v, Snapshot)})
                found = read.get(sid)
        return found if found is not None else src.get(sid, pruned)

    def present(sid: str) -> bool:
        nonlocal absent, listed
        if listed is not None:
            return sid in listed
        if dst.objects.has_snapshot(sid):
            return True
        absent += 1
        if absent == _BATCH_AFTER and is_remote(dst.backend):
            listed = set(dst.objects.snapshot_ids())
        return False

    while stack:
        sid, expanded = stack.pop()
        if expanded:
            order.append(read[sid] if sid in read else get(sid))
            continue
        if sid in seen:
            continue
        seen.add(sid)
        if present(sid):
            continue  # present: its data and its ancestors are present too
        snap = read[sid] = get(sid)
        stack.append((sid, True))
        for dep in (*snap.parents, *((snap.base,) if snap.base else ())):
            if dep not in seen:
                stack.append((dep, False))
    return order


def _levels(todo: list[Snapshot]) -> list[list[Snapshot]]:
    """``todo`` (ancestors first) in generations: each snapshot after every parent and base it needs from
    ``todo``, so that the records of one generation can be written at once."""
    level: dict[str, int] = {}
    out: list[list[Snapshot]] = []
    for snap in todo:
        deps = [level[d] for d in (*snap.parents, *((snap.base,) if snap.base else ())) if d in level]
        n = level[snap.id] = 1 + max(deps, default=-1)
        if n == len(out):
            out.append([])
        out[n].append(snap)
    return out


def _raw_records(objects: Objects, kind: str, digests: list[str]) -> dict[str, bytes]:
    """``raw_record`` of many ``table`` or ``snapshot`` records: those in the local record cache from it, the
    others in one batched, concurrent read (``read_many``), each checked against its digest and cached.

    Raises:
        MissingObjectError, CorruptChunkError: as ``raw_record``, for the first record that fails.
    """
    folder = "tables" if kind == "table" else "snapshots"
    out: dict[str, bytes] = {}
    for d in dict.fromkeys(digests):
        kept = objects.cache.get(folder, d) if objects.cache is not None else None
        if kept is not None:
            out[d] = kept
    todo = [d for d in dict.fromkeys(digests) if d not in out]
    paths = [layout.table_path(d) if kind == "table" else layout.snapshot_path(d) for d in todo]
    for d, got in zip(todo, objects.backend.read_many(paths, errors="return"), strict=True):
        if isinstance(got, MissingObjectError):
            what = "tensor table" if kind == "table" else kind
            raise MissingObjectError(f"{what} {d[:12]} is missing from the store") from got
        if isinstance(got, Exception):
            raise got
        data = got
        objects.check_record(kind, d, data)
        if objects.cache is not None:
            objects.cache.put(folder, d, data)
        out[d] = data
    return out


def _put_raw_records(objects: Objects, kind: str, records: dict[str, bytes]) -> None:
    """``put_raw_record`` of many records at once (``put_many``: concurrent conditional writes); a record
    found stored is checked intact, and replaced when damaged. Write together only records that need none of
    the others (a snapshot record needs its parents' records written first).

    Raises:
        CorruptChunkError: a record does not match its digest (nothing of it is written).
    """
    for d, data in records.items():
        if digest_bytes(data) != d:
            raise CorruptChunkError(f"{kind} record {d[:12]} does not match its digest", digest=d)
    paths = {d: layout.table_path(d) if kind == "table" else layout.snapshot_path(d) for d in records}
    written = objects.backend.put_many([(paths[d], data) for d, data in records.items()])
    found = [d for d, w in zip(records, written, strict=True) if not w]
    stored = objects.backend.read_many([paths[d] for d in found], errors="return")
    for d, got in zip(found, stored, strict=True):
        if isinstance(got, Exception) or digest_bytes(got) != d:
            objects.replace_raw_record(kind, d, records[d])  # damaged there: replaced by the proven bytes


def sync_parts(
    src: StoreParts,
    dst: StoreParts,
    revs: Sequence[str] | None = None,
    *,
    progress: Progress | None = None,
    progress_total: Callable[[int], None] | None = None,
) -> SyncReport:
    """Copy snapshots, their history and their refs from ``src`` to ``dst``; see ``Store.sync_to``."""
    branches = src.refs.branches()
    tags = src.refs.tags()
    if revs is None:
        ref_names = [*branches, *tags]
        roots = [*branches.values(), *(t.id for t in tags.values())]
    else:
        ref_names = [r for r in revs if r in branches or r in tags]
        roots = [src.resolve(r).id for r in revs]  # RevisionNotFoundError first: a typo says so
        bare = [r for r in revs if r not in branches and r not in tags]
        if bare:  # it would arrive with no ref, and the destination's gc would delete it (git refuses it too)
            raise RefError(
                f"sync copies branches and tags with their history; {bare[0]!r} is not a branch or tag of {src.url}: "
                "copied alone it would have no ref at the destination, and the destination's gc would delete it",
                hint=f"name it first (store.tag('NAME', {bare[0]!r})) and sync the tag, or sync a branch that "
                "contains it",
                cli_hint=f"name it first (`ckpt tag NAME {bare[0]}`) and sync the tag, or sync a branch that "
                "contains it",
            )

    pruned = src.pruned()
    todo = _closure(src, roots, dst, pruned)
    tables = _raw_records(src.objects, "table", [snap.table for snap in todo])  # one batched read
    needed: dict[str, Need] = {}  # chunk → a tensor or file using it, its snapshot, its raw length, its dtype
    for snap in todo:
        if snap.id in pruned and dst.config.major >= 3:
            continue
        table = parse_record(
            TensorTable,
            tables[snap.table],
            what=f"tensor table {snap.table[:12]}",
            minor_newer=src.objects.minor_newer,
        )
        _refuse_packs(table, snap, dst)
        if snap.id in pruned:
            continue
        for name, entry in table.tensors.items():
            for d, length in entry.pieces(table.chunk_size):  # a sharded tensor's pieces need not be equal
                needed.setdefault(d, Need(name, snap.id, length, entry.dtype))
        for name, fentry in table.files.items():
            for i, d in enumerate(fentry.chunks):
                length = min(table.chunk_size, fentry.size - i * table.chunk_size)
                needed.setdefault(d, Need(name, snap.id, length, None))

    copied = skipped = nbytes = skipped_bytes = 0
    # copies hold up to three chunks each (as stored, decoded, and the link below it): as many at once as
    # requests in flight on the remote side, within io_memory()
    remote = dst.backend if is_remote(dst.backend) else src.backend
    largest = max((n.length for n in needed.values()), default=0) + CHUNK_HEADER_SIZE
    pool = ThreadPoolExecutor(io_workers(remote, 3 * largest), thread_name_prefix="ckpt-sync")
    try:
        digests = list(needed)
        present = dict(
            zip(digests, pool.map(lambda d: dst.objects.chunk_whole(d, needed[d].length), digests), strict=True)
        )
        missing = {d: needed[d] for d in digests if not present[d]}
        if progress_total:
            progress_total(sum(n.length for n in missing.values()))
        written = copy_chunks(src, dst, missing, pool, progress)
        for d, n in written.items():
            nbytes += n
            if d in missing:
                present[d] = not n  # nothing written: another writer stored it meanwhile
            elif n:
                copied += 1  # a reference no snapshot of this sync names (a pruned parent's chunk)
        for d in digests:
            if present[d]:
                skipped += 1
                skipped_bytes += needed[d].length + CHUNK_HEADER_SIZE
            else:
                copied += 1
    except BaseException:  # Ctrl-C or a failure: chunks not started are dropped, not copied before leaving
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    dst.backend.flush()
    # records are copied byte for byte, ancestors first: never re-serialized, so ids and unknown fields survive;
    # tables at once, then snapshot records a generation at a time (each after the parents it names)
    records = _raw_records(src.objects, "snapshot", [snap.id for snap in todo])
    _put_raw_records(dst.objects, "table", {snap.table: tables[snap.table] for snap in todo})
    for snap in todo:
        if snap.id in pruned:
            dst.mark_pruned(snap.id, "pruned in the source store")
    dst.backend.flush()
    for generation in _levels(todo):
        _put_raw_records(dst.objects, "snapshot", {snap.id: records[snap.id] for snap in generation})
        dst.backend.flush()

    refs: list[str] = []
    conflicts: list[str] = []
    dst_branches = dst.refs.branches()
    dst_tags = dst.refs.tags()
    whole = set(needed)  # every chunk of ``needed`` is whole on the destination now
    dst_pruned = dst.pruned()
    for name in ref_names:
        target = branches[name] if name in branches else tags[name].id
        unchanged = dst_branches.get(name) == target if name in branches else name in dst_tags
        if not unchanged:
            lacking = _lacking(src, dst, target, pruned, dst_pruned, whole)
            if lacking is not None:
                kind = "branch" if name in branches else "tag"
                conflicts.append(f"{kind} {name!r} not copied: {lacking}")
                continue
        if name in branches:
            target = branches[name]
            current = dst_branches.get(name)
            if current == target:
                continue
            if current is not None and not _is_ancestor(dst, current, target):
                conflicts.append(
                    f"branch {name!r}: destination at {current[:12]} is not an ancestor of {target[:12]}; left alone"
                )
                continue
            try:
                if current is None:
                    dst.refs.check_new_name(name, "branch")
                dst.refs.move_branch(name, current, target, action="sync", message=f"sync from {src.url}")
                refs.append(layout.branch_path(name))
            except (RefConflictError, CkptError) as e:
                conflicts.append(f"branch {name!r}: {e.message}")
        else:
            tag = tags[name]
            existing = dst_tags.get(name)
            if existing is not None:
                if existing.id != tag.id:
                    conflicts.append(f"tag {name!r}: destination tags {existing.id[:12]}, source {tag.id[:12]}")
                elif tag.frozen:
                    copy_signatures(src.backend, dst.backend, name)  # a release signed since the last sync
                continue
            try:
                dst.refs.check_new_name(name, "tag")
                dst.refs.create_tag(name, TagRecord.model_validate(tag.model_dump()), action="sync")
                if tag.frozen:
                    copy_signatures(src.backend, dst.backend, name)
                refs.append(layout.tag_path(name))
            except CkptError as e:
                conflicts.append(f"tag {name!r}: {e.message}")
    return SyncReport(
        snapshots=len(todo),
        chunks=copied,
        bytes=nbytes,
        chunks_skipped=skipped,
        bytes_skipped=skipped_bytes,
        refs=tuple(refs),
        conflicts=tuple(conflicts),
    )


def _refuse_packs(table: TensorTable, snap: Snapshot, dst: StoreParts) -> None:
    """Refuse to copy a table with packed tensors (format 3.0) into a store of an older format, whose readers
    (an older ckpt) would read each packed tensor as its whole pack; before anything is copied.

    Raises:
        FormatVersionError: names the snapshot and both formats.
    """
    if dst.config.major < 3 and any(t.pack is not None for t in table.tensors.values()):
        raise FormatVersionError(
            f"snapshot {snap.short_id} packs small tensors into shared chunks (format 3.0); the store at {dst.url} "
            f"is format {dst.config.format_version}, whose readers do not know packs: nothing was copied",
            hint="sync into a store created by this ckpt (ckpt init makes format 3.0 stores), or export the "
            "snapshot (ckpt export) and import it there",
        )


def _lacking(
    src: StoreParts, dst: StoreParts, sid: str, src_pruned: set[str], dst_pruned: set[str], whole: set[str]
) -> str | None:
    """Why the destination cannot hold a ref to ``sid`` yet (``None``: every chunk it needs is there whole).

    What a ref needs: its snapshot's chunks, and its adapter base's (and so on down the chain).
    """
    seen: set[str] = set()
    while sid and sid not in seen:
        seen.add(sid)
        if sid in src_pruned:
            return f"its snapshot {sid[:12]} is pruned in the source store (its chunks may be gone there)"
        if sid in dst_pruned:
            return (
                f"its snapshot {sid[:12]} is pruned in the destination store (its chunks may be gone there); "
                "copy it to a new destination, or save it again there"
            )
        try:
            snap = dst.get(sid)
            table = dst.objects.get_table(snap.table)
        except CkptError as e:
            return f"snapshot {sid[:12]} cannot be read on the destination: {e.message}"
        digest = dst.unwhole_chunk(table, whole)
        if digest is not None:
            return f"chunk {digest[:12]} of snapshot {sid[:12]} is missing or damaged on the destination"
        sid = snap.base or ""
    return None


def _is_ancestor(store: StoreParts, ancestor: str, descendant: str) -> bool:
    todo = [descendant]
    seen: set[str] = set()
    while todo:
        sid = todo.pop()
        if sid == ancestor:
            return True
        if sid in seen:
            continue
        seen.add(sid)
        try:
            todo.extend(store.get(sid).parents)
        except CkptError:
            continue
    return False
