"""What the store's checks report: ``Damage``, ``VerifyReport``, and ``StoreStats`` (object counts and bytes)."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ckpt import settings
from ckpt.errors import CkptError, IntegrityError, MissingObjectError
from ckpt.model import TensorTable
from ckpt.storage import Backend
from ckpt.store import _layout as layout
from ckpt.store._signatures import ReleaseStatus

__all__ = [
    "Damage",
    "Footprint",
    "StoreStats",
    "VerifyReport",
    "damage_kind",
    "footprint",
    "release_damage",
    "store_stats",
]


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
        chunk_bytes: their bytes, as stored (compressed chunks at their compressed size).
        chunk_raw_bytes: the raw (decoded) bytes they hold, from their headers; ``chunk_bytes /
            chunk_raw_bytes`` is what compression and deltas save (headers included).
        tables: tensor tables.
        table_bytes: their bytes.
        snapshots: snapshot records.
        snapshot_bytes: their bytes.
        total_bytes: every object under the store's root (refs, reflog, markers and the config included).
    """

    model_config = ConfigDict(frozen=True)

    chunks: int = 0
    chunk_bytes: int = 0
    chunk_raw_bytes: int = 0
    tables: int = 0
    table_bytes: int = 0
    snapshots: int = 0
    snapshot_bytes: int = 0
    total_bytes: int = 0


def store_stats(backend: Backend) -> StoreStats:
    """Count every object under the store's root: one listing, and the 16-byte header of each chunk (read in
    parallel) for its raw length. A chunk whose header cannot be read counts 0 raw bytes (``verify`` reports
    it)."""
    counts = dict.fromkeys(StoreStats.model_fields, 0)
    chunk_paths: list[str] = []
    for e in backend.list(""):
        counts["total_bytes"] += e.size
        for prefix, key in ((layout.CHUNKS, "chunk"), (layout.TABLES, "table"), (layout.SNAPSHOTS, "snapshot")):
            if e.path.startswith(prefix):
                counts[key + "s"] += 1
                counts[key + "_bytes"] += e.size
                if key == "chunk":
                    chunk_paths.append(e.path)

    def raw_length(path: str) -> int:
        try:
            header = backend.read(path, 0, 16)
        except CkptError:
            return 0
        return int.from_bytes(header[8:16], "little") if len(header) == 16 and header[:4] == b"ckpt" else 0

    with ThreadPoolExecutor(settings.threads(), thread_name_prefix="ckpt-stats") as pool:
        counts["chunk_raw_bytes"] = sum(pool.map(raw_length, chunk_paths))
    return StoreStats(**counts)


class Footprint(BaseModel):
    """What one snapshot's chunks take in the store (``Store.footprint``).

    Attributes:
        chunks: its distinct chunks (tensors and attached files).
        raw_bytes: the raw bytes they hold.
        stored_bytes: the bytes their objects take, headers included (compressed chunks at their compressed
            size); shared with every other snapshot that holds the same chunks.
        missing: chunks not in the store (``verify`` says more).
    """

    model_config = ConfigDict(frozen=True)

    chunks: int = 0
    raw_bytes: int = 0
    stored_bytes: int = 0
    missing: int = 0


def footprint(backend: Backend, table: TensorTable, exclude: Collection[str] = ()) -> Footprint:
    """The footprint of a table's chunks, less those in ``exclude``: one listing of each ``chunks/xx/`` folder
    they fall in."""
    raw: dict[str, int] = {}
    for t in table.tensors.values():
        raw.update(t.pieces(table.chunk_size))
    for f in table.files.values():
        raw.update((d, min(table.chunk_size, f.size - i * table.chunk_size)) for i, d in enumerate(f.chunks))
    for d in exclude:
        raw.pop(d, None)
    folders = sorted({layout.chunk_path(d).rsplit("/", 1)[0] + "/" for d in raw})

    def sizes(folder: str) -> dict[str, int]:
        return {layout.digest_from_path(e.path): e.size for e in backend.list(folder)}

    stored: dict[str, int] = {}
    with ThreadPoolExecutor(settings.threads(), thread_name_prefix="ckpt-stats") as pool:
        for part in pool.map(sizes, folders):
            stored.update(part)
    have = [d for d in raw if d in stored]
    return Footprint(
        chunks=len(raw),
        raw_bytes=sum(raw.values()),
        stored_bytes=sum(stored[d] for d in have),
        missing=len(raw) - len(have),
    )
