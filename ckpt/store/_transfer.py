"""Moving tensor bytes in and out of chunks, in parallel, without intermediate copies.

Writing: each tensor's bytes are cut every ``chunk_size`` bytes; each piece is hashed (BLAKE3 releases the
GIL) and written unless its digest is already stored. Reading: every tensor is allocated once, and each
chunk is read straight into its slice of the tensor's memory and verified there. On an object store the
workers are as many as the requests kept in flight (``_io.io_workers``: ``CKPT_IO_CONCURRENCY``); no worker
holds bytes of its own, so memory is the tensors' own.
"""

from __future__ import annotations

import contextlib
import mmap as _mmap_module
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ckpt import state
from ckpt.errors import StateError
from ckpt.model import FileEntry, TensorEntry
from ckpt.state import TensorSource, writable_view
from ckpt.store._io import io_workers
from ckpt.store._mapped import map_chunks
from ckpt.store._objects import CHUNK_HEADER_SIZE, Objects
from ckpt.store._packs import packed_entry, plan_packs, read_pack, slice_of
from ckpt.store._shards import sharded_jobs
from ckpt.store._types import Progress

__all__ = ["ProvenSource", "WriteStats", "allocate", "read_tensors", "write_files", "write_tensors"]


@dataclass(frozen=True)
class ProvenSource(TensorSource):
    """A ``TensorSource`` whose ``digests`` ckpt itself proved for these exact bytes (the ``Checkpointer``'s
    byte-for-byte comparison with a buffer whose committed digests it knows). Only such digests skip hashing:
    the ``digests`` of a plain ``TensorSource`` handed to ``Store.save`` are not trusted, its bytes are hashed."""


#: With ``mmap=True``, a local tensor at least this big held in raw chunks is memory-mapped (zero-copy)
#: instead of read.
MMAP_MIN_BYTES = 1 << 20

#: A tensor at least this big is read into memory backed by transparent huge pages where the system has them.
HUGE_MIN_BYTES = 4 << 20


@dataclass
class WriteStats:
    """What a save wrote.

    Attributes:
        chunks: chunks the tensors and files consist of.
        chunks_written: chunks that were new to the store.
        bytes: raw bytes of all chunks.
        bytes_written: bytes actually written (new chunks, with headers).
    """

    chunks: int = 0
    chunks_written: int = 0
    bytes: int = 0
    bytes_written: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, raw: int, written: int) -> None:
        """Count one chunk."""
        with self._lock:
            self.chunks += 1
            self.bytes += raw
            if written:
                self.chunks_written += 1
                self.bytes_written += written


def _pieces(data: memoryview, chunk_size: int) -> list[memoryview]:
    return [data[i : i + chunk_size] for i in range(0, data.nbytes, chunk_size)]


@contextmanager
def _pool(objects: Objects) -> Iterator[ThreadPoolExecutor]:
    """A thread pool sized for the store (``io_workers``) that, when its block ends on an error or Ctrl-C, drops
    the work still queued: only the chunks already in flight finish (``ThreadPoolExecutor``'s own ``with`` would
    run every queued chunk first, so Ctrl-C during a save or an import took effect only once every chunk was
    written)."""
    pool = ThreadPoolExecutor(max_workers=io_workers(objects.backend), thread_name_prefix="ckpt")
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _put(
    objects: Objects,
    piece: memoryview,
    stats: WriteStats,
    progress: Progress | None,
    digest: str | None = None,
    dtype: str | None = None,
    compress: bool = False,
    reference: str | None = None,
    max_depth: int = 0,
    executor: Executor | None = None,
) -> str:
    digest, written = objects.put_chunk(
        piece, digest, dtype=dtype, compress=compress, reference=reference, max_depth=max_depth, executor=executor
    )
    stats.add(piece.nbytes, written)
    if progress:
        progress(piece.nbytes)
    return digest


