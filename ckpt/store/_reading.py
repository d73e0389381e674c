"""Reading snapshots: whole state trees (``load``), one tensor at a time (``LazyTensors``), raw bytes, files.

Every read goes through ``Objects``' one rule for a stored chunk (its size, its header, and its digest unless
``verify=False``), so a chunk one reader accepts, every reader accepts. Whole loads allocate each tensor once
and read chunks straight into it, in parallel (``_transfer``).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ckpt.errors import StateMismatchError
from ckpt.model import Snapshot, TensorEntry, TensorTable, paused_gc
from ckpt.state import alias_key, tensor_paths, to_source, unflatten, writable_view
from ckpt.store._io import io_workers
from ckpt.store._packs import PackCache, read_pack, slice_of
from ckpt.store._parts import StoreParts
from ckpt.store._shards import read_whole
from ckpt.store._transfer import allocate, read_tensors
from ckpt.store._types import Framework, Progress

__all__ = ["LazyTensors", "files", "load", "open_snapshot", "tensor_bytes", "tensors"]


def open_snapshot(parts: StoreParts, rev: str) -> tuple[Snapshot, TensorTable]:
    """The snapshot a revision names and its tensor table, refused if it was pruned.

    Raises:
        RevisionError: ``rev`` names nothing.
        MissingObjectError: the snapshot was pruned, or its table is missing.
    """
    snap = parts.resolve(rev)
    parts.check_not_pruned(snap)
    return snap, parts.objects.get_table(snap.table)


def load(
    parts: StoreParts,
    rev: str,
    *,
    verify: bool,
    framework: Framework | None,
    into: Mapping[str, Any] | None,
    progress: Progress | None,
    mmap: bool,
) -> Any:
    """A snapshot's state tree, every tensor read (a tied group once); see ``Store.load``."""
    with paused_gc():  # one tensor object each, none freed (_canonical.paused_gc)
        return _load(parts, rev, verify=verify, framework=framework, into=into, progress=progress, mmap=mmap)


def _load(
    parts: StoreParts,
    rev: str,
    *,
    verify: bool,
    framework: Framework | None,
    into: Mapping[str, Any] | None,
    progress: Progress | None,
    mmap: bool,
) -> Any:
    snap, table = open_snapshot(parts, rev)
    first = read_once(table, table.tensors, into, snap.short_id)
    tensors = read_tensors(
        parts.objects,
        {name: entry for name, entry in table.tensors.items() if first.get(name, name) == name},
        table.chunk_size,
        snapshot=snap.id,
        verify=verify,
        framework=framework,
        into=into,
        progress=progress,
        mmap=mmap,
    )
    if into:
        tensors = {**tensors, **fill_tied_into(table, tensors, first, into)}
    return unflatten(table.tree, lambda name: tensors[name] if name in tensors else tensors[first.get(name, name)])


def read_once(
    table: TensorTable, selected: Iterable[str], into: Mapping[str, Any] | None, short_id: str
) -> dict[str, str]:
    """Which of the ``selected`` tensors are read, and which take another's value: name → the name read in its
    place (a name absent is read itself). A tied group is read once, under its first selected name; names that
    ``into`` gives one memory, holding the same stored value, are read once too, so that two readers never write
    the same memory at once (a decoding reader writes byte planes one after the other); ``into`` buffers that
    are one tensor for different values are refused (``_check_tied_into``). ``Store.load`` with or without a
    prefix reads through it.

    Raises:
        StateMismatchError: ``into`` gives one memory to tensors of different values (names both), or names none
            of the ``selected`` tensors (nothing would be filled; a few names of each are given).
    """
    keep = set(selected)
    first: dict[str, str] = {}
    for group in table.tied:
        members = [n for n in group if n in keep]
        for name in members:
            first[name] = members[0]
    if into:
        kept = {name: buffer for name, buffer in into.items() if name in keep}
        if keep and not kept:  # nothing would be filled: a key scheme that is not the snapshot's, never silent
            given = ", ".join(repr(k) for k in list(into)[:3])
            held = ", ".join(repr(k) for k in list(keep)[:3])
            raise StateMismatchError(
                f"snapshot {short_id}: into= names none of its tensors (into= gives {given}…; it holds {held}…), "
                "so nothing would be loaded in place",
                hint="key into= by the snapshot's tensor paths: for a state saved as {'model': sd}, "
                "into={'model/' + k: v for k, v in sd.items()}; or use ckpt.restore(module, store, rev)",
            )
        first.update(_check_tied_into(table, kept, first, short_id))
        for name in first:  # a group head now read in another's place: its members follow it
            while first.get(first[name], first[name]) != first[name]:
                first[name] = first[first[name]]
    return first


