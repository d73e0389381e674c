"""The verbs of ``Store`` that publish, prune, check, repair and copy; ``Store`` (``_store``) inherits them.

Like the verbs in ``_store``, each checks its arguments and hands the store's ``StoreParts`` to the module that
does the work: ``_releases``, ``_retention``, ``_gc``, ``_verify``, ``_repair``, ``_sync``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from ckpt.model import Snapshot
from ckpt.store import _releases, _retention
from ckpt.store._gc import GcReport, OnDamage, collect
from ckpt.store._open import connect
from ckpt.store._parts import StoreParts
from ckpt.store._reading import open_snapshot
from ckpt.store._repair import RepairReport, repair
from ckpt.store._reports import Footprint, StoreStats, VerifyReport, footprint, store_stats
from ckpt.store._sync import SyncReport, sync_parts
from ckpt.store._types import Progress
from ckpt.store._verify import verify_store

if TYPE_CHECKING:
    from typing_extensions import Self

    from ckpt.store._keys import PrivateKey, PublicKey, ReleaseSigner
    from ckpt.store._retention import RetentionPolicy

__all__ = ["StoreMaintenance"]


class StoreMaintenance:
    """Publishing, pruning, checking, repairing and copying: the verbs of ``Store`` that keep a store.

    Not used on its own: ``Store`` inherits it, and sets the parts it works on (``_parts``).
    """

    _parts: StoreParts

    # -- releases ------------------------------------------------------------------------------------

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
        stored beside the tag (docs/concepts/security.md), so that ``verify(trust=[public key])`` can tell the
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
        return _releases.freeze(self._parts, rev, model=model, name=name, message=message, verify=verify, signer=signer)

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
        _releases.sign_release(self._parts, name, signer)

    # -- retention -----------------------------------------------------------------------------------

    def prune(self, rev: str, *, reason: str | None = None) -> Snapshot:
        """Release a snapshot's tensors (gc reclaims them); its record stays in the log, marked pruned.

        Args:
            rev: the snapshot.
            reason: a note kept in its pruned marker.

        Returns:
            The snapshot, marked pruned.

        Raises:
            FrozenRefError: a frozen release is this snapshot or needs it (as an adapter's base).
            RefError: a branch or tag points at it (move or delete the ref first).
        """
        return _retention.prune(self._parts, rev, reason=reason)

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

        Raises:
            RevisionError: ``branch`` does not resolve.

        Example:
            >>> from ckpt.retention import AnyOf, KeepBest, KeepLast
            >>> store.retain("main", AnyOf(KeepLast(3), KeepBest("val_loss", 1)))  # doctest: +SKIP
        """
        return _retention.retain(self._parts, branch, policy, dry_run=dry_run)

    # -- maintenance ---------------------------------------------------------------------------------

    def gc(
        self,
        *,
        grace: timedelta | float | str = timedelta(hours=1),
        dry_run: bool = False,
        expire_reflog: timedelta | float | str | None = timedelta(days=30),
        on_damage: OnDamage = "refuse",
    ) -> GcReport:
        """Delete what no live snapshot needs: unreachable records, pruned snapshots' chunks, crash leftovers.

        gc is fail-closed: it deletes only what it can prove unneeded. If anything it must read to decide is
        damaged or missing (a ref, a reflog entry, a snapshot record, a tensor table, a pruned marker), it
        refuses before deleting anything and names the damage; ``verify`` reports the same damage and
        ``repair`` puts it back from a good copy.

        Args:
            grace: never delete objects younger than this (protects saves running right now): a ``timedelta``,
                seconds, or text such as ``"1h"`` or ``"0"`` (``settings.parse_duration``); the report counts
                what it spared (``young_chunks``, ``young_bytes``, ``young_records``).
            dry_run: only report what would be deleted.
            expire_reflog: reflog entries older than this no longer keep snapshots alive (``None``: forever); the
                same forms as ``grace`` (``"30d"``).
            on_damage: ``"refuse"`` (default), or ``"keep"``: collect anyway, keeping everything the damaged
                objects might need (an unreadable ref, reflog entry or record keeps every record; an unreadable
                record or table keeps every chunk; an unreadable pruned marker prunes nothing). The damage is
                listed in the report.

        Returns:
            What was (or would be) removed, how many bytes that frees, and what was kept and why.

        Raises:
            IntegrityError: something gc must read is damaged or missing (with ``on_damage="refuse"``).
            RecordError: ``on_damage`` is neither ``"refuse"`` nor ``"keep"``, or ``grace`` or ``expire_reflog``
                is not a duration (or is negative).

        Example:
            >>> report = store.gc(grace=timedelta(0), dry_run=True)  # doctest: +SKIP
            >>> report.freed_bytes, report.young_chunks  # doctest: +SKIP
            (16400, 0)
        """
        from ckpt.settings import parse_duration

        return collect(
            self._parts,
            grace=parse_duration(grace, name="grace"),
            dry_run=dry_run,
            expire_reflog=None if expire_reflog is None else parse_duration(expire_reflog, name="expire_reflog"),
            on_damage=on_damage,
        )

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
        reported ``unsigned``, ``repointed`` or ``forged`` (docs/concepts/security.md).

        Args:
            rev: check this snapshot only; default: every snapshot reachable from a branch, tag or the reflog.
            trust: trusted public keys: key files or trust files (PEM or OpenSSH lines), or key objects.
            progress: called with byte counts as chunks are checked.
            progress_total: called once, before the first chunk is read, with the bytes ``progress`` will count.

        Returns:
            Counts of what was checked, every damage found, and (without ``rev``) every release's state.

        Raises:
            RecordError: a trusted key file cannot be read, or ``trust`` was given with ``rev``.
            RevisionError: ``rev`` does not resolve.
        """
        return verify_store(self._parts, rev, trust=trust, progress=progress, progress_total=progress_total)

    def repair(
        self,
        source: Self | str | os.PathLike[str] | None = None,
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
            StoreNotFoundError: ``source`` is a URL or path with no store.
            BackendError: this store cannot be read or written (a source that fails to give an object is
                reported in ``unrepaired``, with the error).

        Example:
            >>> report = store.repair(ckpt.open("s3://bucket/replica"))  # doctest: +SKIP
            >>> report.ok, len(report.repaired), report.bytes_copied  # doctest: +SKIP
            (True, 1, 67108880)
        """
        good = None if source is None else source._parts if isinstance(source, StoreMaintenance) else connect(source)
        return repair(self._parts, good, revs=revs, progress=progress)

    def sync_to(
        self,
        dst: Self | str | os.PathLike[str],
        revs: Sequence[str] | None = None,
        *,
        progress: Progress | None = None,
        progress_total: Callable[[int], None] | None = None,
    ) -> SyncReport:
        """Copy snapshots (with history, tables, chunks and refs) to another store (``ckpt.sync``).

        First the chunks the destination lacks (each read from this store, checked against its digest, written
        once however many snapshots share it), then tables and snapshot records, ancestors first, then the refs.
        An interrupted sync is safe to rerun: it resumes where it stopped. Frozen tags stay frozen (with their
        signatures); a branch that diverged on the destination is reported in ``conflicts``, not overwritten.

        Args:
            dst: the store to copy into (a ``Store``, or its URL or path, opened with ``ckpt.open``).
            revs: branches and tags to copy, each with its history; ``None``: every branch and tag. An id or
                ``main~2`` is refused: it would arrive with no ref, and the destination's gc would delete it.
            progress: called with byte counts (raw tensor bytes) as chunks are copied.
            progress_total: called once, before the first chunk is copied, with the bytes ``progress`` will
                count in all (for a progress bar with a total).

        Returns:
            What was copied, and which refs diverged (reported, not overwritten).

        Raises:
            RevisionNotFoundError: a revision matches nothing in this store.
            RefError: a revision is not a branch or tag (nothing is copied; tag it first).
            CorruptChunkError: a chunk or record of this store does not match its digest (nothing of it is
                written).
            StoreNotFoundError: ``dst`` is a URL or path with no store.
            BackendError: either storage failed; what was copied stays, and a rerun resumes.

        Example:
            >>> local.sync_to(ckpt.open("s3://bucket/models"), ["main"])  # doctest: +SKIP
        """
        target = dst._parts if isinstance(dst, StoreMaintenance) else connect(dst)
        return sync_parts(self._parts, target, revs, progress=progress, progress_total=progress_total)

    def footprint(self, rev: str = "main", *, over: str | None = None) -> Footprint:
        """What one snapshot's chunks take in the store: raw bytes beside stored bytes (``ckpt show``), or,
        ``over`` another snapshot, what its chunks that the other does not reference take (``ckpt diff``).

        Args:
            rev: the snapshot.
            over: count only the chunks that this snapshot (pruned or not) does not reference: what ``rev``
                adds to a store that holds ``over``.

        Returns:
            Its distinct chunks, the raw bytes they hold and the bytes their objects take (compressed
            chunks at their compressed size, a delta at its own size; shared with every snapshot holding the
            same chunks).

        Raises:
            RevisionError: ``rev`` or ``over`` names nothing.
            MissingObjectError: ``rev`` was pruned, or a table is missing.

        Example:
            >>> foot = store.footprint("main", over="main~1")  # doctest: +SKIP
            >>> foot.stored_bytes / foot.raw_bytes  # what the last save cost, as stored  # doctest: +SKIP
        """
        _, table = open_snapshot(self._parts, rev)
        exclude: set[str] = set()
        if over is not None:
            exclude = self._parts.objects.get_table(self._parts.resolve(over).table).chunk_digests()
        return footprint(self._parts.backend, table, exclude)

    def stats(self) -> StoreStats:
        """Object counts and bytes by kind: chunks, tensor tables, snapshot records, and the total.

        Bytes are counted as stored (a chunk with its 16-byte header, compressed or not), as ``verify`` and
        ``gc`` count them; ``chunk_raw_bytes`` beside them is what the chunks hold decoded.

        Returns:
            The counts (one listing of the store, and each chunk's 16-byte header).
        """
        return store_stats(self._parts.backend)
