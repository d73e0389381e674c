"""Stored chunk objects read whole or checked without reading them: whether a chunk (and its delta chain) is
stored whole, a chunk object read whole and decoded, one link of a chain read and hashed for the reference
cache's proof. ``Objects`` (``_objects``) builds its writes on these.
"""

from __future__ import annotations

import os
import stat

from ckpt.errors import CkptError, FormatVersionError, IntegrityError, MissingObjectError
from ckpt.store import _layout as layout
from ckpt.store._chunk_format import check_stored, encoded_length, encoded_prefix
from ckpt.store._chunk_reads import CHUNK_HEADER_SIZE, CODEC_RAW, ChunkReads
from ckpt.store._codecs._framing import CODEC_DELTA
from ckpt.store._encoded import DEFAULT_MAX_DEPTH_READ, delta_depth, max_payload
from ckpt.store._local_reads import map_stored
from ckpt.store._reference_cache import hash_link

__all__ = ["StoredChunks"]


class StoredChunks(ChunkReads):
    """``ChunkReads`` plus the checks and whole-object reads that saves, syncs and repairs make of stored
    chunks."""

    def chunk_whole(self, digest: str, length: int) -> bool:
        """Whether the chunk is stored whole: a regular object whose header is valid and says ``length``, holding
        exactly ``16 + length`` bytes when raw, or exactly the length its plane table adds up to when encoded
        (cheap: no plane is read or decoded; ``verify`` does that). A delta is whole only when its whole chain
        is (each reference whole, of the same length, depths falling): a delta whose reference is gone or
        damaged cannot be decoded, so a save or a sync must write it again rather than count on it. A chunk in
        a chunk format this ckpt does not know counts as whole (a newer ckpt wrote it)."""
        return self._whole_depth(digest, length) is not None

    def _whole_depth(self, digest: str, length: int) -> int | None:
        """``chunk_whole`` that says more: ``None`` when the chunk is not whole, else its chain depth (0: not a
        delta; -1: a chunk format this ckpt does not know). Reads each link's header only, decodes nothing."""
        depth: int | None = None  # the deepest the next link may be
        top: int | None = None
        for _ in range(DEFAULT_MAX_DEPTH_READ + 1):
            link = self._link_whole(digest, length)
            if link is None:
                return None
            ref, link_depth = link
            top = link_depth if top is None else top
            if ref is None:
                return top
            if depth is not None and link_depth > depth:
                return None
            depth, digest = link_depth - 1, ref
        return None

    def _link_whole(self, digest: str, length: int) -> tuple[str | None, int] | None:
        """One link of ``chunk_whole``: ``None`` when the object is not whole, else its delta reference and
        depth (``(None, 0)``: not a delta; ``(None, -1)``: a chunk format this ckpt does not know)."""
        path = layout.chunk_path(digest)
        try:
            local = self.backend.local_path(path)
            head = self.backend.read(path, 0, CHUNK_HEADER_SIZE + encoded_prefix(length))
            header = head[:CHUNK_HEADER_SIZE]
            codec = header[5] if len(header) > 5 else CODEC_RAW
            end = CHUNK_HEADER_SIZE + length
            if codec != CODEC_RAW and len(header) == CHUNK_HEADER_SIZE and header[:4] == b"ckpt":
                size = encoded_length(codec, head[CHUNK_HEADER_SIZE:], length)
                if size is None:
                    return None  # not a valid body start: damaged (a newer transform reads as damage here, healed)
                end = CHUNK_HEADER_SIZE + size
            if local is not None:
                st = os.lstat(local)
                if not stat.S_ISREG(st.st_mode):
                    return None
                stored = st.st_size
            else:  # the bytes around where the object must end say whether it ends there (no listing, no HEAD)
                stored = end - 1 + len(self.backend.read(path, end - 1, end + 1))
            if codec != CODEC_RAW and stored != end:
                return None
            check_stored(digest, header, stored, length, None, None)
            return delta_depth(codec, head[CHUNK_HEADER_SIZE:], digest) if codec == CODEC_DELTA else (None, 0)
        except FormatVersionError:
            return None, -1
        except (CkptError, OSError):
            return None

    def _read_link(self, digest: str, n: int) -> tuple[bytes, tuple[str | None, int]] | None:
        """``proven_depth``'s read of one link: the BLAKE3 of the stored object, whole, and its reference and
        depth; ``None`` when it cannot be read. A local object is hashed from a read-only map of its file (its
        header and size checked first): reading a keyframe into fresh memory at every save cost more in page
        faults than the hash."""
        try:
            local = self.backend.local_path(layout.chunk_path(digest))
            if local is None:
                codec, obj = self.read_object(digest, n)
                return hash_link(codec, obj, digest)
            codec, mm = map_stored(local, digest, n, None, None)
            try:
                return hash_link(codec, mm, digest)
            finally:
                mm.close()
        except CkptError:
            return None

    def read_object(
        self, digest: str, length: int, *, tensor: str | None = None, snapshot: str | None = None
    ) -> tuple[int, bytes]:
        """A chunk object's stored bytes, header included, read whole (one request, no copy) and checked as every
        read checks it (header, size, codec; not yet its digest: ``decode_object`` does): ``(codec, object)``.

        Raises:
            CorruptChunkError, MissingObjectError, FormatVersionError: as ``read_chunk``.
        """
        path = layout.chunk_path(digest)
        try:
            data = self.backend.read(path, 0, CHUNK_HEADER_SIZE + max_payload(length) + 1)
        except MissingObjectError as e:
            raise self._missing(digest, tensor, snapshot, e) from e
        except IntegrityError as e:
            raise self._unreadable(digest, tensor, snapshot, e) from e
        codec, _ = self._check_stored(digest, data[:CHUNK_HEADER_SIZE], len(data), length, tensor, snapshot)
        return codec, data

    def decode_object(
        self,
        digest: str,
        codec: int,
        data: bytes,
        length: int,
        *,
        known: tuple[str, bytes | bytearray | memoryview] | None = None,
        tensor: str | None = None,
        snapshot: str | None = None,
    ) -> memoryview:
        """The raw bytes of a chunk object (``read_object``) of ``length`` raw bytes, checked against ``digest``:
        a view of ``data`` itself when it is raw (no copy), else decoded into new memory.

        A delta's chain is read from this store, except a reference in ``known``: ``(its digest, its raw bytes,
        checked already)``, used as they are (a raw link ends the chain), so that a sync decoding a chain from
        its keyframe up decodes each link once.

        Raises:
            CorruptChunkError, MissingObjectError: as ``read_chunk`` (a damaged link is damage of this chunk).
        """
        payload = memoryview(data)[CHUNK_HEADER_SIZE:]
        if codec == CODEC_RAW:
            self._check_digest(payload, digest, tensor, snapshot)
            return payload
        out = memoryview(self._buffer(digest, length, tensor, snapshot))
        self._decode(digest, codec, payload, out, verify=True, tensor=tensor, snapshot=snapshot, known=known)
        return out
