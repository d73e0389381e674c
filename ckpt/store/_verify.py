"""Verification: read every object a set of snapshots needs and report all damage in one pass.

``verify_store`` finds what to check (every snapshot reachable from a ref or the reflog, with the liveness
walk ``gc`` uses) and checks what only a whole-store verify can: the refs themselves, every reflog entry and
pruned marker, that each ref's latest move is in its reflog, that no frozen release (or a base it needs) is
marked pruned, and every frozen release against the reflog and its signatures. ``verify_snapshots`` then reads
every chunk once, in parallel.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from ckpt import settings
from ckpt.errors import CkptError, RecordError
from ckpt.model import TensorTable
from ckpt.store import _layout as layout
from ckpt.store._io import io_workers, is_remote
from ckpt.store._keys import load_trusted_keys
from ckpt.store._liveness import scan_liveness
from ckpt.store._objects import CHUNK_HEADER_SIZE, VERIFY_PIECE, Objects
from ckpt.store._parts import StoreParts
from ckpt.store._reports import Damage, VerifyReport, damage_kind, release_damage
from ckpt.store._signatures import check_releases
from ckpt.store._types import Progress

if TYPE_CHECKING:
    from ckpt.store._keys import PublicKey

__all__ = ["verify_snapshots", "verify_store"]


def verify_store(
    parts: StoreParts,
    rev: str | None = None,
    *,
    trust: Sequence[str | os.PathLike[str] | PublicKey] | None = None,
    progress: Progress | None = None,
    progress_total: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Check one snapshot (``rev``), or the whole store with its refs, reflog, markers and releases.

    See ``Store.verify``.

    Raises:
        RecordError: a trusted key file cannot be read, or ``trust`` was given with ``rev``.
        RevisionNotFoundError: ``rev`` names nothing.
    """
    keys = None
    if trust is not None and rev is not None:
        raise RecordError("trust= checks every frozen release: call verify(trust=...) without a revision")
    if trust is not None:
        keys = load_trusted_keys(trust)
    if rev is not None:
        sid = parts.resolve(rev).id
        pruned = parts.pruned() - parts.release_needs()
        return verify_snapshots(parts.objects, [sid], pruned=pruned, progress=progress, progress_total=progress_total)
    state = scan_liveness(parts, expire_reflog=None)
    extra = list(state.damage)
    branches, tags, _ = parts.refs.scan()
    entries, _ = parts.refs.scan_reflog()
    moved_to: dict[str, set[str]] = {}
    for entry in entries:
        if entry.new and entry.action != "conflict":
            moved_to.setdefault(entry.ref, set()).add(entry.new)
    unreadable = {d.digest for d in state.damage if d.object == "reflog"}
    refs = {layout.branch_path(n): h for n, h in branches.items()} | {layout.tag_path(n): t.id for n, t in tags.items()}
    for ref, sid in refs.items():
        if any(p.startswith(layout.reflog_prefix(ref)) for p in unreadable):
            continue  # the damaged entry may be that move's: reported as it is, not guessed
        if sid not in moved_to.get(ref, set()):
            extra.append(
                Damage(
                    kind="missing",
                    object="reflog",
                    digest=ref,
                    snapshots=(sid,),
                    message=f"{ref} points at {sid[:12]}, but no reflog entry records that move "
                    "(its reflog append failed); `ckpt repair` writes it back",
                )
            )
    for name in sorted(set(branches) & set(tags)):  # created behind ckpt's back (a ref file written by hand)
        extra.append(
            Damage(
                kind="invalid",
                object="ref",
                digest=layout.branch_path(name),
                snapshots=(branches[name], tags[name].id),
                message=f"branch {name!r} and tag {name!r} share a name, so every revision naming it is refused as "
                f"ambiguous; a branch named as a release may be an attempt to shadow it: look at refs/heads/{name} "
                f"and refs/tags/{name}, and delete the one that should not be there",
            )
        )
    for sid in sorted(state.protected & state.pruned):
        names = sorted(n for n, t in tags.items() if t.frozen and t.id == sid)
        what = f"the frozen release {names[0]!r}" if names else "the base of a frozen release or of an adapter in use"
        extra.append(
            Damage(
                kind="invalid",
                object="marker",
                digest=layout.pruned_path(sid),
                snapshots=(sid,),
                message=f"snapshot {sid[:12]} is {what} but is marked pruned; releases and the bases "
                "they or unpruned adapters need are never pruned (gc keeps its objects); `ckpt repair` removes "
                "the marker",
            )
        )
    releases = check_releases(parts.backend, tags, entries, trust=keys)
    extra.extend(release_damage(releases, keys_given=keys is not None))
    pruned = state.pruned - state.protected
    report = verify_snapshots(
        parts.objects,
        sorted(state.live),
        pruned=pruned,
        extra_damage=extra,
        progress=progress,
        progress_total=progress_total,
    )
    return report.model_copy(update={"releases": tuple(releases)})


