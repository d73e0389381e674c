"""Publishing releases: freeze a snapshot as a frozen tag (optionally signed), sign a release later.

Only what can be loaded is published: the snapshot must not be pruned, and its table and every chunk must be
in the store (an adapter's bases too). A frozen tag never moves and is never deleted; gc keeps its objects.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING

from ckpt.errors import (
    CkptError,
    FrozenRefError,
    IntegrityError,
    MissingObjectError,
    RecordError,
    RefExistsError,
    RevisionNotFoundError,
)
from ckpt.model import Snapshot, TagRecord, format_time, utcnow
from ckpt.store import _layout as layout
from ckpt.store._keys import ReleaseSigner
from ckpt.store._parts import StoreParts
from ckpt.store._signatures import put_signature, write_release_signature
from ckpt.store._verify import verify_snapshots

if TYPE_CHECKING:
    from ckpt.store._keys import PrivateKey

__all__ = ["freeze", "sign_release"]


def freeze(
    parts: StoreParts,
    rev: str,
    *,
    model: str | None,
    name: str | None,
    message: str | None,
    verify: bool,
    signer: ReleaseSigner | PrivateKey | str | os.PathLike[str] | None,
) -> str:
    """Publish a snapshot as a frozen release tag; returns its name. See ``Store.freeze``."""
    snap = parts.resolve(rev)
    dated = name is None
    if name is None:
        model = model or snap.model
        if not model:
            raise RecordError(
                f"snapshot {snap.short_id} has no model name to build a release name from",
                hint="pass model='tiny-llama' (or name='…')",
                cli_hint="pass --model tiny-llama (or --name …)",
            )
        name = f"{model}-{utcnow():%Y-%m-%d}"
    try:
        parts.refs.check_new_name(name, "tag")
    except RefExistsError:
        if not dated:
            raise
        raise RefExistsError(  # a second release of the same model on the same day
            f"a dated release named {name!r} exists already: <model>-<date> is taken by the first release of the "
            "day, and a release never moves",
            hint=f"give this one its own name: freeze(rev, name='{name}-2'), or another model=",
            cli_hint=f"give this one its own name: --name {name}-2 (or another --model)",
        ) from None
    needs = _check_loadable(parts, snap, verify=verify)
    signature = None
    if signer is not None:  # every key problem shows before anything is written
        signature = ReleaseSigner.of(signer).sign(name, snap.id)
    parts.refs.create_tag(
        name,
        TagRecord(id=snap.id, frozen=True, created_at=format_time(utcnow()), message=message),
        action="freeze",
    )
    # a prune that passed its check before this tag existed may have marked it since: the release wins
    try:
        raced = [sid for sid in needs if parts.backend.exists(layout.pruned_path(sid))]
        if raced:
            parts.backend.delete([layout.pruned_path(sid) for sid in raced])
    except CkptError as e:  # the tag exists: the release is made, whatever happens to the marker
        warnings.warn(
            f"ckpt: {name!r} is frozen, but a pruned marker written meanwhile could not be removed ({e}); "
            "gc keeps the release's objects anyway, and `ckpt repair` removes the marker",
            stacklevel=3,
        )
    if signature is not None:
        write_release_signature(parts.backend, name, signature)
    return name


def _check_loadable(parts: StoreParts, snap: Snapshot, *, verify: bool) -> list[str]:
    """Refuse to publish what cannot be loaded; returns the ids the release needs (itself, adapter bases).

    Raises:
        MissingObjectError: pruned, or a table or chunk is missing.
        IntegrityError: with ``verify``, something is damaged.
    """
    pruned = parts.pruned()
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
        table = parts.objects.get_table(current.table)
        if verify:
            report = verify_snapshots(parts.objects, [current.id], pruned=set())
            if not report.ok:
                d = report.damage[0]
                raise IntegrityError(
                    f"snapshot {snap.short_id} cannot be frozen: {d.message}",
                    hint="find the damage with store.verify(), put it back with store.repair(good_copy), then "
                    "freeze again",
                    cli_hint="run `ckpt verify` and `ckpt repair --from URL`, then freeze again",
                )
        else:
            digest = parts.unwhole_chunk(table)  # missing, or damaged as seen without reading it (length, header)
            if digest is not None:
                raise MissingObjectError(
                    f"snapshot {snap.short_id} cannot be frozen: its chunk {digest[:12]} is missing from the store "
                    "or damaged",
                    hint="find the damage with store.verify(), and put it back from a good copy with "
                    "store.repair(good_copy)",
                    cli_hint="run `ckpt verify`, and `ckpt repair --from URL` to put it back from a good copy",
                )
        current = parts.get(current.base, pruned) if current.base else None
    return needs


def sign_release(parts: StoreParts, name: str, signer: ReleaseSigner | PrivateKey | str | os.PathLike[str]) -> None:
    """Sign a frozen release as it is now; see ``Store.sign_release``."""
    tag = parts.refs.tag(name)
    if tag is None:
        raise RevisionNotFoundError(f"no tag named {name!r}")
    if not tag.frozen:
        raise FrozenRefError(
            f"tag {name!r} is not frozen: only releases are signed",
            hint="freeze it: store.freeze(rev, name=NAME, signer=key)",
            cli_hint="freeze it: `ckpt freeze REV --name NAME --sign KEY`",
        )
    put_signature(parts.backend, name, ReleaseSigner.of(signer).sign(name, tag.id))
