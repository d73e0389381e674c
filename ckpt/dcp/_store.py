"""Every use ``ckpt.dcp`` makes of the store's internals, behind six functions.

The DCP writer and reader reach the store's internals only here, through its internal interface
(``ckpt.store.store_parts``: objects, refs, backend); they call:

- ``begin``: the checks ``Store.save`` makes before writing (branch name, head, parents, relation, record
  fields), giving a ``Pending`` save; nothing is written.
- ``write_tensors``: chunk, hash and store tensors (``TensorSource``), in parallel → table entries.
- ``commit``: table, snapshot record, flush, then the branch by compare-and-swap from the head ``begin`` read.
- ``open_snapshot``: the snapshot a revision names and its tensor table (refused if pruned).
- ``chunk_jobs``: read jobs that fill a byte buffer from a tensor's (or one block's) chunks, verified.
- ``read_tensors``: whole tensors of a snapshot (as ``Store.load`` reads them).

When the store's write path moves (``ckpt/store/_commit.py``, ``_reading.py``), only this file follows it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import JsonValue, ValidationError

from ckpt._version import __version__
from ckpt.errors import RecordError, RefConflictError
from ckpt.model import (
    FileEntry,
    Relation,
    Snapshot,
    TensorEntry,
    TensorTable,
    check_ref_name,
    clean_files,
    clean_metrics,
    format_time,
    utcnow,
)
from ckpt.state import TensorSource
from ckpt.store import (
    INHERITS_FILES,
    PackCache,
    Store,
    WriteStats,
    inherited_files,
    store_parts,
)
from ckpt.store import chunk_jobs as store_chunk_jobs
from ckpt.store import open_snapshot as store_open_snapshot
from ckpt.store import read_tensors as store_read_tensors
from ckpt.store import write_files as store_write_files
from ckpt.store import write_tensors as store_write_tensors

__all__ = [
    "Pending",
    "begin",
    "chunk_jobs",
    "commit",
    "open_snapshot",
    "pack_cache",
    "read_tensors",
    "write_tensors",
]

#: A read job: reads some chunks into place and returns how many bytes it read.
Job = Callable[[], int]


@dataclass(frozen=True)
class Pending:
    """A save checked and ready to commit: its branch, the head it started from, its record (no table yet)."""

    branch: str
    head: str | None
    record: Snapshot
    files: dict[str, bytes] | None


def begin(
    store: Store,
    branch: str,
    *,
    parents: Sequence[str] | None,
    relation: Relation | None,
    model: str | None,
    step: int | None,
    epoch: int | float | None,
    metrics: Mapping[str, float] | None,
    message: str | None,
    metadata: Mapping[str, JsonValue] | None,
    files: Mapping[str, bytes] | None,
    force: bool,
) -> Pending:
    """Check a save as ``Store.save`` does, before any byte is written; read the head it will move from.

    Raises:
        InvalidNameError: bad branch name. RefExistsError: a tag of that name exists.
        RevisionError: a parent does not resolve. RecordError: bad relation, metrics, message or metadata.
        RefConflictError: ``parents`` do not include the branch's head (a non-fast-forward save) and not
            ``force``.
    """
    check_ref_name(branch, kind="branch")
    parts = store_parts(store)
    head = parts.refs.branch_head(branch)
    if head is None:
        parts.refs.check_new_name(branch, "branch")
    parent_ids = [store.resolve(p).id for p in parents] if parents is not None else ([head] if head else [])
    if head is not None and head not in parent_ids and not force:
        raise RefConflictError(
            f"branch {branch!r} is at {head[:12]}, which is not among the parents of this save",
            ref=f"refs/heads/{branch}",
            expected=parent_ids[0] if parent_ids else None,
            actual=head,
            hint="branch off (store.branch) or move the branch first (store.reset), or pass force=True",
        )
    rel: Relation = relation or ("continue" if parent_ids else "import")
    if rel == "import" and parent_ids:
        raise RecordError("relation 'import' is for snapshots without parents")
    if rel != "import" and not parent_ids:
        raise RecordError(f"relation {rel!r} needs a parent", hint="pass parents=[rev]")
    if rel == "adapter":
        raise RecordError("an adapter is saved with ckpt.save_adapter, not through torch.distributed.checkpoint")
    if model is None and parent_ids:
        model = parts.objects.get_snapshot(parent_ids[0]).model
    try:
        record = Snapshot(
            parents=tuple(parent_ids),
            relation=rel,
            model=model,
            step=step,
            epoch=epoch,
            metrics=clean_metrics(metrics),
            message=message,
            metadata=dict(metadata or {}),
            created_at=format_time(utcnow()),
            ckpt_version=__version__,
            base=None,
            table="0" * 64,
            tensor_count=0,
            tensor_bytes=0,
        )
        record.record_bytes()
    except RecordError as e:
        raise RecordError(
            f"cannot record this snapshot: {e.message}", hint=e.hint or "", cli_hint=e.cli_hint or ""
        ) from e
    except ValidationError as e:
        raise RecordError(f"cannot record this snapshot: {e}") from e
    file_data = clean_files(files) if files is not None else None
    return Pending(branch=branch, head=head, record=record, files=file_data)


def write_tensors(
    store: Store, sources: Mapping[str, TensorSource], *, compress: bool | None = None
) -> tuple[dict[str, TensorEntry], int]:
    """Store the chunks of tensors (each chunk once; chunks the store holds are skipped), in parallel, encoded
    (byte-grouped zstd) where the store's ``compression`` is on and that pays, as ``Store.save`` does; never as
    deltas nor in packs (a rank's blocks have no reference in the parent of their own, and a block is never
    packed). ``compress``: ``True`` or ``False`` overrides the store's setting.

    Returns:
        Table entries by name, and the bytes actually written (new chunks with their headers).
    """
    stats = WriteStats()
    parts = store_parts(store)
    entries = store_write_tensors(
        parts.objects,
        sources,
        store.chunk_size,
        stats=stats,
        compress=parts.config.compression if compress is None else compress,
    )
    return entries, stats.bytes_written


def commit(store: Store, pending: Pending, *, tensors: dict[str, TensorEntry], tree: Any) -> Snapshot:
    """Write the table and the snapshot record, flush, then move the branch from the head ``begin`` read.

    Raises:
        RecordError: the table is invalid (e.g. blocks that do not cover a tensor).
        RefConflictError: the branch moved since ``begin``; the snapshot is stored and in the reflog.
    """
    record = pending.record
    parts = store_parts(store)
    stats = WriteStats()
    if pending.files is None and record.parents and record.relation in INHERITS_FILES:
        files: dict[str, FileEntry] = inherited_files(parts, record.parents[0], stats)
    else:
        files = store_write_files(parts.objects, pending.files or {}, store.chunk_size, stats=stats)
    try:
        table = TensorTable(chunk_size=store.chunk_size, tensors=tensors, tree=tree, files=files)
    except ValidationError as e:
        raise RecordError(f"cannot record this snapshot's tensor table: {e}") from e
    record = record.model_copy(
        update={
            "table": parts.objects.put_table(table),
            "tensor_count": len(tensors),
            "tensor_bytes": sum(t.nbytes for t in tensors.values()),
        }
    )
    snap = parts.objects.put_snapshot(record)
    parts.backend.flush()
    parts.refs.move_branch(pending.branch, pending.head, snap.id, action="commit", message=record.message)
    return snap


def open_snapshot(store: Store, rev: str) -> tuple[Snapshot, TensorTable]:
    """The snapshot a revision names and its tensor table.

    Raises:
        RevisionError: ``rev`` names nothing. MissingObjectError: the snapshot was pruned.
    """
    return store_open_snapshot(store_parts(store), rev)


def chunk_jobs(
    store: Store,
    chunks: Sequence[str],
    nbytes: int,
    chunk_size: int,
    dest: memoryview,
    *,
    lo: int,
    hi: int,
    verify: bool,
    tensor: str,
    snapshot: str,
) -> list[Job]:
    """Jobs that read the chunks of ``nbytes`` bytes overlapping ``[lo, hi)`` into ``dest`` (verified)."""
    return store_chunk_jobs(
        store_parts(store).objects,
        chunks,
        nbytes,
        chunk_size,
        dest,
        lo=lo,
        hi=hi,
        verify=verify,
        tensor=tensor,
        snapshot=snapshot,
    )


def pack_cache(store: Store, snap: Snapshot, *, verify: bool) -> PackCache:
    """A cache that reads each pack (format 3.0) of ``snap`` once for the packed tensors read from it."""
    return PackCache(store_parts(store).objects, verify=verify, snapshot=snap.id)


def read_tensors(
    store: Store, snap: Snapshot, table: TensorTable, names: Sequence[str], *, verify: bool
) -> dict[str, Any]:
    """Whole tensors of a snapshot as torch tensors, read (and verified) as ``Store.load`` reads them."""
    entries = {name: table.tensors[name] for name in names}
    return store_read_tensors(
        store_parts(store).objects, entries, table.chunk_size, snapshot=snap.id, verify=verify, framework="torch"
    )