def verify_snapshots(
    objects: Objects,
    snapshot_ids: Iterable[str],
    *,
    pruned: set[str],
    extra_damage: Iterable[Damage] = (),
    progress: Progress | None = None,
    progress_total: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Check records, tables and every chunk of non-pruned snapshots; each chunk is read once."""
    damage: list[Damage] = list(extra_damage)
    # (chunk, raw length its table implies) → (snapshots, tensors): two tables claiming different lengths for
    # one chunk are both checked, so the one that is wrong is reported
    users: dict[tuple[str, int], tuple[set[str], set[str]]] = {}
    count = 0
    for sid in snapshot_ids:
        count += 1
        try:
            snap = objects.get_snapshot(sid, fresh=True)
        except CkptError as e:
            damage.append(
                Damage(kind=damage_kind(e), object="snapshot", digest=sid, snapshots=(sid,), message=e.message)
            )
            continue
        try:
            table: TensorTable = objects.get_table(snap.table, fresh=True)
        except CkptError as e:
            damage.append(
                Damage(kind=damage_kind(e), object="table", digest=snap.table, snapshots=(sid,), message=e.message)
            )
            continue
        if sid in pruned:
            continue
        cs = table.chunk_size
        pieces: list[tuple[str, str, int]] = [
            *((n, d, length) for n, t in table.tensors.items() for d, length in t.pieces(cs)),
            *((n, d, min(cs, f.size - i * cs)) for n, f in table.files.items() for i, d in enumerate(f.chunks)),
        ]
        for name, digest, length in pieces:
            snaps, tensors = users.setdefault((digest, length), (set(), set()))
            snaps.add(sid)
            tensors.add(name)

    lock = threading.Lock()
    total = 0
    scratch = threading.local()  # each worker decodes encoded chunks into one buffer of its own, reused

    def buffer(length: int) -> memoryview | None:  # asked for only by an encoded chunk
        held: memoryview | None = getattr(scratch, "buffer", None)
        if held is None or held.nbytes < length:
            try:
                held = scratch.buffer = memoryview(bytearray(length))
            except (MemoryError, OverflowError):  # a table claiming an absurd length: check_chunk words it
                return None
        return held

    def check(digest: str, length: int) -> None:
        nonlocal total
        snaps, tensors = users[(digest, length)]
        held = 0
        try:  # read in bounded pieces: memory never depends on the length a table claims
            held = objects.check_chunk(
                digest,
                length,
                tensor=sorted(tensors)[0],
                snapshot=sorted(snaps)[0],
                progress=progress,
                buffer=buffer if local and length <= VERIFY_PIECE else None,
            )
        except CkptError as e:
            d = Damage(
                kind=damage_kind(e),
                object="chunk",
                digest=digest,
                snapshots=tuple(sorted(snaps)),
                tensors=tuple(sorted(tensors)),
                message=e.message,
            )
            with lock:
                damage.append(d)
        with lock:
            total += held

    local = objects.backend.local_path(layout.CONFIG) is not None
    if progress_total:
        progress_total(sum(length for _, length in users))  # what ``progress`` counts: payload bytes
    # on an object store each check is a request (and holds what it read, up to VERIFY_PIECE bytes): as many in
    # flight as CKPT_IO_CONCURRENCY allows within CKPT_IO_MEMORY; on a local disk, CKPT_THREADS
    largest = max((length for _, length in users), default=0) + CHUNK_HEADER_SIZE + 1
    workers = io_workers(objects.backend, min(largest, VERIFY_PIECE)) if is_remote(objects.backend) else None
    pool = ThreadPoolExecutor(workers or settings.threads(), thread_name_prefix="ckpt-verify")
    try:
        for f in [pool.submit(check, digest, length) for digest, length in users]:
            f.result()
    finally:  # on Ctrl-C the checks still queued are dropped, not run first
        pool.shutdown(wait=True, cancel_futures=True)
    distinct = len({digest for digest, _ in users})
    return VerifyReport(snapshots=count, chunks=distinct, bytes=total, damage=tuple(damage))
