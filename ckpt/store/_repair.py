"""Repair: put back damaged or missing objects from a good copy of the store.

Every object but a ref is addressed by the digest of its bytes, so any store that holds the same address holds
the same bytes: a replica made with ``ckpt sync``, a backup of the folder, a colleague's store. Repair verifies
the damaged store, reads each damaged object from the source (checking it against its digest: bad bytes are
never copied), writes it over the damaged copy with the backend's atomic replace, and verifies again. A repaired
record can bring to light damage it hid (the chunks of a table that was unreadable), so this repeats until
nothing new is found. Refs are not content-addressed and are never changed; a ref that points at a missing
snapshot is repaired by copying that snapshot's record.

Three kinds of damage need no source and are fixed in place: a ref whose latest move is missing from its
reflog (the append failed after the move) gets its entry back; a pruned marker on a frozen release (or a base
it needs) is removed, since releases are never pruned; a pruned marker that cannot be read is written again
(the snapshot stays pruned, as it was meant to be). A reflog entry that cannot be read is never deleted or
guessed: it is reported, with what to do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from pydantic import BaseModel, ConfigDict

from ckpt.errors import CkptError
from ckpt.model import PrunedMarker, Snapshot, canonical_json, format_time, is_digest, utcnow
from ckpt.store import _layout as layout
from ckpt.store._io import io_workers, is_remote
from ckpt.store._parts import StoreParts
from ckpt.store._reports import Damage, VerifyReport, damage_kind
from ckpt.store._retention import adapter_bases
from ckpt.store._revisions import parse_revision, walk_steps
from ckpt.store._types import Progress
from ckpt.store._verify import verify_snapshots, verify_store

__all__ = ["RepairReport", "repair"]

#: A damaged record can hide damage below it (a table hides its chunks): at most this many verify passes.
_MAX_PASSES = 4


class RepairReport(BaseModel):
    """The result of ``Store.repair``.

    Attributes:
        repaired: the damage that was repaired (as ``verify`` reported it).
        unrepaired: the damage that remains after the repair, each message saying why it could not be repaired
            (the source lacks the object or holds a bad copy too, a ref points nowhere…).
        bytes_copied: bytes written into the damaged store.
        ok: whether the store verifies clean afterwards (for ``revs``: what they need).
        verify: the final verification.
    """

    model_config = ConfigDict(frozen=True)

    repaired: tuple[Damage, ...]
    unrepaired: tuple[Damage, ...]
    bytes_copied: int
    ok: bool
    verify: VerifyReport


class _NotRepaired(Exception):
    """An object cannot be put back from this source; the message says why."""


class _Unreadable(Exception):
    """A snapshot record needed to resolve a revision is damaged and was not repaired."""

    def __init__(self, damage: Damage) -> None:
        super().__init__(damage.message)
        self.damage = damage


#: Copies one damaged object from the source; returns whether it was copied (the reason is kept if not).
Fix = Callable[[Damage], bool]


def _key(d: Damage) -> tuple[str, str]:
    return d.object, d.digest


def _resolve(store: StoreParts, rev: str, fix: Fix | None) -> str:
    """The snapshot id ``rev`` names; a damaged record on the way (``main`` for ``main~2``) is fixed first.

    Raises:
        _Unreadable: a record on the way is damaged and ``fix`` did not repair it.
    """

    def get(sid: str) -> Snapshot:
        try:
            return store.objects.get_snapshot(sid, fresh=True)
        except CkptError as e:
            d = Damage(kind=damage_kind(e), object="snapshot", digest=sid, snapshots=(sid,), message=e.message)
            if fix is None or not fix(d):
                raise _Unreadable(d) from e
        try:
            return store.objects.get_snapshot(sid, fresh=True)
        except CkptError as e:
            raise _Unreadable(d) from e

    parsed = parse_revision(rev)
    sid = store.base_id(parsed)
    return walk_steps(get(sid), parsed.steps, get, rev).id if parsed.steps else sid


def _verify(store: StoreParts, revs: Sequence[str] | None, progress: Progress | None, fix: Fix | None) -> VerifyReport:
    """``Store.verify()``, or the snapshots of ``revs`` verified together (each chunk read once)."""
    if revs is None:
        return verify_store(store, progress=progress)
    ids: dict[str, None] = {}
    damage: dict[tuple[str, str], Damage] = {}
    for rev in revs:
        try:
            ids[_resolve(store, rev, fix)] = None
        except _Unreadable as e:
            damage.setdefault(_key(e.damage), e.damage)
    report = verify_snapshots(store.objects, ids, pruned=store.pruned(), progress=progress)
    for d in report.damage:
        damage.setdefault(_key(d), d)
    return report.model_copy(update={"damage": tuple(damage.values())})


def _fix_in_place(store: StoreParts, d: Damage) -> int | None:
    """Fix damage that needs no source; returns the bytes written, or ``None`` if this is not such damage.

    Raises:
        _NotRepaired: it is damage of that family, but cannot be fixed.
    """
    if d.object == "reflog" and d.kind == "missing" and d.snapshots:
        store.refs.append_reflog(
            d.digest,
            None,
            d.snapshots[0],
            "reset",
            "written by repair: the move that put the ref here was not in its reflog",
        )
        return 0
    if d.object == "marker":
        sid = d.snapshots[0] if d.snapshots else ""
        if not is_digest(sid) or d.digest != layout.pruned_path(sid):
            if layout.is_object_path(d.digest):
                store.backend.delete([d.digest])  # named as a marker, but for no snapshot id: not a marker
                return 0
            raise _NotRepaired(f"{d.digest} is not named as ckpt names a pruned marker: remove it by hand if unneeded")
        if sid in store.release_needs() or sid in adapter_bases(store):
            store.backend.delete([d.digest])  # a frozen release, or a base an adapter in use needs, is never pruned
            return 0
        marker = PrunedMarker(pruned_at=format_time(utcnow()), reason="rewritten by repair: the marker was unreadable")
        data = canonical_json(marker.model_dump(mode="json"))
        store.backend.replace(d.digest, data)
        return len(data)
    if d.object == "ref" and d.kind == "invalid":
        raise _NotRepaired(
            "a branch and a tag share a name: no copy decides which one belongs; delete the one that should not "
            "be there (`ckpt branch -d NAME` for the branch)"
        )
    if d.object == "reflog":
        raise _NotRepaired(
            "a reflog entry is not content-addressed, so no copy can restore it; if what it named is not needed, "
            f"delete {d.digest}, or collect with gc(on_damage='keep'), which keeps every snapshot it might name"
        )
    return None


def _fetch(source: StoreParts | None, d: Damage) -> tuple[str, str, bytes]:
    """Read the object ``d`` names from ``source``, checked against its digest: ``(object, digest, bytes)``.

    Raises:
        _NotRepaired: the source lacks it or holds a bad copy too, or no copy can repair it.
    """
    if source is None:
        raise _NotRepaired("no good copy was given to repair it from (repair --from URL)")
    good = source.objects
    try:
        if d.object == "chunk":
            tensor = d.tensors[0] if d.tensors else None
            return "chunk", d.digest, good.read_stored(d.digest, None, tensor=tensor)  # as stored there, checked
        if d.object in ("table", "snapshot") and d.kind != "invalid":
            return d.object, d.digest, good.raw_record(d.object, d.digest)
        if d.object == "ref" and d.kind == "missing" and d.snapshots:  # the snapshot the ref points at
            return "snapshot", d.snapshots[0], good.raw_record("snapshot", d.snapshots[0])
    except CkptError as e:
        raise _NotRepaired(f"the source {source.url} cannot give it: {e.message}") from e
    if d.object == "release":
        raise _NotRepaired(
            "a release that changed is not put back from a copy: find what was published in its "
            "reflog and signatures, and check the copy with `ckpt verify --trust`"
        )
    if d.kind == "invalid":
        raise _NotRepaired("its bytes match its digest, so every copy is the same: it may need a newer ckpt")
    raise _NotRepaired("refs are not content-addressed: move or delete it (`ckpt reset`, `ckpt branch -d`)")


def repair(
    store: StoreParts, source: StoreParts | None, *, revs: Sequence[str] | None = None, progress: Progress | None = None
) -> RepairReport:
    """Put back every damaged or missing object of ``store`` from ``source``; see ``Store.repair``."""
    if isinstance(revs, str):
        revs = [revs]
    repaired: list[Damage] = []
    reasons: dict[tuple[str, str], str] = {}  # what was tried: "" (copied) or why not
    copied = 0
    lock = threading.Lock()  # chunks are repaired several at a time

    def fix(d: Damage) -> bool:
        """Repair one damage (once per object); whether it is repaired."""
        nonlocal copied
        key = _key(d)
        with lock:
            if key in reasons:
                return reasons[key] == ""
            reasons[key] = "not repaired: it was being repaired when this was reported"  # one worker per object
        try:
            local = _fix_in_place(store, d)
            if local is None:
                kind, digest, data = _fetch(source, d)
                if kind == "chunk":
                    local = store.objects.replace_stored(digest, data)
                else:
                    store.objects.replace_raw_record(kind, digest, data)
                    local = len(data)
                if progress:
                    progress(local)
        except _NotRepaired as e:
            with lock:
                reasons[key] = f"not repaired: {e}"
            return False
        except BaseException:
            with lock:
                del reasons[key]
            raise
        with lock:
            reasons[key] = ""
            repaired.append(d)
            copied += local
        return True

    for _ in range(_MAX_PASSES):
        todo = [d for d in _verify(store, revs, progress, fix).damage if _key(d) not in reasons]
        if not todo:
            break
        chunks = [d for d in todo if d.object == "chunk"]
        for d in todo:
            if d.object != "chunk":
                fix(d)
        # damaged chunks are copied several at a time (each holds one chunk: io_workers bounds the memory)
        remote = source.backend if source is not None and is_remote(source.backend) else store.backend
        with ThreadPoolExecutor(io_workers(remote, store.chunk_size), thread_name_prefix="ckpt-repair") as pool:
            list(pool.map(fix, chunks))
    store.backend.flush()
    final = _verify(store, revs, progress, None)
    left = {_key(d) for d in final.damage}
    unrepaired = tuple(
        d.model_copy(update={"message": f"{d.message}; {reasons[_key(d)]}"}) if reasons.get(_key(d)) else d
        for d in final.damage
    )
    return RepairReport(
        repaired=tuple(d for d in repaired if _key(d) not in left),
        unrepaired=unrepaired,
        bytes_copied=copied,
        ok=final.ok,
        verify=final,
    )
