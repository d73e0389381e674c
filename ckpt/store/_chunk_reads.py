"""Reading chunk objects: the one rule every read path applies (load, lazy reads, files, export, verify,
repair, sync), and the chunk header every object starts with.

``ChunkReads`` is the reading half of ``Objects`` (``_objects``): a stored chunk is checked (header, size,
codec) and decoded here, raw or encoded (``_encoded``), whichever path reads it.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
from collections.abc import Callable
from concurrent.futures import Executor

from ckpt.errors import CorruptChunkError, IntegrityError, MissingObjectError
from ckpt.storage import Backend
from ckpt.store import _layout as layout
from ckpt.store._chunk_format import (
    CHUNK_HEADER_SIZE,
    CODEC_RAW,
    VERIFY_PIECE,
    check_stored_codec,
    chunk_header,
    hash_chunk,
    hasher,
    stored_size,
)
from ckpt.store._chunk_format import describe as where_of
from ckpt.store._codecs._framing import CODEC_DELTA
from ckpt.store._encoded import ENCODED, decode_payload, max_payload
from ckpt.store._local_reads import map_stored, open_chunk, read_raw_into
from ckpt.store._types import Progress

__all__ = [
    "CHUNK_HEADER_SIZE",
    "CODEC_RAW",
    "VERIFY_PIECE",
    "ChunkReads",
    "chunk_header",
    "hash_chunk",
    "stored_size",
    "where_of",
]


class ChunkReads:
    """Read, check and decode the chunk objects of one store (the reading half of ``Objects``).

    Args:
        backend: where the bytes live.
        minor_newer: the store was written by a newer minor format: a variant unknown inside a chunk's payload
            is a newer writer's (``FormatVersionError``), not damage.
    """

    def __init__(self, backend: Backend, *, minor_newer: bool = False) -> None:
        self.backend = backend
        self.minor_newer = minor_newer

    # -- reading chunks: one rule for every path ------------------------------------------------------------
    #
    # A stored chunk is valid when it is a regular file (on a local store), its header has the magic, a known
    # format and codec and says n, n is the length the table implies for that piece, its payload is exactly n
    # bytes (raw) or at most ``max_payload(n)`` bytes that decode to n bytes (grouped, delta), and (when
    # verifying) its n raw bytes hash to its address. ``check_stored_codec`` is that rule; load, lazy
    # reads, files, export, verify, repair and sync all reach it through the readers below, so a chunk one of
    # them accepts, every one of them accepts.

    _check_stored = staticmethod(check_stored_codec)  # the one rule (``_chunk_format``)

    def _check_digest(self, payload: memoryview | bytes, digest: str, tensor: str | None, snapshot: str | None) -> None:
        if hash_chunk(payload) != digest:
            raise CorruptChunkError(
                f"chunk {digest[:12]} of {where_of(tensor, snapshot)} is corrupt: its bytes do not match its digest",
                digest=digest,
                tensor=tensor,
                snapshot=snapshot,
            )

    def _missing(self, digest: str, tensor: str | None, snapshot: str | None, e: Exception) -> MissingObjectError:
        err = MissingObjectError(
            f"chunk {digest[:12]} of {where_of(tensor, snapshot)} is missing from the store",
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
            f"chunk {digest[:12]} of {where_of(tensor, snapshot)} is corrupt: {e.message}",
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
        executor: Executor | None = None,
    ) -> None:
        """Read a chunk's raw bytes into ``out`` (exactly its length) and check them against ``digest``.

        Never writes more than ``out`` holds, and never allocates: memory is the caller's buffer (an encoded
        chunk: plus its stored payload, and one block's planes per decoding task). ``executor`` decodes an
        encoded chunk's blocks in parallel (the caller must not be one of its threads).

        Raises:
            CorruptChunkError: bad header, wrong length (short, or bytes after its end), or the bytes do not
                hash to ``digest``.
            MissingObjectError: the chunk is not in the store.
        """
        local = self.backend.local_path(layout.chunk_path(digest))
        if local is not None:
            if read_raw_into(local, digest, out, verify=verify, tensor=tensor, snapshot=snapshot):
                return  # a raw chunk on this machine: read in pieces, each hashed as it lands (``_local_reads``)
            self._decode_local(local, digest, out, verify=verify, tensor=tensor, snapshot=snapshot, executor=executor)
            return
        header = bytearray(CHUNK_HEADER_SIZE)
        sentinel = bytearray(1)
        try:
            n = self.backend.read_into(layout.chunk_path(digest), [memoryview(header), out, memoryview(sentinel)])
        except MissingObjectError as e:
            raise self._missing(digest, tensor, snapshot, e) from e
        except IntegrityError as e:
            raise self._unreadable(digest, tensor, snapshot, e) from e
        head = bytes(header[: min(n, CHUNK_HEADER_SIZE)])
        codec, _ = self._check_stored(digest, head, n, out.nbytes, tensor, snapshot)
        if codec != CODEC_RAW:  # the payload landed at the start of ``out``: take it out, decode it in place
            if n > CHUNK_HEADER_SIZE + out.nbytes:  # longer than its raw bytes (valid, rare): read it whole
                codec, _, payload = self._stored(digest, out.nbytes, tensor, snapshot)
            else:
                payload = bytes(out[: n - CHUNK_HEADER_SIZE])
            self._decode(
                digest, codec, payload, out, verify=verify, tensor=tensor, snapshot=snapshot, executor=executor
            )
        elif verify:
            self._check_digest(out, digest, tensor, snapshot)

    def _decode_local(
        self,
        path: str,
        digest: str,
        out: memoryview,
        *,
        verify: bool,
        tensor: str | None,
        snapshot: str | None,
        executor: Executor | None = None,
    ) -> int:
        """Decode a local encoded chunk into ``out`` from a read-only map of its file (its payload is never
        copied into fresh memory); returns the bytes the object holds."""
        codec, mm = map_stored(path, digest, out.nbytes, tensor, snapshot)
        payload = memoryview(mm)[CHUNK_HEADER_SIZE:]
        try:
            if codec == CODEC_RAW:  # raw after all (it was replaced meanwhile): its payload is the bytes
                out[:] = payload
                if verify:
                    self._check_digest(out, digest, tensor, snapshot)
            else:
                self._decode(
                    digest, codec, payload, out, verify=verify, tensor=tensor, snapshot=snapshot, executor=executor
                )
            return len(mm)
        finally:
            try:
                payload.release()
                mm.close()
            except BufferError:  # views of it are still held (by an error's traceback): unmapped when they go
                pass

    def _stored(
        self, digest: str, length: int | None, tensor: str | None, snapshot: str | None
    ) -> tuple[int, int, bytes]:
        """Read a stored chunk whole, bounded by what a valid chunk of ``length`` can hold, and check its header
        and size: ``(codec, raw length, payload)``."""
        path = layout.chunk_path(digest)
        try:
            end = None if length is None else CHUNK_HEADER_SIZE + max_payload(length) + 1
            data = self.backend.read(path, 0, end)
        except MissingObjectError as e:
            raise self._missing(digest, tensor, snapshot, e) from e
        except IntegrityError as e:
            raise self._unreadable(digest, tensor, snapshot, e) from e
        codec, raw_length = self._check_stored(digest, data[:CHUNK_HEADER_SIZE], len(data), length, tensor, snapshot)
        return codec, raw_length, data[CHUNK_HEADER_SIZE:]

    def _buffer(self, digest: str, raw_length: int, tensor: str | None, snapshot: str | None) -> bytearray:
        """Memory to decode a chunk whose header claims ``raw_length`` bytes (a read without a table's length)."""
        try:
            return bytearray(raw_length)
        except (MemoryError, OverflowError):
            raise CorruptChunkError(
                f"chunk {digest[:12]} of {where_of(tensor, snapshot)} is corrupt: its header claims {raw_length} bytes",
                digest=digest,
                tensor=tensor,
                snapshot=snapshot,
            ) from None

    def _decode(
        self,
        digest: str,
        codec: int,
        payload: bytes | memoryview,
        out: memoryview,
        *,
        verify: bool,
        tensor: str | None,
        snapshot: str | None,
        executor: Executor | None = None,
        known: tuple[str, bytes | bytearray | memoryview] | None = None,
    ) -> None:
        """Decode an encoded payload into ``out`` through its delta chain (each link read as ``_stored``, except
        a reference in ``known``: ``(its digest, its raw bytes, checked already)``, used as a raw link)."""

        def fetch(ref: str) -> tuple[int, int, bytes | bytearray | memoryview]:
            if known is not None and ref == known[0]:
                return CODEC_RAW, out.nbytes, known[1]
            return self._stored(ref, out.nbytes, tensor, snapshot)

        decode_payload(
            digest,
            codec,
            payload,
            out,
            fetch,
            verify=verify,
            where=where_of(tensor, snapshot),
            tensor=tensor,
            snapshot=snapshot,
            newer=self.minor_newer,
            executor=executor,
        )

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
        codec, raw_length, payload = self._stored(digest, length, tensor, snapshot)
        if codec == CODEC_RAW:
            if verify:
                self._check_digest(payload, digest, tensor, snapshot)
            return payload
        out = self._buffer(digest, raw_length, tensor, snapshot)
        self._decode(digest, codec, payload, memoryview(out), verify=verify, tensor=tensor, snapshot=snapshot)
        return bytes(out)

    def check_chunk(
        self,
        digest: str,
        length: int,
        *,
        tensor: str | None = None,
        snapshot: str | None = None,
        progress: Progress | None = None,
        buffer: Callable[[int], memoryview | None] | None = None,
    ) -> int:
        """Verify a stored chunk without keeping it: a local raw chunk is memory-mapped and hashed where it lies,
        a local encoded one decoded from where it lies into ``buffer(length)`` (memory the caller reuses from
        chunk to chunk, asked for only then, used when it holds ``length`` bytes; else fresh memory); otherwise it
        is read in pieces of at most ``VERIFY_PIECE`` bytes (an encoded one is decoded).

        Memory stays bounded whatever its table claims (a table claiming a 3 GiB chunk over a 16-byte object
        reads 16 bytes). Returns the bytes the object holds (header included).

        Raises:
            CorruptChunkError: as ``read_chunk_into``.
            MissingObjectError: the chunk is not in the store.
        """
        path = layout.chunk_path(digest)
        local = self.backend.local_path(path)
        if local is not None:  # a raw chunk is hashed where it lies: no copy, no new memory
            mm = self.map_chunk(digest, length, verify=True, tensor=tensor, snapshot=snapshot)
            if mm is not None:
                size = len(mm)
                mm.close()
            else:  # encoded: decoded from where it lies into ``buffer`` (reused) or fresh memory
                held = buffer(length) if buffer is not None else None
                out = held[:length] if held is not None and held.nbytes >= length else None
                if out is None:
                    out = memoryview(self._buffer(digest, length, tensor, snapshot))
                size = self._decode_local(local, digest, out, verify=True, tensor=tensor, snapshot=snapshot)
            if progress and length:
                progress(length)
            return size
        end = CHUNK_HEADER_SIZE + length  # where a valid object ends
        limit = end + 1  # one byte more is asked for, to see whether anything follows
        digest_hasher = hasher(length)
        header = b""
        pos = 0
        encoded: tuple[bytes, int] | None = None  # the first piece of an encoded chunk: decoded below
        try:
            while pos < limit:
                want = min(pos + VERIFY_PIECE, limit)
                data = self.backend.read(path, pos, want)
                if pos == 0 and len(data) >= CHUNK_HEADER_SIZE and data[5] in ENCODED:
                    encoded = data, want
                    break
                view = memoryview(data)
                if pos < CHUNK_HEADER_SIZE:
                    header += bytes(view[: CHUNK_HEADER_SIZE - pos])
                first = max(pos, CHUNK_HEADER_SIZE)  # object offset of the first payload byte in this piece
                payload = view[first - pos : max(first - pos, end - pos)]
                digest_hasher.update(payload)
                if progress and payload.nbytes:
                    progress(payload.nbytes)
                pos += len(data)
                if pos < want:
                    break  # the object ended
        except MissingObjectError as e:
            raise self._missing(digest, tensor, snapshot, e) from e
        except IntegrityError as e:
            raise self._unreadable(digest, tensor, snapshot, e) from e
        if encoded is not None:  # outside the ``try``: its errors (a link of its chain) are worded already
            return self._check_encoded(digest, length, *encoded, tensor, snapshot, progress)
        self._check_stored(digest, header, pos, length, tensor, snapshot)
        if digest_hasher.hexdigest() != digest:
            raise CorruptChunkError(
                f"chunk {digest[:12]} of {where_of(tensor, snapshot)} is corrupt: its bytes do not match its digest",
                digest=digest,
                tensor=tensor,
                snapshot=snapshot,
            )
        return pos

    def _check_encoded(
        self,
        digest: str,
        length: int,
        data: bytes,
        asked: int,
        tensor: str | None,
        snapshot: str | None,
        progress: Progress | None,
    ) -> int:
        """``check_chunk`` of an encoded chunk whose first ``asked`` bytes were read into ``data``: decode it
        (through its chain) into a buffer of its raw length and check the digest. Returns the stored bytes."""
        if len(data) < asked:  # that was the whole object
            codec, _ = self._check_stored(digest, data[:CHUNK_HEADER_SIZE], len(data), length, tensor, snapshot)
            payload = data[CHUNK_HEADER_SIZE:]
        else:
            codec, _, payload = self._stored(digest, length, tensor, snapshot)
        self._decode(
            digest, codec, payload, memoryview(bytearray(length)), verify=True, tensor=tensor, snapshot=snapshot
        )
        if progress:
            progress(length)
        return CHUNK_HEADER_SIZE + len(payload)

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

        Returns ``None`` when the backend is not local, the chunk is encoded (compressed or a delta: its
        stored bytes are not the tensor's), or ``mmap`` fails with ``ENOMEM`` (``vm.max_map_count`` reached, or no
        address space left): the caller reads it instead. The payload starts at
        ``CHUNK_HEADER_SIZE``. Writes to the map never reach the file (``ACCESS_COPY``, a private mapping),
        but the file can still reach the map: on Linux a page of a private mapping that was not written to yet
        shows later changes to the file, and reading a page past the end of a file truncated later kills the
        process with ``SIGBUS``. A mapped
        tensor is therefore verified only as it was when mapped; ``Store.load`` copies unless asked to map
        (``mmap=True``).
        """
        path = self.backend.local_path(layout.chunk_path(digest))
        if path is None:
            return None
        fd, size = open_chunk(path, digest, tensor, snapshot)  # a regular file, never through a link
        try:
            if size < CHUNK_HEADER_SIZE:
                self._check_stored(digest, os.pread(fd, CHUNK_HEADER_SIZE, 0), size, length, tensor, snapshot)
            mm = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError) as e:
            if isinstance(e, OSError) and e.errno == errno.ENOMEM:  # out of mappings or address space: read it
                return None
            raise CorruptChunkError(
                f"chunk {digest[:12]} of {where_of(tensor, snapshot)} cannot be mapped",
                digest=digest,
                tensor=tensor,
                snapshot=snapshot,
            ) from e
        finally:
            os.close(fd)
        if len(mm) >= CHUNK_HEADER_SIZE and mm[5] in ENCODED:  # its bytes are not the tensor's: read, not map
            self._check_stored(digest, bytes(mm[:CHUNK_HEADER_SIZE]), len(mm), length, tensor, snapshot)
            mm.close()
            return None
        if hasattr(mmap, "MADV_WILLNEED"):
            with contextlib.suppress(OSError):  # a hint: a kernel that refuses it reads on demand
                mm.madvise(mmap.MADV_WILLNEED)
        self._check_stored(digest, bytes(mm[:CHUNK_HEADER_SIZE]), len(mm), length, tensor, snapshot)
        if verify:
            view = memoryview(mm)[CHUNK_HEADER_SIZE:]
            try:
                self._check_digest(view, digest, tensor, snapshot)
            finally:
                view.release()
        return mm

    def read_stored(
        self, digest: str, length: int | None, *, tensor: str | None = None, snapshot: str | None = None
    ) -> bytes:
        """A chunk object's bytes (header included) to copy to another store (``sync``, ``repair``), after
        decoding and checking them against ``digest``.

        A raw or grouped chunk is given as it is stored, so the copy keeps its encoding; a delta is given as a
        raw object of its decoded bytes, since the other store may lack its references.

        Raises:
            CorruptChunkError, MissingObjectError, FormatVersionError: as ``read_chunk``.
        """
        codec, raw_length, payload = self._stored(digest, length, tensor, snapshot)
        if codec == CODEC_RAW:
            self._check_digest(payload, digest, tensor, snapshot)
            return chunk_header(raw_length) + payload
        out = self._buffer(digest, raw_length, tensor, snapshot)
        self._decode(digest, codec, payload, memoryview(out), verify=True, tensor=tensor, snapshot=snapshot)
        if codec == CODEC_DELTA:  # decoded: the other store may lack its references
            return chunk_header(raw_length) + bytes(out)
        return chunk_header(raw_length, codec) + payload
