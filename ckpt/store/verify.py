"""Verification: read every object a set of snapshots needs and report all damage in one pass."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ckpt import settings
from ckpt.errors import CkptError, CorruptChunkError, MissingObjectError
from ckpt.model import TensorTable
from ckpt.store.objects import Objects
from ckpt.store.transfer import Progress

__all__ = ["Damage", "VerifyReport", "verify_snapshots"]


class Damage(BaseModel):
    """One damaged or missing object.

    Attributes:
        kind: ``missing`` (not in the store), ``corrupt`` (bytes do not match the digest) or ``invalid``
            (not a valid record).
        object: ``chunk``, ``table``, ``snapshot`` or ``ref``.
        digest: the object's address (or the ref's name).
        snapshots: ids of the snapshots that need it.
        tensors: names of the tensors (or files) that hold it.
        message: what was found.
    """

    model_config = ConfigDict(frozen=True)

    kind: Literal["missing", "corrupt", "invalid"]
    object: Literal["chunk", "table", "snapshot", "ref"]
    digest: str
    snapshots: tuple[str, ...] = ()
    tensors: tuple[str, ...] = ()
    message: str


class VerifyReport(BaseModel):
    """The result of ``Store.verify``.

    Attributes:
        snapshots: snapshots checked.
        chunks: distinct chunks checked.
        bytes: raw bytes hashed.
        damage: every problem found (empty when the store is sound).
    """

    model_config = ConfigDict(frozen=True)

    snapshots: int
    chunks: int
    bytes: int
    damage: tuple[Damage, ...]

    @property
    def ok(self) -> bool:
        """No damage found."""
        return not self.damage


def _kind(e: CkptError) -> Literal["missing", "corrupt", "invalid"]:
    if isinstance(e, MissingObjectError):
        return "missing"
    if isinstance(e, CorruptChunkError):
        return "corrupt"
    return "invalid"


def verify_snapshots(
    objects: Objects,
    snapshot_ids: Iterable[str],
    *,
    pruned: set[str],
    extra_damage: Iterable[Damage] = (),
    progress: Progress | None = None,
) -> VerifyReport:
    """Check records, tables and every chunk of non-pruned snapshots; each chunk is read once."""
    damage: list[Damage] = list(extra_damage)
    users: dict[str, tuple[set[str], set[str], int]] = {}  # chunk → (snapshots, tensors, raw length)
    count = 0
    for sid in snapshot_ids:
        count += 1
        try:
            snap = objects.get_snapshot(sid)
        except CkptError as e:
            damage.append(Damage(kind=_kind(e), object="snapshot", digest=sid, snapshots=(sid,), message=str(e)))
            continue
        try:
            table: TensorTable = objects.get_table(snap.table)
        except CkptError as e:
            damage.append(Damage(kind=_kind(e), object="table", digest=snap.table, snapshots=(sid,), message=str(e)))
            continue
        if sid in pruned:
            continue
        cs = table.chunk_size
        pieces: list[tuple[str, str, int]] = [
            *((n, d, length) for n, t in table.tensors.items() for d, length in t.pieces(cs)),
            *((n, d, min(cs, f.size - i * cs)) for n, f in table.files.items() for i, d in enumerate(f.chunks)),
        ]
        for name, digest, length in pieces:
            snaps, tensors, _ = users.setdefault(digest, (set(), set(), length))
            snaps.add(sid)
            tensors.add(name)

    lock = threading.Lock()
    total = 0

    def check(digest: str, length: int) -> None:
        nonlocal total
        snaps, tensors, _ = users[digest]
        buf = bytearray(length)
        try:
            objects.read_chunk_into(digest, memoryview(buf), tensor=sorted(tensors)[0], snapshot=sorted(snaps)[0])
        except CkptError as e:
            d = Damage(
                kind=_kind(e),
                object="chunk",
                digest=digest,
                snapshots=tuple(sorted(snaps)),
                tensors=tuple(sorted(tensors)),
                message=str(e),
            )
            with lock:
                damage.append(d)
        with lock:
            total += length
        if progress:
            progress(length)

    with ThreadPoolExecutor(settings.threads(), thread_name_prefix="ckpt-verify") as pool:
        for f in [pool.submit(check, d, info[2]) for d, info in users.items()]:
            f.result()
    return VerifyReport(snapshots=count, chunks=len(users), bytes=total, damage=tuple(damage))
