"""Content-addressed objects: chunks (with their 16-byte header), tensor tables and snapshot records.

Reading chunks (the one read rule, decoding) is ``ChunkReads`` (``_chunk_reads``), checking and reading stored
objects whole ``StoredChunks`` (``_stored_chunks``); ``Objects`` adds writing chunks (raw, or encoded when
compression is on) and the records.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Executor
from typing import TYPE_CHECKING

import blake3

from ckpt.errors import (
    BackendError,
    CkptError,
    CorruptChunkError,
)
from ckpt.model import (
    Snapshot,
    TensorTable,
    canonical_json,
    digest_bytes,
    parse_record,
)
from ckpt.storage import Backend, Buffer
from ckpt.store import _layout as layout
from ckpt.store._chunk_reads import (
    CHUNK_HEADER_SIZE,
    CODEC_RAW,
    VERIFY_PIECE,
    chunk_header,
    hash_chunk,
    stored_size,
)
from ckpt.store._codecs._framing import CODEC_DELTA
from ckpt.store._encoded import MIN_ENCODE, Reference, delta_depth, encode
from ckpt.store._io import is_remote
from ckpt.store._records import RecordCache, check_record, read_record
from ckpt.store._reference_cache import REFERENCES, proven_depth, record_written
from ckpt.store._stored_chunks import StoredChunks

if TYPE_CHECKING:
    from ckpt.store._codecs._chunk import Encoded

__all__ = [
    "CHUNK_HEADER_SIZE",
    "CODEC_RAW",
    "VERIFY_PIECE",
    "Objects",
    "chunk_header",
    "hash_chunk",
    "stored_size",
]


class Objects(StoredChunks):
    """Read and write the immutable objects of one store.

    Args:
        backend: where the bytes live.
        minor_newer: the store was written by a newer minor format: unknown record fields are ignored.
        cache: the local record cache (``_records``) that snapshot records and tensor tables are read through,
            or ``None``. Readers that must see the store itself (``verify``, ``repair``) pass ``fresh=True``.
    """

    def __init__(self, backend: Backend, *, minor_newer: bool = False, cache: RecordCache | None = None) -> None:
        super().__init__(backend, minor_newer=minor_newer)
        self.cache = cache

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
        executor: Executor | None = None,
    ) -> tuple[str, int]:
        """Store one chunk unless it exists. Returns ``(digest, bytes written)`` (0 when deduplicated).

        No existence check (``HEAD``) comes before a write: the conditional write answers it. A chunk that is
        likely stored already (the caller knows its digest, or it is the parent's chunk at the same place,
        ``reference``) is checked first the way that costs no upload: on an object store, the reads of
        ``chunk_whole`` (a missing object is their ``NoSuchKey``); locally, a stat and the refresh of its
        modification time for gc (``put_if_absent``). Only a chunk found missing or damaged is encoded and
        written, so an unchanged chunk is never encoded nor uploaded. Any other chunk is hashed, encoded
        (with ``compress``; locally only when a stat does not find it) and written with one conditional write;
        when that finds it stored already, it is checked whole (and healed if damaged).

        A ``digest`` the caller already knows skips hashing when that chunk exists; when it does not, the
        bytes are hashed anyway, so that nothing is ever written under an address that is not its digest.

        Args:
            data: the chunk's raw bytes.
            digest: their BLAKE3 digest, when the caller knows it.
            dtype: the safetensors dtype of the tensor it belongs to (``None``: a file), which decides how
                byte-grouped compression cuts it into planes.
            compress: store it byte-grouped and zstd-coded (codec 1) when that saves at least 3% of its
                bytes, else raw. The address is the digest of the raw bytes either way.
            reference: the chunk at the same byte range of the same tensor in the parent snapshot. When it is
                this chunk's digest, the chunk is taken as likely stored (above). Else, with ``compress``, the
                chunk is stored as a delta against it (codec 2) when that is smallest and the chain stays within
                ``max_depth`` (0: no deltas). A reference that cannot be read is ignored.
            max_depth: the store's chain limit.
            executor: codes the chunk's blocks (and decodes its reference's) in parallel; the caller must not be
                one of its threads.
        """
        n = data.nbytes
        known = digest
        if digest is not None:  # known: stored before by this caller, most likely still there
            found = self._reuse(digest, data, proven=False)
            if found is not None:
                REFERENCES.touch(digest)  # still the latest chunk at its place: its kept bytes stay the freshest
                return found
        # kept only where this save has a reference: the state then changes save after save (a training loop),
        # and the next save will delta against it; a first save (no parent) copies nothing, and a later save
        # decodes its keyframes from the store once (a copy of every chunk cost a one-off save 40% of its time)
        keep = compress and max_depth > 0 and REFERENCES.admits(n) and reference is not None
        if compress and reference is None and n >= MIN_ENCODE:
            return self._put_keyframe(data, known, dtype, executor)
        if compress and reference is not None and not (keep and REFERENCES.differs(reference, data)):
            # maybe unchanged since the parent (a frozen weight): hashed first, then no copy at all
            digest = hash_chunk(data)
            if digest == reference and digest != known:
                # stored whole: reused; missing or damaged: written below from a private copy hashed again,
                # never from the caller's buffer after its hash (it may have changed since)
                found = self._reuse(digest, data, proven=False)
                if found is not None:
                    return found
        return self._put_copy(data, known, dtype, compress, reference, max_depth, executor, keep=keep)

    def _put_copy(
        self, data: memoryview, known: str | None, dtype: str | None, compress: bool, reference: str | None,
        max_depth: int, executor: Executor | None, *, keep: bool,
    ) -> tuple[str, int]:  # fmt: skip
        """``_put_new`` of a private copy of ``data``, hashed: never the caller's buffer, which a thread may change
        meanwhile (bytes under the digest of other bytes). The copy lands in the memory of a buffer the cache let
        go where there is one (fresh memory costs its page faults); with ``keep`` it is then kept as the next
        save's reference, else given back."""
        kept = REFERENCES.take(data.nbytes)
        memoryview(kept)[:] = data
        copy = memoryview(kept)
        digest = hash_chunk(copy)
        try:
            found = self._put_new(copy, digest, known, dtype, compress, reference, max_depth, executor, keep)
        except BaseException:
            REFERENCES.give_back(kept)
            raise
        if not (keep and REFERENCES.put(digest, kept)):
            REFERENCES.give_back(kept)
        return found

    def _put_keyframe(
        self, data: memoryview, known: str | None, dtype: str | None, executor: Executor | None
    ) -> tuple[str, int]:
        """``put_chunk`` of a chunk with no reference, compression on: hashed as it is encoded, each block from
        a private copy, so that the source is read once and the digest is of exactly the bytes encoded (a
        caller's buffer changing meanwhile cannot put bytes under another address). A chunk that does not
        encode is stored raw from a private copy hashed again (``_put_copy``). One stored already is found when
        its write finds it (the price of hashing while encoding; a first save's chunks are new)."""
        h = blake3.blake3()  # one thread: it hashes each block's copy while it is in cache
        enc = encode(data, dtype, executor=executor, hasher=h)
        if enc is None:  # stored raw: never from the caller's buffer after its hash
            return self._put_copy(data, known, dtype, False, None, 0, executor, keep=False)
        return self._put_new(data, h.hexdigest(), known, dtype, True, None, 0, executor, encoded=enc)

    def _put_new(
        self, data: memoryview, digest: str, known: str | None, dtype: str | None, compress: bool,
        reference: str | None, max_depth: int, executor: Executor | None, record: bool = False,
        encoded: Encoded | None = None,
    ) -> tuple[str, int]:  # fmt: skip
        """``put_chunk`` of a chunk whose bytes hash to ``digest``; ``record``: remember the digest of the object
        written (``_wrote``), so that a later save can prove the chain it heads (``_proven_depth``); ``encoded``:
        its encoding, made already from bytes that hash to ``digest`` (``_put_keyframe``)."""
        n = data.nbytes
        if digest == reference and digest != known:  # the parent's chunk at the same place: most likely stored
            found = self._reuse(digest, data, proven=True)
            if found is not None:
                return found
        path = layout.chunk_path(digest)
        enc = encoded
        # on an object store no existence check first (a HEAD per chunk): a chunk that is not the parent's is most
        # likely new; locally an lstat costs nothing beside encoding, and spares encoding a chunk stored already
        if enc is None and compress and (is_remote(self.backend) or not self.backend.exists(path)):
            ref = self._reference(reference, n, max_depth, executor) if reference not in (None, digest) else None
            try:
                enc = encode(data, dtype, ref, max_depth, executor)
                if enc is not None and ref is not None and enc.codec == CODEC_DELTA and not self._hold(ref):
                    enc = encode(data, dtype, executor=executor)  # the reference was collected meanwhile: a keyframe
            finally:
                if ref is not None:
                    REFERENCES.release(ref.raw)  # a kept one (``_reference``) may serve a later copy from now on
        if enc is not None:
            parts: list[bytes | bytearray | memoryview] = [chunk_header(n, enc.codec), *enc.parts]
            if self.backend.put_if_absent(path, parts):
                self._wrote(digest, parts, record)
                return digest, CHUNK_HEADER_SIZE + enc.stored_length
        else:
            parts = [chunk_header(n), data]
            if self.backend.put_if_absent(path, parts):  # refreshes a stored one for gc
                self._wrote(digest, parts, record)
                return digest, stored_size(n)
        if self.chunk_whole(digest, n):
            return digest, 0
        # found at its address but damaged: replaced by these bytes, which hash to it (self-healing), stored
        # whole (never a delta: its reference is not checked here), encoded when compression is on and it pays
        if encoded is None:
            enc = encode(data, dtype) if compress else None
        parts = [chunk_header(n, enc.codec), *enc.parts] if enc is not None else [chunk_header(n), data]
        self._heal(path, digest, parts)
        self._wrote(digest, parts, record)
        return digest, (CHUNK_HEADER_SIZE + enc.stored_length) if enc is not None else stored_size(n)

    def _wrote(self, digest: str, parts: list[bytes | bytearray | memoryview], record: bool) -> None:
        """Remember the BLAKE3 of the object just written under ``digest`` (``_reference_cache.record_written``)."""
        if record:
            record_written(self.backend.url, digest, parts)

    def _proven_depth(self, digest: str, n: int) -> int | None:
        """``_reference_cache.proven_depth`` in this store: the chain depth when every link is, byte for byte,
        the object this process wrote here; else ``None`` (the caller decodes the chain)."""
        return proven_depth(self._read_link, self.backend.url, digest, n)

    def _reuse(self, digest: str, data: memoryview, *, proven: bool) -> tuple[str, int] | None:
        """Reuse a chunk that is likely stored already: ``(digest, 0)`` when it is stored whole, ``None`` when it
        must be written (missing or damaged). Never uploads ``data`` to an object store to find out.

        On an object store, ``chunk_whole``'s ranged reads answer it (a missing object is their ``NoSuchKey``);
        nothing there can refresh an object's modification time for gc (see docs/guides/retention-and-gc.md).
        Locally (a folder, memory), an ``lstat`` then ``put_if_absent``, which refreshes the object's time so
        that a gc planned before keeps it; when gc deleted it between the two calls, ``put_if_absent`` has just
        written ``data``: kept if they are ``proven`` or hash to ``digest``, else deleted at once.
        """
        n = data.nbytes
        path = layout.chunk_path(digest)
        if is_remote(self.backend):
            return (digest, 0) if self.chunk_whole(digest, n) else None
        if not self.backend.exists(path):
            return None
        if not self.backend.put_if_absent(path, [chunk_header(n), data]):  # refreshes it for gc
            return (digest, 0) if self.chunk_whole(digest, n) else None  # damaged: healed by the caller
        if proven or hash_chunk(data) == digest:
            return digest, stored_size(n)
        self.backend.delete([path])  # never leave bytes under an address that is not their digest
        return None

    def _heal(self, path: str, digest: str, data: Buffer) -> None:
        """Replace a damaged object by its proven bytes (atomic), or refuse when something else sits there."""
        try:
            self.backend.replace(path, data)
        except BackendError as e:
            raise CorruptChunkError(
                f"object {digest[:12]} ({path}) is damaged and cannot be replaced: {e}",
                digest=digest,
                hint=f"remove {path} from the store by hand, then save again or run `repair`",
            ) from e

    def _reference(
        self, digest: str | None, n: int, max_depth: int, executor: Executor | None = None
    ) -> Reference | None:
        """The reference a delta of ``n`` bytes may use, decoded and checked, or ``None``: no reference, its
        chain is at the limit already (the new chunk is a keyframe), or it cannot be read (``verify`` says). Bytes
        this process stored lately (``_reference_cache``) are used as they are when every link of the chain is,
        byte for byte, the object this process wrote there (``_proven_depth``); else the chain is decoded."""
        if digest is None or max_depth < 1:
            return None
        kept = REFERENCES.get(digest, n)  # pinned until released (``_put_new``), here when it is not used
        if kept is not None:
            depth = self._proven_depth(digest, n)  # every link as this process wrote it: decodes to ``kept``
            if depth is not None and 0 <= depth < max_depth:
                return Reference(digest, kept, depth)
            REFERENCES.release(kept)
            if depth is not None and depth >= 0:
                return None
        try:
            codec, obj = self.read_object(digest, n)
            payload = memoryview(obj)[CHUNK_HEADER_SIZE:]
            _, depth = delta_depth(codec, payload, digest)
            if depth >= max_depth:
                return None
            if codec == CODEC_RAW:
                self._check_digest(payload, digest, None, None)
                ref = Reference(digest, payload, depth)
            else:
                out = bytearray(n)
                self._decode(
                    digest, codec, payload, memoryview(out), verify=True, tensor=None, snapshot=None, executor=executor
                )
                ref = Reference(digest, out, depth)  # the decoded buffer itself, not a copy of it
        except CkptError:
            return None
        if depth == 0 and REFERENCES.budget() > 0:
            # a keyframe that decodes to its digest: the base of the chain this save starts, proven by its stored
            # bytes from now on like an object this process wrote (a first save keeps no copies: put_chunk)
            record_written(self.backend.url, digest, [obj])
        return ref

    def _hold(self, ref: Reference) -> bool:
        """Keep a delta's reference from a gc running meanwhile: refresh it as a save refreshes a chunk it
        reuses. Returns ``False`` when it was gone and its raw bytes had to be written back with another chain
        depth than the delta would claim (then the new chunk must not be a delta against it)."""
        if is_remote(self.backend):
            # ``_reference`` has just read it, or checked its chain whole: on an object store a conditional PUT of
            # its raw bytes would upload them only to learn the same (it refreshes nothing there)
            return True
        path = layout.chunk_path(ref.digest)
        return not self.backend.put_if_absent(path, [chunk_header(len(ref.raw)), ref.raw]) or ref.depth == 0

    def put_stored(self, digest: str, data: Buffer, raw_length: int | None = None) -> int:
        """Store a chunk object as ``read_stored`` gave it (checked there), or as pieces written one after the
        other (header first; ``raw_length``: the length its header says), unless it is stored whole already; a
        damaged copy at the address is replaced (self-healing, as ``put_chunk``). Returns the bytes written."""
        path = layout.chunk_path(digest)
        if raw_length is None:
            raw_length = int.from_bytes(bytes(memoryview(data)[8:CHUNK_HEADER_SIZE]), "little")  # type: ignore[arg-type]
        size = sum(memoryview(p).nbytes for p in ([data] if isinstance(data, (bytes, bytearray, memoryview)) else data))
        if self.backend.put_if_absent(path, data):
            return size
        if self.chunk_whole(digest, raw_length):
            return 0
        self._heal(path, digest, data)
        return size

    def replace_stored(self, digest: str, data: bytes) -> int:
        """Write a chunk object as ``read_stored`` of a good copy gave it over a damaged or missing one (repair);
        returns the bytes written."""
        self.backend.replace(layout.chunk_path(digest), data)
        return len(data)

    def has_chunk(self, digest: str) -> bool:
        """Whether the chunk exists."""
        return self.backend.exists(layout.chunk_path(digest))

    def has_chunks(self, digests: list[str]) -> list[bool]:
        """Whether each chunk exists, all checked at once (``exists_many``: concurrent requests)."""
        return self.backend.exists_many([layout.chunk_path(d) for d in digests])

    # -- records ---------------------------------------------------------------------------------------

    def put_table(self, table: TensorTable) -> str:
        """Store a tensor table; returns its digest."""
        data = canonical_json(table.json_value())  # = model_dump(mode="json"), faster for many tensors
        digest = digest_bytes(data)
        self._put_record(layout.table_path(digest), digest, data)
        if self.cache is not None:
            self.cache.put("tables", digest, data)
        return digest

    def _put_record(self, path: str, digest: str, data: bytes) -> None:
        """Store a content-addressed record unless it is stored intact; a damaged copy is replaced."""
        if self.backend.put_if_absent(path, data):
            return
        try:
            intact = digest_bytes(self.backend.read(path)) == digest
        except (CkptError, OSError):
            intact = False
        if not intact:
            self._heal(path, digest, data)

    def _record(self, kind: str, digest: str, *, fresh: bool) -> bytes:
        return read_record(self.backend, None if fresh else self.cache, kind, digest)

    check_record = staticmethod(check_record)

    def get_table(self, digest: str, *, fresh: bool = False) -> TensorTable:
        """Read and check a tensor table (``fresh``: from the store itself, never the local record cache)."""
        data = self._record("table", digest, fresh=fresh)
        return parse_record(TensorTable, data, what=f"tensor table {digest[:12]}", minor_newer=self.minor_newer)

    def raw_record(self, kind: str, digest: str, *, fresh: bool = False) -> bytes:
        """The exact stored bytes of a ``table`` or ``snapshot`` record, checked against its digest."""
        return self._record(kind, digest, fresh=fresh)

    def put_raw_record(self, kind: str, digest: str, data: bytes) -> None:
        """Store a record's exact bytes (as copied from another store) under its digest."""
        if digest_bytes(data) != digest:
            raise CorruptChunkError(f"{kind} record {digest[:12]} does not match its digest", digest=digest)
        path = layout.table_path(digest) if kind == "table" else layout.snapshot_path(digest)
        self._put_record(path, digest, data)

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
        self._put_record(layout.snapshot_path(snap.id), snap.id, data)
        if self.cache is not None:
            self.cache.put("snapshots", snap.id, data)
        return snap

    def get_snapshot(self, snapshot_id: str, *, pruned: bool = False, fresh: bool = False) -> Snapshot:
        """Read and check a snapshot record (``fresh``: from the store itself, never the local record cache)."""
        return self.parse_snapshot(snapshot_id, self._record("snapshot", snapshot_id, fresh=fresh), pruned)

    def cached_snapshot(self, snapshot_id: str, pruned: bool = False) -> Snapshot | None:
        """A snapshot record from the local record cache only (``None`` if not kept there); reads no store."""
        kept = self.cache.get("snapshots", snapshot_id) if self.cache is not None else None
        if kept is None:
            return None
        try:
            return self.parse_snapshot(snapshot_id, kept, pruned)
        except CkptError:
            return None  # the store's copy is the same bytes: reading it raises the same error, worded there

    def parse_snapshot(self, snapshot_id: str, data: bytes, pruned: bool) -> Snapshot:
        """A snapshot record from bytes already checked against ``snapshot_id`` (``check_record``)."""
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
