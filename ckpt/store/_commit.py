"""The commit protocol of a save: checks → chunks → table → record → compare-and-swap of the branch.

1. Every check that can refuse the save runs before the first byte is written: the branch name, its head
   and the parents (a save only moves a branch forward), the relation, the record's fields, the state tree.
2. Chunks: each tensor's bytes are cut, hashed and written once (skipped when present); tied tensors once.
3. The tensor table, addressed by its digest.
4. The snapshot record, addressed by its digest (the snapshot id); then the backend is flushed.
5. The branch moves by compare-and-swap against the head read in step 1: the commit point. A branch that
   moved meanwhile raises ``RefConflictError``; everything written stays in the store and the reflog.

A crash at any point leaves at most unreferenced objects (``gc`` collects them after its grace period);
readers never see a half-written snapshot. See docs/concepts/commit-protocol.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ckpt._version import __version__
from ckpt.errors import CkptError, MissingObjectError, RecordError, RefConflictError
from ckpt.model import (
    RESERVED_FILE_PREFIX,
    FileEntry,
    Relation,
    SaveFields,
    Snapshot,
    TensorEntry,
    TensorTable,
    canonical_json,
    check_ref_name,
    clean_files,
    clean_metrics,
    format_time,
    paused_gc,
    utcnow,
)
from ckpt.state import TensorSource, flatten, tied_groups
from ckpt.store._parts import StoreParts
from ckpt.store._transfer import WriteStats, write_files, write_tensors
from ckpt.store._types import Progress

__all__ = ["INHERITS_FILES", "check_new_line", "inherited_files", "save"]

#: Relations whose snapshots keep their first parent's attached files unless given their own.
INHERITS_FILES = frozenset({"continue", "finetune", "quantized"})


@dataclass(frozen=True)
class _Checked:
    """A save that passed every check: what to write, and the head the branch must still be at."""

    head: str | None
    record: Snapshot  # without its table yet
    tree: Any
    tensors: dict[str, TensorSource]
    tied: list[list[str]]
    files: dict[str, bytes]
    inherit_from: str | None  # the parent whose attached files the snapshot keeps


def save(
    parts: StoreParts,
    state: Any,
    branch: str,
    fields: SaveFields,
    *,
    progress: Progress | None,
    force: bool,
    compression: bool | None = None,
) -> Snapshot:
    """Save ``state`` as a new snapshot and move ``branch`` to it; see ``Store.save``."""
    with paused_gc():  # a state of 30,000 tensors makes some 10^5 objects and frees none (_canonical.paused_gc)
        return _save(parts, state, branch, fields, progress=progress, force=force, compression=compression)


def _save(
    parts: StoreParts,
    state: Any,
    branch: str,
    fields: SaveFields,
    *,
    progress: Progress | None,
    force: bool,
    compression: bool | None,
) -> Snapshot:
    if compression is not None and not isinstance(compression, bool):
        raise RecordError(f"compression must be True, False or None, got {compression!r}"[:120])
    compress = parts.config.compression if compression is None else compression
    checked = _check(parts, state, branch, fields, force=force)
    stats = WriteStats()
    tensors = checked.tensors
    first = {name: group[0] for group in checked.tied for name in group}  # a tied group is written once
    once = {name: src for name, src in tensors.items() if first.get(name, name) == name}
    depth = parts.config.delta_depth if compress else 0
    # the first parent's chunks: what a delta is coded against, and, where a chunk is unchanged, the sign that
    # it is stored already (checked, never encoded nor uploaded again: ``put_chunk``)
    references = _parent_entries(parts, checked.record.parents)
    written = write_tensors(
        parts.objects,
        once,
        parts.chunk_size,
        stats=stats,
        progress=progress,
        compress=compress,
        references=references,
        max_depth=depth,
        pack_size=parts.config.pack_size,
    )
    entries = {name: written[first.get(name, name)] for name in tensors}
    if checked.inherit_from is not None:
        file_entries = inherited_files(parts, checked.inherit_from, stats)
    else:
        file_entries = write_files(parts.objects, checked.files, parts.chunk_size, stats=stats, compress=compress)
    table = TensorTable(
        chunk_size=parts.chunk_size,
        tensors=entries,
        tree=checked.tree,
        files=file_entries,
        tied=tuple(tuple(group) for group in checked.tied),
    )
    record = checked.record.model_copy(update={"table": parts.objects.put_table(table)})
    snap = parts.objects.put_snapshot(record)
    parts.backend.flush()
    parts.refs.move_branch(branch, checked.head, snap.id, action="commit", message=fields.get("message"))
    return snap


def _parent_entries(parts: StoreParts, parents: tuple[str, ...]) -> dict[str, TensorEntry] | None:
    """The first parent's tensor entries (what a delta is coded against), or ``None`` (no parent, another chunk
    size, or a table that cannot be read: the save stores keyframes, ``verify`` reports the damage)."""
    if not parents:
        return None
    try:
        table = parts.objects.get_table(parts.objects.get_snapshot(parents[0]).table)
    except CkptError:
        return None
    return dict(table.tensors) if table.chunk_size == parts.chunk_size else None


def _check(parts: StoreParts, state: Any, branch: str, fields: SaveFields, *, force: bool) -> _Checked:
    """Everything that can refuse a save, before the first byte is written; reads the head to move from."""
    check_ref_name(branch, kind="branch")
    refs = parts.refs
    head = refs.branch_head(branch)
    if head is None:
        # names only: a branch of this name made meanwhile is for the swap to find (RefConflictError)
        refs.check_new_name(branch, "branch", same_branch_ok=True)
    parents = fields.get("parents")
    parent_ids = [parts.resolve(p).id for p in parents] if parents is not None else ([head] if head else [])
    if head is not None and head not in parent_ids and not force:
        raise RefConflictError(
            f"branch {branch!r} is at {head[:12]}, which is not a parent of this save "
            f"(parents: {', '.join(p[:12] for p in parent_ids) or 'none'}): saving would move the branch "
            "backwards or sideways and drop its head from its history",
            ref=f"refs/heads/{branch}",
            expected=parent_ids[0] if parent_ids else None,
            actual=head,
            hint=f"save on a new branch (store.branch('retry', at=...) then save to it), move {branch!r} "
            f"first (store.reset({branch!r}, rev)), or pass force=True; nothing was written",
        )
    base = fields.get("base")
    base_id = parts.resolve(base).id if base is not None else None
    rel: Relation = fields.get("relation") or ("continue" if parent_ids else "import")
    if rel == "adapter" and base_id is None and parent_ids:
        base_id = parent_ids[0]
    if rel == "import" and parent_ids:
        raise RecordError("relation 'import' is for snapshots without parents")
    if rel != "import" and not parent_ids:
        raise RecordError(f"relation {rel!r} needs a parent", hint="pass parents=[rev]")
    model = fields.get("model")
    if model is None and parent_ids:
        model = parts.objects.get_snapshot(parent_ids[0]).model
    metrics = clean_metrics(fields.get("metrics"))
    files = fields.get("files")
    file_data = clean_files(files)

    tree, tensors = flatten(state)
    canonical_json(tree)
    try:
        record = Snapshot(
            parents=tuple(parent_ids),
            relation=rel,
            model=model,
            step=fields.get("step"),
            epoch=fields.get("epoch"),
            metrics=metrics,
            message=fields.get("message"),
            metadata=dict(fields.get("metadata") or {}),
            created_at=format_time(utcnow()),
            ckpt_version=__version__,
            base=base_id,
            table="0" * 64,
            tensor_count=len(tensors),
            tensor_bytes=sum(t.nbytes for t in tensors.values()),
        )
        record.record_bytes()
    except RecordError as e:
        raise RecordError(
            f"cannot record this snapshot: {e.message}", hint=e.hint or "", cli_hint=e.cli_hint or ""
        ) from e
    except ValidationError as e:
        raise RecordError(f"cannot record this snapshot: {e}") from e
    inherit = parent_ids[0] if files is None and parent_ids and rel in INHERITS_FILES else None
    return _Checked(
        head=head,
        record=record,
        tree=tree,
        tensors=tensors,
        tied=tied_groups(tensors),  # paths that hold one tensor: its bytes are read and written once
        files=file_data,
        inherit_from=inherit,
    )


def check_new_line(parts: StoreParts, branch: str, relation: Relation) -> None:
    """The checks of ``Store.derive`` before it saves: a relation that starts a line, on a new branch.

    Raises:
        RecordError: ``import`` or ``continue``.
        InvalidNameError, RefExistsError: the branch name is bad or taken.
    """
    if relation in ("import", "continue"):
        raise RecordError(f"derive() starts a new line; relation {relation!r} is not one (use save())")
    parts.refs.check_new_name(branch, "branch")


def inherited_files(parts: StoreParts, parent_id: str, stats: WriteStats) -> dict[str, FileEntry]:
    """The first parent's attached files (but not its import bookkeeping under ``.ckpt/``).

    A save never references an object it did not write or find present: each inherited file is read back
    (and checked against its digests) and stored again, which writes nothing when its chunks are there and
    refreshes them for a gc running meanwhile.

    Raises:
        MissingObjectError: the parent's files are gone (it was pruned and collected).
        CorruptChunkError: one of them is damaged.
    """
    objects = parts.objects
    table = objects.get_table(objects.get_snapshot(parent_id).table)
    kept = {path: entry for path, entry in table.files.items() if not path.startswith(RESERVED_FILE_PREFIX)}
    data: dict[str, bytes] = {}
    for path, entry in kept.items():
        cs = table.chunk_size
        try:
            data[path] = b"".join(
                objects.read_chunk(d, min(cs, entry.size - i * cs), tensor=path, snapshot=parent_id)
                for i, d in enumerate(entry.chunks)
            )
        except MissingObjectError as e:
            raise MissingObjectError(
                f"the attached file {path!r} of the parent {parent_id[:12]} is no longer in the store "
                "(the parent was pruned and collected), so this save cannot keep it",
                hint="pass the files explicitly (files={...}), or files={} to attach none",
            ) from e
    return write_files(objects, data, parts.chunk_size, stats=stats)
