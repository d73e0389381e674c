"""Verification: read every object a set of snapshots needs and report all damage in one pass."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ckpt import settings
from ckpt.errors import CkptError, IntegrityError, MissingObjectError
from ckpt.model import TensorTable
from ckpt.store.objects import Objects
from ckpt.store.signing import ReleaseStatus
from ckpt.store.transfer import Progress

__all__ = ["Damage", "VerifyReport", "damage_kind", "release_damage", "verify_snapshots"]


class Damage(BaseModel):
    """One damaged or missing object.

    Attributes:
        kind: ``missing`` (not in the store), ``corrupt`` (bytes do not match the digest, wrong size, or not a
            regular file) or ``invalid`` (not a valid record, or contradicting another: a frozen release marked
            pruned); for a frozen release (``ckpt.store.signing``): ``unsigned`` (no signature by a trusted
            key), ``repointed`` (its tag names another snapshot than the one frozen or signed), ``forged`` (a
            signature that does not verify) or ``tampered`` (unfrozen, deleted, or missing from the reflog).
        object: ``chunk``, ``table``, ``snapshot``, ``ref`` (a branch or tag), ``reflog`` (an entry, or the
            entry of a ref's latest move), ``marker`` (a pruned marker) or ``release``.
        digest: the object's address (or the path of the ref, reflog entry or marker, or the release's name).
        snapshots: ids of the snapshots that need it.
        tensors: names of the tensors (or files) that hold it.
        message: what was found.
    """

    model_config = ConfigDict(frozen=True)

    kind: Literal["missing", "corrupt", "invalid", "unsigned", "repointed", "forged", "tampered"]
    object: Literal["chunk", "table", "snapshot", "ref", "reflog", "marker", "release"]
    digest: str
    snapshots: tuple[str, ...] = ()
    tensors: tuple[str, ...] = ()
    message: str


class VerifyReport(BaseModel):
    """The result of ``Store.verify``.

    Attributes:
        snapshots: snapshots checked.
        chunks: distinct chunks checked.
        bytes: bytes of the sound chunks as stored (each with its 16-byte header), the figure ``gc`` and
            ``Store.stats`` use for the same chunks.
        damage: every problem found (empty when the store is sound).
        releases: every frozen release, with its signatures and what they say (``ckpt.store.signing``).
    """

    model_config = ConfigDict(frozen=True)

    snapshots: int
    chunks: int
    bytes: int
    damage: tuple[Damage, ...]
    releases: tuple[ReleaseStatus, ...] = ()

    @property
    def ok(self) -> bool:
        """No damage found."""
        return not self.damage


def release_damage(releases: Iterable[ReleaseStatus], *, keys_given: bool) -> list[Damage]:
    """A ``Damage`` (object ``release``) for each release that is not sound; an unsigned release is one only
    when the reader gave trusted keys (asked for signatures)."""
    return [
        Damage(
            kind=r.status,  # every status but "signed", which is filtered out below
            object="release",
            digest=r.name,
            snapshots=(r.snapshot,) if r.snapshot else (),
            message=r.message,
        )
        for r in releases
        if r.status != "signed" and (r.status != "unsigned" or keys_given)
    ]


def damage_kind(e: CkptError) -> Literal["missing", "corrupt", "invalid"]:
    """The ``Damage.kind`` of an error met while reading an object."""
    if isinstance(e, MissingObjectError):
        return "missing"
    if isinstance(e, IntegrityError):
        return "corrupt"
    return "invalid"


_kind = damage_kind


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
            snap = objects.get_snapshot(sid)
        except CkptError as e:
            damage.append(
                Damage(kind=damage_kind(e), object="snapshot", digest=sid, snapshots=(sid,), message=e.message)
            )
            continue
        try:
            table: TensorTable = objects.get_table(snap.table)
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

    def check(digest: str, length: int) -> None:
        nonlocal total
        snaps, tensors = users[(digest, length)]
        held = 0
        try:  # read in bounded pieces: memory never depends on the length a table claims
            held = objects.check_chunk(
                digest, length, tensor=sorted(tensors)[0], snapshot=sorted(snaps)[0], progress=progress
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

    if progress_total:
        progress_total(sum(length for _, length in users))  # what ``progress`` counts: payload bytes
    with ThreadPoolExecutor(settings.threads(), thread_name_prefix="ckpt-verify") as pool:
        for f in [pool.submit(check, digest, length) for digest, length in users]:
            f.result()
    distinct = len({digest for digest, _ in users})
    return VerifyReport(snapshots=count, chunks=distinct, bytes=total, damage=tuple(damage))
