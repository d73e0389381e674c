"""Writing a snapshot as a Hugging Face-style folder: safetensors weights, attached files, ``state.json``.

``write_folder`` does the work of ``ckpt.export`` once the layout is chosen: an imported snapshot gets its
original files back byte for byte (``_recorded_plan``); any other gets ``save_pretrained``'s shards of its model
tensors (``_fresh_plan``, cut by ``_shards``) and, for a training snapshot, ``state.json``
(``_state_doc``). The folder is written by ``_folder_writer.FolderWriter``, which owns its output.
Nothing here imports torch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from ckpt import settings
from ckpt.errors import CkptError, RecordError
from ckpt.interop._diffusers import MODEL_INDEX, pipeline_weight_files
from ckpt.interop._folder_writer import FolderWriter
from ckpt.interop._folders import check_relative_path, os_error
from ckpt.interop._model_card import CARD_FILE, card_for_export
from ckpt.interop._safetensors import TensorInfo, build_header, parse_header, write_file
from ckpt.interop._shards import WEIGHTS_SUFFIX, index_json, plan_shards, shard_names
from ckpt.interop._state_doc import HEADER_PREFIX, LAYOUT_KEY, STATE_JSON, STATE_TENSORS, is_ckpt_state, state_doc
from ckpt.model import RESERVED_FILE_PREFIX, SAFETENSORS_INDEX_SUFFIX, Snapshot, TensorEntry, TensorTable
from ckpt.state import split_model, tensor_groups, tensor_paths

if TYPE_CHECKING:
    from ckpt.store import LazyTensors, Progress, Store

__all__ = ["ExportResult", "write_folder"]

_FORMAT_METADATA = {"format": "pt"}
_PREFETCH_BYTES = 256 << 20  # tensor bytes read ahead of the writer, at most (one chunk at least)
_BATCH_BYTES = 4 << 20  # small chunks are read in batches up to this size (and 256 chunks)


class ExportResult(BaseModel):
    """What ``ckpt.export`` did.

    Attributes:
        path: the folder written.
        written: the files written, in the order written.
        removed: files the export owned and replaced: earlier weights (``*.safetensors``), their index, or
            ckpt's ``state.json`` that the new export does not write again, and files or links that stood
            where it needed a folder. Nothing else in the folder is touched.
    """

    model_config = ConfigDict(frozen=True)

    path: Path
    written: tuple[Path, ...]
    removed: tuple[Path, ...] = ()


@dataclass
class _Out:
    """One file to write: a safetensors file (header, tensors in data order, their table paths) or bytes."""

    rel: str
    header: bytes | None = None
    infos: tuple[TensorInfo, ...] = ()
    paths: Mapping[str, str] | None = None
    data: bytes | None = None


def write_folder(
    store: Store,
    snap: Snapshot,
    dest: Path,
    *,
    limit: int,
    weights_name: str,
    default_files: Mapping[str, bytes],
    force: bool,
    progress: Progress | None,
) -> ExportResult:
    """Write ``snap`` into ``dest`` (see ``ckpt.export``, which checks its arguments and picks the layout).

    Args:
        store: the store.
        snap: the snapshot (not pruned).
        dest: the folder to write.
        limit: the largest shard, in bytes.
        weights_name: the weights' file name when there is one file; shards are named from it.
        default_files: files to write when the snapshot has none of that name.
        force: write into a non-empty folder.
        progress: called with byte counts as tensor bytes are written.

    Returns:
        The folder, the files written and the files removed.

    Raises:
        RecordError: a bad ``weights_name``, the folder is not empty (without ``force``), a path that would leave
            the folder or is too long, a dtype the safetensors format lacks, a header over 100 MB.
        BackendError: the OS refused; the folder is left as it was.
        CorruptChunkError: a chunk does not match its digest (the folder is left as it was).
    """
    lazy = store.tensors(snap.id)
    table = lazy.table
    attached = store.files(snap.id)
    if not (weights_name.endswith(WEIGHTS_SUFFIX) and check_relative_path(weights_name) and "/" not in weights_name):
        raise RecordError(
            f"weights_name must be a .safetensors file name, got {weights_name!r}", hint="e.g. model.safetensors"
        )

    outs = _recorded_plan(snap, table, attached)
    recorded = outs is not None
    doc: bytes | None = None
    if outs is None:
        outs = _pipeline_plan(table, attached, limit)
    if outs is None:
        outs, doc = _fresh_plan(snap, table, limit, weights_name)
    generated = {o.rel for o in outs} | ({STATE_JSON} if doc is not None else set())
    library = "diffusers" if MODEL_INDEX in attached else "peft" if weights_name.startswith("adapter_") else None
    card = card_for_export(store, snap, attached.get(CARD_FILE), library_name=library)  # lineage for the Hub
    shadowed = sorted(n for n in attached if n in generated and not n.startswith(RESERVED_FILE_PREFIX))
    if shadowed:  # the attached bytes would be left out of the folder without a word
        raise RecordError(
            f"snapshot {snap.id[:12]} has an attached file named {shadowed[0]!r}, the name of a file the export "
            "writes from its tensors; exporting would leave the attached bytes out",
            hint="read it with store.files(rev), or save the snapshot again with the file under another name",
        )
    for name, data in {**attached, **{k: v for k, v in default_files.items() if k not in attached}}.items():
        stale_index = not recorded and name.endswith(SAFETENSORS_INDEX_SUFFIX)
        if name.startswith(RESERVED_FILE_PREFIX) or name in generated or stale_index:
            continue  # a fresh layout makes any attached index stale
        data = card if name == CARD_FILE and card is not None else data
        outs.append(_Out(check_relative_path(name, what="attached file"), data=data))
    if card is not None and CARD_FILE not in attached and CARD_FILE not in default_files:
        outs.append(_Out(CARD_FILE, data=card))
    if doc is not None:
        outs.append(_Out(STATE_JSON, data=doc))

    weight_dirs = {o.rel.rpartition("/")[0] for o in outs if o.header is not None}

    def owns(rel: str, found: Path) -> bool:
        folder, _, name = rel.rpartition("/")
        if folder in weight_dirs and (name.endswith(WEIGHTS_SUFFIX) or name.endswith(SAFETENSORS_INDEX_SUFFIX)):
            return True
        return rel == STATE_JSON and is_ckpt_state(found)

    jobs = [
        (p, i, n)
        for o in outs
        if o.paths
        for info in o.infos
        for p in [o.paths[info.name]]
        for i, n in _chunks(table, p)
    ]
    with FolderWriter(dest, [o.rel for o in outs], force=force, owns=owns) as writer:
        chunks = _prefetch(lazy, jobs)
        try:
            for o in outs:
                target = writer.target(o.rel)
                if o.data is not None:
                    _write_bytes(target, o.data, dest / o.rel)
                    continue
                assert o.header is not None and o.paths is not None
                items = []
                for info in o.infos:
                    count = len(_chunks(table, o.paths[info.name]))
                    items.append((info.name, info.dtype, info.shape, _counted(islice(chunks, count), progress)))
                write_file(target, items, header_bytes=o.header, infos=o.infos)
        finally:
            chunks.close()
        writer.commit()
    return ExportResult(
        path=dest, written=tuple(dest / o.rel for o in outs), removed=tuple(dest / r for r in writer.removed)
    )


def _chunks(table: TensorTable, tensor_path: str) -> list[tuple[int, int]]:
    """(index, size) of each piece a tensor's bytes are read in; index -1: the whole of a sharded tensor."""
    entry = table.tensors[tensor_path]
    size, cs = entry.nbytes, table.chunk_size
    if entry.shards:  # blocks of a distributed save: its bytes in order need all of them
        return [(-1, size)]
    return [(i, min(cs, size - i * cs)) for i in range(len(entry.chunks))]


