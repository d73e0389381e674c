"""Content-addressed objects: chunks (with their 16-byte header), tensor tables and snapshot records."""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator

import blake3

from ckpt.errors import CorruptChunkError, FormatVersionError, MissingObjectError
from ckpt.model import (
    Snapshot,
    TensorTable,
    canonical_json,
    digest_bytes,
    parse_record,
)
from ckpt.storage import Backend
from ckpt.store import layout

__all__ = ["CHUNK_HEADER_SIZE", "CODEC_RAW", "Objects", "chunk_header", "hash_chunk"]

CHUNK_MAGIC = b"ckpt"
CHUNK_FORMAT = 1
CODEC_RAW = 0
CHUNK_HEADER_SIZE = 16
_HEADER = struct.Struct("<4sBBHQ")  # magic, format, codec, reserved, raw length
_BIG = 1 << 20


def chunk_header(raw_length: int, codec: int = CODEC_RAW) -> bytes:
    """The 16-byte header of a stored chunk: ``b"ckpt"``, format 1, codec, 2 reserved bytes, raw length."""
    return _HEADER.pack(CHUNK_MAGIC, CHUNK_FORMAT, codec, 0, raw_length)


def hash_chunk(data: memoryview | bytes) -> str:
    """BLAKE3 of a chunk's raw bytes (multi-threaded above 1 MiB; releases the GIL)."""
    n = data.nbytes if isinstance(data, memoryview) else len(data)
    h = blake3.blake3(max_threads=blake3.blake3.AUTO) if n >= _BIG else blake3.blake3()
    h.update(data)
    return h.hexdigest()


