"""``Store``: snapshots, refs and revisions on one backend, and ``init``/``open`` to get one."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import JsonValue, ValidationError

from ckpt import settings
from ckpt._version import __version__
from ckpt.errors import (
    CkptError,
    FormatVersionError,
    FrozenRefError,
    IntegrityError,
    MissingObjectError,
    RecordError,
    RefConflictError,
    RefError,
    RevisionNotFoundError,
    StoreError,
    StoreExistsError,
    StoreNotFoundError,
)
from ckpt.model import (
    FORMAT_VERSION,
    READABLE_MAJOR,
    FileEntry,
    PrunedMarker,
    ReflogEntry,
    Relation,
    Snapshot,
    StoreConfig,
    TagRecord,
    TensorEntry,
    TensorTable,
    canonical_json,
    check_ref_name,
    file_path_problem,
    format_time,
    parse_json,
    utcnow,
    validate_record,
)
from ckpt.state import flatten, tensor_paths, tied_groups, unflatten
from ckpt.storage import Backend, open_backend
from ckpt.store import layout
from ckpt.store.gc import GcReport, OnDamage, plan_gc, release_needs, scan_liveness
from ckpt.store.objects import Objects
from ckpt.store.refs import Refs
from ckpt.store.repair import RepairReport, repair
from ckpt.store.retention import RetentionPolicy
from ckpt.store.revisions import ParsedRevision, parse_revision, resolve_base, resolve_reflog, walk_steps
from ckpt.store.shards import read_whole
from ckpt.store.sync import SyncReport, sync
from ckpt.store.transfer import Progress, WriteStats, read_tensors, write_files, write_tensors
from ckpt.store.verify import Damage, VerifyReport, release_damage, verify_snapshots

if TYPE_CHECKING:
    from ckpt.store.signing import PrivateKey, PublicKey, ReleaseSigner, ReleaseStatus

__all__ = ["Store", "init", "open"]

Framework = Literal["torch", "numpy"]

#: Relations whose snapshots keep their first parent's attached files unless given their own.
_INHERITS_FILES = frozenset({"continue", "finetune", "quantized"})


class Store:
    """A checkpoint store: content-addressed snapshots, branches and tags on one backend.

    Get one with ``ckpt.init(url)`` (new store) or ``ckpt.open(url)`` (existing store); do not construct it
    directly. A ``Store`` holds no cache: every call reads the current state of the backend, so several
    processes can share one store.

    Attributes:
        url: where the store lives.
        config: the store's configuration record.
        backend: the storage backend.

    Example:
        >>> import ckpt, torch
        >>> store = ckpt.init("memory://doc-store")
        >>> snap = store.save({"w": torch.ones(2)}, step=1, metrics={"val_loss": 0.5})
        >>> store.load("main")["w"]
        tensor([1., 1.])
    """

    def __init__(self, backend: Backend, config: StoreConfig) -> None:
        self.backend = backend
        self.config = config
        self.url = backend.url
        own = tuple(int(x) for x in FORMAT_VERSION.split("."))
        theirs = tuple(int(x) for x in config.format_version.split("."))
        self._objects = Objects(backend, minor_newer=theirs > own)
        self._refs = Refs(backend, minor_newer=theirs > own)

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    @property
    def chunk_size(self) -> int:
        """The size in bytes tensors are cut into."""
        return self.config.chunk_size

    # -- writing -------------------------------------------------------------------------------------

    def save(
        self,
        state: Any,
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
        base: str | None = None,
        progress: Progress | None = None,
        force: bool = False,
    ) -> Snapshot:
        """Save a state tree as a new snapshot and move ``branch`` to it.

        The commit protocol: chunks first (each written once, skipped if present), then the tensor table,
        then the snapshot record, then the branch moves by compare-and-swap against the head read at the
        start. A crash at any point leaves at most unreferenced objects. The swap is the commit point: nothing
        raises after it (a reflog entry that cannot be written is a warning; ``verify`` reports it).

        A save only moves a branch forward: its parents must include the branch's head, as Git refuses a
        non-fast-forward push. To go back to an older save and carry on, branch off it
        (``store.branch("retry", at="main~2")``) or move the branch first (``store.reset("main", "main~2")``),
        or pass ``force=True``; the old head stays in the reflog either way.

        Args:
            state: a tree of dicts, lists and tuples with tensors, arrays, numbers, strings, bools and None.
            branch: the branch to advance (created if it does not exist).
            parents: revisions of the parents; default: the branch's current head, if any.
            relation: relation to the first parent; default ``continue``, or ``import`` for a root.
            model: the model's name (kept from the first parent when not given).
            step: training step.
            epoch: training epoch.
            metrics: named numbers (``{"val_loss": 0.41}``).
            message: a note, like a commit message.
            metadata: your own JSON metadata.
            files: attached files, relative path → bytes (``config.json``, tokenizer files …). ``None`` (the
                default) keeps the first parent's files for the relations ``continue``, ``finetune`` and
                ``quantized`` (nothing is copied: they are the same chunks); ``{}`` attaches none.
            base: for an adapter, the revision of the snapshot it modifies.
            progress: called with byte counts as chunks are written.
            force: move the branch even if ``parents`` do not include its head (a non-fast-forward move).

        Returns:
            The new snapshot.

        Raises:
            UnsupportedStateError: a leaf cannot be stored (its path is named).
            RefConflictError: the branch moved while saving (also when two writers make the first save of
                a new branch at once: the loser gets this), or ``parents`` do not include the branch's head;
                in the first case the snapshot is stored and in the reflog, in the second nothing is written.
            RefExistsError: a tag of that name exists, or the name nests with another ref's.
            MissingObjectError: files inherited from the first parent are no longer in the store (it was
                pruned and collected): pass ``files=`` explicitly.
            InvalidNameError: bad branch name.
            RevisionError: a parent or base does not resolve.

        Example:
            >>> snap = store.save({"model": model.state_dict()}, step=100, metrics={"val_loss": 0.4})  # doctest: +SKIP
        """
        check_ref_name(branch, kind="branch")
        head = self._refs.branch_head(branch)
        if head is None:
            # names only: a branch of this name made meanwhile is for the swap to find (RefConflictError)
            self._refs.check_new_name(branch, "branch", same_branch_ok=True)
        parent_ids = [self.resolve(p).id for p in parents] if parents is not None else ([head] if head else [])
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
        base_id = self.resolve(base).id if base is not None else None
        rel: Relation = relation or ("continue" if parent_ids else "import")
        if rel == "adapter" and base_id is None and parent_ids:
            base_id = parent_ids[0]
        if rel == "import" and parent_ids:
            raise RecordError("relation 'import' is for snapshots without parents")
        if rel != "import" and not parent_ids:
            raise RecordError(f"relation {rel!r} needs a parent", hint="pass parents=[rev]")
        if model is None and parent_ids:
            model = self._objects.get_snapshot(parent_ids[0]).model
        clean_metrics = _clean_metrics(metrics)
        clean_files = _clean_files(files)

        # everything that can be refused is checked before the first byte is written
        tree, tensors = flatten(state)
        canonical_json(tree)
        try:
            record = Snapshot(
                parents=tuple(parent_ids),
                relation=rel,
                model=model,
                step=step,
                epoch=epoch,
                metrics=clean_metrics,
                message=message,
                metadata=dict(metadata or {}),
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

        stats = WriteStats()
        tied = tied_groups(tensors)  # paths that hold one tensor: its bytes are read and written once
        first = {name: group[0] for group in tied for name in group}
        once = {name: src for name, src in tensors.items() if first.get(name, name) == name}
        written = write_tensors(self._objects, once, self.chunk_size, stats=stats, progress=progress)
        entries = {name: written[first.get(name, name)] for name in tensors}
        if files is None and parent_ids and rel in _INHERITS_FILES:
            file_entries = self._inherited_files(parent_ids[0], stats)
        else:
            file_entries = write_files(self._objects, clean_files, self.chunk_size, stats=stats)
        table = TensorTable(
            chunk_size=self.chunk_size,
            tensors=entries,
            tree=tree,
            files=file_entries,
            tied=tuple(tuple(group) for group in tied),
        )
        record = record.model_copy(update={"table": self._objects.put_table(table)})
        snap = self._objects.put_snapshot(record)
        self.backend.flush()
        self._refs.move_branch(branch, head, snap.id, action="commit", message=message)
        return snap

    def _inherited_files(self, parent_id: str, stats: WriteStats) -> dict[str, FileEntry]:
        """The first parent's attached files (but not its import bookkeeping under ``.ckpt/``).

        A save never references an object it did not write or find present: each inherited file is read back
        (and checked against its digests) and stored again, which writes nothing when its chunks are there and
        refreshes them for a gc running meanwhile.

        Raises:
            MissingObjectError: the parent's files are gone (it was pruned and collected).
            CorruptChunkError: one of them is damaged.
        """
        table = self._objects.get_table(self._objects.get_snapshot(parent_id).table)
        kept = {path: entry for path, entry in table.files.items() if not path.startswith(".ckpt/")}
        data: dict[str, bytes] = {}
        for path, entry in kept.items():
            cs = table.chunk_size
            try:
                data[path] = b"".join(
                    self._objects.read_chunk(d, min(cs, entry.size - i * cs), tensor=path, snapshot=parent_id)
                    for i, d in enumerate(entry.chunks)
                )
            except MissingObjectError as e:
                raise MissingObjectError(
                    f"the attached file {path!r} of the parent {parent_id[:12]} is no longer in the store "
                    "(the parent was pruned and collected), so this save cannot keep it",
                    hint="pass the files explicitly (files={...}), or files={} to attach none",
                ) from e
        return write_files(self._objects, data, self.chunk_size, stats=stats)

    def derive(
        self,
        rev: str,
        state: Any,
        *,
        branch: str,
        model: str | None = None,
        relation: Relation = "finetune",
        **fields: Any,
    ) -> Snapshot:
        """Start a new model line from an existing snapshot: a fine-tune, a quantization, a merge …

        The new snapshot's parent is ``rev`` and its relation ``relation``; ``branch`` must be new. Tensors
        equal to the parent's are not stored again (content addressing), so a fine-tune that changes a
        quarter of the tensors costs a quarter of the bytes.

        Args:
            rev: the snapshot to derive from.
            state: the new state tree.
            branch: a new branch for the new line.
            model: the new model's name (e.g. ``tiny-llama-instruct``); default: the parent's.
            relation: ``finetune`` (default), ``quantized``, ``merge`` …
            fields: anything else ``save`` takes (``step``, ``metrics``, ``message``, ``files`` …).

        Raises:
            RefExistsError: the branch exists (use ``save(..., parents=[rev])`` to add to an existing line).

        Example:
            >>> release = "tiny-llama-2026-11-28"
            >>> store.derive(release, sd, branch="instruct", model="tiny-llama-instruct")  # doctest: +SKIP
        """
        if relation in ("import", "continue"):
            raise RecordError(f"derive() starts a new line; relation {relation!r} is not one (use save())")
        self._refs.check_new_name(branch, "branch")
        parent = self.resolve(rev)
        return self.save(state, branch, parents=[parent.id], relation=relation, model=model, **fields)

    def lineage(self, rev: str = "main") -> list[Snapshot]:
        """The chain from ``rev`` back to its root along first parents, ``rev`` first.

        Each snapshot's ``relation`` says how it came from the next one in the list; an adapter's first
        parent is its base. ``[s for s in store.lineage(rev) if s.relation != "continue"]`` gives the model
        family (base → instruct → chat → adapter) without the training steps in between.
        """
        return self.log(rev)

    def children(self, rev: str) -> list[Snapshot]:
        """Snapshots that name ``rev`` as a parent or as their adapter base, oldest first (reads every record)."""
        target = self.resolve(rev).id
        found = [s for s in self.snapshots() if target in s.parents or s.base == target]
        return sorted(found, key=lambda s: s.created_at)

    def save_adapter(
        self,
        base_rev: str,
        adapter_state: Mapping[str, Any],
        *,
        branch: str,
        config: Any,
        model: str | None = None,
        step: int | None = None,
        epoch: int | float | None = None,
        metrics: Mapping[str, float] | None = None,
        message: str | None = None,
        metadata: Mapping[str, JsonValue] | None = None,
        progress: Progress | None = None,
    ) -> Snapshot:
        """Save a LoRA adapter over ``base_rev``: only its tensors and its PEFT config (relation ``adapter``).

        The base's id is recorded, so "which base does this adapter need?" always has an answer. See
        ``ckpt.adapters.save_adapter`` for the accepted state dicts and configs.

        Example:
            >>> from peft import get_peft_model_state_dict
            >>> store.save_adapter("chat", get_peft_model_state_dict(peft_model), branch="lora",
            ...                    config=peft_model.peft_config["default"])  # doctest: +SKIP
        """
        from ckpt.adapters import save_adapter

        return save_adapter(
            self,
            base_rev,
            adapter_state,
            branch=branch,
            config=config,
            model=model,
            step=step,
            epoch=epoch,
            metrics=metrics,
            message=message,
            metadata=metadata,
            progress=progress,
        )

    def merge(
        self,
        adapter_rev: str,
        *,
        branch: str,
        model: str | None = None,
        message: str | None = None,
        metadata: Mapping[str, JsonValue] | None = None,
        files: Mapping[str, bytes] | None = None,
        progress: Progress | None = None,
    ) -> Snapshot:
        """Save an adapter merged into its base as a new snapshot (relation ``merge``, parents adapter + base).

        Tied weights stay tied and change together, as with PEFT's ``merge_and_unload()``; ``files`` replaces
        the base's attached files (needed when the adapter resized the embeddings). See ``ckpt.adapters.merge``.
        """
        from ckpt.adapters import merge

        return merge(
            self,
            adapter_rev,
            branch=branch,
            model=model,
            message=message,
            metadata=metadata,
            files=files,
            progress=progress,
        )

    # -- reading -------------------------------------------------------------------------------------

    def resolve(self, rev: str) -> Snapshot:
        """The snapshot a revision names.

        Args:
            rev: a branch, tag, full id, unique id prefix (≥ 4 hex), or ``BRANCH@{N}`` (where the branch
                pointed N moves ago, from its reflog), with optional ``~N`` / ``^N`` suffixes.

        Raises:
            RevisionNotFoundError: nothing matches (close names are suggested).
            AmbiguousRevisionError: an id prefix matches several snapshots (all are listed).

        Example:
            >>> store.resolve("main~1").step  # doctest: +SKIP
            100
        """
        if isinstance(rev, Snapshot):
            return rev
        parsed = parse_revision(rev)
        sid = self._base_id(parsed)
        pruned = self._pruned()
        snap = self._get(sid, pruned)
        return walk_steps(snap, parsed.steps, lambda i: self._get(i, pruned), rev)

    def _base_id(self, parsed: ParsedRevision) -> str:
        """The snapshot id the base of a revision names (a ref, an id, ``BRANCH@{N}``); reads no record."""
        if parsed.reflog is not None:
            return resolve_reflog(parsed.base, parsed.reflog, self._refs.reflog(f"refs/heads/{parsed.base}"))
        return resolve_base(
            parsed.base,
            branch=self._refs.branch_head,
            tag=lambda n: t.id if (t := self._refs.tag(n)) else None,
            has_snapshot=self._objects.has_snapshot,
            ids_with_prefix=lambda p: list(self._objects.snapshot_ids(p)),
            names=lambda: [*self._refs.branches(), *self._refs.tags()],
        )

    def get(self, snapshot_id: str) -> Snapshot:
        """A snapshot by full id."""
        return self._get(snapshot_id, self._pruned())

    def _get(self, sid: str, pruned: set[str]) -> Snapshot:
        try:
            return self._objects.get_snapshot(sid, pruned=sid in pruned)
        except MissingObjectError as e:
            raise RevisionNotFoundError(f"snapshot {sid[:12]} is not in this store") from e

    def _pruned(self) -> set[str]:
        return {layout.digest_from_path(e.path) for e in self.backend.list(layout.PRUNED)}

    def table(self, rev: str) -> TensorTable:
        """The tensor table of a snapshot: every tensor's dtype, shape and chunks, the state tree, files."""
        return self._objects.get_table(self.resolve(rev).table)

    def load(
        self,
        rev: str = "main",
        *,
        verify: bool = True,
        framework: Framework | None = None,
        into: Mapping[str, Any] | None = None,
        merge: bool = False,
        progress: Progress | None = None,
        mmap: bool = False,
    ) -> Any:
        """Load a snapshot's state tree, with every tensor restored.

        Args:
            rev: the revision.
            verify: check every chunk against its digest (on by default; BLAKE3 makes it cheap).
            framework: ``torch`` or ``numpy`` for every tensor; default: what each was saved as.
            into: tensor path → existing tensor to read into, in place, when dtype and shape fit (e.g.
                ``{"model/" + k: v for k, v in model.state_dict().items()}``). Reusing memory avoids the
                page faults of fresh allocations; tensors that do not fit get new memory.
            merge: for an adapter snapshot, return its base's state with the LoRA deltas merged in
                (``W + scale · B @ A``, as PEFT's ``merge_and_unload()``; see ``ckpt.adapters.load_merged``).
            progress: called with byte counts as chunks arrive.
            mmap: on a local store, memory-map tensors of 1 MiB or more held in one chunk instead of copying
                them (zero-copy and copy-on-write, as safetensors does). The trade-off: a mapped tensor is
                verified as it was when mapped, but on Linux a private mapping still shows later changes to
                pages it has not written, and a chunk file truncated later kills the process with ``SIGBUS``
                when those pages are read. The default copies, so what ``verify`` checked is what you get.

        Returns:
            The same structure that was saved (mappings come back as ``dict``). Tensors that were one tensor
            when saved (tied weights, recorded in the table's ``tied``) come back as one tensor at each of their
            places.

        Raises:
            MissingObjectError: the snapshot was pruned, or a chunk is missing.
            CorruptChunkError: a chunk does not match its digest (names the tensor and the snapshot).

        Example:
            >>> state = store.load("main~2")  # doctest: +SKIP
        """
        if merge:
            from ckpt.adapters import load_merged

            return load_merged(self, rev, verify=verify, framework=framework, into=into, progress=progress)
        snap = self.resolve(rev)
        self._check_not_pruned(snap)
        table = self._objects.get_table(snap.table)
        first = {name: group[0] for group in table.tied for name in group}  # a tied group is read once
        tensors = read_tensors(
            self._objects,
            {name: entry for name, entry in table.tensors.items() if first.get(name, name) == name},
            table.chunk_size,
            snapshot=snap.id,
            verify=verify,
            framework=framework,
            into=into,
            progress=progress,
            mmap=mmap,
        )
        return unflatten(table.tree, lambda name: tensors[first.get(name, name)])

    def tensors(
        self, rev: str = "main", *, verify: bool = True, framework: Framework | None = None, mmap: bool = False
    ) -> LazyTensors:
        """A lazy, read-only mapping tensor path → tensor that reads only the tensors you index.

        ``mmap`` maps instead of copying, with the trade-off described in ``load``.

        Example:
            >>> t = store.tensors("main")  # doctest: +SKIP
            >>> t["model/layers.0.self_attn.q_proj.weight"].shape  # doctest: +SKIP
        """
        snap = self.resolve(rev)
        self._check_not_pruned(snap)
        return LazyTensors(
            self, snap, self._objects.get_table(snap.table), verify=verify, framework=framework, mmap=mmap
        )

    def tensor_bytes(self, rev: str, name: str, *, verify: bool = True) -> Iterator[bytes]:
        """The raw bytes of one tensor (C order, little-endian), chunk by chunk, each verified; no torch needed.

        Raises:
            KeyError: no such tensor in the snapshot.
            MissingObjectError: the snapshot was pruned.
        """
        snap = self.resolve(rev)
        self._check_not_pruned(snap)
        table = self._objects.get_table(snap.table)
        entry = table.tensors[name]
        cs = table.chunk_size
        if entry.shards:  # blocks of a distributed save: the bytes in tensor order need them all
            yield bytes(read_whole(self._objects, entry, cs, verify=verify, tensor=name, snapshot=snap.id))
            return
        for i, digest in enumerate(entry.chunks):
            yield self._objects.read_chunk(
                digest, min(cs, entry.nbytes - i * cs), verify=verify, tensor=name, snapshot=snap.id
            )

    def files(self, rev: str = "main") -> dict[str, bytes]:
        """The attached files of a snapshot, path → bytes (each chunk checked like a tensor's)."""
        snap = self.resolve(rev)
        self._check_not_pruned(snap)
        table = self._objects.get_table(snap.table)
        cs = table.chunk_size
        return {
            path: b"".join(
                self._objects.read_chunk(d, min(cs, entry.size - i * cs), tensor=path, snapshot=snap.id)
                for i, d in enumerate(entry.chunks)
            )
            for path, entry in table.files.items()
        }

    def _check_not_pruned(self, snap: Snapshot) -> None:
        if snap.pruned and snap.id not in release_needs(self._objects, self._refs.tags()):  # releases never are
            raise MissingObjectError(
                f"snapshot {snap.short_id} was pruned: its tensors were released",
                hint="its record stays in the log; load another snapshot",
            )

    def log(self, rev: str = "main", limit: int | None = None) -> list[Snapshot]:
        """History from ``rev`` back along first parents, newest first.

        Args:
            rev: where to start.
            limit: at most this many snapshots.
        """
        pruned = self._pruned()
        out: list[Snapshot] = []
        snap: Snapshot | None = self.resolve(rev)
        while snap is not None and (limit is None or len(out) < limit):
            out.append(snap)
            snap = self._get(snap.parents[0], pruned) if snap.parents else None
        return out

    def snapshots(self) -> list[Snapshot]:
        """Every snapshot record in the store, newest first."""
        pruned = self._pruned()
        snaps = [self._get(sid, pruned) for sid in self._objects.snapshot_ids()]
        return sorted(snaps, key=lambda s: s.created_at, reverse=True)

    def branches(self) -> dict[str, str]:
        """Branch name → snapshot id."""
        return self._refs.branches()

    def tags(self) -> dict[str, TagRecord]:
        """Tag name → tag record (``.id``, ``.frozen``, ``.created_at``, ``.message``)."""
        return self._refs.tags()

    def reflog(self, ref: str | None = None) -> list[ReflogEntry]:
        """Every recorded ref move, oldest first (``ref`` like ``refs/heads/main``, or all refs)."""
        return self._refs.reflog(ref)

    # -- refs ----------------------------------------------------------------------------------------

    def branch(self, name: str, *, at: str = "main") -> Snapshot:
        """Create a branch at a revision (e.g. ``at="main~2"`` to go back to an earlier save).

        Raises:
            InvalidNameError: bad name.
            RefExistsError: a branch or tag of that name exists.
        """
        self._refs.check_new_name(name, "branch")
        snap = self.resolve(at)
        self._refs.move_branch(name, None, snap.id, action="branch", message=f"branch from {at}", create=True)
        return snap

    def delete_branch(self, name: str) -> None:
        """Delete a branch. Its snapshots stay (and stay in the reflog) until gc.

        Raises:
            RevisionNotFoundError: no such branch.
        """
        head = self._refs.branch_head(name)
        if head is None:
            raise RevisionNotFoundError(f"no branch named {name!r}")
        self._refs.move_branch(name, head, None, action="delete")

    def reset(self, name: str, rev: str) -> Snapshot:
        """Move an existing branch to any revision (like ``git reset``); the old head stays in the reflog."""
        head = self._refs.branch_head(name)
        if head is None:
            raise RevisionNotFoundError(f"no branch named {name!r}")
        snap = self.resolve(rev)
        self._refs.move_branch(name, head, snap.id, action="reset", message=f"reset to {rev}")
        return snap

    def tag(self, name: str, rev: str = "main", *, message: str | None = None) -> Snapshot:
        """Tag a snapshot. Tags never move; a plain tag can be deleted with ``delete_tag``.

        Raises:
            InvalidNameError: bad name.
            RefExistsError: a branch or tag of that name exists.
        """
        self._refs.check_new_name(name, "tag")
        snap = self.resolve(rev)
        self._refs.create_tag(name, TagRecord(id=snap.id, created_at=format_time(utcnow()), message=message))
        return snap

    def delete_tag(self, name: str) -> None:
        """Delete a tag that is not frozen.

        Raises:
            FrozenRefError: the tag is frozen.
        """
        self._refs.delete_tag(name)

    def freeze(
        self,
        rev: str = "main",
        *,
        model: str | None = None,
        name: str | None = None,
        message: str | None = None,
        verify: bool = False,
        signer: ReleaseSigner | PrivateKey | str | os.PathLike[str] | None = None,
    ) -> str:
        """Publish a snapshot as a frozen release tag, ``<model>-<YYYY-MM-DD>`` (UTC) by default.

        A frozen tag can never be moved or deleted, and its snapshot (and, for an adapter, the bases it
        needs) can never be pruned; gc keeps their objects whatever a pruned marker says. Only what can be
        loaded is published: the snapshot must not be pruned, and its table and every chunk must be in the
        store (an adapter's bases too). With ``signer``, the release is also signed: a statement naming the
        release, the snapshot id (which commits to every byte), the time and the signer's key is signed and
        stored beside the tag (``ckpt.store.signing``), so that ``verify(trust=[public key])`` can tell the
        release is the one its publisher froze.

        Args:
            rev: the snapshot to publish.
            model: the model name; default: the snapshot's ``model``.
            name: the full tag name, instead of ``<model>-<date>``.
            message: a release note.
            verify: also read every chunk and check it against its digest (``verify(rev)``) before freezing;
                by default only their presence is checked.
            signer: a private key to sign with: a key file path (PEM or OpenSSH; Ed25519 or ECDSA
                P-256/P-384/P-521), a ``cryptography`` private key, or a ``ReleaseSigner`` (which also carries
                the signer's name). Needs the ``sign`` extra.

        Returns:
            The tag name.

        Raises:
            RecordError: no model name given or recorded; the signing key cannot be used.
            RefExistsError: the name is taken (releases are never overwritten).
            MissingObjectError: the snapshot (or a base it needs) was pruned, or an object it needs is missing.
            IntegrityError: with ``verify``, an object it needs is damaged.
            BackendError: the signature could not be written after the release was frozen (the hint says how
                to add it).

        Example:
            >>> store.freeze("main", model="tiny-llama")  # doctest: +SKIP
            'tiny-llama-2026-11-28'
            >>> store.freeze("main", name="tiny-llama-v2", signer="release-key.pem")  # doctest: +SKIP
            'tiny-llama-v2'
        """
        snap = self.resolve(rev)
        if name is None:
            model = model or snap.model
            if not model:
                raise RecordError(
                    f"snapshot {snap.short_id} has no model name to build a release name from",
                    hint="pass model='tiny-llama' (or name='…')",
                    cli_hint="pass --model tiny-llama (or --name …)",
                )
            name = f"{model}-{utcnow():%Y-%m-%d}"
        self._refs.check_new_name(name, "tag")
        needs = self._check_loadable(snap, verify=verify)
        signature = None
        if signer is not None:  # every key problem shows before anything is written
            from ckpt.store.signing import ReleaseSigner

            signature = ReleaseSigner.of(signer).sign(name, snap.id)
        self._refs.create_tag(
            name,
            TagRecord(id=snap.id, frozen=True, created_at=format_time(utcnow()), message=message),
            action="freeze",
        )
        # a prune that passed its check before this tag existed may have marked it since: the release wins
        try:
            raced = [sid for sid in needs if self.backend.exists(layout.pruned_path(sid))]
            if raced:
                self.backend.delete([layout.pruned_path(sid) for sid in raced])
        except CkptError as e:  # the tag exists: the release is made, whatever happens to the marker
            warnings.warn(
                f"ckpt: {name!r} is frozen, but a pruned marker written meanwhile could not be removed ({e}); "
                "gc keeps the release's objects anyway, and `ckpt repair` removes the marker",
                stacklevel=2,
            )
        if signature is not None:
            from ckpt.store.signing import write_release_signature

            write_release_signature(self.backend, name, signature)
        return name

    def _check_loadable(self, snap: Snapshot, *, verify: bool) -> list[str]:
        """Refuse to publish what cannot be loaded; returns the ids the release needs (itself, adapter bases).

        Raises:
            MissingObjectError: pruned, or a table or chunk is missing.
            IntegrityError: with ``verify``, something is damaged.
        """
        pruned = self._pruned()
        needs: list[str] = []
        current: Snapshot | None = snap
        while current is not None and current.id not in needs:
            needs.append(current.id)
            if current.id in pruned:
                what = "it" if current.id == snap.id else f"its base {current.short_id}"
                raise MissingObjectError(
                    f"snapshot {snap.short_id} cannot be frozen: {what} was pruned (its tensors were released)",
                    hint="freeze a snapshot that still has its tensors; store.log() marks pruned ones (.pruned)",
                    cli_hint="freeze a snapshot that still has its tensors; `ckpt log` marks pruned ones",
                )
            table = self._objects.get_table(current.table)
            if verify:
                report = verify_snapshots(self._objects, [current.id], pruned=set())
                if not report.ok:
                    d = report.damage[0]
                    raise IntegrityError(
                        f"snapshot {snap.short_id} cannot be frozen: {d.message}",
                        hint="find the damage with store.verify(), put it back with store.repair(good_copy), then "
                        "freeze again",
                        cli_hint="run `ckpt verify` and `ckpt repair --from URL`, then freeze again",
                    )
            else:
                for digest in sorted(table.chunk_digests()):
                    if not self._objects.has_chunk(digest):
                        raise MissingObjectError(
                            f"snapshot {snap.short_id} cannot be frozen: its chunk {digest[:12]} is missing "
                            "from the store",
                            hint="find the damage with store.verify(), and put it back from a good copy with "
                            "store.repair(good_copy)",
                            cli_hint="run `ckpt verify`, and `ckpt repair --from URL` to put it back from a good copy",
                        )
            current = self._get(current.base, pruned) if current.base else None
        return needs

    def sign_release(self, name: str, signer: ReleaseSigner | PrivateKey | str | os.PathLike[str]) -> None:
        """Sign a frozen release as it is now (one signed before, by another key, or frozen unsigned).

        Check it first (``verify(trust=...)``): a signature vouches for the snapshot the tag names now.

        Args:
            name: the release (a frozen tag).
            signer: as ``freeze``'s ``signer``.

        Raises:
            RevisionNotFoundError: no such tag.
            FrozenRefError: the tag is not frozen (only releases are signed).
            RecordError: the key cannot be used.
        """
        from ckpt.store.signing import ReleaseSigner, put_signature

        tag = self._refs.tag(name)
        if tag is None:
            raise RevisionNotFoundError(f"no tag named {name!r}")
        if not tag.frozen:
            raise FrozenRefError(
                f"tag {name!r} is not frozen: only releases are signed",
                hint="freeze it: store.freeze(rev, name=NAME, signer=key)",
                cli_hint="freeze it: `ckpt freeze REV --name NAME --sign KEY`",
            )
        put_signature(self.backend, name, ReleaseSigner.of(signer).sign(name, tag.id))

    def prune(self, rev: str, *, reason: str | None = None) -> Snapshot:
        """Release a snapshot's tensors (gc reclaims them); its record stays in the log, marked pruned.

        Raises:
            FrozenRefError: a frozen release is this snapshot or needs it (as an adapter's base).
            RefError: a branch or tag points at it (move or delete the ref first).
        """
        snap = self.resolve(rev)
        self._check_prunable(snap.id)
        if not snap.pruned:
            self._mark_pruned(snap.id, reason)
            try:  # a ref made meanwhile (a freeze, a reset) wins over the prune
                self._check_prunable(snap.id)
            except RefError:
                self.backend.delete([layout.pruned_path(snap.id)])
                raise
        return snap.model_copy(update={"pruned": True})

    def _check_prunable(self, snapshot_id: str) -> None:
        short = snapshot_id[:12]
        tags = self._refs.tags()
        for name, tag in tags.items():
            if tag.id == snapshot_id:
                if tag.frozen:
                    raise FrozenRefError(f"snapshot {short} is the frozen release {name!r}; it is never pruned")
                raise RefError(
                    f"snapshot {short} is tagged {name!r}",
                    hint=f"delete the tag first: store.delete_tag({name!r})",
                    cli_hint=f"delete the tag first: `ckpt tag -d {name}`",
                )
        if snapshot_id in release_needs(self._objects, tags):
            raise FrozenRefError(f"snapshot {short} is the base of a frozen adapter release; it is never pruned")
        for name, head in self._refs.branches().items():
            if head == snapshot_id:
                raise RefError(
                    f"snapshot {short} is the head of branch {name!r}",
                    hint=f"move the branch (store.reset({name!r}, rev)) or delete it (store.delete_branch({name!r}))",
                    cli_hint=f"move the branch (`ckpt reset {name} REV`) or delete it (`ckpt branch -d {name}`)",
                )

    def _mark_pruned(self, snapshot_id: str, reason: str | None) -> None:
        marker = PrunedMarker(pruned_at=format_time(utcnow()), reason=reason)
        self.backend.put_if_absent(layout.pruned_path(snapshot_id), canonical_json(marker.model_dump(mode="json")))

    def retain(self, branch: str, policy: RetentionPolicy, *, dry_run: bool = False) -> list[Snapshot]:
        """Prune the snapshots of a branch's history that a retention policy does not keep.

        Tagged and frozen snapshots and branch heads are always kept; already pruned ones are skipped.
        ``gc`` then reclaims the bytes.

        Args:
            branch: the branch whose first-parent history is considered.
            policy: e.g. ``AnyOf(KeepLast(3), KeepBest("val_loss", 2))``.
            dry_run: only report what would be pruned.

        Returns:
            The snapshots pruned (or that would be), newest first.

        Example:
            >>> from ckpt.retention import AnyOf, KeepBest, KeepLast
            >>> store.retain("main", AnyOf(KeepLast(3), KeepBest("val_loss", 1)))  # doctest: +SKIP
        """
        history = [s for s in self.log(branch) if not s.pruned]
        tags = self._refs.tags()
        protected = (
            {t.id for t in tags.values()} | set(self._refs.branches().values()) | release_needs(self._objects, tags)
        )
        keep = policy.keep(history) | protected
        doomed = [s for s in history if s.id not in keep]
        if not dry_run and doomed:
            for s in doomed:
                self._mark_pruned(s.id, f"retention: {policy!r}")
            # refs made meanwhile (a freeze, a reset, a branch) win over the prune
            tags = self._refs.tags()
            now_protected = (
                {t.id for t in tags.values()} | set(self._refs.branches().values()) | release_needs(self._objects, tags)
            )
            raced = [s for s in doomed if s.id in now_protected]
            if raced:
                self.backend.delete([layout.pruned_path(s.id) for s in raced])
                doomed = [s for s in doomed if s.id not in now_protected]
        return [s.model_copy(update={"pruned": True}) for s in doomed]

    # -- maintenance ---------------------------------------------------------------------------------

    def gc(
        self,
        *,
        grace: timedelta = timedelta(hours=1),
        dry_run: bool = False,
        expire_reflog: timedelta | None = timedelta(days=30),
        on_damage: OnDamage = "refuse",
    ) -> GcReport:
        """Delete what no live snapshot needs: unreachable records, pruned snapshots' chunks, crash leftovers.

        gc is fail-closed: it deletes only what it can prove unneeded. If anything it must read to decide is
        damaged or missing (a ref, a reflog entry, a snapshot record, a tensor table, a pruned marker), it
        refuses before deleting anything and names the damage; ``verify`` reports the same damage and
        ``repair`` puts it back from a good copy.

        Args:
            grace: never delete objects younger than this (protects saves running right now); the report
                counts what it spared (``young_chunks``, ``young_bytes``, ``young_records``).
            dry_run: only report what would be deleted.
            expire_reflog: reflog entries older than this no longer keep snapshots alive (``None``: forever).
            on_damage: ``"refuse"`` (default), or ``"keep"``: collect anyway, keeping everything the damaged
                objects might need (an unreadable ref, reflog entry or record keeps every record; an unreadable
                record or table keeps every chunk; an unreadable pruned marker prunes nothing). The damage is
                listed in the report.

        Returns:
            What was (or would be) removed, how many bytes that frees, and what was kept and why.

        Raises:
            IntegrityError: something gc must read is damaged or missing (with ``on_damage="refuse"``).

        Example:
            >>> report = store.gc(grace=timedelta(0), dry_run=True)  # doctest: +SKIP
            >>> report.freed_bytes, report.young_chunks  # doctest: +SKIP
            (16400, 0)
        """
        if on_damage not in ("refuse", "keep"):
            raise RecordError(f"on_damage must be 'refuse' or 'keep', got {on_damage!r}")
        plan = plan_gc(self._objects, self._refs, grace=grace, expire_reflog=expire_reflog, on_damage=on_damage)
        return plan.report(dry_run=True) if dry_run else plan.execute(self.backend)

    def verify(
        self,
        rev: str | None = None,
        *,
        trust: Sequence[str | os.PathLike[str] | PublicKey] | None = None,
        progress: Progress | None = None,
        progress_total: Callable[[int], None] | None = None,
    ) -> VerifyReport:
        """Read every object and check it against its digest; report all damage, not just the first.

        Besides records, tables and chunks, a whole-store verify checks the refs themselves (a branch or tag
        that cannot be read or points at a missing snapshot), every reflog entry, every pruned marker, that
        each ref's latest move is in its reflog, and that every frozen release (with the adapter bases it
        needs) is complete and not marked pruned.

        Without ``rev``, frozen releases are checked too: each against the reflog (a frozen tag that moved,
        was unfrozen or deleted, or whose freeze is not logged, is ``tampered`` or ``repointed``) and against
        its signatures (each must verify with its own key and sign this release's name and id). With ``trust``,
        every frozen release must also be signed by one of the trusted keys, as it is now; one that is not is
        reported ``unsigned``, ``repointed`` or ``forged`` (``ckpt.store.signing``).

        Args:
            rev: check this snapshot only; default: every snapshot reachable from a branch, tag or the reflog.
            trust: trusted public keys: key files or trust files (PEM or OpenSSH lines), or key objects.
            progress: called with byte counts as chunks are checked.
            progress_total: called once, before the first chunk is read, with the bytes ``progress`` will count.

        Raises:
            RecordError: a trusted key file cannot be read, or ``trust`` was given with ``rev``.
        """
        releases: list[ReleaseStatus] = []
        keys = None
        if trust is not None and rev is not None:
            raise RecordError("trust= checks every frozen release: call verify(trust=...) without a revision")
        if trust is not None:
            from ckpt.store.signing import load_trusted_keys

            keys = load_trusted_keys(trust)
        if rev is not None:
            sid = self.resolve(rev).id
            pruned = self._pruned() - release_needs(self._objects, self._refs.tags())
            return verify_snapshots(
                self._objects, [sid], pruned=pruned, progress=progress, progress_total=progress_total
            )
        state = scan_liveness(self._objects, self._refs, expire_reflog=None)
        extra = list(state.damage)
        branches, tags, _ = self._refs.scan()
        entries, _ = self._refs.scan_reflog()
        moved_to: dict[str, set[str]] = {}
        for entry in entries:
            if entry.new and entry.action != "conflict":
                moved_to.setdefault(entry.ref, set()).add(entry.new)
        unreadable = {d.digest for d in state.damage if d.object == "reflog"}
        refs = {layout.branch_path(n): h for n, h in branches.items()} | {
            layout.tag_path(n): t.id for n, t in tags.items()
        }
        for ref, sid in refs.items():
            if any(p.startswith(layout.reflog_prefix(ref)) for p in unreadable):
                continue  # the damaged entry may be that move's: reported as it is, not guessed
            if sid not in moved_to.get(ref, set()):
                extra.append(
                    Damage(
                        kind="missing",
                        object="reflog",
                        digest=ref,
                        snapshots=(sid,),
                        message=f"{ref} points at {sid[:12]}, but no reflog entry records that move "
                        "(its reflog append failed); `ckpt repair` writes it back",
                    )
                )
        for sid in sorted(state.protected & state.pruned):
            names = sorted(n for n, t in tags.items() if t.frozen and t.id == sid)
            what = f"the frozen release {names[0]!r}" if names else "the base of a frozen release"
            extra.append(
                Damage(
                    kind="invalid",
                    object="marker",
                    digest=layout.pruned_path(sid),
                    snapshots=(sid,),
                    message=f"snapshot {sid[:12]} is {what} but is marked pruned; releases are never pruned "
                    "(gc keeps its objects); `ckpt repair` removes the marker",
                )
            )
        from ckpt.store.signing import check_releases

        releases = check_releases(self.backend, tags, entries, trust=keys)
        extra.extend(release_damage(releases, keys_given=keys is not None))
        pruned = state.pruned - state.protected
        report = verify_snapshots(
            self._objects,
            sorted(state.live),
            pruned=pruned,
            extra_damage=extra,
            progress=progress,
            progress_total=progress_total,
        )
        return report.model_copy(update={"releases": tuple(releases)})

    def repair(
        self,
        source: Store | str | os.PathLike[str] | None = None,
        *,
        revs: Sequence[str] | None = None,
        progress: Progress | None = None,
    ) -> RepairReport:
        """Put back damaged or missing objects from a good copy of this store (a replica, a backup).

        Verifies this store (every reachable snapshot, or those of ``revs``), reads each damaged chunk, table and
        snapshot record from ``source``, checks it against its digest (bad bytes are never copied), writes it over
        the damaged copy (an atomic replace), and verifies again. Refs are never changed. What the source lacks,
        or holds damaged too, is left as it is and reported in ``unrepaired`` with the reason.

        Some damage needs no source and is fixed in place: a ref whose latest move is missing from its reflog
        (a reflog append that failed after the move) gets its entry back, a pruned marker on a frozen release is
        removed, an unreadable pruned marker is written again.

        Args:
            source: any store holding the same objects, on any backend, e.g. one kept in step with ``ckpt.sync``
                (a ``Store``, or its URL or path, opened with ``ckpt.open``); ``None``: fix only what needs no
                source.
            revs: repair only what these revisions need, including a damaged record on the way to one
                (``main``'s, for ``main~2``); default: everything ``verify()`` checks.
            progress: called with byte counts as chunks are checked and copied.

        Returns:
            What was repaired, what was not and why, and the final verification.

        Raises:
            RevisionNotFoundError: a revision of ``revs`` names nothing.
            BackendError: this store cannot be read or written (a source that fails to give an object is
                reported in ``unrepaired``, with the error).

        Example:
            >>> report = store.repair(ckpt.open("s3://bucket/replica"))  # doctest: +SKIP
            >>> report.ok, len(report.repaired), report.bytes_copied  # doctest: +SKIP
            (True, 1, 67108880)
        """
        good = source if source is None or isinstance(source, Store) else open(source)
        return repair(self, good, revs=revs, progress=progress)

    def sync_to(
        self,
        dst: Store | str | os.PathLike[str],
        revs: Sequence[str] | None = None,
        *,
        progress: Progress | None = None,
    ) -> SyncReport:
        """Copy snapshots (with history, tables, chunks and refs) to another store; see ``ckpt.sync``.

        Only chunks the destination lacks are sent; an interrupted sync is safe to rerun; frozen tags stay
        frozen; a branch that diverged on the destination is reported in ``conflicts``, not overwritten.

        Example:
            >>> local.sync_to(ckpt.open("s3://bucket/models"), ["main"])  # doctest: +SKIP
        """
        return sync(self, dst if isinstance(dst, Store) else open(dst), revs, progress=progress)

    def stats(self) -> dict[str, int]:
        """Object counts and bytes by kind: ``chunks``, ``chunk_bytes``, ``tables``, ``snapshots``, ``total_bytes``.

        Bytes are counted as stored (a chunk with its 16-byte header), as ``verify`` and ``gc`` count them.
        """
        out = {
            "chunks": 0,
            "chunk_bytes": 0,
            "tables": 0,
            "table_bytes": 0,
            "snapshots": 0,
            "snapshot_bytes": 0,
        }
        total = 0
        for e in self.backend.list(""):
            total += e.size
            for prefix, key in (
                (layout.CHUNKS, "chunk"),
                (layout.TABLES, "table"),
                (layout.SNAPSHOTS, "snapshot"),
            ):
                if e.path.startswith(prefix):
                    out[key + "s"] += 1
                    out[key + "_bytes"] += e.size
        out["total_bytes"] = total
        return out


