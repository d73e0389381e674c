"""What the store's checks report: ``Damage``, ``VerifyReport``, and ``StoreStats`` (object counts and bytes)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ckpt.errors import CkptError, IntegrityError, MissingObjectError
from ckpt.storage import Backend
from ckpt.store import _layout as layout
from ckpt.store._signatures import ReleaseStatus

__all__ = ["Damage", "StoreStats", "VerifyReport", "damage_kind", "release_damage", "store_stats"]


class Damage(BaseModel):
    """One damaged or missing object.

    Attributes:
        kind: ``missing`` (not in the store), ``corrupt`` (bytes do not match the digest, wrong size, or not a
            regular file) or ``invalid`` (not a valid record, or contradicting another: a frozen release marked
            pruned); for a frozen release (docs/concepts/security.md): ``unsigned`` (no signature by a trusted
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
        releases: every frozen release, with its signatures and what they say (docs/concepts/security.md).
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


class StoreStats(BaseModel):
    """Object counts and bytes of a store, by kind (``Store.stats``).

    Bytes are counted as stored (a chunk with its 16-byte header), as ``verify`` and ``gc`` count them.

    Attributes:
        chunks: chunk objects.
        chunk_bytes: their bytes.
        tables: tensor tables.
        table_bytes: their bytes.
        snapshots: snapshot records.
        snapshot_bytes: their bytes.
        total_bytes: every object under the store's root (refs, reflog, markers and the config included).
    """

    model_config = ConfigDict(frozen=True)

    chunks: int = 0
    chunk_bytes: int = 0
    tables: int = 0
    table_bytes: int = 0
    snapshots: int = 0
    snapshot_bytes: int = 0
    total_bytes: int = 0


def store_stats(backend: Backend) -> StoreStats:
    """Count every object under the store's root (one listing, no reads)."""
    counts = dict.fromkeys(StoreStats.model_fields, 0)
    for e in backend.list(""):
        counts["total_bytes"] += e.size
        for prefix, key in ((layout.CHUNKS, "chunk"), (layout.TABLES, "table"), (layout.SNAPSHOTS, "snapshot")):
            if e.path.startswith(prefix):
                counts[key + "s"] += 1
                counts[key + "_bytes"] += e.size
    return StoreStats(**counts)