def fill_tied_into(
    table: TensorTable, tensors: Mapping[str, Any], first: Mapping[str, str], into: Mapping[str, Any]
) -> dict[str, Any]:
    """Tensors read once in another's place (a tied group) that ``into`` gives memory of their own (a live model
    whose weights are not tied, loading a save of a tied one): that memory is filled with the value read, and
    comes back at their place, as every other ``into`` buffer that fits does.

    Returns:
        name → the ``into`` buffer filled, for each such tensor.
    """
    filled: dict[str, Any] = {}
    for name, head in first.items():
        if name == head or name not in into:
            continue
        entry = table.tensors[name]
        view = writable_view(into[name], entry.dtype, entry.shape)
        value = tensors[head]
        if view is None or alias_key(into[name]) == alias_key(value):
            continue  # does not fit (new memory, as for any buffer), or is the memory read already
        source = to_source(value, name).data
        view.cast("B")[:] = source.cast("B") if source.format != "B" else source
        filled[name] = into[name]
    return filled


def _check_tied_into(
    table: TensorTable, into: Mapping[str, Any], first: Mapping[str, str], short_id: str
) -> dict[str, str]:
    """Refuse ``into`` buffers that are one tensor (tied weights) for tensors of different values.

    Reading each into the shared memory would keep only the last one read, silently. Two table entries are one
    value when the table records them tied, or when they have the same dtype, shape and chunk digests.

    Returns:
        name → the name read in its place: entries of one value that ``into`` gives one memory (read once).

    Raises:
        StateMismatchError: names both tensors.
    """
    once: dict[str, str] = {}
    groups: dict[Any, list[str]] = {}
    for name, buffer in into.items():
        key = alias_key(buffer) if name in table.tensors else None
        if key is not None:
            groups.setdefault(key, []).append(name)
    _check_overlapping_into(table, into, groups, short_id)
    for names in groups.values():
        a = names[0]
        for b in names[1:]:
            ea, eb = table.tensors[a], table.tensors[b]
            same = (ea.dtype, tuple(ea.shape), ea.chunks, ea.shards, ea.pack) == (
                eb.dtype,
                tuple(eb.shape),
                eb.chunks,
                eb.shards,
                eb.pack,
            )
            if first.get(a, a) != first.get(b, b) and not same:
                raise StateMismatchError(
                    f"snapshot {short_id} holds different values for {a!r} and {b!r}, which into= gives one tensor "
                    "(tied weights): reading both into it would keep only the last",
                    hint="untie the weights in the model (e.g. tie_word_embeddings=False), or load without into=",
                )
            if first.get(b, b) == b:  # not read once already as one tied group
                once[b] = first.get(a, a)
    return once


def _check_overlapping_into(
    table: TensorTable, into: Mapping[str, Any], groups: Mapping[Any, list[str]], short_id: str
) -> None:
    """Refuse ``into`` buffers filled in place whose memory overlaps without being one tensor (views such as
    ``m[0:4]`` and ``m[2:6]``): each would be written with its own value and keep part of the other's, silently.

    Raises:
        StateMismatchError: names both tensors.
    """
    np = sys.modules.get("numpy")
    if np is None:
        return
    spans: list[tuple[int, int, str]] = []  # (start address, end address, name): one per tensor given
    for names in groups.values():
        name = names[0]
        entry = table.tensors[name]
        view = writable_view(into[name], entry.dtype, entry.shape)
        if view is None:
            continue  # not filled in place: it gets new memory
        start = int(np.asarray(view.cast("B") if view.format != "B" else view).__array_interface__["data"][0])
        spans.append((start, start + view.nbytes, name))
    spans.sort()
    for (_, end, a), (start, _, b) in itertools.pairwise(spans):  # any overlap shows between neighbours
        if start < end:
            raise StateMismatchError(
                f"snapshot {short_id}: into= gives {a!r} and {b!r} memory that overlaps without being one tensor: "
                "reading both into it would leave each with part of the other's value",
                hint="give each tensor its own memory (or one tensor for tied weights), or load without into=",
            )


def tensors(parts: StoreParts, rev: str, *, verify: bool, framework: Framework | None, mmap: bool) -> LazyTensors:
    """A lazy mapping of a snapshot's tensors; see ``Store.tensors``."""
    snap, table = open_snapshot(parts, rev)
    return LazyTensors(parts, snap, table, verify=verify, framework=framework, mmap=mmap)


def tensor_bytes(parts: StoreParts, rev: str, name: str, *, verify: bool) -> Iterator[bytes]:
    """The raw bytes of one tensor, chunk by chunk; see ``Store.tensor_bytes``."""
    snap, table = open_snapshot(parts, rev)
    entry = table.tensors[name]
    cs = table.chunk_size
    if entry.shards:  # blocks of a distributed save: the bytes in tensor order need them all
        yield bytes(read_whole(parts.objects, entry, cs, verify=verify, tensor=name, snapshot=snap.id))
        return
    if entry.pack is not None:  # a small tensor inside a pack (format 3.0)
        yield bytes(slice_of(read_pack(parts.objects, entry, [name], verify=verify, snapshot=snap.id), entry))
        return
    for i, digest in enumerate(entry.chunks):
        yield parts.objects.read_chunk(
            digest, min(cs, entry.nbytes - i * cs), verify=verify, tensor=name, snapshot=snap.id
        )


