"""``StorageWriter``: torch.distributed.checkpoint saves into a ckpt store, one snapshot per save."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import JsonValue
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, TensorStorageMetadata
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner, WriteItem, WriteItemType
from torch.distributed.checkpoint.storage import StorageWriter as _DcpStorageWriter
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from ckpt.dcp import _store
from ckpt.dcp._tree import PathItem, build, walk_paths
from ckpt.errors import RecordError, StateError, UnsupportedStateError
from ckpt.model import Relation, Snapshot, TensorEntry, TensorShard, check_ref_name
from ckpt.state import TensorSource, dtype_name, flatten, torch_source, unflatten
from ckpt.store import Store

__all__ = ["STAGING_BYTES", "StorageWriter"]

#: At most this many bytes of a rank's tensors are copied to CPU memory (from a GPU, or to make them
#: contiguous) before they are written; CPU tensors are hashed and written where they are, without a copy.
STAGING_BYTES = 1 << 30


class StorageWriter(_DcpStorageWriter):
    """A ``torch.distributed.checkpoint`` storage writer that saves into a ckpt store as one snapshot.

    Every rank builds one with the same arguments and passes it to ``dcp.save`` (or ``dcp.async_save``).
    DCP's planner decides which rank writes what (each shard of a ``DTensor`` once; each plain tensor and
    value once, replicated ones deduplicated across ranks). Then:

    1. every rank writes the chunks of its own shards, in parallel; bytes already in the store (a
       replicated tensor, a tensor unchanged since the last save) are not written again;
    2. DCP gathers every rank's results on the coordinator (rank 0), which writes the tensor table and the
       snapshot record and moves the branch by compare-and-swap from the head it read when the save began.

    If any rank fails or dies before step 2, DCP never calls ``finish`` and the branch stays where it was;
    the chunks already written are unreferenced and ``gc`` removes them after its grace period.

    A sharded tensor is recorded with its blocks (``TensorEntry.shards``, format 1.2), so the snapshot loads
    whole with ``store.load``, restores and diffs like any other, and loads through ``StorageReader`` into any
    other sharding.

    Non-tensor values (step counters, scheduler state, RNG seeds, optimizer hyper-parameters) are stored in
    the snapshot's typed-JSON state tree, never pickled: DCP's default planner would ``torch.save`` them
    into bytes, so the writer asks the planner for the object itself (``lookup_object``) and refuses what
    typed JSON cannot hold (``bytes``, ``io.BytesIO``, arbitrary objects) with ``UnsupportedStateError``.

    Args:
        store: the store (each rank opens its own: ``ckpt.open(url, **storage_options)``).
        branch: the branch to advance; a ``checkpoint_id`` given to ``dcp.save`` replaces it.
        parents: revisions of the parents; default: the branch's head (as ``Store.save``).
        relation: relation to the first parent; default ``continue``, or ``import`` for a first save.
        model: the model's name (kept from the first parent when not given).
        step: training step.
        epoch: training epoch.
        metrics: named numbers (``{"val_loss": 0.41}``).
        message: a note, like a commit message.
        metadata: your own JSON metadata.
        files: attached files, relative path → bytes, written by the coordinator; ``None`` keeps the first
            parent's files (as ``Store.save``).
        force: move the branch even if ``parents`` do not include its head.
        compression: store this save's chunks byte-grouped and zstd-coded where that pays (``True``) or raw
            (``False``); default ``None``: the store's setting (``ckpt init --compression``), as ``Store.save``.

    Attributes:
        snapshot: after a save, on the coordinator: the new snapshot (``None`` on other ranks, whose
            ``dcp.save`` returns DCP's ``Metadata`` with ``storage_data["snapshot"]``, the new snapshot's id).

    Raises:
        InvalidNameError: bad branch name (at construction, on every rank).

    Example:
        >>> import torch.distributed.checkpoint as dcp  # doctest: +SKIP
        >>> store = ckpt.open("s3://bucket/run", endpoint_url=...)  # doctest: +SKIP
        >>> writer = ckpt.dcp.StorageWriter(store, "main", step=1200, metrics={"val_loss": 0.41})  # doctest: +SKIP
        >>> dcp.save({"model": model.state_dict(), "step": 1200}, storage_writer=writer)  # doctest: +SKIP
    """

    def __init__(
        self,
        store: Store,
        branch: str = "main",
        *,
        parents: Sequence[str] | None = None,
        relation: Relation | None = None,
        model: str | None = None,
        step: int | None = None,
        epoch: int | float | None = None,
        metrics: Mapping[str, float] | None = None,
        message: str | None = None,
        metadata: Mapping[str, JsonValue] | None = None,
        files: Mapping[str, bytes] | None = None,
        force: bool = False,
        compression: bool | None = None,
    ) -> None:
        super().__init__()
        if compression is not None and not isinstance(compression, bool):
            raise RecordError(f"compression must be True, False or None, got {compression!r}"[:120])
        self.compression = compression
        if not isinstance(store, Store):
            raise TypeError(f"StorageWriter takes a ckpt Store (ckpt.open(url)), not {type(store).__name__}")
        check_ref_name(branch, kind="branch")
        self.store = store
        self.branch = branch
        self._fields: dict[str, Any] = {
            "parents": parents,
            "relation": relation,
            "model": model,
            "step": step,
            "epoch": epoch,
            "metrics": metrics,
            "message": message,
            "metadata": metadata,
            "files": files,
            "force": force,
        }
        self.snapshot: Snapshot | None = None
        self._pending: _store.Pending | None = None
        self._coordinator = False

    # -- DCP's protocol, in the order DCP calls it ------------------------------------------------------

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        """Start a new save; a ``checkpoint_id`` passed to ``dcp.save`` names the branch to advance."""
        if checkpoint_id is not None:
            branch = os.fspath(checkpoint_id)
            check_ref_name(branch, kind="branch")
            self.branch = branch
        self.snapshot = None
        self._pending = None

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        """On the coordinator, check the save as ``Store.save`` does and read the head it will move from.

        Raises:
            StateError: DCP runs without collectives (``use_collectives=False``): every rank would commit
                alone, so there would be no point where all ranks have succeeded.
            RefConflictError, RecordError, RevisionError: as ``Store.save``, before any byte is written.
        """
        if kwargs.get("use_collectives", True) is False:
            raise StateError(
                "ckpt.dcp.StorageWriter needs DCP's collectives (use_collectives=True): the coordinator commits "
                "the snapshot once every rank has written its shards"
            )
        self._coordinator = is_coordinator
        if is_coordinator:
            self._pending = _store.begin(self.store, self.branch, **self._fields)

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        """Nothing to add: chunk addresses are content digests, known only once the bytes are hashed."""
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        """Nothing to add: DCP's planner already gave each shard and value to one rank."""
        return plans

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        """Write this rank's shards and values: tensors as chunks (in parallel), values as typed JSON.

        Non-tensor values are all checked before the first chunk is written.

        Raises:
            UnsupportedStateError: a value typed JSON cannot hold (named by its DCP key), or a planner without
                ``lookup_object`` (its ``resolve_data`` would hand over a pickle).
        """
        values: list[tuple[WriteItem, Any, list[str]]] = []
        sources: dict[str, TensorSource] = {}
        for item in plan.items:
            if item.type == WriteItemType.BYTE_IO:
                tree, inner = _flatten_value(planner, item)
                keys = []
                for name, src in inner.items():
                    keys.append(name)
                    sources[_key(item, name)] = src
                values.append((item, tree, keys))
        tensor_items: list[WriteItem] = []
        entries: dict[str, TensorEntry] = {}
        copied = 0  # bytes of GPU or strided tensors copied into CPU memory and not written yet
        for item in plan.items:
            if item.type != WriteItemType.BYTE_IO:
                tensor = planner.resolve_data(item)
                if not isinstance(tensor, torch.Tensor):
                    raise StateError(f"DCP's planner gave a {type(tensor).__name__} for tensor {item.index.fqn!r}")
                if tensor.device.type != "cpu" or not tensor.is_contiguous():
                    copied += tensor.numel() * tensor.element_size()
                sources[_key(item)] = torch_source(tensor.detach(), item.index.fqn)
                tensor_items.append(item)
                if copied >= STAGING_BYTES:  # write what is staged before copying more
                    entries.update(_store.write_tensors(self.store, sources, compress=self.compression)[0])
                    sources, copied = {}, 0
        entries.update(_store.write_tensors(self.store, sources, compress=self.compression)[0])

        results: list[WriteResult] = []
        for item in tensor_items:
            entry = entries[_key(item)]
            results.append(
                WriteResult(
                    index=item.index,
                    size_in_bytes=entry.nbytes,
                    storage_data={"dtype": entry.dtype, "shape": entry.shape, "chunks": entry.chunks},
                )
            )
        for item, tree, keys in values:
            inner_entries = {name: entries[_key(item, name)].model_dump(mode="json") for name in keys}
            size = sum(entries[_key(item, name)].nbytes for name in keys)
            results.append(
                WriteResult(index=item.index, size_in_bytes=size, storage_data={"tree": tree, "tensors": inner_entries})
            )
        future: Future[list[WriteResult]] = Future()
        future.set_result(results)
        return future

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        """On the coordinator, once every rank succeeded: write the table and the record, move the branch.

        The new snapshot's id is put in ``metadata.storage_data["snapshot"]`` (DCP returns that metadata to
        every rank) and the snapshot in ``self.snapshot``.

        Raises:
            RecordError: the ranks' results do not add up to DCP's metadata (a shard missing, a dtype or shape
                that differs); nothing is committed.
            RefConflictError: the branch moved while saving; the snapshot is stored and in the reflog.
        """
        if self._pending is None:
            raise StateError("StorageWriter.finish called on a rank that did not set up the save as coordinator")
        tensors, tree = assemble(metadata, results)
        snap = _store.commit(self.store, self._pending, tensors=tensors, tree=tree)
        self.snapshot = snap
        metadata.storage_data = {"snapshot": snap.id}

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        """Never picked from a path alone: a ckpt writer needs its store."""
        return False


