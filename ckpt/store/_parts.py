"""``StoreParts``: the working parts of one store, handed to the modules that do the store's work.

``Store`` (``_store``) is the public face: its verbs check their arguments and hand a ``StoreParts`` to the
module that does the work (``_commit``, ``_reading``, ``_releases``, ``_retention``, ``_gc``, ``_verify``,
``_repair``, ``_sync``). Layers above the store that must reach below its verbs get one with
``ckpt.store.store_parts(store)``: ``ckpt.dcp`` commits a snapshot whose tensors several ranks wrote, and the
``Checkpointer`` re-checks that the chunks of unchanged tensors are still stored. Nothing else should.

Not public API: it may change with the store's internals. Like ``Store``, it holds no state that can go stale:
refs and markers are read from the backend on every call; immutable records (snapshot records, tensor tables) of
a store on another machine are read through the local record cache (``_records``), checked on every read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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
from ckpt.store._io import is_remote
from ckpt.store._objects import Objects
from ckpt.store._records import record_cache_for
from ckpt.store._refs import Refs
from ckpt.store._revisions import ParsedRevision, parse_revision, resolve_base, resolve_reflog, walk_steps

__all__ = ["StoreParts", "read_snapshots"]

#: A ``log`` whose walk missed the record cache this many times reads the rest of the history in one batch.
_BATCH_AFTER = 4
#: ... unless it was asked for at most N more and the store holds more than this many times N records.
_BATCH_FACTOR = 16


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
        objects = Objects(backend, minor_newer=newer, cache=record_cache_for(backend))
        return cls(backend, config, objects, Refs(backend, minor_newer=newer))

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

    def resolve(self, rev: str | Snapshot, pruned: set[str] | None = None) -> Snapshot:
        """The snapshot a revision names (see ``Store.resolve``); a ``Snapshot`` is returned as it is.

        Args:
            rev: the revision.
            pruned: the ids with a pruned marker, when the caller listed them already (``pruned()``).

        Raises:
            RevisionNotFoundError: nothing matches.
            AmbiguousRevisionError: an id prefix matches several snapshots.
        """
        if isinstance(rev, Snapshot):
            return rev
        parsed = parse_revision(rev)
        sid = self.base_id(parsed)
        marked = self.pruned() if pruned is None else pruned
        return walk_steps(self.get(sid, marked), parsed.steps, lambda i: self.get(i, marked), rev)

    def log(self, rev: str = "main", limit: int | None = None) -> list[Snapshot]:
        """History from ``rev`` back along first parents, newest first (at most ``limit`` snapshots).

        Records come from the local record cache where it has them. On an object store, a walk that keeps
        missing it (a first ``log`` of a long history) stops reading one record at a time: it lists the store's
        snapshot records once and reads those the cache lacks in one batched, concurrent read (which fills the
        cache for the next call), unless ``limit`` leaves few to read in a store of many more records.

        Raises:
            RevisionNotFoundError, AmbiguousRevisionError: ``rev`` does not resolve.
            RevisionNotFoundError: a parent's record is missing; ``IntegrityError``/``RecordError``: damaged.
        """
        pruned = self.pruned()
        out: list[Snapshot] = []
        snap: Snapshot | None = self.resolve(rev, pruned)
        read: dict[str, Snapshot | CkptError] = {}
        misses = 0
        batched = not is_remote(self.backend)  # on this machine, one record at a time costs no round trip
        while snap is not None and (limit is None or len(out) < limit):
            out.append(snap)
            if not snap.parents or (limit is not None and len(out) >= limit):
                break  # never a record read beyond what was asked for
            pid = snap.parents[0]
            found = read.get(pid) or self.objects.cached_snapshot(pid, pid in pruned)
            if found is None:
                misses += 1
                left = None if limit is None else limit - len(out)
                if not batched and misses > _BATCH_AFTER and (left is None or left > _BATCH_AFTER):
                    batched = True
                    listed = list(self.objects.snapshot_ids())
                    if left is None or len(listed) <= _BATCH_FACTOR * left:  # not 100,000 records for 20
                        read = read_snapshots(self.objects, listed, pruned)
                        found = read.get(pid)
            snap = found if isinstance(found, Snapshot) else self.get(pid, pruned)  # errors as get() words them
        return out

    def snapshots(self) -> list[Snapshot]:
        """Every snapshot record in the store, in listing order, read in one batched read (cached ones not).

        Raises:
            RevisionNotFoundError: a listed record vanished before it was read.
            IntegrityError, RecordError: a record is damaged.
        """
        pruned = self.pruned()
        out: list[Snapshot] = []
        for sid, got in read_snapshots(self.objects, self.objects.snapshot_ids(), pruned).items():
            if isinstance(got, MissingObjectError):
                raise RevisionNotFoundError(f"snapshot {sid[:12]} is not in this store") from got
            if isinstance(got, CkptError):
                raise got
            out.append(got)
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


def read_snapshots(objects: Objects, snapshot_ids: Iterable[str], pruned: set[str]) -> dict[str, Snapshot | CkptError]:
    """Many snapshot records at once: those in the local cache from it, the others in one batched read.

    Every record is checked against its id, as ``get_snapshot`` does. The store's requests run concurrently
    (``Backend.read_many``, ``ckpt.settings.io_concurrency()`` in flight).

    Args:
        snapshot_ids: the ids (each read once).
        pruned: the ids with a pruned marker (``StoreParts.pruned()``).

    Returns:
        id → the snapshot, or the ``CkptError`` reading it raised (``MissingObjectError``,
        ``CorruptChunkError``, ``RecordError``, ``BackendError``): one record's damage never hides another.
    """
    out: dict[str, Snapshot | CkptError] = {}
    todo: list[str] = []
    for sid in dict.fromkeys(snapshot_ids):
        kept = objects.cache.get("snapshots", sid) if objects.cache is not None else None
        if kept is None:
            todo.append(sid)
            continue
        try:
            out[sid] = objects.parse_snapshot(sid, kept, sid in pruned)
        except CkptError as e:
            out[sid] = e
    results = objects.backend.read_many([layout.snapshot_path(sid) for sid in todo], errors="return")
    for sid, data in zip(todo, results, strict=True):
        try:
            if isinstance(data, MissingObjectError):
                raise MissingObjectError(f"snapshot {sid[:12]} is missing from the store") from data
            if isinstance(data, Exception):
                raise data
            objects.check_record("snapshot", sid, data)
            if objects.cache is not None:
                objects.cache.put("snapshots", sid, data)
            out[sid] = objects.parse_snapshot(sid, data, sid in pruned)
        except CkptError as e:
            out[sid] = e
    return out
