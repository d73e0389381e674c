"""One zero-copy view of a tensor held in several raw chunks of a local store (``Store.load(mmap=True)``).

A chunk object is a 16-byte header then its payload, so no payload starts on a page; but when the chunk size
is a multiple of the page size, the chunks of a tensor can still be mapped side by side into one region of
``16 + nbytes`` bytes (rounded up to pages) at address ``P``: chunk ``i``'s file from its second page on lands
at ``P + i × chunk_size + PAGE_SIZE``, so its payload continues chunk ``i - 1``'s without a gap. The one page
at each boundary that both chunks need (chunk ``i - 1``'s last 16 bytes, then chunk ``i``'s payload where its
header would be) is private anonymous memory into which those bytes are copied. The tensor views ``P + 16``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from typing import Any

from ckpt.errors import CorruptChunkError
from ckpt.store import _layout as layout
from ckpt.store._chunk_format import CHUNK_HEADER_SIZE
from ckpt.store._chunk_format import describe as where_of
from ckpt.store._chunk_reads import ChunkReads
from ckpt.store._encoded import ENCODED
from ckpt.store._local_reads import open_chunk
from ckpt.store._regions import PAGE_SIZE, Region, available

__all__ = ["map_chunks"]


def _round_up(n: int) -> int:
    return -(-n // PAGE_SIZE) * PAGE_SIZE


def map_chunks(
    objects: ChunkReads,
    digests: Sequence[str],
    nbytes: int,
    chunk_size: int,
    *,
    verify: bool = True,
    tensor: str | None = None,
    snapshot: str | None = None,
) -> Any:
    """Map the raw chunks of one tensor into one contiguous, copy-on-write region, checked as ``map_chunk``.

    Every chunk is checked before anything is handed out: a regular file (never a symbolic link), a valid
    header, exactly ``16 + n`` bytes; with ``verify``, the mapped bytes (the copied boundary bytes included)
    hashed against each chunk's digest, over the mapping (no copy). Caveats as ``Objects.map_chunk``: writes
    to the tensor never reach the files, but a page not written yet shows later changes to a file, and a file
    truncated later makes reading its pages kill the process with ``SIGBUS``; so ``Store.load`` copies unless
    asked to map.

    Args:
        objects: the store's objects (a local backend).
        digests: the tensor's chunks, in order.
        nbytes: the tensor's size in bytes.
        chunk_size: the table's chunk size in bytes.
        verify: hash the mapped bytes against each chunk's digest.
        tensor: the tensor's name, for messages.
        snapshot: the snapshot id, for messages.

    Returns:
        A writable buffer of ``16 + nbytes`` bytes or more whose bytes from ``CHUNK_HEADER_SIZE`` on are the
        tensor's (the region is unmapped when the last object viewing it goes), or ``None`` when the tensor
        cannot be mapped so (not Linux, a chunk size that is not a multiple of the page size, a remote
        backend, an encoded chunk, a chunk count that does not fit ``nbytes``, no address space or mappings
        left, ``ENOMEM``): the caller reads it.

    Raises:
        CorruptChunkError: a chunk is not a regular file, a link, has a bad header or length, or (``verify``)
            bytes that do not match its digest; nothing stays mapped.
        MissingObjectError: a chunk is missing.
    """
    if not available() or chunk_size <= 0 or chunk_size % PAGE_SIZE or not digests:
        return None
    if len(digests) != -(-nbytes // chunk_size):
        return None
    lengths = [min(chunk_size, nbytes - i * chunk_size) for i in range(len(digests))]
    paths = [objects.backend.local_path(layout.chunk_path(d)) for d in digests]
    if any(p is None for p in paths):
        return None
    fds: list[int] = []
    try:
        for digest, path, length in zip(digests, paths, lengths, strict=True):
            fd = _open(objects, digest, str(path), tensor, snapshot)
            fds.append(fd)
            size = os.fstat(fd).st_size
            header = os.pread(fd, CHUNK_HEADER_SIZE, 0)
            objects._check_stored(digest, header, size, length, tensor, snapshot)
            if header[5] in ENCODED:  # its bytes are not the tensor's: the whole tensor is read instead
                return None
        return _map(objects, fds, digests, lengths, nbytes, chunk_size, verify, tensor, snapshot)
    finally:
        for fd in fds:
            os.close(fd)


def _open(objects: ChunkReads, digest: str, path: str, tensor: str | None, snapshot: str | None) -> int:
    """An open, read-only descriptor of a chunk file that is a regular file (never through a link):
    ``_local_reads.open_chunk``, the one rule every local read opens a chunk by."""
    return open_chunk(path, digest, tensor, snapshot)[0]


def _map(
    objects: ChunkReads,
    fds: list[int],
    digests: Sequence[str],
    lengths: list[int],
    nbytes: int,
    chunk_size: int,
    verify: bool,
    tensor: str | None,
    snapshot: str | None,
) -> Any:
    try:
        region = Region(_round_up(CHUNK_HEADER_SIZE + nbytes))
    except OSError:
        return None  # no address space for it: read into memory instead (which says clearly if that fails)
    try:
        for i, (fd, length) in enumerate(zip(fds, lengths, strict=True)):
            base = i * chunk_size
            # chunk i's file covers [base, base + 16 + length) of the region; its first page is shared with
            # chunk i - 1's tail, except for chunk 0 (whose first 16 bytes are its own header)
            first = 0 if i == 0 else PAGE_SIZE
            end = min(_round_up(CHUNK_HEADER_SIZE + length), chunk_size if i < len(fds) - 1 else 1 << 62)
            if end > first:
                try:
                    region.map_file(base + first, fd, first, end - first)
                except OSError as e:
                    if e.errno == errno.ENOMEM:  # out of mappings (vm.max_map_count) or address space: read it
                        region.close()
                        return None
                    raise CorruptChunkError(
                        f"chunk {digests[i][:12]} of {where_of(tensor, snapshot)} cannot be mapped",
                        digest=digests[i],
                        tensor=tensor,
                        snapshot=snapshot,
                    ) from e
            if i:
                tail = os.pread(fds[i - 1], CHUNK_HEADER_SIZE, chunk_size)  # chunk i - 1's last 16 bytes
                head = os.pread(fd, min(PAGE_SIZE, CHUNK_HEADER_SIZE + length) - CHUNK_HEADER_SIZE, CHUNK_HEADER_SIZE)
                if len(tail) != CHUNK_HEADER_SIZE or len(head) != min(PAGE_SIZE - CHUNK_HEADER_SIZE, length):
                    raise CorruptChunkError(
                        f"chunk {digests[i][:12]} of {where_of(tensor, snapshot)} is corrupt: it was truncated",
                        digest=digests[i],
                        tensor=tensor,
                        snapshot=snapshot,
                    )
                region.write(base, tail + head)
        buffer = region.buffer()
        if verify:
            view = memoryview(buffer).cast("B")
            try:
                for i, (digest, length) in enumerate(zip(digests, lengths, strict=True)):
                    start = CHUNK_HEADER_SIZE + i * chunk_size
                    objects._check_digest(view[start : start + length], digest, tensor, snapshot)
            finally:
                view.release()
    except BaseException:
        buffer = None
        region.close()
        raise
    return buffer
