"""``Store``, the public face of the store layer (``init`` / ``open`` / ``sync`` are in ``_entry``).

Each verb checks its arguments and hands the store's ``StoreParts`` to the module that does the work:
``_commit`` (save), ``_reading`` (load, lazy tensors, files); ``_open`` creates and opens stores. The verbs that
publish, prune, check, repair and copy are in ``_maintenance``, which ``Store`` inherits.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ckpt.errors import RevisionNotFoundError
from ckpt.model import (
    ReflogEntry,
    Relation,
    SaveFields,
    Snapshot,
    SnapshotFields,
    StoreConfig,
    TagRecord,
    TensorTable,
    check_fields,
    format_time,
    utcnow,
)
from ckpt.storage import Backend
from ckpt.store import _commit, _loading, _reading
from ckpt.store._maintenance import StoreMaintenance
from ckpt.store._parts import StoreParts
from ckpt.store._reading import LazyTensors
from ckpt.store._types import Framework, Progress

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Store", "store_parts"]


class Store(StoreMaintenance):
    """A checkpoint store: content-addressed snapshots, branches and tags on one backend.

    Get one with ``ckpt.init(url)`` (new store) or ``ckpt.open(url)`` (existing store); do not construct it
    directly. Every call reads the current state of the backend, so several processes can share one store
    (immutable records of stores on other machines come through a local cache that checks each against its
    digest: docs/guides/remote-storage.md).

    The verbs that publish, prune, check, repair and copy (``freeze``, ``prune``, ``retain``, ``gc``, ``verify``,
    ``repair``, ``sync_to``, ``stats``) are inherited from ``StoreMaintenance``.

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
        self._parts = StoreParts.of(backend, config)

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
        progress: Progress | None = None,
        force: bool = False,
        compression: bool | None = None,
        **fields: Unpack[SaveFields],
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
            progress: called with byte counts as chunks are written.
            force: move the branch even if ``parents`` do not include its head (a non-fast-forward move).
            compression: store new chunks byte-grouped and zstd-coded where that pays (``True``) or raw
                (``False``); ``None``: the store's setting (``ckpt.init(compression=...)``). Lossless either way,
                and chunks already stored are kept as they are. With compression, in a store whose
                ``delta_depth`` is above 0 (the default), a new chunk is stored as a delta against the same
                bytes of the same tensor in the first parent when that is smaller (docs/format.md, "Delta").
                In a store with a ``pack_size`` (the default), tensors under 64 KiB are packed into shared chunks
                (docs/format.md, "Packed tensors").
            **fields: what the snapshot records (``SaveFields``): ``parents`` (default: the branch's head),
                ``relation`` (default ``continue``, or ``import`` for a root), ``model`` (default: the first
                parent's), ``step``, ``epoch``, ``metrics`` (``{"val_loss": 0.41}``), ``message``, ``metadata``
                (your own JSON), ``files`` (relative path → bytes; ``None`` keeps the first parent's files for
                ``continue``, ``finetune`` and ``quantized``, ``{}`` attaches none), ``base`` (an adapter's).

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
            RecordError: a field cannot be recorded (a metric that is not a number, a bad file path …).
            RevisionError: a parent or base does not resolve.
            TypeError: a keyword that is not a field.

        Example:
            >>> snap = store.save({"model": model.state_dict()}, step=100, metrics={"val_loss": 0.4})  # doctest: +SKIP
        """
        check_fields(fields, SaveFields, "Store.save")
        return _commit.save(self._parts, state, branch, fields, progress=progress, force=force, compression=compression)

    def derive(
        self,
        rev: str,
        state: Any,
        *,
        branch: str,
        relation: Relation = "finetune",
        progress: Progress | None = None,
        compression: bool | None = None,
        **fields: Unpack[SnapshotFields],
    ) -> Snapshot:
        """Start a new model line from an existing snapshot: a fine-tune, a quantization, a merge …

        The new snapshot's parent is ``rev`` and its relation ``relation``; ``branch`` must be new. Tensors
        equal to the parent's are not stored again (content addressing), so a fine-tune that changes a
        quarter of the tensors costs a quarter of the bytes.

        Args:
            rev: the snapshot to derive from.
            state: the new state tree.
            branch: a new branch for the new line.
            relation: ``finetune`` (default), ``quantized``, ``merge`` …
            progress: called with byte counts as chunks are written.
            compression: as for ``save`` (``None``: the store's setting).
            **fields: what the snapshot records (``SnapshotFields``), as for ``save``: ``model`` (the new
                model's name, e.g. ``tiny-llama-instruct``; default: the parent's), ``step``, ``metrics``,
                ``message``, ``files`` …

        Returns:
            The new snapshot.

        Raises:
            RefExistsError: the branch exists (use ``save(..., parents=[rev])`` to add to an existing line).
            RecordError: ``relation`` is ``import`` or ``continue`` (not a new line), or a field cannot be recorded.
            RevisionError: ``rev`` does not resolve.
            TypeError: a keyword that is not a field.

        Example:
            >>> release = "tiny-llama-2026-11-28"
            >>> store.derive(release, sd, branch="instruct", model="tiny-llama-instruct")  # doctest: +SKIP
        """
        check_fields(fields, SnapshotFields, "Store.derive")
        _commit.check_new_line(self._parts, branch, relation)
        parent = self.resolve(rev)
        line: SaveFields = {**fields, "parents": [parent.id], "relation": relation}
        return _commit.save(self._parts, state, branch, line, progress=progress, force=False, compression=compression)

    # -- history -------------------------------------------------------------------------------------

    def log(self, rev: str = "main", limit: int | None = None) -> list[Snapshot]:
        """History from ``rev`` back along first parents, newest first.

        Args:
            rev: where to start.
            limit: at most this many snapshots.

        Returns:
            The snapshots, ``rev`` first (pruned ones too, marked ``pruned``).

        Raises:
            RevisionError: ``rev`` does not resolve.
        """
        return self._parts.log(rev, limit)

    def lineage(self, rev: str = "main") -> list[Snapshot]:
        """The chain from ``rev`` back to its root along first parents, ``rev`` first.

        Each snapshot's ``relation`` says how it came from the next one in the list; an adapter's first
        parent is its base. ``[s for s in store.lineage(rev) if s.relation != "continue"]`` gives the model
        family (base → instruct → chat → adapter) without the training steps in between.

        Raises:
            RevisionError: ``rev`` does not resolve.
        """
        return self.log(rev)

    def children(self, rev: str) -> list[Snapshot]:
        """Snapshots that name ``rev`` as a parent or as their adapter base, oldest first (reads every record).

        Raises:
            RevisionError: ``rev`` does not resolve.
        """
        target = self.resolve(rev).id
        found = [s for s in self.snapshots() if target in s.parents or s.base == target]
        return sorted(found, key=lambda s: s.created_at)

    def snapshots(self) -> list[Snapshot]:
        """Every snapshot record in the store, newest first.

        Raises:
            RecordError, IntegrityError: a record is damaged (``verify`` lists every damaged object).
        """
        return sorted(self._parts.snapshots(), key=lambda s: s.created_at, reverse=True)

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
        return self._parts.resolve(rev)

    def get(self, snapshot_id: str) -> Snapshot:
        """A snapshot by full id.

        Raises:
            RevisionNotFoundError: no snapshot has this id.
        """
        return self._parts.get(snapshot_id)

    def table(self, rev: str) -> TensorTable:
        """The tensor table of a snapshot: every tensor's dtype, shape and chunks, the state tree, files.

        Raises:
            RevisionError: ``rev`` does not resolve.
            MissingObjectError: the table is missing (collected by gc after a prune).
        """
        return self._parts.objects.get_table(self.resolve(rev).table)

    def load(
        self,
        rev: str = "main",
        *,
        verify: bool = True,
        framework: Framework | None = None,
        into: Mapping[str, Any] | None = None,
        progress: Progress | None = None,
        mmap: bool = False,
        prefix: str | Sequence[str] | None = None,
        device: Any = None,
    ) -> Any:
        """Load a snapshot's state tree, with every tensor restored (or only those under ``prefix``, on ``device``).

        Args:
            rev: the revision.
            verify: check every chunk against its digest (on by default; BLAKE3 makes it cheap).
            framework: ``torch`` or ``numpy`` for every tensor; default: what each was saved as.
            into: tensor path → existing tensor to read into, in place, when dtype, shape and layout fit (e.g.
                ``{"model/" + k: v for k, v in model.state_dict().items()}``): a contiguous CPU tensor, or a
                C-contiguous writable numpy array. Reusing memory avoids the page faults of fresh allocations;
                tensors that do not fit (another dtype or shape, a ``channels_last`` or other strided tensor, a
                GPU tensor) get new memory, returned in the tree and not copied into the given tensor:
                ``ckpt.restore(module, store, rev)`` copies into a module whatever its layout. An ``into`` that
                names none of the tensors read is refused (``StateMismatchError``). Buffers that are one
                tensor (tied weights) must receive one value: two different ones are refused
                (``StateMismatchError``) before any byte is written, and so are buffers whose memory overlaps
                without being one tensor. Tensors saved tied but given buffers of their own (a live model
                whose weights are not tied) each have their buffer filled.
            progress: called with byte counts as chunks arrive.
            mmap: on a local store, memory-map tensors of 1 MiB or more held in raw chunks instead of copying
                them (zero-copy and copy-on-write, as safetensors does); a tensor of several chunks is one
                contiguous mapping of its chunk files placed side by side (Linux, a chunk size of whole pages;
                else it is read). Every chunk is checked as a copying load checks it. The trade-off: a mapped tensor is
                verified as it was when mapped, but on Linux a private mapping still shows later changes to
                pages it has not written, and a chunk file truncated later kills the process with ``SIGBUS``
                when those pages are read. The default copies, so what ``verify`` checked is what you get.
            prefix: read only the tensors whose path (``store.table(rev).tensors``) starts with this string (or
                one of these): ``"unet/"``, ``"model/layers.0."``; the tree comes back pruned to them.
            device: ``None``/``"cpu"``: host memory; ``"meta"``: dtype and shape only, no byte read; another torch
                device (``"cuda:0"``): filled through a reused host buffer of at most 256 MiB (pinned for CUDA),
                never the whole selection on the host. Memory: the guide "Diffusion pipelines".

        Returns:
            The same structure that was saved (mappings come back as ``dict``). Tensors that were one tensor
            when saved (tied weights, recorded in the table's ``tied``) come back as one tensor at each of their
            places.

        Raises:
            MissingObjectError: the snapshot was pruned, or a chunk is missing.
            CorruptChunkError: a chunk does not match its digest (names the tensor and the snapshot).
            StateMismatchError: no tensor path starts with ``prefix``; ``device`` with numpy, ``into`` or ``mmap``;
                ``into`` names none of the tensors read (keyed otherwise than the snapshot's paths).
            StateError: a device torch cannot name or use (refused before any read), or cannot allocate on.

        Example:
            >>> state = store.load("main~2")  # doctest: +SKIP
            >>> unet = store.load("tiny-sd", prefix="unet/", device="cuda:0")["unet"]  # doctest: +SKIP
        """
        if prefix is None and device is None:
            return _reading.load(
                self._parts, rev, verify=verify, framework=framework, into=into, progress=progress, mmap=mmap
            )
        return _loading.load(
            self._parts,
            rev,
            prefix=prefix,
            device=device,
            verify=verify,
            framework=framework,
            into=into,
            progress=progress,
            mmap=mmap,
        )

    def tensors(
        self, rev: str = "main", *, verify: bool = True, framework: Framework | None = None, mmap: bool = False
    ) -> LazyTensors:
        """A lazy, read-only mapping tensor path → tensor that reads only the tensors you index.

        Args:
            rev: the revision.
            verify: check each chunk against its digest as it is read.
            framework: ``torch`` or ``numpy``; default: what each tensor was saved as.
            mmap: map instead of copying, with the trade-off described in ``load``.

        Returns:
            The mapping; only its tensor table is read now.

        Raises:
            MissingObjectError: the snapshot was pruned.

        Example:
            >>> t = store.tensors("main")  # doctest: +SKIP
            >>> t["model/layers.0.self_attn.q_proj.weight"].shape  # doctest: +SKIP
        """
        return _reading.tensors(self._parts, rev, verify=verify, framework=framework, mmap=mmap)

    def tensor_bytes(self, rev: str, name: str, *, verify: bool = True) -> Iterator[bytes]:
        """The raw bytes of one tensor (C order, little-endian), chunk by chunk, each verified; no torch needed.

        Raises:
            KeyError: no such tensor in the snapshot.
            MissingObjectError: the snapshot was pruned.
        """
        return _reading.tensor_bytes(self._parts, rev, name, verify=verify)

    def files(self, rev: str = "main") -> dict[str, bytes]:
        """The attached files of a snapshot, path → bytes (each chunk checked like a tensor's).

        Raises:
            MissingObjectError: the snapshot was pruned, or a chunk is missing.
            CorruptChunkError: a chunk does not match its digest.
        """
        return _reading.files(self._parts, rev)

    # -- refs ----------------------------------------------------------------------------------------

    def branches(self) -> dict[str, str]:
        """Branch name → snapshot id, sorted by name.

        Raises:
            RecordError: a branch's file is damaged.
        """
        return self._parts.refs.branches()

    def tags(self) -> dict[str, TagRecord]:
        """Tag name → tag record (``.id``, ``.frozen``, ``.created_at``, ``.message``), sorted by name.

        Raises:
            RecordError: a tag's file is damaged.
        """
        return self._parts.refs.tags()

    def reflog(self, ref: str | None = None) -> list[ReflogEntry]:
        """Every recorded ref move, oldest first.

        Args:
            ref: only this ref's moves (``refs/heads/main``, ``refs/tags/v1``); default: every ref's.
        """
        return self._parts.refs.reflog(ref)

    def branch(self, name: str, *, at: str = "main") -> Snapshot:
        """Create a branch at a revision (e.g. ``at="main~2"`` to go back to an earlier save).

        Returns:
            The snapshot the new branch points at.

        Raises:
            InvalidNameError: bad name.
            RefExistsError: a branch or tag of that name exists.
        """
        self._parts.refs.check_new_name(name, "branch")
        snap = self.resolve(at)
        self._parts.refs.move_branch(name, None, snap.id, action="branch", message=f"branch from {at}", create=True)
        return snap

    def delete_branch(self, name: str) -> None:
        """Delete a branch. Its snapshots stay (and stay in the reflog) until gc.

        Raises:
            RevisionNotFoundError: no such branch.
        """
        head = self._parts.refs.branch_head(name)
        if head is None:
            raise RevisionNotFoundError(f"no branch named {name!r}")
        self._parts.refs.move_branch(name, head, None, action="delete")

    def reset(self, name: str, rev: str) -> Snapshot:
        """Move an existing branch to any revision (like ``git reset``); the old head stays in the reflog.

        Returns:
            The snapshot the branch points at now.

        Raises:
            RevisionNotFoundError: no such branch, or ``rev`` names nothing.
            RefConflictError: the branch moved meanwhile.
        """
        head = self._parts.refs.branch_head(name)
        if head is None:
            raise RevisionNotFoundError(f"no branch named {name!r}")
        snap = self.resolve(rev)
        self._parts.refs.move_branch(name, head, snap.id, action="reset", message=f"reset to {rev}")
        return snap

    def tag(self, name: str, rev: str = "main", *, message: str | None = None) -> Snapshot:
        """Tag a snapshot. Tags never move; a plain tag can be deleted with ``delete_tag``.

        Returns:
            The tagged snapshot.

        Raises:
            InvalidNameError: bad name.
            RefExistsError: a branch or tag of that name exists.
        """
        self._parts.refs.check_new_name(name, "tag")
        snap = self.resolve(rev)
        self._parts.refs.create_tag(name, TagRecord(id=snap.id, created_at=format_time(utcnow()), message=message))
        return snap

    def delete_tag(self, name: str) -> None:
        """Delete a tag that is not frozen.

        Raises:
            RevisionNotFoundError: no such tag.
            FrozenRefError: the tag is frozen.
        """
        self._parts.refs.delete_tag(name)


def store_parts(store: Store) -> StoreParts:
    """The working parts of ``store``, for the layers that extend the store (``ckpt.dcp``, the Checkpointer).

    Internal: see ``ckpt.store._parts``.
    """
    return store._parts
