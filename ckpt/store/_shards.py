"""Reading sharded tensors (format 1.2): each block's chunks land in their place in the whole tensor.

A distributed save (``ckpt.dcp``) stores a tensor that several ranks held in blocks as one table entry with
``shards``: each block (offsets, sizes) has the chunks of its own bytes in C order. Reading gives the whole
tensor: a block that is one contiguous byte range of the tensor (``Shard(0)``, FSDP's layout) is read straight
into place; any other block (``Shard(1)``, tensor parallel columns) is read chunk by chunk into a small buffer
and copied into its rows, so no read holds more than one chunk of extra memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ckpt import settings
from ckpt.model import DTYPE_SIZES, TensorEntry, TensorShard
from ckpt.store._objects import Objects

if TYPE_CHECKING:  # numpy is imported by the functions that place blocks: `ckpt log` never needs it
    import numpy as np

__all__ = ["block_start", "chunk_jobs", "is_contiguous", "read_whole", "sharded_jobs"]

#: One unit of reading work, run in a thread pool; returns the bytes it read.
Job = Callable[[], int]


def is_contiguous(shape: Sequence[int], offsets: Sequence[int], sizes: Sequence[int]) -> bool:
    """Whether the block is one contiguous byte range of the tensor (C order).

    That is: leading dimensions of size 1, then one partial dimension, then only whole dimensions.

    Example:
        >>> is_contiguous((8, 4), (4, 0), (4, 4)), is_contiguous((8, 4), (0, 2), (8, 2))
        (True, False)
    """
    k = 0
    while k < len(sizes) and sizes[k] == 1:
        k += 1
    return all(sizes[i] == shape[i] for i in range(k + 1, len(shape)))


def block_start(shape: Sequence[int], offsets: Sequence[int], itemsize: int) -> int:
    """Byte offset, in the whole tensor, of a block's first element."""
    start, stride = 0, itemsize
    for d, o in zip(reversed(shape), reversed(offsets), strict=True):
        start += o * stride
        stride *= d
    return start


def chunk_jobs(
    objects: Objects,
    chunks: Sequence[str],
    nbytes: int,
    chunk_size: int,
    dest: memoryview,
    *,
    lo: int = 0,
    hi: int | None = None,
    verify: bool = True,
    tensor: str | None = None,
    snapshot: str | None = None,
) -> list[Job]:
    """Jobs that read the chunks of ``nbytes`` bytes (a tensor or one block) overlapping ``[lo, hi)`` into ``dest``.

    ``dest`` is the flat byte view of all ``nbytes``; chunks outside the range are not read (their bytes in
    ``dest`` stay as they were).
    """
    hi = nbytes if hi is None else hi
    jobs: list[Job] = []
    for i, digest in enumerate(chunks):
        start = i * chunk_size
        end = min(nbytes, start + chunk_size)
        if end <= lo or start >= hi:
            continue

        def job(digest: str = digest, piece: memoryview = dest[start:end]) -> int:
            objects.read_chunk_into(digest, piece, verify=verify, tensor=tensor, snapshot=snapshot)
            return piece.nbytes

        jobs.append(job)
    return jobs


def sharded_jobs(
    objects: Objects,
    entry: TensorEntry,
    chunk_size: int,
    dest: memoryview,
    *,
    verify: bool = True,
    tensor: str | None = None,
    snapshot: str | None = None,
) -> list[Job]:
    """Jobs that fill ``dest`` (the flat byte view of the whole tensor) from a sharded entry's blocks."""
    itemsize = DTYPE_SIZES[entry.dtype]
    jobs: list[Job] = []
    for shard in entry.shards:
        nbytes = shard.numel * itemsize
        if is_contiguous(entry.shape, shard.offsets, shard.sizes):
            start = block_start(entry.shape, shard.offsets, itemsize)
            jobs += chunk_jobs(
                objects,
                shard.chunks,
                nbytes,
                chunk_size,
                dest[start : start + nbytes],
                verify=verify,
                tensor=tensor,
                snapshot=snapshot,
            )
            continue
        for i, digest in enumerate(shard.chunks):

            def job(digest: str = digest, i: int = i, shard: TensorShard = shard, nbytes: int = nbytes) -> int:
                start = i * chunk_size
                buf = bytearray(min(chunk_size, nbytes - start))
                objects.read_chunk_into(digest, memoryview(buf), verify=verify, tensor=tensor, snapshot=snapshot)
                _scatter(_block_view(dest, entry.shape, shard, itemsize), memoryview(buf), start)
                return len(buf)

            jobs.append(job)
    return jobs


def read_whole(
    objects: Objects,
    entry: TensorEntry,
    chunk_size: int,
    *,
    verify: bool = True,
    tensor: str | None = None,
    snapshot: str | None = None,
) -> bytearray:
    """The raw bytes of a whole tensor (C order), its chunks or blocks read in parallel and verified."""
    out = bytearray(entry.nbytes)
    view = memoryview(out)
    if entry.shards:
        jobs = sharded_jobs(objects, entry, chunk_size, view, verify=verify, tensor=tensor, snapshot=snapshot)
    else:
        jobs = chunk_jobs(
            objects, entry.chunks, entry.nbytes, chunk_size, view, verify=verify, tensor=tensor, snapshot=snapshot
        )
    pool = ThreadPoolExecutor(settings.threads(), thread_name_prefix="ckpt-read")
    try:
        for f in [pool.submit(j) for j in jobs]:
            f.result()
    finally:  # on an error or Ctrl-C, the reads still queued are dropped, not run first
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def _block_view(dest: memoryview, shape: Sequence[int], shard: TensorShard, itemsize: int) -> np.ndarray:
    """The block of a shard inside ``dest``, as a writable uint8 array whose last axis is a row of bytes."""
    import numpy as np

    whole = np.frombuffer(dest, dtype=np.uint8).reshape(*shape[:-1], shape[-1] * itemsize)
    index = tuple(slice(o, o + s) for o, s in zip(shard.offsets[:-1], shard.sizes[:-1], strict=True))
    last = slice(shard.offsets[-1] * itemsize, (shard.offsets[-1] + shard.sizes[-1]) * itemsize)
    where: tuple[Any, ...] = (*index, last)
    block: np.ndarray = whole[where]
    return block


def _scatter(block: np.ndarray, data: memoryview, start: int) -> None:
    """Copy ``data`` into ``block`` (a strided view) at flat byte position ``start`` of the block's C order.

    Whole rows go in one numpy copy per run of the next-to-last axis; only the first and last row of the
    range may be partial.
    """
    import numpy as np

    row_bytes = block.shape[-1]
    rows_shape = block.shape[:-1]
    pos, n = 0, data.nbytes
    while pos < n:
        row, col = divmod(start + pos, row_bytes)
        index = tuple(int(i) for i in np.unravel_index(row, rows_shape)) if rows_shape else ()
        if col or n - pos < row_bytes or not rows_shape:
            take = min(row_bytes - col, n - pos)
            block[index][col : col + take] = np.frombuffer(data, dtype=np.uint8, count=take, offset=pos)
            pos += take
            continue
        last = index[-1]
        rows = min((n - pos) // row_bytes, rows_shape[-1] - last)
        source = np.frombuffer(data, dtype=np.uint8, count=rows * row_bytes, offset=pos)
        target: tuple[Any, ...] = (*index[:-1], slice(last, last + rows))
        block[target] = source.reshape(rows, row_bytes)
        pos += rows * row_bytes
