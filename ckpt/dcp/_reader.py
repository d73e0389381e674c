"""``StorageReader``: torch.distributed.checkpoint loads from a ckpt snapshot, on any number of ranks."""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import (
    STORAGE_TYPES,
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, ReadItem
from torch.distributed.checkpoint.storage import StorageReader as _DcpStorageReader
from torch.futures import Future

from ckpt import settings
from ckpt.dcp import _store
from ckpt.dcp._tree import Leaf, PathItem, dcp_leaves
from ckpt.errors import StateError
from ckpt.model import DTYPE_SIZES, Snapshot, TensorEntry, TensorTable
from ckpt.state import torch_dtype, unflatten, writable_view
from ckpt.store import PackCache, Store

__all__ = ["StorageReader"]

#: The DCP metadata version the reader presents (that of DCP's own filesystem writer in torch 2.4+).
_DCP_VERSION = "1.0.0"


@dataclass(frozen=True)
class _Piece:
    """A stored tensor, or one block of a sharded tensor: what a DCP storage index points at."""

    tensor: str
    dtype: str
    sizes: tuple[int, ...]
    chunks: tuple[str, ...]
    packed: TensorEntry | None = None  # a small tensor inside a pack (format 3.0): its entry

    @property
    def nbytes(self) -> int:
        n = DTYPE_SIZES[self.dtype]
        for d in self.sizes:
            n *= d
        return n


class StorageReader(_DcpStorageReader):
    """A ``torch.distributed.checkpoint`` storage reader that loads a ckpt snapshot, resharding as DCP asks.

    Any snapshot loads: one written by ``StorageWriter`` on N ranks, on M ranks with another sharding (DCP's
    planner maps each rank's shards onto the stored blocks), or one saved by ``store.save`` in one process
    into a sharded model. Each rank reads only the chunks that overlap what it needs, every chunk verified
    against its digest.

    The keys DCP asks for are those of DCP's flattening (``"model.layers.0.weight"``, ``"optim.state.…"``),
    computed from the snapshot's state tree. Non-tensor values come back from the typed-JSON tree and are put
    in place directly, without the pickle round trip of DCP's ``load_bytes``; a load planner that overrides
    ``load_bytes`` is refused for them.

    All ranks must load the same snapshot: each rank resolves the revision, and the coordinator refuses the
    load if they differ (a branch that moved between two ranks' reads), before any tensor is read.

    Args:
        store: the store (each rank opens its own).
        rev: the revision to load (branch, tag, id, ``main~2`` …); a ``checkpoint_id`` given to ``dcp.load``
            replaces it.
        verify: check every chunk against its digest (on by default; BLAKE3 makes it cheap).

    Attributes:
        snapshot: the snapshot being (or last) loaded, once DCP has read the metadata.

    Example:
        >>> reader = ckpt.dcp.StorageReader(store, "main")  # doctest: +SKIP
        >>> dcp.load({"model": model.state_dict()}, storage_reader=reader)  # doctest: +SKIP
    """

    def __init__(self, store: Store, rev: str = "main", *, verify: bool = True) -> None:
        super().__init__()
        if not isinstance(store, Store):
            raise TypeError(f"StorageReader takes a ckpt Store (ckpt.open(url)), not {type(store).__name__}")
        self.store = store
        self.rev = rev
        self.verify = verify
        self.snapshot: Snapshot | None = None
        self._table: TensorTable | None = None
        self._pieces: dict[tuple[str, tuple[int, ...]], _Piece] = {}
        self._values: dict[str, Leaf] = {}
        self._packs: PackCache | None = None

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        """Start a new load; a ``checkpoint_id`` passed to ``dcp.load`` names the revision to load."""
        if checkpoint_id is not None:
            self.rev = os.fspath(checkpoint_id)
        self.snapshot = None
        self._table = None
        self._pieces = {}
        self._values = {}

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        """DCP's metadata for the snapshot: every tensor with its blocks, every value, their object paths.

        Raises:
            RevisionError: the revision names nothing. MissingObjectError: the snapshot was pruned.
            StateError: the state is not a mapping, or two of its values get one DCP key.
        """
        if kwargs.get("rank") is not None:
            raise StateError("a ckpt snapshot has no rank-local DCP metadata")
        snap, table = _store.open_snapshot(self.store, self.rev)
        state_md: dict[str, STORAGE_TYPES] = {}
        mappings: dict[str, tuple[PathItem, ...]] = {}
        pieces: dict[tuple[str, tuple[int, ...]], _Piece] = {}
        values: dict[str, Leaf] = {}
        for leaf in dcp_leaves(table.tree):
            mappings[leaf.fqn] = leaf.path
            name = leaf.tensor
            if name is None:
                values[leaf.fqn] = leaf
                state_md[leaf.fqn] = BytesStorageMetadata()
                continue
            entry = table.tensors.get(name)
            if entry is None:
                raise StateError(f"snapshot {snap.short_id}: its state tree names a tensor {name!r} it does not hold")
            blocks = [(s.offsets, s.sizes, s.chunks) for s in entry.shards] or [
                ((0,) * len(entry.shape), entry.shape, entry.chunks)
            ]
            chunks_md = []
            packed = entry if entry.pack is not None else None
            for offsets, sizes, digests in blocks:
                pieces[(leaf.fqn, offsets)] = _Piece(name, entry.dtype, sizes, digests, packed)
                chunks_md.append(ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes)))
            state_md[leaf.fqn] = TensorStorageMetadata(
                properties=TensorProperties(dtype=torch_dtype(entry.dtype)),
                size=torch.Size(entry.shape),
                chunks=chunks_md,
            )
        self.snapshot, self._table, self._pieces, self._values = snap, table, pieces, values
        return Metadata(
            state_dict_metadata=state_md,
            planner_data=mappings,
            storage_data={"snapshot": snap.id},
            storage_meta=StorageMeta(checkpoint_id=self.rev),
            version=_DCP_VERSION,
        )

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        """Check that DCP hands back the metadata this reader read."""
        data = metadata.storage_data
        if self.snapshot is None or not isinstance(data, dict) or data.get("snapshot") != self.snapshot.id:
            raise StateError("ckpt.dcp.StorageReader was set up with metadata it did not read")

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        """Tag the plan with the snapshot this rank resolved, so the coordinator can check all ranks agree."""
        assert self.snapshot is not None
        return dataclasses.replace(plan, storage_data=self.snapshot.id)

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        """Refuse the load if the ranks resolved different snapshots (the branch moved between their reads).

        Raises:
            StateError: names the snapshots; nothing has been read yet.
        """
        ids = sorted({str(p.storage_data) for p in plans})
        if len(ids) > 1:
            raise StateError(
                f"the ranks resolved {self.rev!r} to different snapshots ({', '.join(i[:12] for i in ids)}): "
                "it moved while they read it",
                hint="load a fixed revision on every rank: a snapshot id or a tag (store.resolve(rev).id)",
            )
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        """Read this rank's share: values first, then tensor blocks, each chunk verified, in parallel.

        A request for a whole stored block of a contiguous CPU tensor of the same dtype is read straight
        into the tensor's memory; any other request (part of a block, another device or dtype) reads only
        the chunks that overlap it into a buffer and copies that part over (with ``Tensor.copy_``, as DCP's
        own reader does, so a different dtype is converted).

        Raises:
            MissingObjectError, CorruptChunkError: a chunk is missing or does not match its digest.
            StateError: the planner overrides ``load_bytes`` (it would unpickle what it is given).
        """
        snap, table = self.snapshot, self._table
        assert snap is not None and table is not None
        self._packs = _store.pack_cache(self.store, snap, verify=self.verify)
        jobs: list[Callable[[], int]] = []
        after: list[tuple[ReadItem, torch.Tensor, torch.Tensor | None]] = []
        for req in plan.items:
            if req.type == LoadItemType.BYTE_IO:
                self._load_value(planner, req, snap, table)
                continue
            piece = self._pieces.get((req.storage_index.fqn, _offsets(req.storage_index)))
            if piece is None:
                raise StateError(f"DCP asked for a block of {req.storage_index.fqn!r} this snapshot does not hold")
            target = planner.resolve_tensor(req).detach()
            if tuple(target.shape) != tuple(req.lengths):
                raise StateError(
                    f"{req.dest_index.fqn!r}: DCP gave a {list(target.shape)} tensor for a {list(req.lengths)} block"
                )
            whole = all(o == 0 for o in req.storage_offsets) and tuple(req.lengths) == piece.sizes
            view = writable_view(target, piece.dtype, piece.sizes) if whole else None
            if view is not None:
                jobs += self._jobs(piece, view, 0, piece.nbytes, snap)
                after.append((req, target, None))
                continue
            buffer = torch.empty(piece.sizes, dtype=torch_dtype(piece.dtype))
            lo, hi = _byte_range(piece.sizes, DTYPE_SIZES[piece.dtype], req.storage_offsets, req.lengths)
            raw = writable_view(buffer, piece.dtype, piece.sizes)
            if raw is not None:  # (an empty block needs no read)
                jobs += self._jobs(piece, raw, lo, hi, snap)
            after.append((req, target, buffer))
        _run(jobs)
        for req, target, read in after:
            if read is not None:
                part = read
                for dim, (offset, length) in enumerate(zip(req.storage_offsets, req.lengths, strict=True)):
                    part = part.narrow(dim, offset, length)
                target.copy_(part)
            planner.commit_tensor(req, target)
        future: Future[None] = Future()
        future.set_result(None)
        return future

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        """Never picked from a path alone: a ckpt reader needs its store."""
        return False

    # -- helpers -------------------------------------------------------------------------------------------

    def _jobs(self, piece: _Piece, dest: memoryview, lo: int, hi: int, snap: Snapshot) -> list[Callable[[], int]]:
        assert self._table is not None
        if piece.packed is not None:  # its pack read once for all the pack's tensors this rank reads
            packs = self._packs
            assert packs is not None

            def job(entry: TensorEntry = piece.packed) -> int:
                dest[lo:hi] = packs.tensor_bytes(piece.tensor, entry)[lo:hi]
                return hi - lo

            return [job]
        return _store.chunk_jobs(
            self.store,
            piece.chunks,
            piece.nbytes,
            self._table.chunk_size,
            dest,
            lo=lo,
            hi=hi,
            verify=self.verify,
            tensor=piece.tensor,
            snapshot=snap.id,
        )

    def _load_value(self, planner: LoadPlanner, req: ReadItem, snap: Snapshot, table: TensorTable) -> None:
        leaf = self._values.get(req.storage_index.fqn)
        if leaf is None:
            raise StateError(f"DCP asked for a value {req.storage_index.fqn!r} this snapshot does not hold")
        names: list[str] = []
        unflatten(leaf.node, lambda name: names.append(name))
        tensors = _store.read_tensors(self.store, snap, table, names, verify=self.verify) if names else {}
        value = unflatten(leaf.node, lambda name: tensors[name])
        _place(planner, req, value)