def _key(item: WriteItem, inner: str | None = None) -> str:
    offset = tuple(item.index.offset) if item.index.offset is not None else None
    return repr((item.index.fqn, offset, inner))


def _flatten_value(planner: SavePlanner, item: WriteItem) -> tuple[Any, dict[str, TensorSource]]:
    """A non-tensor value as typed JSON (and any tensors inside it), never through ``resolve_data``'s pickle."""
    lookup = getattr(planner, "lookup_object", None)
    if lookup is None:
        raise UnsupportedStateError(
            f"cannot store the value {item.index.fqn!r}: the planner {type(planner).__name__} has no lookup_object, "
            "and its resolve_data hands over a pickle, which ckpt never stores",
            hint="use torch.distributed.checkpoint's DefaultSavePlanner (or a subclass of it)",
        )
    value = lookup(item.index)
    try:
        return flatten(value)
    except UnsupportedStateError as e:
        raise UnsupportedStateError(
            f"cannot store the value {item.index.fqn!r} of this state dict: {e.message}",
            hint="ckpt keeps non-tensor state as typed JSON (numbers, strings, None, lists, tuples, dicts) and "
            "never pickles; turn bytes into a tensor (torch.frombuffer(data, dtype=torch.uint8)) or the value "
            "into plain data",
        ) from e