def write_tensors(
    objects: Objects,
    tensors: Mapping[str, TensorSource],
    chunk_size: int,
    *,
    stats: WriteStats,
    progress: Progress | None = None,
    compress: bool = False,
    references: Mapping[str, TensorEntry] | None = None,
    max_depth: int = 0,
    pack_size: int = 0,
) -> dict[str, TensorEntry]:
    """Chunk, hash and store every tensor; returns the table entries in the same order.

    With ``compress``, each new chunk is stored byte-grouped and zstd-coded when that pays (``put_chunk``),
    or, with ``max_depth`` > 0, as a delta against the chunk at the same byte range of the tensor of the same
    name and dtype in ``references`` (the first parent's table entries), when that is smaller. With
    ``pack_size`` > 0 (a format 3.0 store), small tensors share packs (``_packs.plan_packs``): one chunk each.
    Chunks are coded on the transfer threads, each chunk's blocks on every core (``block_pool``).
    """
    plan = plan_packs(((n, s.dtype, s.data.nbytes) for n, s in tensors.items()), min(pack_size, chunk_size))
    packed = {name for _, members in plan for name, _ in members}
    with _blocks(compress) as blocks, _pool(objects) as pool:  # the chunk workers end before their block pool
        futures: dict[str, list[Future[str]]] = {}
        for name, src in tensors.items():
            if name in packed:
                continue
            data = src.data.cast("B") if src.data.format != "B" else src.data
            pieces = _pieces(data, chunk_size)
            known = (
                src.digests
                if isinstance(src, ProvenSource) and src.digests is not None and len(src.digests) == len(pieces)
                else None
            )
            refs = _references(references.get(name) if references else None, src.dtype, pieces, chunk_size)
            futures[name] = [
                pool.submit(
                    _put,
                    objects,
                    p,
                    stats,
                    progress,
                    known[i] if known else None,
                    src.dtype,
                    compress,
                    refs[i],
                    max_depth,
                    blocks,
                )
                for i, p in enumerate(pieces)
            ]
        packs = [
            (
                members,
                pool.submit(
                    _put_pack,
                    objects,
                    tensors,
                    dtype,
                    members,
                    stats,
                    progress,
                    compress,
                    references,
                    max_depth,
                    blocks,
                ),
            )
            for dtype, members in plan
        ]
        out = {
            name: TensorEntry(
                dtype=tensors[name].dtype,
                shape=tensors[name].shape,
                chunks=tuple(f.result() for f in futs),
                kind=tensors[name].kind,
            )
            for name, futs in futures.items()
        }
        for members, future in packs:
            digest, length = future.result()
            for name, offset in members:
                src = tensors[name]
                out[name] = packed_entry(src.dtype, src.shape, src.kind, digest, offset, length)
        return {name: out[name] for name in tensors}


def _put_pack(
    objects: Objects,
    tensors: Mapping[str, TensorSource],
    dtype: str,
    members: list[tuple[str, int]],
    stats: WriteStats,
    progress: Progress | None,
    compress: bool,
    references: Mapping[str, TensorEntry] | None,
    max_depth: int,
    blocks: Executor | None = None,
) -> tuple[str, int]:
    """Store one pack: the bytes of ``members`` (name, offset) one after the other; ``(digest, length)``.

    Its delta reference is the parent's pack of its first tensor when that tensor was packed at offset 0 of a
    pack of the same length and dtype (the same cut, most likely the same layout); else it is a keyframe. Known
    digests of the tensors (``ProvenSource``) do not apply: the pack is hashed.
    """
    last, offset = members[-1]
    length = offset + tensors[last].data.nbytes
    buffer = bytearray(length)
    for name, start in members:
        data = tensors[name].data
        buffer[start : start + data.nbytes] = data.cast("B") if data.format != "B" else data
    parent = references.get(members[0][0]) if references else None
    reference = (
        parent.chunks[0] if parent is not None and parent.pack == (0, length) and parent.dtype == dtype else None
    )
    digest = _put(objects, memoryview(buffer), stats, progress, None, dtype, compress, reference, max_depth, blocks)
    return digest, length


@contextmanager
def _blocks(needed: bool = True) -> Iterator[Executor | None]:
    """The pool that codes chunks' blocks on every core, or ``None`` when nothing is coded."""
    if not needed:
        yield None
        return
    from ckpt.store._codecs._pool import block_pool

    with block_pool() as pool:
        yield pool


def _references(parent: TensorEntry | None, dtype: str, pieces: list[memoryview], chunk_size: int) -> list[str | None]:
    """For each piece of a tensor, the parent's chunk of the same byte range and length, if it has one."""
    refs: list[str | None] = [None] * len(pieces)
    if parent is None or parent.dtype != dtype or parent.shards or parent.pack is not None:
        return refs
    for i, piece in enumerate(pieces):
        if i < len(parent.chunks) and min(chunk_size, parent.nbytes - i * chunk_size) == piece.nbytes:
            refs[i] = parent.chunks[i]
    return refs


def write_files(
    objects: Objects, files: Mapping[str, bytes], chunk_size: int, *, stats: WriteStats, compress: bool = False
) -> dict[str, FileEntry]:
    """Store attached files as chunks (compressed as one-byte elements with ``compress``)."""
    out = {}
    for path, data in files.items():
        view = memoryview(bytes(data))
        pieces = _pieces(view, chunk_size)
        out[path] = FileEntry(
            size=view.nbytes, chunks=tuple(_put(objects, p, stats, None, compress=compress) for p in pieces)
        )
    return out


