"""Content-addressed objects: chunks (with their 16-byte header), tensor tables and snapshot records."""

from __future__ import annotations

import errno
import mmap
import os
import stat
from collections.abc import Iterator

from ckpt.errors import (
    BackendError,
    CkptError,
    CorruptChunkError,
    FormatVersionError,
    IntegrityError,
    MissingObjectError,
)
from ckpt.model import (
    Snapshot,
    TensorTable,
    canonical_json,
    digest_bytes,
    parse_record,
)
from ckpt.storage import Backend
from ckpt.store import _layout as layout
from ckpt.store._chunk_format import (
    CHUNK_HEADER_SIZE,
    CODEC_RAW,
    VERIFY_PIECE,
    check_stored,
    chunk_header,
    describe,
    hash_chunk,
    stored_size,
)
from ckpt.store._chunk_format import hasher as new_hasher
from ckpt.store._records import RecordCache, check_record, read_record
from ckpt.store._types import Progress

__all__ = [
    "CHUNK_HEADER_SIZE",
    "CODEC_RAW",
    "VERIFY_PIECE",
    "Objects",
    "chunk_header",
    "hash_chunk",
    "stored_size",
]


class Objects:
    """Read and write the immutable objects of one store.

    Args:
        backend: where the bytes live.
        minor_newer: the store was written by a newer minor format: unknown record fields are ignored.
        cache: the local record cache (``_records``) that snapshot records and tensor tables are read through,
            or ``None``. Readers that must see the store itself (``verify``, ``repair``) pass ``fresh=True``.
    """

    def __init__(self, backend: Backend, *, minor_newer: bool = False, cache: RecordCache | None = None) -> None:
        self.backend = backend
        self.minor_newer = minor_newer
        self.cache = cache

    # -- chunks ----------------------------------------------------------------------------------------

    def put_chunk(self, data: memoryview, digest: str | None = None) -> tuple[str, int]:
        """Store one chunk unless it is stored whole already. Returns ``(digest, bytes written)`` (0 when
        deduplicated).

        A ``digest`` the caller already knows skips hashing when that chunk is stored whole; otherwise the
        bytes are hashed anyway, so that nothing is ever written under an address that is not its digest. A
        chunk found at the address but damaged (not a regular file, a bad header, the wrong length) is never
        taken as stored: it is replaced by these bytes, which hash to its address (self-healing). A flipped
        byte inside a chunk of the right length is not seen here (that takes a full read): ``verify`` finds it.

        Raises:
            CorruptChunkError: a damaged object at the address cannot be replaced (e.g. a folder sits there).
        """
        n = data.nbytes
        if digest is not None:
            known = layout.chunk_path(digest)
            if self.backend.exists(known):
                if not self.backend.put_if_absent(known, [chunk_header(n), data]):  # refreshes it for gc
                    if self.chunk_whole(digest, n):
                        return digest, 0
                # gc deleted it between the two calls (so these unhashed bytes were just written), or it is
                # damaged: hashed below before anything is (re)written under the address
                elif hash_chunk(data) == digest:
                    return digest, stored_size(n)
                else:
                    self.backend.delete([known])  # never leave bytes under an address that is not their digest
        digest = hash_chunk(data)
        path = layout.chunk_path(digest)
        if self.backend.put_if_absent(path, [chunk_header(n), data]):
            return digest, stored_size(n)
        if self.chunk_whole(digest, n):
            return digest, 0
        self._heal(path, digest, [chunk_header(n), data])
        return digest, stored_size(n)

    def _heal(self, path: str, digest: str, data: list[bytes | memoryview] | bytes) -> None:
        """Replace a damaged object by its proven bytes (atomic), or refuse when something else sits there."""
        try:
            self.backend.replace(path, data)
        except BackendError as e:
            raise CorruptChunkError(
                f"object {digest[:12]} ({path}) is damaged and cannot be replaced: {e}",
                digest=digest,
                hint=f"remove {path} from the store by hand, then save again or run `repair`",
            ) from e

    def chunk_whole(self, digest: str, length: int) -> bool:
        """Whether the chunk is stored whole: a regular object of exactly ``16 + length`` bytes whose header is
        valid and says ``length`` (cheap: its payload is not read, ``verify`` hashes it). A chunk in a chunk
        format this ckpt does not know counts as whole (a newer ckpt wrote it)."""
        path = layout.chunk_path(digest)
        end = CHUNK_HEADER_SIZE + length
        try:
            local = self.backend.local_path(path)
            header = self.backend.read(path, 0, CHUNK_HEADER_SIZE)
            if local is not None:
                st = os.lstat(local)
                if not stat.S_ISREG(st.st_mode):
                    return False
                stored = st.st_size
            else:
                stored = end - 1 + len(self.backend.read(path, end - 1, end + 1))
            check_stored(digest, header, stored, length, None, None)
        except FormatVersionError:
            return True
        except (CkptError, OSError):
            return False
        return True

    # -- reading chunks: one rule for every path ------------------------------------------------------------
    #
    # A stored chunk is valid when it is a regular file (on a local store) of exactly 16 + n bytes, its header
    # has the magic, a known format and codec and says n, n is the length the table implies for that piece, and
    # (when verifying) its n payload bytes hash to its address. ``check_stored`` is that rule; load, lazy
    # reads, files, export, verify, repair and sync all reach it through the readers below, so a chunk one of
    # them accepts, every one of them accepts.

    def _check_digest(self, payload: memoryview | bytes, digest: str, tensor: str | None, snapshot: str | None) -> None:
        if hash_chunk(payload) != digest:
            raise CorruptChunkError(
                f"chunk {digest[:12]} of {describe(tensor, snapshot)} is corrupt: its bytes do not match its digest",
                digest=digest,
                tensor=tensor,
                snapshot=snapshot,
            )

    def _missing(self, digest: str, tensor: str | None, snapshot: str | None, e: Exception) -> MissingObjectError:
        err = MissingObjectError(
            f"chunk {digest[:12]} of {describe(tensor, snapshot)} is missing from the store",
            hint="the snapshot may have been pruned and collected; check the store with `store.verify()`",
            cli_hint="the snapshot may have been pruned and collected; check the store with `ckpt verify`",
        )
        err.__cause__ = e
        return err

    def _unreadable(
        self, digest: str, tensor: str | None, snapshot: str | None, e: IntegrityError
    ) -> CorruptChunkError:
        """A chunk object the backend refuses to read (a link, not a regular file): corrupt, never followed."""
        err = CorruptChunkError(
            f"chunk {digest[:12]} of {describe(tensor, snapshot)} is corrupt: {e.message}",
            digest=digest,
            tensor=tensor,
            snapshot=snapshot,
            hint=e.hint or "",
            cli_hint=e.cli_hint or "",
        )
        err.__cause__ = e
        return err

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

        Never writes more than ``out`` holds, and never allocates: memory is the caller's buffer.

        Raises:
            CorruptChunkError: bad header, wrong length (short, or bytes after its end), or the bytes do not
                hash to ``digest``.
            MissingObjectError: the chunk is not in the store.
        """
        header = bytearray(CHUNK_HEADER_SIZE)
        sentinel = bytearray(1)
        try:
            n = self.backend.read_into(layout.chunk_path(digest), [memoryview(header), out, memoryview(sentinel)])
        except MissingObjectError as e:
            raise self._missing(digest, tensor, snapshot, e) from e
        except IntegrityError as e:
            raise self._unreadable(digest, tensor, snapshot, e) from e
        check_stored(digest, bytes(header[: min(n, CHUNK_HEADER_SIZE)]), n, out.nbytes, tensor, snapshot)
        if verify:
            self._check_digest(out, digest, tensor, snapshot)

    def read_chunk(
        self,
        digest: str,
        length: int | None = None,
        *,
        verify: bool = True,
        tensor: str | None = None,
        snapshot: str | None = None,
    ) -> bytes:
        """Read a whole chunk's raw bytes, checked against ``digest``.

        Args:
            digest: the chunk's address.
            length: the raw length the table implies (checked); ``None``: the header's.
            verify: check the bytes against the digest.
            tensor: the tensor or file it belongs to, for messages.
            snapshot: the snapshot being read, for messages.

        Memory is bounded by what the object really holds, whatever ``length`` or its header claim.
        """
        path = layout.chunk_path(digest)
        try:
            data = (
                self.backend.read(path)
                if length is None
                else self.backend.read(path, 0, CHUNK_HEADER_SIZE + length + 1)
            )
        except MissingObjectError as e:
            raise self._missing(digest, tensor, snapshot, e) from e
        except IntegrityError as e:
            raise self._unreadable(digest, tensor, snapshot, e) from e
        check_stored(digest, data[:CHUNK_HEADER_SIZE], len(data), length, tensor, snapshot)
        payload = data[CHUNK_HEADER_SIZE:]
        if verify:
            self._check_digest(payload, digest, tensor, snapshot)
        return payload

    def check_chunk(
        self,
        digest: str,
        length: int,
        *,
        tensor: str | None = None,
        snapshot: str | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Verify a stored chunk without keeping it.

        On a local store the chunk file is memory-mapped and hashed where it lies (no copy, no fresh memory:
        BLAKE3's speed; ``map_chunk`` checks it); elsewhere it is read in pieces of at most ``VERIFY_PIECE``
        bytes. Memory stays bounded whatever its table claims (a table claiming a 3 GiB chunk over a 16-byte
        object reads 16 bytes). Returns the bytes the object holds (header included).

        Raises:
            CorruptChunkError: as ``read_chunk_into``.
            MissingObjectError: the chunk is not in the store.
        """
        path = layout.chunk_path(digest)
        if self.backend.local_path(path) is not None:  # hashed where it lies: no copy, no fresh memory
            mm = self.map_chunk(digest, length, verify=True, tensor=tensor, snapshot=snapshot)
            if mm is not None:
                size = len(mm)
                mm.close()
                if progress and length:
                    progress(length)
                return size
        end = CHUNK_HEADER_SIZE + length  # where a valid object ends
        limit = end + 1  # one byte more is asked for, to see whether anything follows
        hasher = new_hasher(length)
        header = b""
        pos = 0
        try:
            while pos < limit:
                want = min(pos + VERIFY_PIECE, limit)
                data = self.backend.read(path, pos, want)  # what the object holds, whatever the table claims
                view = memoryview(data)
                got = len(data)
                if pos < CHUNK_HEADER_SIZE:
                    header += bytes(view[: CHUNK_HEADER_SIZE - pos])
                first = max(pos, CHUNK_HEADER_SIZE)  # object offset of the first payload byte in this piece
                payload = view[first - pos : max(first - pos, end - pos)]
                hasher.update(payload)
                if progress and payload.nbytes:
                    progress(payload.nbytes)
                pos += got
                if pos < want:
                    break  # the object ended
        except MissingObjectError as e:
            raise self._missing(digest, tensor, snapshot, e) from e
        except IntegrityError as e:
            raise self._unreadable(digest, tensor, snapshot, e) from e
        check_stored(digest, header, pos, length, tensor, snapshot)
        if hasher.hexdigest() != digest:
            raise CorruptChunkError(
                f"chunk {digest[:12]} of {describe(tensor, snapshot)} is corrupt: its bytes do not match its digest",
                digest=digest,
                tensor=tensor,
                snapshot=snapshot,
            )
        return pos

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

        Returns ``None`` when the backend is not local. The payload starts at ``CHUNK_HEADER_SIZE``. Writes to
        the map never reach the file (``ACCESS_COPY``, a private mapping), but the file can still reach the map:
        on Linux a page of a private mapping that was not written to yet shows later changes to the file, and
        reading a page past the end of a file truncated later kills the process with ``SIGBUS``. A mapped
        tensor is therefore verified only as it was when mapped; ``Store.load`` copies unless asked to map
        (``mmap=True``).
        """
        path = self.backend.local_path(layout.chunk_path(digest))
        if path is None:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError as e:
            raise self._missing(digest, tensor, snapshot, e) from e
        except OSError as e:
            raise CorruptChunkError(
                f"chunk {digest[:12]} of {describe(tensor, snapshot)} cannot be read: "
                + ("it is a symbolic link" if e.errno == errno.ELOOP else os.strerror(e.errno or 0)),
                digest=digest,
                tensor=tensor,
                snapshot=snapshot,
            ) from e
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CorruptChunkError(
                    f"chunk {digest[:12]} of {describe(tensor, snapshot)} is corrupt: it is not a regular file",
                    digest=digest,
                    tensor=tensor,
                    snapshot=snapshot,
                )
            if st.st_size < CHUNK_HEADER_SIZE:
                check_stored(digest, os.pread(fd, CHUNK_HEADER_SIZE, 0), st.st_size, length, tensor, snapshot)
            mm = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError) as e:
            raise CorruptChunkError(
                f"chunk {digest[:12]} of {describe(tensor, snapshot)} cannot be mapped",
                digest=digest,
                tensor=tensor,
                snapshot=snapshot,
            ) from e
        finally:
            os.close(fd)
        if hasattr(mmap, "MADV_WILLNEED"):
            mm.madvise(mmap.MADV_WILLNEED)
        check_stored(digest, bytes(mm[:CHUNK_HEADER_SIZE]), len(mm), length, tensor, snapshot)
        if verify:
            view = memoryview(mm)[CHUNK_HEADER_SIZE:]
            try:
                self._check_digest(view, digest, tensor, snapshot)
            finally:
                view.release()
        return mm

    def replace_chunk(self, digest: str, raw: bytes) -> int:
        """Write a chunk's good bytes over a damaged or missing copy (repair); returns the bytes written.

        Raises:
            CorruptChunkError: ``raw`` does not hash to ``digest`` (nothing is written).
        """
        if hash_chunk(raw) != digest:
            raise CorruptChunkError(f"chunk {digest[:12]}: the bytes offered do not match its digest", digest=digest)
        self.backend.replace(layout.chunk_path(digest), [chunk_header(len(raw)), raw])
        return stored_size(len(raw))

    def has_chunk(self, digest: str) -> bool:
        """Whether the chunk exists."""
        return self.backend.exists(layout.chunk_path(digest))

    # -- records ---------------------------------------------------------------------------------------

    def put_table(self, table: TensorTable) -> str:
        """Store a tensor table; returns its digest."""
        data = canonical_json(table.model_dump(mode="json"))
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