def files(parts: StoreParts, rev: str) -> dict[str, bytes]:
    """The attached files of a snapshot, path → bytes; see ``Store.files``."""
    snap, table = open_snapshot(parts, rev)
    cs = table.chunk_size
    pieces = [
        (path, i, d, min(cs, entry.size - i * cs))
        for path, entry in table.files.items()
        for i, d in enumerate(entry.chunks)
    ]

    def read(piece: tuple[str, int, str, int]) -> bytes:
        path, _, digest, length = piece
        return parts.objects.read_chunk(digest, length, tensor=path, snapshot=snap.id)

    # every chunk of every file at once (on an object store, CKPT_IO_CONCURRENCY requests in flight)
    with ThreadPoolExecutor(io_workers(parts.backend, cs), thread_name_prefix="ckpt-files") as pool:
        got = list(pool.map(read, pieces))
    out: dict[str, list[bytes]] = {path: [] for path in table.files}
    for (path, _, _, _), data in zip(pieces, got, strict=True):
        out[path].append(data)
    return {path: b"".join(chunks) for path, chunks in out.items()}


class LazyTensors(Mapping[str, Any]):
    """A read-only mapping tensor path → tensor; each lookup reads (and verifies) only that tensor.

    Iteration follows the order of the saved state tree.

    Attributes:
        snapshot: the snapshot it reads from.
        table: its tensor table.
    """

    def __init__(
        self,
        parts: StoreParts,
        snapshot: Snapshot,
        table: TensorTable,
        *,
        verify: bool,
        framework: Framework | None,
        mmap: bool = False,
    ) -> None:
        self._parts = parts
        self.snapshot = snapshot
        self.table = table
        self._verify = verify
        self._framework = framework
        self._mmap = mmap
        self._packs = PackCache(parts.objects, verify=verify, snapshot=snapshot.id)
        ordered = tensor_paths(table.tree)
        self._order = ordered if len(ordered) == len(table.tensors) else list(table.tensors)

    def __getitem__(self, name: str) -> Any:
        entry = self.table.tensors.get(name)
        if entry is None:
            raise KeyError(name)
        if entry.pack is not None:  # its pack is read once for the pack's tensors read one after the other
            tensor, view = allocate(entry, self._framework or entry.kind, name=name, snapshot=self.snapshot.id)
            (view.cast("B") if view.format != "B" else view)[:] = self._packs.tensor_bytes(name, entry)
            return tensor
        return read_tensors(
            self._parts.objects,
            {name: entry},
            self.table.chunk_size,
            snapshot=self.snapshot.id,
            verify=self._verify,
            framework=self._framework,
            mmap=self._mmap,
        )[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self.table.tensors)

    def entry(self, name: str) -> TensorEntry:
        """dtype, shape and chunks of one tensor, without reading it.

        Raises:
            KeyError: no such tensor.
        """
        return self.table.tensors[name]

    def chunk_bytes(self, name: str, index: int) -> bytes:
        """The raw bytes of one chunk of a tensor (its ``index``-th), verified unless ``verify=False``.

        Reads only that chunk; the table is the one already read, so streaming every tensor of a snapshot
        this way costs one table read in all (``export_folder`` does it, in parallel). The chunks of a sharded
        tensor (``TensorEntry.shards``) hold its blocks, not its bytes in order: read those with
        ``byte_pieces``.

        A packed tensor (``TensorEntry.pack``) has one piece, its own bytes, cut from its pack; the last few packs
        read are kept, so reading every tensor of a pack one by one reads the pack once.

        Returns:
            The chunk's raw bytes (``min(chunk_size, rest of the tensor)`` long).

        Raises:
            KeyError: no such tensor.
            IndexError: no such chunk, or the tensor is sharded.
            MissingObjectError: the chunk is missing.
            CorruptChunkError: the chunk is damaged.
        """
        entry = self.table.tensors[name]
        if entry.shards:
            raise IndexError(f"tensor {name!r} is stored in blocks (sharded): read it with byte_pieces()")
        digest = entry.chunks[index]
        if entry.pack is not None:  # the tensor's bytes inside its pack, the pack read once for its tensors
            return bytes(self._packs.tensor_bytes(name, entry))
        cs = self.table.chunk_size
        length = min(cs, entry.nbytes - index * cs)  # the one rule: the length the table implies is checked
        return self._parts.objects.read_chunk(
            digest, length, verify=self._verify, tensor=name, snapshot=self.snapshot.id
        )

    def byte_pieces(self, name: str) -> Iterator[bytes]:
        """The raw bytes of a tensor in order (C order, little-endian), as consecutive pieces, each verified.

        A tensor stored whole comes chunk by chunk (one chunk in memory at a time); a sharded tensor, whose
        blocks interleave in tensor order, comes as one piece read from all its blocks.

        Raises:
            KeyError: no such tensor.
            MissingObjectError: a chunk is missing.
            CorruptChunkError: a chunk is damaged.
        """
        entry = self.table.tensors[name]
        if entry.shards:
            objects = self._parts.objects
            yield bytes(
                read_whole(
                    objects, entry, self.table.chunk_size, verify=self._verify, tensor=name, snapshot=self.snapshot.id
                )
            )
            return
        for index in range(len(entry.chunks)):
            yield self.chunk_bytes(name, index)