def assemble(metadata: Metadata, results: list[list[WriteResult]]) -> tuple[dict[str, TensorEntry], Any]:
    """The tensor table entries and typed-JSON tree of a distributed save, from DCP's metadata and results.

    Tensors held in blocks by several ranks become sharded entries (blocks sorted by offsets); a tensor held
    whole by one rank (a plain or replicated tensor) becomes an ordinary entry. The tree is the nested state
    DCP flattened (its planner data), so ``store.load`` gives it back with the model's own names.

    Raises:
        RecordError: a block or value that DCP's metadata lists is missing from the results, or its dtype or
            shape differs.
    """
    written: dict[tuple[str, tuple[int, ...] | None], dict[str, Any]] = {}
    for rank_results in results:
        for result in rank_results:
            index = result.index
            offset = tuple(int(x) for x in index.offset) if index.offset is not None else None
            written[(index.fqn, offset)] = result.storage_data
    md = metadata.state_dict_metadata
    mappings: dict[str, tuple[PathItem, ...]] = {}
    if isinstance(metadata.planner_data, Mapping):
        mappings = dict(walk_paths(metadata.planner_data))
    order = [fqn for fqn in mappings if fqn in md] + [fqn for fqn in md if fqn not in mappings]
    entries: dict[int, TensorEntry] = {}

    def placeholder(entry: TensorEntry) -> TensorSource:
        src = TensorSource(entry.dtype, entry.shape, "torch", memoryview(b""))
        entries[id(src)] = entry
        return src

    leaves: list[tuple[tuple[PathItem, ...], Any]] = []
    for fqn in order:
        path = mappings.get(fqn, (fqn,))
        item_md = md[fqn]
        if isinstance(item_md, TensorStorageMetadata):
            leaves.append((path, placeholder(_tensor_entry(fqn, item_md, written))))
        elif isinstance(item_md, BytesStorageMetadata):
            data = written.get((fqn, None))
            if data is None or "tree" not in data:
                raise RecordError(f"DCP saved the value {fqn!r} but no rank wrote it")
            inner = {n: TensorEntry.model_validate(e) for n, e in data["tensors"].items()}

            def inner_tensor(name: str, inner: dict[str, TensorEntry] = inner) -> TensorSource:
                return placeholder(inner[name])

            leaves.append((path, unflatten(data["tree"], inner_tensor)))
        else:
            raise RecordError(f"DCP metadata for {fqn!r} is neither a tensor nor bytes: {type(item_md).__name__}")
    tree, named = flatten(build(leaves))
    return {name: entries[id(src)] for name, src in named.items()}, tree


