"""Reading a raw chunk of a local store straight into its destination, hashed as it lands.

A chunk object on a local disk is opened once (never through a link, only a regular file), its header and size
checked against the one rule (``check_stored_codec``: a raw chunk holds exactly ``16 + n`` bytes), and its
payload read with ``preadv`` into the caller's memory in pieces of ``READ_PIECE`` bytes. Each piece is hashed
(BLAKE3, GIL released, one thread per chunk: the caller's workers read several chunks at once) right after it
lands, while it is still in the CPU's cache and while the other chunks' reads are in flight: verification costs
little more than hashing, and the bytes are read and copied once. The kernel is told the file is read
sequentially (``POSIX_FADV_SEQUENTIAL``), so a cold read keeps its readahead deep.

An encoded chunk (compressed, or a delta) is not read here: its stored bytes are not the tensor's.
``map_stored`` maps it read-only instead, so that ``ChunkReads`` decodes its payload where it lies, without
copying it into fresh memory first.

Measured by ``benchmarks/load.py`` (hot and cold loads against BLAKE3 and ``dd`` floors).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import stat

import blake3

from ckpt.errors import CorruptChunkError, MissingObjectError
from ckpt.store._chunk_format import CHUNK_HEADER_SIZE, check_stored_codec
from ckpt.store._chunk_format import describe as where_of
from ckpt.store._encoded import ENCODED

__all__ = ["READ_PIECE", "map_stored", "open_chunk", "read_raw_into"]

#: A local raw chunk is read in pieces of this many bytes, each hashed right after it lands (big enough for
#: BLAKE3's threads to pay, small enough to stay in the CPU's cache): ``benchmarks/load.py``.
READ_PIECE = 4 << 20

_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def _corrupt(digest: str, tensor: str | None, snapshot: str | None, what: str) -> CorruptChunkError:
    return CorruptChunkError(
        f"chunk {digest[:12]} of {where_of(tensor, snapshot)} {what}", digest=digest, tensor=tensor, snapshot=snapshot
    )


def open_chunk(path: str, digest: str, tensor: str | None, snapshot: str | None) -> tuple[int, int]:
    """Open a local chunk object for reading: ``(fd, size in bytes)``. The caller closes the descriptor.

    Raises:
        MissingObjectError: no such file.
        CorruptChunkError: a symbolic link, not a regular file, or unreadable.
    """
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError as e:
        raise MissingObjectError(
            f"chunk {digest[:12]} of {where_of(tensor, snapshot)} is missing from the store",
            hint="the snapshot may have been pruned and collected; check the store with `store.verify()`",
            cli_hint="the snapshot may have been pruned and collected; check the store with `ckpt verify`",
        ) from e
    except OSError as e:
        reason = "it is a symbolic link" if e.errno == errno.ELOOP else os.strerror(e.errno or 0)
        raise _corrupt(digest, tensor, snapshot, f"cannot be read: {reason}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _corrupt(digest, tensor, snapshot, "is corrupt: it is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def _fill(fd: int, views: list[memoryview], offset: int) -> int:
    """Fill ``views`` one after the other from ``offset`` with ``preadv``; returns the bytes read (fewer only
    where the file ends)."""
    views = [v for v in views if v.nbytes]
    total = 0
    while views:
        n = os.preadv(fd, views, offset + total)
        if n == 0:
            break
        total += n
        while views and n >= views[0].nbytes:
            n -= views[0].nbytes
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]
    return total


def read_raw_into(
    path: str,
    digest: str,
    out: memoryview,
    *,
    verify: bool,
    tensor: str | None,
    snapshot: str | None,
) -> bool:
    """Read a local raw chunk's payload into ``out`` (exactly its length), hashing each piece as it lands.

    Returns ``False`` when the chunk is encoded (the caller decodes it; what ``out`` holds then is undefined).

    Raises:
        CorruptChunkError: a bad header, a size other than ``16 + len(out)`` (short, or bytes after its end, also
            when the file changes while it is read), the bytes do not hash to ``digest``, or the file cannot be
            read (the message names ``tensor`` and ``snapshot``).
        MissingObjectError: the chunk is not in the store.
        FormatVersionError: a chunk format or codec this ckpt does not know.
    """
    fd, size = open_chunk(path, digest, tensor, snapshot)
    n = out.nbytes
    # one thread per chunk: the caller reads several chunks at once on its workers, and handing every piece to
    # BLAKE3's own threads wakes them (and lets them spin) once per piece, which costs more than it gains
    h: blake3.blake3 | None = blake3.blake3() if verify else None
    try:
        if n <= READ_PIECE:  # one piece: header, payload and the byte that proves nothing follows, in one call
            header, sentinel = bytearray(CHUNK_HEADER_SIZE), bytearray(1)
            got = _fill(fd, [memoryview(header), out, memoryview(sentinel)], 0)
            head = bytes(header[: min(got, CHUNK_HEADER_SIZE)])
            if len(head) == CHUNK_HEADER_SIZE and head[5] in ENCODED:
                return False
            check_stored_codec(digest, head, got, n, tensor, snapshot)  # raw: exactly 16 + n bytes
            if h is not None:
                h.update(out)
        else:
            head = os.pread(fd, CHUNK_HEADER_SIZE, 0)
            if len(head) == CHUNK_HEADER_SIZE and head[5] in ENCODED:
                return False
            check_stored_codec(digest, head, size, n, tensor, snapshot)  # raw: exactly 16 + n bytes
            if hasattr(os, "posix_fadvise"):
                with contextlib.suppress(OSError):  # a hint, as ``madvise`` below: refused, the read goes on
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # a cold read: deeper readahead
            step = READ_PIECE if verify else n  # nothing to overlap without hashing: one read
            pos = 0
            while pos < n:
                piece = out[pos : pos + step]
                got = _fill(fd, [piece], CHUNK_HEADER_SIZE + pos)
                if got < piece.nbytes:  # the file shrank after it was measured
                    raise _corrupt(digest, tensor, snapshot, f"is corrupt: it holds {pos + got} bytes of its {n}")
                if h is not None:
                    h.update(piece)  # from the cache, while other workers' reads are in flight
                pos += got
            if os.pread(fd, 1, CHUNK_HEADER_SIZE + n):  # the file grew after it was measured
                raise _corrupt(digest, tensor, snapshot, f"is corrupt: bytes follow its {n}-byte payload")
    except OSError as e:
        raise _corrupt(digest, tensor, snapshot, f"cannot be read: {os.strerror(e.errno or 0)}") from e
    finally:
        os.close(fd)
    if h is not None and h.hexdigest() != digest:
        raise _corrupt(digest, tensor, snapshot, "is corrupt: its bytes do not match its digest")
    return True


def map_stored(path: str, digest: str, length: int, tensor: str | None, snapshot: str | None) -> tuple[int, mmap.mmap]:
    """Map a local chunk object read-only, after checking its header and size: ``(codec, map)``; the payload
    starts at ``CHUNK_HEADER_SIZE``. For decoding an encoded chunk where it lies (no copy of its payload into
    fresh memory). The caller closes the map.

    Raises:
        CorruptChunkError, MissingObjectError, FormatVersionError: as ``read_raw_into``.
    """
    fd, size = open_chunk(path, digest, tensor, snapshot)
    try:
        head = os.pread(fd, CHUNK_HEADER_SIZE, 0)
        codec, _ = check_stored_codec(digest, head, size, length, tensor, snapshot)
        mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        if hasattr(mmap, "MADV_WILLNEED"):  # read ahead the whole object while its first blocks decode (cold)
            with contextlib.suppress(OSError):  # a hint: a kernel that refuses it reads on demand, no damage
                mm.madvise(mmap.MADV_WILLNEED)
        return codec, mm
    except (OSError, ValueError) as e:
        raise _corrupt(digest, tensor, snapshot, "cannot be mapped") from e
    finally:
        os.close(fd)