def _torch_glue(name: str) -> Any:
    """A function of the torch glue (``ckpt.state``), or a clear error when torch is not installed."""
    try:
        return getattr(state, name)
    except ImportError as e:
        raise StateError(
            "loading torch tensors needs torch, which is not installed",
            hint="install torch, or read them as numpy arrays: store.load(rev, framework='numpy')",
        ) from e


def allocate(
    entry: TensorEntry, framework: str, *, name: str = "", snapshot: str | None = None
) -> tuple[Any, memoryview]:
    """A new, uninitialised tensor (``torch``) or array (``numpy``) for an entry, and its byte view.

    The memory is not touched (``torch.empty`` / ``numpy.empty``): pages are committed only as chunks are read
    into them, so a table that claims more than its chunks hold costs address space, not memory.

    Raises:
        StateError: the memory cannot be allocated (the message names the tensor and its claimed size).
    """
    try:
        if entry.nbytes >= HUGE_MIN_BYTES and hasattr(_mmap_module, "MADV_HUGEPAGE"):
            # fresh memory costs a page fault (and a zeroed page) per 4 KiB, more than the copy itself; huge
            # pages make that one per 2 MiB. An anonymous private mapping: nothing else can change it.
            flags = _mmap_module.MAP_PRIVATE | _mmap_module.MAP_ANONYMOUS
            buffer = _mmap_module.mmap(-1, entry.nbytes, flags=flags)
            with contextlib.suppress(OSError):  # a kernel built without transparent huge pages: EINVAL, 4 KiB pages
                buffer.madvise(_mmap_module.MADV_HUGEPAGE)
            tensor = from_buffer(buffer, 0, entry, framework)
            return tensor, memoryview(buffer)
        if framework == "torch":
            tensor, view = _torch_glue("empty_torch")(entry.dtype, entry.shape)
            return tensor, view
        from ckpt.state import empty_numpy

        return empty_numpy(entry.dtype, entry.shape)
    except (MemoryError, RuntimeError, ValueError, OverflowError, OSError) as e:
        where = f"tensor {name!r}" + (f" of snapshot {snapshot[:12]}" if snapshot else "")
        raise StateError(
            f"cannot allocate {entry.nbytes} bytes for {where} (dtype {entry.dtype}, shape {list(entry.shape)}): "
            f"{type(e).__name__}",
            hint="free memory, or read it lazily (store.tensors(rev)); if the size is absurd, check the store with "
            "store.verify()",
            cli_hint="free memory; if the size is absurd, run `ckpt verify`",
        ) from e