def _offsets(index: MetadataIndex) -> tuple[int, ...]:
    return tuple(int(x) for x in index.offset) if index.offset is not None else ()


def _byte_range(sizes: tuple[int, ...], itemsize: int, offsets: torch.Size, lengths: torch.Size) -> tuple[int, int]:
    """The bytes ``[lo, hi)`` of a block (C order) that hold its sub-block at ``offsets`` of ``lengths``."""
    first = last = 0
    for d, o, n in zip(sizes, offsets, lengths, strict=True):
        first = first * d + o
        last = last * d + o + max(n, 1) - 1
    if any(n == 0 for n in lengths):
        return 0, 0
    return first * itemsize, (last + 1) * itemsize


def _run(jobs: list[Callable[[], int]]) -> None:
    if len(jobs) <= 1:
        for job in jobs:
            job()
        return
    with ThreadPoolExecutor(settings.threads(), thread_name_prefix="ckpt-dcp-read") as pool:
        for f in [pool.submit(job) for job in jobs]:
            f.result()


def _place(planner: LoadPlanner, req: ReadItem, value: Any) -> None:
    """Put a value where DCP's ``DefaultLoadPlanner.load_bytes`` would, without its ``torch.load``.

    Raises:
        StateError: the planner is not a ``DefaultLoadPlanner`` or overrides ``load_bytes``: it expects a
            pickle, which ckpt never hands over.
    """
    if not isinstance(planner, DefaultLoadPlanner) or type(planner).load_bytes is not DefaultLoadPlanner.load_bytes:
        raise StateError(
            f"cannot load the value {req.dest_index.fqn!r} through {type(planner).__name__}: it overrides "
            "load_bytes, which unpickles what it is given, and ckpt never hands over a pickle",
            hint="load with DCP's DefaultLoadPlanner (or a subclass that keeps its load_bytes)",
        )
    fqn = req.dest_index.fqn
    if planner.flatten_state_dict:
        _set_element(planner.original_state_dict, planner.mappings[fqn], value)
    else:
        planner.state_dict[fqn] = value


def _set_element(root: dict[str, Any], path: tuple[PathItem, ...], value: Any) -> None:
    """Set ``value`` at ``path`` in a nested state, as DCP's ``set_element`` does (lists grow with None)."""
    container: Any = root
    for key, following in itertools.pairwise(path):
        default: Any = {} if isinstance(following, str) else []
        if isinstance(container, dict):
            container = container.setdefault(key, default)
        else:
            container.extend([None] * (int(key) + 1 - len(container)))
            if container[key] is None:
                container[key] = default
            container = container[key]
    key = path[-1]
    if isinstance(key, int):
        container.extend([None] * (key + 1 - len(container)))
    container[key] = value