def _tensor_entry(
    fqn: str, item_md: TensorStorageMetadata, written: Mapping[tuple[str, tuple[int, ...] | None], dict[str, Any]]
) -> TensorEntry:
    dtype = dtype_name(item_md.properties.dtype)
    if dtype is None:
        raise UnsupportedStateError(f"cannot store the tensor {fqn!r}: ckpt has no name for {item_md.properties.dtype}")
    shape = tuple(int(d) for d in item_md.size)
    blocks: list[TensorShard] = []
    for chunk in item_md.chunks:
        offsets = tuple(int(x) for x in chunk.offsets)
        sizes = tuple(int(x) for x in chunk.sizes)
        data = written.get((fqn, offsets))
        if data is None or "chunks" not in data:
            raise RecordError(f"DCP saved the block of {fqn!r} at {list(offsets)}, but no rank wrote it")
        if data["dtype"] != dtype or tuple(data["shape"]) != sizes:
            raise RecordError(
                f"the block of {fqn!r} at {list(offsets)} was written as {data['dtype']} {list(data['shape'])}, "
                f"DCP's metadata says {dtype} {list(sizes)}"
            )
        if 0 not in sizes:
            blocks.append(TensorShard(offsets=offsets, sizes=sizes, chunks=tuple(data["chunks"])))
    if 0 in shape:
        return TensorEntry(dtype=dtype, shape=shape, chunks=())
    if len(blocks) == 1 and blocks[0].sizes == shape:
        return TensorEntry(dtype=dtype, shape=shape, chunks=blocks[0].chunks)
    return TensorEntry(dtype=dtype, shape=shape, chunks=(), shards=tuple(sorted(blocks, key=lambda b: b.offsets)))