def _counted(pieces: Iterator[bytes], progress: Progress | None) -> Iterator[bytes]:
    for piece in pieces:
        if progress:
            progress(len(piece))
        yield piece


def _prefetch(lazy: LazyTensors, jobs: Sequence[tuple[str, int, int]]) -> Generator[bytes, None, None]:
    """Every chunk of ``jobs`` in order, read ahead in parallel (at most ``_PREFETCH_BYTES`` ahead).

    Small chunks are read in batches (one task per batch), so that tens of thousands of small tensors do not
    cost a thread hand-off each.
    """
    batches: list[tuple[list[tuple[str, int]], int]] = []
    for name, index, size in jobs:
        if not batches or len(batches[-1][0]) >= 256 or batches[-1][1] + size > _BATCH_BYTES:
            batches.append(([], 0))
        batch, total = batches[-1]
        batch.append((name, index))
        batches[-1] = (batch, total + size)
    if not batches:
        return

    def read(batch: list[tuple[str, int]]) -> list[bytes]:
        return [
            lazy.chunk_bytes(name, index) if index >= 0 else b"".join(lazy.byte_pieces(name)) for name, index in batch
        ]

    pool = ThreadPoolExecutor(settings.threads(), thread_name_prefix="ckpt-export")
    pending: deque[tuple[Future[list[bytes]], int]] = deque()
    ahead = 0
    submitted = 0
    try:
        while submitted < len(batches) or pending:
            while submitted < len(batches) and (not pending or ahead < _PREFETCH_BYTES):
                batch, size = batches[submitted]
                pending.append((pool.submit(read, batch), size))
                ahead += size
                submitted += 1
            future, size = pending.popleft()
            ahead -= size
            yield from future.result()
    finally:
        for future, _ in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _write_bytes(target: Path, data: bytes, shown: Path) -> None:
    try:
        with open(target, "xb") as f:
            f.write(data)
    except OSError as e:
        raise os_error(e, f"writing {shown}") from e