class LazyTensors(Mapping[str, Any]):
    """A read-only mapping tensor path → tensor; each lookup reads (and verifies) only that tensor.

    Iteration follows the order of the saved state tree.

    Attributes:
        snapshot: the snapshot it reads from.
        table: its tensor table.
    """

    def __init__(
        self,
        store: Store,
        snapshot: Snapshot,
        table: TensorTable,
        *,
        verify: bool,
        framework: Framework | None,
        mmap: bool = False,
    ) -> None:
        self._store = store
        self.snapshot = snapshot
        self.table = table
        self._verify = verify
        self._framework = framework
        self._mmap = mmap
        ordered = tensor_paths(table.tree)
        self._order = ordered if len(ordered) == len(table.tensors) else list(table.tensors)

    def __getitem__(self, name: str) -> Any:
        entry = self.table.tensors.get(name)
        if entry is None:
            raise KeyError(name)
        return read_tensors(
            self._store._objects,
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
        """dtype, shape and chunks of one tensor, without reading it."""
        return self.table.tensors[name]

    def chunk_bytes(self, name: str, index: int) -> bytes:
        """The raw bytes of one chunk of a tensor (its ``index``-th), verified unless ``verify=False``.

        Reads only that chunk; the table is the one already read, so streaming every tensor of a snapshot
        this way costs one table read in all (``export_folder`` does it, in parallel). The chunks of a sharded
        tensor (``TensorEntry.shards``) hold its blocks, not its bytes in order: read those with
        ``byte_pieces``.

        Raises:
            KeyError: no such tensor. IndexError: no such chunk, or the tensor is sharded.
            MissingObjectError, CorruptChunkError: the chunk is missing or damaged.
        """
        entry = self.table.tensors[name]
        if entry.shards:
            raise IndexError(f"tensor {name!r} is stored in blocks (sharded): read it with byte_pieces()")
        digest = entry.chunks[index]
        cs = self.table.chunk_size
        length = min(cs, entry.nbytes - index * cs)  # the one rule: the length the table implies is checked
        return self._store._objects.read_chunk(
            digest, length, verify=self._verify, tensor=name, snapshot=self.snapshot.id
        )

    def byte_pieces(self, name: str) -> Iterator[bytes]:
        """The raw bytes of a tensor in order (C order, little-endian), as consecutive pieces, each verified.

        A tensor stored whole comes chunk by chunk (one chunk in memory at a time); a sharded tensor, whose
        blocks interleave in tensor order, comes as one piece read from all its blocks.

        Raises:
            KeyError: no such tensor.
            MissingObjectError, CorruptChunkError: a chunk is missing or damaged.
        """
        entry = self.table.tensors[name]
        if entry.shards:
            objects = self._store._objects
            yield bytes(
                read_whole(
                    objects, entry, self.table.chunk_size, verify=self._verify, tensor=name, snapshot=self.snapshot.id
                )
            )
            return
        for index in range(len(entry.chunks)):
            yield self.chunk_bytes(name, index)


# -- construction ------------------------------------------------------------------------------------


def _read_config(backend: Backend) -> StoreConfig:
    if not backend.exists(layout.CONFIG):
        raise StoreNotFoundError(f"no ckpt store at {backend.url}")
    what = f"{backend.url}/{layout.CONFIG}"
    hint = "this file says what the store is; restore it from a backup or a replica (see docs/format.md)"
    raw = parse_json(backend.read(layout.CONFIG), what=what, hint=hint)
    if not isinstance(raw, dict) or raw.get("format") != "ckpt":
        raise StoreNotFoundError(f"{backend.url} is not a ckpt store ({layout.CONFIG} is not a ckpt config)")
    version = raw.get("format_version")
    text = version if isinstance(version, str) and len(version) <= 13 else ""
    major, _, minor = text.partition(".")
    if not (major.isascii() and major.isdigit() and minor.isascii() and minor.isdigit()):
        raise RecordError(f"{what}: invalid format_version {str(version)[:40]!r}", hint=hint)
    if int(major) > READABLE_MAJOR:
        raise FormatVersionError(
            f"the store at {backend.url} uses format {version}; this ckpt ({__version__}) reads format "
            f"{READABLE_MAJOR}.x and older"
        )
    known = {k: v for k, v in raw.items() if k in StoreConfig.model_fields}
    return validate_record(StoreConfig, known, what=what, hint=hint)


_MAX_CHUNK = 1 << 40
_SIZE_HINT = "a number of bytes, or with a unit: 4096, 64MiB, 1GB"


def init(
    url: str | os.PathLike[str] | None = None, *, chunk_size: int | str | None = None, **storage_options: Any
) -> Store:
    """Create a new, empty store.

    Args:
        url: a local path (``str`` or ``pathlib.Path``) or any fsspec URL; default ``$CKPT_STORE`` or
            ``./.ckpt``.
        chunk_size: bytes per chunk (int or ``"64MiB"``); default ``$CKPT_CHUNK_SIZE`` or 64 MiB.
        storage_options: passed to fsspec (``endpoint_url``, credentials …).

    Returns:
        The new store.

    Raises:
        StoreExistsError: a store exists there already.
        RecordError: ``chunk_size`` is not a positive size.
        BackendError: the location cannot be used (a chained URL, a symbolic link inside a local store…).

    Example:
        >>> store = ckpt.init("memory://docs-init")  # doctest: +SKIP
    """
    location = _location(url)
    try:
        size = settings.parse_size(chunk_size) if chunk_size is not None else settings.chunk_size()
    except (ValueError, TypeError, OverflowError) as e:
        raise RecordError(f"invalid chunk_size {chunk_size!r}"[:120] + f": {e}"[:200], hint=_SIZE_HINT) from None
    if not 0 < size <= _MAX_CHUNK:
        raise RecordError(f"chunk_size must be a positive size of at most 1 TiB, got {size}"[:120], hint=_SIZE_HINT)
    backend = open_backend(location, **storage_options)
    config = StoreConfig(chunk_size=size, created_at=format_time(utcnow()))
    data = canonical_json(config.model_dump(mode="json"))
    if not backend.put_if_absent(layout.CONFIG, data):
        raise StoreExistsError(f"a ckpt store exists already at {backend.url}")
    backend.flush()
    return Store(backend, config)


def open(url: str | os.PathLike[str] | None = None, **storage_options: Any) -> Store:
    """Open an existing store.

    Args:
        url: a local path (``str`` or ``pathlib.Path``) or any fsspec URL; default ``$CKPT_STORE`` or
            ``./.ckpt``.
        storage_options: passed to fsspec (``endpoint_url``, credentials …).

    Raises:
        StoreNotFoundError: there is no store at ``url`` (the hint says how to create one).
        FormatVersionError: the store was written by a newer, incompatible ckpt.
        BackendError: the location cannot be used (a chained URL, a symbolic link inside a local store…).

    Example:
        >>> store = ckpt.open("s3://bucket/models", endpoint_url="http://127.0.0.1:5000")  # doctest: +SKIP
    """
    backend = open_backend(_location(url), **storage_options)
    return Store(backend, _read_config(backend))


def _location(url: str | os.PathLike[str] | None) -> str:
    """The store location as text: ``url`` (a str or ``os.PathLike``), else ``$CKPT_STORE`` or ``./.ckpt``."""
    if url is None:
        return settings.store_url()
    try:
        text = os.fspath(url)
    except TypeError:
        raise StoreError(
            f"a store location must be a path or a URL, got {type(url).__name__}",
            hint="pass a str or pathlib.Path, e.g. ckpt.open('runs') or ckpt.open('s3://bucket/models')",
        ) from None
    if not isinstance(text, str):
        raise StoreError(f"a store location must be a str path, got {type(text).__name__}")
    return text or settings.store_url()


def _clean_metrics(metrics: Mapping[str, float] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in (metrics or {}).items():
        if not isinstance(k, str):
            raise RecordError(f"metric names must be str, got {k!r}")
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            raise RecordError(f"metric {k!r} must be a number, got {v!r}") from None
        if isinstance(v, bool):
            raise RecordError(f"metric {k!r} must be a number, got {v!r}")
    return out


def _clean_files(files: Mapping[str, bytes] | None) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for path, data in (files or {}).items():
        name = "/".join(path.split("\\")) if isinstance(path, str) else path
        problem = file_path_problem(name)
        if problem:
            shown = repr(path if not isinstance(path, str) or len(path) <= 80 else path[:80] + "…")
            raise RecordError(
                f"attached file path {shown.encode('utf-8', 'backslashreplace').decode()} cannot be stored: {problem}",
                hint="attached files are relative paths such as config.json or tokenizer/vocab.json",
            )
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise RecordError(f"attached file {path!r} must be bytes, got {type(data).__name__}")
        out[name] = bytes(data)
    return out
