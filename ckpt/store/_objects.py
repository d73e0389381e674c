"""Content-addressed objects: chunks (with their 16-byte header), tensor tables and snapshot records.

Reading chunks (the one read rule, decoding) is ``ChunkReads`` (``_chunk_reads``); ``Objects`` adds writing
chunks (raw, or encoded when compression is on) and the records.
"""

from __future__ import annotations

from collections.abc import Iterator

from ckpt.errors import CkptError, CorruptChunkError, MissingObjectError
from ckpt.model import (
    Snapshot,
    TensorTable,
    canonical_json,
    digest_bytes,
    parse_record,
)
from ckpt.store import _layout as layout
from ckpt.store._chunk_reads import (
    CHUNK_HEADER_SIZE,
    CODEC_RAW,
    VERIFY_PIECE,
    ChunkReads,
    chunk_header,
    hash_chunk,
    stored_size,
)
from ckpt.store._codecs._framing import CODEC_DELTA
from ckpt.store._encoded import Reference, delta_depth, encode

__all__ = [
    "CHUNK_HEADER_SIZE",
    "CODEC_RAW",
    "VERIFY_PIECE",
    "Objects",
    "chunk_header",
    "hash_chunk",
    "stored_size",
]


class Objects(ChunkReads):
    """Read and write the immutable objects of one store.

    Args:
        backend: where the bytes live.
        minor_newer: the store was written by a newer minor format: unknown record fields are ignored.
    """

    # -- chunks ----------------------------------------------------------------------------------------

    def put_chunk(
        self,
        data: memoryview,
        digest: str | None = None,
        *,
        dtype: str | None = None,
        compress: bool = False,
        reference: str | None = None,
        max_depth: int = 0,
    ) -> tuple[str, int]:
        """Store one chunk unless it exists. Returns ``(digest, bytes written)`` (0 when deduplicated).

        A ``digest`` the caller already knows skips hashing when that chunk exists; when it does not, the
        bytes are hashed anyway, so that nothing is ever written under an address that is not its digest.

        Args:
            data: the chunk's raw bytes.
            digest: their BLAKE3 digest, when the caller knows it.
            dtype: the safetensors dtype of the tensor it belongs to (``None``: a file), which decides how
                byte-grouped compression cuts it into planes.
            compress: store it byte-grouped and zstd-coded (codec 1) when that saves at least 3% of its
                bytes, else raw. The address is the digest of the raw bytes either way.
            reference: with ``compress``, the chunk at the same byte range of the same tensor in the parent
                snapshot: the chunk is stored as a delta against it (codec 2) when that is smallest and the
                chain stays within ``max_depth`` (0: no deltas). A reference that cannot be read is ignored.
            max_depth: the store's chain limit.
        """
        if digest is not None:
            known = layout.chunk_path(digest)
            if self.backend.exists(known):
                if not self.backend.put_if_absent(known, [chunk_header(data.nbytes), data]):  # refreshes it for gc
                    return digest, 0
                # gc deleted it between the two calls, so these unhashed bytes were just written: check them
                if hash_chunk(data) == digest:
                    return digest, stored_size(data.nbytes)
                self.backend.delete([known])  # never leave bytes under an address that is not their digest
        digest = hash_chunk(data)
        path = layout.chunk_path(digest)
        if compress and not self.backend.exists(path):  # encode only what is new to the store
            ref = self._reference(reference, data.nbytes, max_depth) if reference not in (None, digest) else None
            enc = encode(data, dtype, ref, max_depth)
            if enc is not None and ref is not None and enc.codec == CODEC_DELTA and not self._hold(ref):
                enc = encode(data, dtype)  # the reference was collected meanwhile: a keyframe
            if enc is not None:
                if self.backend.put_if_absent(path, [chunk_header(data.nbytes, enc.codec), *enc.parts]):
                    return digest, CHUNK_HEADER_SIZE + enc.stored_length
                return digest, 0
        if self.backend.put_if_absent(path, [chunk_header(data.nbytes), data]):
            return digest, stored_size(data.nbytes)
        return digest, 0

    def _reference(self, digest: str | None, n: int, max_depth: int) -> Reference | None:
        """The reference a delta of ``n`` bytes may use, decoded and checked, or ``None``: no reference, its
        chain is at the limit already (the new chunk is a keyframe), or it cannot be read (``verify`` says)."""
        if digest is None or max_depth < 1:
            return None
        try:
            codec, _, payload = self._stored(digest, n, None, None)
            _, depth = delta_depth(codec, payload, digest)
            if depth >= max_depth:
                return None
            if codec == CODEC_RAW:
                self._check_digest(payload, digest, None, None)
                return Reference(digest, payload, depth)
            out = bytearray(n)
            self._decode(digest, codec, payload, memoryview(out), verify=True, tensor=None, snapshot=None)
            return Reference(digest, bytes(out), depth)
        except CkptError:
            return None

    def _hold(self, ref: Reference) -> bool:
        """Keep a delta's reference from a gc running meanwhile: refresh it as a save refreshes a chunk it
        reuses. Returns ``False`` when it was gone and its raw bytes had to be written back with another chain
        depth than the delta would claim (then the new chunk must not be a delta against it)."""
        path = layout.chunk_path(ref.digest)
        return not self.backend.put_if_absent(path, [chunk_header(len(ref.raw)), ref.raw]) or ref.depth == 0

    def put_stored(self, digest: str, data: bytes) -> int:
        """Store a chunk object as ``read_stored`` gave it, unless the chunk exists; returns the bytes written."""
        return len(data) if self.backend.put_if_absent(layout.chunk_path(digest), data) else 0

    def replace_stored(self, digest: str, data: bytes) -> int:
        """Write a chunk object as ``read_stored`` of a good copy gave it over a damaged or missing one (repair);
        returns the bytes written."""
        self.backend.replace(layout.chunk_path(digest), data)
        return len(data)

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
