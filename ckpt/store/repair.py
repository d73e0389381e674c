"""Repair: put back damaged or missing objects from a good copy of the store.

Every object but a ref is addressed by the digest of its bytes, so any store that holds the same address holds
the same bytes: a replica made with ``ckpt sync``, a backup of the folder, a colleague's store. Repair verifies
the damaged store, reads each damaged object from the source (checking it against its digest: bad bytes are
never copied), writes it over the damaged copy, and verifies again. A repaired record can bring to light
damage it hid (the chunks of a table that was unreadable), so this repeats until nothing new is found. Refs
are not content-addressed and are never changed; a ref that points at a missing snapshot is repaired by
copying that snapshot's record.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from ckpt.errors import CkptError
from ckpt.store.transfer import Progress
from ckpt.store.verify import Damage, VerifyReport

if TYPE_CHECKING:
    from ckpt.store.store import Store

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
        ok: whether the store verifies clean afterwards.
        verify: the final verification.
    """

    model_config = ConfigDict(frozen=True)

    repaired: tuple[Damage, ...]
    unrepaired: tuple[Damage, ...]
    bytes_copied: int
    ok: bool
    verify: VerifyReport


def _key(d: Damage) -> tuple[str, str]:
    return d.object, d.digest


def _verify(store: Store, revs: Sequence[str] | None, progress: Progress | None) -> VerifyReport:
    """``store.verify()``, or the verifications of each of ``revs`` merged (damage reported once)."""
    if revs is None:
        return store.verify(progress=progress)
    reports = [store.verify(rev, progress=progress) for rev in revs]
    damage: dict[tuple[str, str], Damage] = {}
    for report in reports:
        for d in report.damage:
            damage.setdefault(_key(d), d)
    return VerifyReport(
        snapshots=sum(r.snapshots for r in reports),
        chunks=sum(r.chunks for r in reports),
        bytes=sum(r.bytes for r in reports),
        damage=tuple(damage.values()),
    )


def _copy(store: Store, source: Store, d: Damage) -> int:
    """Copy the object ``d`` names from ``source``; returns the bytes written.

    Raises:
        CkptError: the source lacks it or holds a bad copy, or the object cannot be repaired from a copy.
    """
    objects, good = store._objects, source._objects
    if d.object == "chunk":
        raw = good.read_chunk(d.digest, verify=True, tensor=d.tensors[0] if d.tensors else None)
        return objects.replace_chunk(d.digest, raw)
    if d.object in ("table", "snapshot") and d.kind != "invalid":
        data = good.raw_record(d.object, d.digest)
        objects.replace_raw_record(d.object, d.digest, data)
        return len(data)
    if d.object == "ref" and d.kind == "missing" and d.snapshots:
        data = good.raw_record("snapshot", d.snapshots[0])  # the snapshot the ref points at
        objects.replace_raw_record("snapshot", d.snapshots[0], data)
        return len(data)
    if d.kind == "invalid":
        raise CkptError("its bytes match its digest, so every copy is the same: it may need a newer ckpt")
    raise CkptError("refs are not content-addressed: move or delete it (`ckpt reset`, `ckpt branch -d`)")


def repair(
    store: Store, source: Store, revs: Sequence[str] | None = None, *, progress: Progress | None = None
) -> RepairReport:
    """Put back every damaged or missing object of ``store`` from ``source``; see the module docstring."""
    repaired: list[Damage] = []
    reasons: dict[tuple[str, str], str] = {}  # what was tried: "" (copied) or why not
    copied = 0
    for _ in range(_MAX_PASSES):
        todo = [d for d in _verify(store, revs, progress).damage if _key(d) not in reasons]
        if not todo:
            break
        for d in todo:
            try:
                copied += _copy(store, source, d)
            except CkptError as e:
                reasons[_key(d)] = f"not repaired: {e}"
            else:
                reasons[_key(d)] = ""
                repaired.append(d)
    store.backend.flush()
    final = _verify(store, revs, progress)
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
