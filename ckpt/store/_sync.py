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

from ckpt.errors import CkptError, FormatVersionError, RefConflictError
from ckpt.model import Snapshot, TagRecord, TensorTable
from ckpt.store import _layout as layout
from ckpt.store._io import io_workers, is_remote
from ckpt.store._objects import CHUNK_HEADER_SIZE
from ckpt.store._parts import StoreParts
from ckpt.store._signatures import copy_signatures
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


def _closure(src: StoreParts, roots: Sequence[str], dst: StoreParts) -> list[Snapshot]:
    """Snapshots to copy, ancestors (and adapter bases) before the snapshots that need them."""
    order: list[Snapshot] = []
    seen: set[str] = set()
    stack: list[tuple[str, bool]] = [(r, False) for r in reversed(roots)]
    while stack:
        sid, expanded = stack.pop()
        if expanded:
            order.append(src.get(sid))
            continue
        if sid in seen:
            continue
        seen.add(sid)
        if dst.objects.has_snapshot(sid):
            continue  # present: its data and its ancestors are present too
        snap = src.get(sid)
        stack.append((sid, True))
        for dep in (*snap.parents, *((snap.base,) if snap.base else ())):
            if dep not in seen:
                stack.append((dep, False))
    return order


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
        roots = [src.resolve(r).id for r in revs]

    todo = _closure(src, roots, dst)
    pruned = src.pruned()
    needed: dict[str, tuple[str, str, int]] = {}  # chunk → (a tensor or file using it, its snapshot, raw length)
    for snap in todo:
        if snap.id in pruned and dst.config.major >= 3:
            continue
        table = src.objects.get_table(snap.table)
        _refuse_packs(table, snap, dst)
        if snap.id in pruned:
            continue
        for name, entry in table.tensors.items():
            for d, length in entry.pieces(table.chunk_size):  # a sharded tensor's pieces need not be equal
                needed.setdefault(d, (name, snap.id, length))
        for name, fentry in table.files.items():
            for i, d in enumerate(fentry.chunks):
                needed.setdefault(d, (name, snap.id, min(table.chunk_size, fentry.size - i * table.chunk_size)))

    copied = skipped = nbytes = skipped_bytes = 0
    # copies hold a chunk each: as many at once as requests in flight on the remote side, within io_memory()
    remote = dst.backend if is_remote(dst.backend) else src.backend
    largest = max((length for _, _, length in needed.values()), default=0) + CHUNK_HEADER_SIZE
    pool = ThreadPoolExecutor(io_workers(remote, largest), thread_name_prefix="ckpt-sync")
    try:
        digests = list(needed)
        present = dict(zip(digests, pool.map(lambda d: dst.objects.chunk_whole(d, needed[d][2]), digests), strict=True))
        missing = [d for d in digests if not present[d]]
        if progress_total:
            progress_total(sum(needed[d][2] for d in missing))

        def copy(digest: str) -> int:
            name, sid, length = needed[digest]
            data = src.objects.read_stored(digest, length, tensor=name, snapshot=sid)  # as stored, checked
            written = dst.objects.put_stored(digest, data)
            if progress:
                progress(length)
            return written

        for d, written in zip(missing, pool.map(copy, missing), strict=True):
            present[d] = not written  # nothing written: another writer stored it meanwhile
            nbytes += written
        for d in digests:
            if present[d]:
                skipped += 1
                skipped_bytes += needed[d][2] + CHUNK_HEADER_SIZE
            else:
                copied += 1
    except BaseException:  # Ctrl-C or a failure: chunks not started are dropped, not copied before leaving
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    dst.backend.flush()
    # records are copied byte for byte, ancestors first: never re-serialized, so ids and unknown fields survive
    for snap in todo:
        dst.objects.put_raw_record("table", snap.table, src.objects.raw_record("table", snap.table))
        if snap.id in pruned:
            dst.mark_pruned(snap.id, "pruned in the source store")
        dst.backend.flush()
        dst.objects.put_raw_record("snapshot", snap.id, src.objects.raw_record("snapshot", snap.id))

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