class Objects:
    """Read and write the immutable objects of one store.

    Args:
        backend: where the bytes live.
        minor_newer: the store was written by a newer minor format: unknown record fields are ignored.
    """

    def __init__(self, backend: Backend, *, minor_newer: bool = False) -> None:
        self.backend = backend
        self.minor_newer = minor_newer

    # -- chunks ----------------------------------------------------------------------------------------

    def put_chunk(self, data: memoryview, digest: str | None = None) -> tuple[str, int]:
        """Store one chunk unless it exists. Returns ``(digest, bytes written)`` (0 when deduplicated).

        A ``digest`` the caller already knows skips hashing when that chunk exists; when it does not, the
        bytes are hashed anyway, so that nothing is ever written under an address that is not its digest.
        """
        if digest is not None:
            known = layout.chunk_path(digest)
            if self.backend.exists(known):
                if not self.backend.put_if_absent(known, [chunk_header(data.nbytes), data]):  # refreshes it for gc
                    return digest, 0
                # gc deleted it between the two calls, so these unhashed bytes were just written: check them
                if hash_chunk(data) == digest:
                    return digest, CHUNK_HEADER_SIZE + data.nbytes
                self.backend.delete([known])  # never leave bytes under an address that is not their digest
        digest = hash_chunk(data)
        path = layout.chunk_path(digest)
        if self.backend.put_if_absent(path, [chunk_header(data.nbytes), data]):
            return digest, CHUNK_HEADER_SIZE + data.nbytes
        return digest, 0

    def read_chunk_into(
        self,
        digest: str,
        out: memoryview,
        *,
        verify: bool = True,
        tensor: str | None = None,
        snapshot: str | None = None,
    ) -> None:
        """Read a chunk's raw bytes into ``out`` (exactly its length) and check them against ``digest``.

        Raises:
            CorruptChunkError: bad header, wrong length, or the bytes do not hash to ``digest``.
            MissingObjectError: the chunk is not in the store.
        """
        header = bytearray(CHUNK_HEADER_SIZE)
        where = _where(tensor, snapshot)
        path = layout.chunk_path(digest)
        try:
            self.backend.read_into(path, [memoryview(header), out])
        except MissingObjectError as e:
            if self.backend.exists(path):
                raise CorruptChunkError(
                    f"chunk {digest[:12]} of {where} is corrupt: it is shorter than its {out.nbytes} bytes",
                    digest=digest,
                    tensor=tensor,
                    snapshot=snapshot,
                ) from e
            raise MissingObjectError(
                f"chunk {digest[:12]} of {where} is missing from the store",
                hint="the snapshot may have been pruned and collected; run `ckpt verify`",
            ) from e
        self._check_header(bytes(header), out.nbytes, digest, tensor, snapshot)
        if verify and hash_chunk(out) != digest:
            raise CorruptChunkError(
                f"chunk {digest[:12]} of {where} is corrupt: its bytes do not match its digest",
                digest=digest,
                tensor=tensor,
                snapshot=snapshot,
            )

    def read_chunk(
        self, digest: str, *, verify: bool = True, tensor: str | None = None, snapshot: str | None = None
    ) -> bytes:
        """Read a whole chunk's raw bytes, checked against ``digest``."""
        try:
            data = self.backend.read(layout.chunk_path(digest))
        except MissingObjectError as e:
            raise MissingObjectError(f"chunk {digest[:12]} of {_where(tensor, snapshot)} is missing") from e
        header, payload = data[:CHUNK_HEADER_SIZE], data[CHUNK_HEADER_SIZE:]
        self._check_header(header, len(payload), digest, tensor, snapshot)
        if verify and hash_chunk(payload) != digest:
            raise CorruptChunkError(
                f"chunk {digest[:12]} of {_where(tensor, snapshot)} is corrupt: its bytes do not match its digest",
                digest=digest,
                tensor=tensor,
                snapshot=snapshot,
            )
        return payload

    @staticmethod
    def _check_header(header: bytes, length: int, digest: str, tensor: str | None, snapshot: str | None) -> None:
        try:
            magic, fmt, codec, _reserved, raw_length = _HEADER.unpack(header)
        except struct.error:
            magic, fmt, codec, raw_length = b"", 0, 0, -1
        if magic == CHUNK_MAGIC and (fmt != CHUNK_FORMAT or codec != CODEC_RAW):
            raise FormatVersionError(
                f"chunk {digest[:12]} of {_where(tensor, snapshot)} uses chunk format {fmt}, codec {codec}, "
                f"which this ckpt does not know (it reads format {CHUNK_FORMAT}, codec {CODEC_RAW} = raw)"
            )
        if magic != CHUNK_MAGIC or raw_length != length:
            raise CorruptChunkError(
                f"chunk {digest[:12]} of {_where(tensor, snapshot)} is corrupt: bad header "
                f"(magic={magic!r}, format={fmt}, codec={codec}, length={raw_length}, expected {length})",
                digest=digest,
                tensor=tensor,
                snapshot=snapshot,
            )

    def map_chunk(
        self,
        digest: str,
        length: int,
        *,
        verify: bool = True,
        tensor: str | None = None,
        snapshot: str | None = None,
    ) -> mmap.mmap | None:
        """Memory-map a raw chunk of a local store, copy-on-write, checked against ``digest``.

        Returns ``None`` when the backend is not local. The payload starts at ``CHUNK_HEADER_SIZE``. Writes
        to the map never reach the file (``ACCESS_COPY``), so a tensor built on it is private to its owner.
        """
        path = self.backend.local_path(layout.chunk_path(digest))
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except FileNotFoundError as e:
            raise MissingObjectError(
                f"chunk {digest[:12]} of {_where(tensor, snapshot)} is missing from the store",
                hint="the snapshot may have been pruned and collected; run `ckpt verify`",
            ) from e
        except (OSError, ValueError) as e:  # e.g. an empty (truncated) file cannot be mapped
            raise CorruptChunkError(
                f"chunk {digest[:12]} of {_where(tensor, snapshot)} cannot be read: {e}",
                digest=digest,
                tensor=tensor,
                snapshot=snapshot,
            ) from e
        if hasattr(mmap, "MADV_WILLNEED"):
            mm.madvise(mmap.MADV_WILLNEED)
        self._check_header(bytes(mm[:CHUNK_HEADER_SIZE]), len(mm) - CHUNK_HEADER_SIZE, digest, tensor, snapshot)
        if len(mm) - CHUNK_HEADER_SIZE != length:
            raise CorruptChunkError(
                f"chunk {digest[:12]} of {_where(tensor, snapshot)} is corrupt: {len(mm) - CHUNK_HEADER_SIZE} "
                f"bytes, expected {length}",
                digest=digest,
                tensor=tensor,
                snapshot=snapshot,
            )
        if verify:
            view = memoryview(mm)[CHUNK_HEADER_SIZE:]
            try:
                ok = hash_chunk(view) == digest
            finally:
                view.release()
            if not ok:
                raise CorruptChunkError(
                    f"chunk {digest[:12]} of {_where(tensor, snapshot)} is corrupt: its bytes do not match its digest",
                    digest=digest,
                    tensor=tensor,
                    snapshot=snapshot,
                )
        return mm

    def replace_chunk(self, digest: str, raw: bytes) -> int:
        """Write a chunk's good bytes over a damaged or missing copy (repair); returns the bytes written.

        Raises:
            CorruptChunkError: ``raw`` does not hash to ``digest`` (nothing is written).
        """
        if hash_chunk(raw) != digest:
            raise CorruptChunkError(f"chunk {digest[:12]}: the bytes offered do not match its digest", digest=digest)
        self.backend.replace(layout.chunk_path(digest), [chunk_header(len(raw)), raw])
        return CHUNK_HEADER_SIZE + len(raw)

    def has_chunk(self, digest: str) -> bool:
        """Whether the chunk exists."""
        return self.backend.exists(layout.chunk_path(digest))

    # -- records ---------------------------------------------------------------------------------------

    def put_table(self, table: TensorTable) -> str:
        """Store a tensor table; returns its digest."""
        data = canonical_json(table.model_dump(mode="json"))
        digest = digest_bytes(data)
        self.backend.put_if_absent(layout.table_path(digest), data)
        return digest

    def get_table(self, digest: str) -> TensorTable:
        """Read and check a tensor table."""
        try:
            data = self.backend.read(layout.table_path(digest))
        except MissingObjectError as e:
            raise MissingObjectError(f"tensor table {digest[:12]} is missing from the store") from e
        if digest_bytes(data) != digest:
            raise CorruptChunkError(f"tensor table {digest[:12]} is corrupt", digest=digest)
        return parse_record(TensorTable, data, what=f"tensor table {digest[:12]}", minor_newer=self.minor_newer)

    def raw_record(self, kind: str, digest: str) -> bytes:
        """The exact stored bytes of a ``table`` or ``snapshot`` record, checked against its digest."""
        path = layout.table_path(digest) if kind == "table" else layout.snapshot_path(digest)
        try:
            data = self.backend.read(path)
        except MissingObjectError as e:
            raise MissingObjectError(f"{kind} {digest[:12]} is missing from the store") from e
        if digest_bytes(data) != digest:
            raise CorruptChunkError(f"{kind} record {digest[:12]} is corrupt", digest=digest)
        return data

    def put_raw_record(self, kind: str, digest: str, data: bytes) -> None:
        """Store a record's exact bytes (as copied from another store) under its digest."""
        if digest_bytes(data) != digest:
            raise CorruptChunkError(f"{kind} record {digest[:12]} does not match its digest", digest=digest)
        path = layout.table_path(digest) if kind == "table" else layout.snapshot_path(digest)
        self.backend.put_if_absent(path, data)

    def replace_raw_record(self, kind: str, digest: str, data: bytes) -> None:
        """Write a record's good bytes over a damaged or missing copy (repair).

        Raises:
            CorruptChunkError: ``data`` does not hash to ``digest`` (nothing is written).
        """
        if digest_bytes(data) != digest:
            raise CorruptChunkError(f"{kind} record {digest[:12]} does not match its digest", digest=digest)
        path = layout.table_path(digest) if kind == "table" else layout.snapshot_path(digest)
        self.backend.replace(path, data)

    def put_snapshot(self, snap: Snapshot) -> Snapshot:
        """Store a snapshot record; returns it with its id set."""
        data = snap.record_bytes()
        snap = snap.model_copy(update={"id": digest_bytes(data)})
        self.backend.put_if_absent(layout.snapshot_path(snap.id), data)
        return snap

    def get_snapshot(self, snapshot_id: str, *, pruned: bool = False) -> Snapshot:
        """Read and check a snapshot record."""
        try:
            data = self.backend.read(layout.snapshot_path(snapshot_id))
        except MissingObjectError as e:
            raise MissingObjectError(f"snapshot {snapshot_id[:12]} is missing from the store") from e
        if digest_bytes(data) != snapshot_id:
            raise CorruptChunkError(
                f"snapshot record {snapshot_id[:12]} is corrupt", digest=snapshot_id, snapshot=snapshot_id
            )
        return parse_record(
            Snapshot,
            data,
            what=f"snapshot {snapshot_id[:12]}",
            minor_newer=self.minor_newer,
            extra={"id": snapshot_id, "pruned": pruned},
        )

    def has_snapshot(self, snapshot_id: str) -> bool:
        """Whether the snapshot record exists."""
        return self.backend.exists(layout.snapshot_path(snapshot_id))

    def snapshot_ids(self, prefix: str = "") -> Iterator[str]:
        """Ids of every stored snapshot record (optionally only those starting with ``prefix``)."""
        folder = layout.SNAPSHOTS + (prefix[:2] + "/" if len(prefix) >= 2 else "")
        for entry in self.backend.list(folder):
            sid = layout.digest_from_path(entry.path)
            if sid.startswith(prefix) and entry.path.endswith(".json"):
                yield sid


def _where(tensor: str | None, snapshot: str | None) -> str:
    parts = []
    if tensor:
        parts.append(f"tensor {tensor!r}")
    if snapshot:
        parts.append(f"snapshot {snapshot[:12]}")
    return " in ".join(parts) if parts else "the store"