def _recorded_plan(snap: Snapshot, table: TensorTable, attached: Mapping[str, bytes]) -> list[_Out] | None:
    """The imported files, if the snapshot records them and they hold exactly its tensors and nothing else."""
    layout = snap.metadata.get(LAYOUT_KEY)
    if not isinstance(layout, list) or not layout:
        return None
    groups = tensor_groups(table.tree)
    if groups is None:
        return None
    outs: list[_Out] = []
    covered: set[str] = set()
    for rel in layout:
        if not isinstance(rel, str) or not rel.endswith(WEIGHTS_SUFFIX):
            return None
        try:
            check_relative_path(rel)
        except RecordError:
            return None
        header = attached.get(f"{HEADER_PREFIX}{rel}.header")
        if header is None:
            return None
        try:
            _, infos = parse_header(header)
        except CkptError:
            return None
        group = groups.get(rel.rpartition("/")[0] or "model")
        if group is None:
            return None
        paths: dict[str, str] = {}
        for info in infos:
            tensor_path = group.get(info.name)
            entry: TensorEntry | None = table.tensors.get(tensor_path or "")
            if tensor_path is None or entry is None or (entry.dtype, entry.shape) != (info.dtype, info.shape):
                return None
            if tensor_path in covered:
                return None
            covered.add(tensor_path)
            paths[info.name] = tensor_path
        outs.append(_Out(rel, header, tuple(infos), paths))
    if covered != set(table.tensors) or covered != {p for g in groups.values() for p in g.values()}:
        return None
    return outs


def _pipeline_plan(table: TensorTable, attached: Mapping[str, bytes], limit: int) -> list[_Out] | None:
    """A diffusers pipeline saved from its modules: each component's tensors in its folder, as ``save_pretrained``
    names and shards them (``unet/diffusion_pytorch_model.safetensors``, ``text_encoder/model.safetensors``);
    ``None`` unless the state is only components that ``model_index.json`` names."""
    groups = tensor_groups(table.tree)
    files = pipeline_weight_files(attached, groups) if groups else None
    if groups is None or files is None or {p for g in groups.values() for p in g.values()} != set(table.tensors):
        return None
    outs: list[_Out] = []
    for component, paths in groups.items():
        entries = {name: table.tensors[p] for name, p in paths.items()}
        shards = plan_shards([(name, entry.nbytes) for name, entry in entries.items()], limit)
        names = shard_names(files[component], len(shards))
        for filename, shard in zip(names, shards, strict=True):
            header, infos = build_header([(n, entries[n].dtype, entries[n].shape) for n in shard], _FORMAT_METADATA)
            outs.append(_Out(f"{component}/{filename}", header, tuple(infos), {n: paths[n] for n in shard}))
        if len(shards) > 1:
            weight_map = {n: filename for filename, shard in zip(names, shards, strict=True) for n in shard}
            total = sum(e.nbytes for e in entries.values())
            data = index_json(weight_map, total_size=total, total_parameters=sum(e.numel for e in entries.values()))
            outs.append(_Out(f"{component}/{files[component]}.index.json", data=data))
    return outs


def _fresh_plan(snap: Snapshot, table: TensorTable, limit: int, weights_name: str) -> tuple[list[_Out], bytes | None]:
    """``save_pretrained``'s shards for the model tensors (with the index), then ckpt's state files if needed."""
    model_tensors, remainder = split_model(table.tree)
    for tensor_path in model_tensors.values():
        if tensor_path not in table.tensors:
            raise RecordError(
                f"snapshot {snap.short_id}: the state tree names {tensor_path!r}, which has no entry",
                hint="the snapshot's table is damaged: check the store with `store.verify()`",
                cli_hint="the snapshot's table is damaged: check the store with `ckpt verify`",
            )
    entries = {name: table.tensors[tensor_path] for name, tensor_path in model_tensors.items()}
    shards = plan_shards([(name, entry.nbytes) for name, entry in entries.items()], limit)
    names = shard_names(weights_name, len(shards))
    outs: list[_Out] = []
    for filename, shard in zip(names, shards, strict=True):
        header, infos = build_header([(n, entries[n].dtype, entries[n].shape) for n in shard], _FORMAT_METADATA)
        outs.append(_Out(filename, header, tuple(infos), {n: model_tensors[n] for n in shard}))
    index_name: str | None = None
    if len(shards) > 1:
        index_name = f"{weights_name}.index.json"
        weight_map = {name: o.rel for o in outs for name in o.paths or {}}
        total_size = sum(e.nbytes for e in entries.values())
        total_parameters = sum(e.numel for e in entries.values())
        data = index_json(weight_map, total_size=total_size, total_parameters=total_parameters)
        outs.append(_Out(index_name, data=data))
    if remainder is None:
        return outs, None

    other = [p for p in tensor_paths(remainder) if p in table.tensors]
    state_file: str | None = None
    if other:
        state_file = STATE_TENSORS
        header, infos = build_header(
            [(p, table.tensors[p].dtype, table.tensors[p].shape) for p in other], _FORMAT_METADATA
        )
        outs.append(_Out(state_file, header, tuple(infos), {p: p for p in other}))
    return outs, state_doc(snap, table, weights=names if shards else [], index=index_name, state_file=state_file)