def read_tensors(
    objects: Objects,
    entries: Mapping[str, TensorEntry],
    chunk_size: int,
    *,
    snapshot: str,
    verify: bool = True,
    framework: str | None = None,
    into: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    mmap: bool = False,
) -> dict[str, Any]:
    """Read tensors, each chunk straight into its place, in parallel.

    Args:
        objects: the store's objects.
        entries: name → table entry, for the tensors to read.
        chunk_size: the table's chunk size.
        snapshot: the snapshot id, for error messages.
        verify: check every chunk against its digest.
        framework: ``torch`` or ``numpy``; ``None``: what each tensor was saved as.
        into: name → existing tensor to fill in place when its dtype, shape and layout fit (no new memory,
            no page faults); others are allocated.
        progress: called with byte counts as chunks arrive.
        mmap: on a local store, map tensors of at least ``MMAP_MIN_BYTES`` held in raw chunks (zero-copy,
            copy-on-write) instead of reading them: one chunk with ``Objects.map_chunk``; several side by side
            in one region (``_mapped.map_chunks``: Linux, a chunk size that is a multiple of the page size),
            else read; see ``Objects.map_chunk`` for what a mapping cannot promise after it was verified.
    """
    out: dict[str, Any] = {}
    jobs: list[tuple[str, str, memoryview]] = []
    sharded: list[Callable[[], int]] = []
    mapped: list[tuple[str, TensorEntry]] = []
    packed: dict[str, list[tuple[str, TensorEntry, memoryview]]] = {}
    local = mmap and objects.backend.local_path("") is not None
    for name, entry in entries.items():
        view = writable_view(into[name], entry.dtype, entry.shape) if into and name in into else None
        if view is not None:
            tensor = into[name]  # type: ignore[index]
        elif local and entry.chunks and not entry.shards and entry.pack is None and entry.nbytes >= MMAP_MIN_BYTES:
            mapped.append((name, entry))
            continue
        else:
            tensor, view = allocate(entry, framework or entry.kind, name=name, snapshot=snapshot)
        out[name] = tensor
        view = view.cast("B") if view.format != "B" else view
        if view.nbytes != entry.nbytes:
            raise StateError(f"tensor {name!r}: buffer of {view.nbytes} bytes for {entry.nbytes} bytes of data")
        if entry.shards:  # format 1.2: blocks of a distributed save, each read into its place
            sharded += sharded_jobs(objects, entry, chunk_size, view, verify=verify, tensor=name, snapshot=snapshot)
            continue
        if entry.pack is not None:  # format 3.0: a small tensor inside a shared chunk, read once per pack
            packed.setdefault(entry.chunks[0], []).append((name, entry, view))
            continue
        for digest, piece in zip(entry.chunks, _pieces(view, chunk_size), strict=True):
            jobs.append((name, digest, piece))

    with _blocks() as blocks:  # an encoded chunk's blocks decode on every core

        def job(name: str, digest: str, piece: memoryview) -> None:
            objects.read_chunk_into(digest, piece, verify=verify, tensor=name, snapshot=snapshot, executor=blocks)
            if progress:
                progress(piece.nbytes)

        if packed:
            sharded += [_pack_job(objects, members, verify, snapshot) for members in packed.values()]
        if sharded:
            _run_jobs(objects, sharded, progress)

        def map_job(name: str, entry: TensorEntry) -> Any:
            if len(entry.chunks) == 1:
                mm = objects.map_chunk(entry.chunks[0], entry.nbytes, verify=verify, tensor=name, snapshot=snapshot)
            else:  # many chunks side by side in one region (Linux, a chunk size of whole pages)
                mm = map_chunks(
                    objects, entry.chunks, entry.nbytes, chunk_size, verify=verify, tensor=name, snapshot=snapshot
                )
            if mm is None:  # an encoded chunk, or a tensor that cannot be mapped: read into new memory
                tensor, view = allocate(entry, framework or entry.kind, name=name, snapshot=snapshot)
                view = view.cast("B") if view.format != "B" else view
                for digest, piece in zip(entry.chunks, _pieces(view, chunk_size), strict=True):
                    job(name, digest, piece)
                return tensor
            if progress:
                progress(entry.nbytes)
            return from_buffer(mm, CHUNK_HEADER_SIZE, entry, framework or entry.kind)

        if mapped:
            with _pool(objects) as pool:
                futures = {name: pool.submit(map_job, name, entry) for name, entry in mapped}
                _run_all(objects, jobs, job)
                for name, f in futures.items():
                    out[name] = f.result()
            return {name: out[name] for name in entries}
        _run_all(objects, jobs, job)
    return out


def _pack_job(
    objects: Objects, members: list[tuple[str, TensorEntry, memoryview]], verify: bool, snapshot: str
) -> Callable[[], int]:
    """A job that reads one pack (verified) and copies each of its tensors' bytes into their memory."""

    def job() -> int:
        pack = read_pack(objects, members[0][1], [name for name, _, _ in members], verify=verify, snapshot=snapshot)
        for _, entry, view in members:
            view[:] = slice_of(pack, entry)
        return sum(entry.nbytes for _, entry, _ in members)

    return job


def from_buffer(buffer: Any, offset: int, entry: TensorEntry, framework: str) -> Any:
    """A tensor (``torch``) or array (``numpy``) viewing ``entry.nbytes`` bytes of ``buffer`` at ``offset``."""
    if framework == "torch":
        return _torch_glue("tensor_from_buffer")(buffer, offset, entry.dtype, entry.shape)
    from ckpt.state import array_from_buffer

    return array_from_buffer(buffer, offset, entry.dtype, entry.shape)


def _run_all(
    objects: Objects, jobs: Iterable[tuple[str, str, memoryview]], fn: Callable[[str, str, memoryview], None]
) -> None:
    jobs = list(jobs)
    if len(jobs) <= 1:
        for j in jobs:
            fn(*j)
        return
    with _pool(objects) as pool:
        futures = [pool.submit(fn, *j) for j in jobs]
        for f in futures:
            f.result()


def _run_jobs(objects: Objects, jobs: list[Callable[[], int]], progress: Progress | None) -> None:
    """Run read jobs (each returns the bytes it read) in parallel."""
    with _pool(objects) as pool:
        for f in [pool.submit(j) for j in jobs]:
            n = f.result()
            if progress:
                progress(n)
