"""``StoreParts``: the working parts of one store, handed to the modules that do the store's work.

``Store`` (``_store``) is the public face: its verbs check their arguments and hand a ``StoreParts`` to the
module that does the work (``_commit``, ``_reading``, ``_releases``, ``_retention``, ``_gc``, ``_verify``,
``_repair``, ``_sync``). Layers above the store that must reach below its verbs get one with
``ckpt.store.store_parts(store)``: ``ckpt.dcp`` commits a snapshot whose tensors several ranks wrote, and the
``Checkpointer`` re-checks that the chunks of unchanged tensors are still stored. Nothing else should.

Not public API: it may change with the store's internals. Like ``Store``, it holds no cache: every call reads
the backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ckpt.errors import CkptError, MissingObjectError, RevisionNotFoundError
from ckpt.model import (
    FORMAT_VERSION,
    PrunedMarker,
    Snapshot,
    StoreConfig,
    TagRecord,
    TensorTable,
    canonical_json,
    format_time,
    utcnow,
)
from ckpt.storage import Backend
from ckpt.store import _layout as layout
from ckpt.store._objects import Objects
from ckpt.store._refs import Refs
from ckpt.store._revisions import ParsedRevision, parse_revision, resolve_base, resolve_reflog, walk_steps

__all__ = ["StoreParts"]


@dataclass(frozen=True)
class StoreParts:
    """The working parts of one store: its backend, its config, its objects and its refs.

    Attributes:
        backend: where the bytes live (``ckpt.storage``); every path is one of ``_layout``'s.
        config: the store's configuration record (chunk size, format version).
        objects: chunks, tensor tables and snapshot records, by digest (written once, checked when read).
        refs: branches, tags and the reflog (moved by compare-and-swap).
    """

    backend: Backend
    config: StoreConfig
    objects: Objects
    refs: Refs

    @classmethod
    def of(cls, backend: Backend, config: StoreConfig) -> StoreParts:
        """The parts of the store on ``backend`` whose config is ``config`` (read by ``_open``).

        A store written by a newer minor format version is read with its unknown record fields ignored.
        """
        own = tuple(int(x) for x in FORMAT_VERSION.split("."))
        theirs = tuple(int(x) for x in config.format_version.split("."))
        newer = theirs > own
        return cls(backend, config, Objects(backend, minor_newer=newer), Refs(backend, minor_newer=newer))

    @property
    def url(self) -> str:
        """Where the store lives."""
        return self.backend.url

    @property
    def chunk_size(self) -> int:
        """The size in bytes tensors are cut into."""
        return self.config.chunk_size

    # -- snapshots and revisions -------------------------------------------------------------------------

    def pruned(self) -> set[str]:
        """Ids of the snapshots with a pruned marker (listed, not read: ``gc`` and ``verify`` read them)."""
        return {layout.digest_from_path(e.path) for e in self.backend.list(layout.PRUNED)}

    def get(self, snapshot_id: str, pruned: set[str] | None = None) -> Snapshot:
        """A snapshot record by full id, its ``pruned`` flag set from the markers.

        Args:
            snapshot_id: the full id.
            pruned: the ids with a pruned marker, when the caller listed them already (``pruned()``).

        Raises:
            RevisionNotFoundError: no such snapshot.
            IntegrityError, RecordError: its record is damaged.
        """
        marked = self.pruned() if pruned is None else pruned
        try:
            return self.objects.get_snapshot(snapshot_id, pruned=snapshot_id in marked)
        except MissingObjectError as e:
            raise RevisionNotFoundError(f"snapshot {snapshot_id[:12]} is not in this store") from e

    def base_id(self, parsed: ParsedRevision) -> str:
        """The snapshot id the base of a revision names (a ref, an id, ``BRANCH@{N}``); reads no record.

        Raises:
            RevisionNotFoundError, AmbiguousRevisionError: as ``resolve``.
        """
        if parsed.reflog is not None:
            return resolve_reflog(parsed.base, parsed.reflog, self.refs.reflog(f"{layout.REFS_HEADS}{parsed.base}"))
        return resolve_base(
            parsed.base,
            branch=self.refs.branch_head,
            tag=lambda n: t.id if (t := self.refs.tag(n)) else None,
            has_snapshot=self.objects.has_snapshot,
            ids_with_prefix=lambda p: list(self.objects.snapshot_ids(p)),
            names=lambda: [*self.refs.branches(), *self.refs.tags()],
        )

    def resolve(self, rev: str | Snapshot) -> Snapshot:
        """The snapshot a revision names (see ``Store.resolve``); a ``Snapshot`` is returned as it is.

        Raises:
            RevisionNotFoundError: nothing matches.
            AmbiguousRevisionError: an id prefix matches several snapshots.
        """
        if isinstance(rev, Snapshot):
            return rev
        parsed = parse_revision(rev)
        sid = self.base_id(parsed)
        pruned = self.pruned()
        return walk_steps(self.get(sid, pruned), parsed.steps, lambda i: self.get(i, pruned), rev)

    def log(self, rev: str = "main", limit: int | None = None) -> list[Snapshot]:
        """History from ``rev`` back along first parents, newest first (at most ``limit`` snapshots)."""
        pruned = self.pruned()
        out: list[Snapshot] = []
        snap: Snapshot | None = self.resolve(rev)
        while snap is not None and (limit is None or len(out) < limit):
            out.append(snap)
            snap = self.get(snap.parents[0], pruned) if snap.parents else None
        return out

    # -- pruning -----------------------------------------------------------------------------------------

    def release_needs(self, tags: Mapping[str, TagRecord] | None = None) -> set[str]:
        """Ids a frozen release needs to load: each frozen tag's snapshot and its adapter bases.

        These are never pruned, whatever a marker says. A record that cannot be read ends the walk there
        (``verify`` reports it).

        Args:
            tags: the store's tags, when the caller read them already.
        """
        need: set[str] = set()
        todo = [t.id for t in (self.refs.tags() if tags is None else tags).values() if t.frozen]
        while todo:
            sid = todo.pop()
            if sid in need:
                continue
            need.add(sid)
            try:
                base = self.objects.get_snapshot(sid).base
            except CkptError:
                continue
            if base:
                todo.append(base)
        return need

    def check_not_pruned(self, snap: Snapshot) -> None:
        """Refuse to read the tensors of a pruned snapshot (a frozen release, or a base one needs, never is).

        Raises:
            MissingObjectError: it was pruned.
        """
        if snap.pruned and snap.id not in self.release_needs():
            raise MissingObjectError(
                f"snapshot {snap.short_id} was pruned: its tensors were released",
                hint="its record stays in the log; load another snapshot",
            )

    def unwhole_chunk(self, table: TensorTable, whole: set[str] | None = None) -> str | None:
        """The first chunk of ``table`` (tensors and attached files) not stored whole, or ``None``.

        Whole: present, of the right length, with a valid header (``Objects.chunk_whole``: its payload is not
        hashed). Digests in ``whole`` are taken as checked already; each one found whole is added to it.
        """
        seen = whole if whole is not None else set()
        pieces = [p for entry in table.tensors.values() for p in entry.pieces(table.chunk_size)]
        pieces += [
            (d, min(table.chunk_size, f.size - i * table.chunk_size))
            for f in table.files.values()
            for i, d in enumerate(f.chunks)
        ]
        for digest, length in pieces:
            if digest in seen:
                continue
            if not self.objects.chunk_whole(digest, length):
                return digest
            seen.add(digest)
        return None

    def mark_pruned(self, snapshot_id: str, reason: str | None) -> None:
        """Write a snapshot's pruned marker, once (an existing marker is kept as it is)."""
        marker = PrunedMarker(pruned_at=format_time(utcnow()), reason=reason)
        self.backend.put_if_absent(layout.pruned_path(snapshot_id), canonical_json(marker.model_dump(mode="json")))
