"""What is live in a store, and what could not be read on the way (shared by ``gc`` and ``verify``).

Liveness: every snapshot reachable from a branch, a tag, or a reflog entry younger than ``expire_reflog``
(following parents and adapter bases) keeps its record and its tensor table; a live snapshot that is not
pruned also keeps its chunks. A frozen release, and the adapter bases it needs, always keep their chunks, even
if a pruned marker says otherwise; so does the base (transitively) of every live adapter that is not pruned.
Every ref, reflog entry, marker or record that cannot be read on the way is
reported as ``Damage`` (``gc`` refuses on it, ``verify`` reports it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from ckpt.errors import CkptError, MissingObjectError
from ckpt.model import PrunedMarker, is_digest, parse_json, parse_time, utcnow
from ckpt.storage import Backend
from ckpt.store import _layout as layout
from ckpt.store._parts import StoreParts
from ckpt.store._reports import Damage, damage_kind

__all__ = ["Liveness", "read_pruned", "scan_liveness"]


@dataclass
class Liveness:
    """What is live, and what could not be read on the way (shared by ``gc`` and ``verify``).

    Attributes:
        live: snapshot id → (table digest, pruned?) for every readable snapshot reachable from a root.
        broken: reachable snapshot ids whose record is missing or unreadable.
        damage: every problem met, as ``verify`` reports it.
        pruned: ids with a readable pruned marker.
        protected: frozen releases, the adapter bases they need and those of live unpruned adapters: their chunks
            are kept, whatever a marker says.
        all_records: an unreadable root or record could name any snapshot: keep every record.
        all_tables: an unreadable record could have any table: keep every table.
        all_chunks: an unreadable record or table could need any chunk: keep every chunk.
        reflog_ids: snapshot ids the (unexpired) reflog names.
    """

    live: dict[str, tuple[str, bool]] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)
    damage: list[Damage] = field(default_factory=list)
    pruned: set[str] = field(default_factory=set)
    protected: set[str] = field(default_factory=set)
    all_records: bool = False
    all_tables: bool = False
    all_chunks: bool = False
    reflog_ids: set[str] = field(default_factory=set)


def read_pruned(backend: Backend) -> tuple[set[str], list[Damage]]:
    """Ids with a readable pruned marker, and the damage of markers that cannot be read."""
    ids: set[str] = set()
    damage: list[Damage] = []
    for e in backend.list(layout.PRUNED):
        sid = layout.digest_from_path(e.path)
        if not e.path.endswith(".json") or not is_digest(sid) or e.path != layout.pruned_path(sid):
            damage.append(
                Damage(kind="invalid", object="marker", digest=e.path, message=f"{e.path} is not a pruned marker")
            )
            continue
        try:
            PrunedMarker.model_validate(parse_json(backend.read(e.path), what=f"pruned marker {e.path}"))
        except MissingObjectError:
            continue  # removed between the listing and the read
        except (CkptError, ValueError) as err:
            damage.append(
                Damage(
                    kind=damage_kind(err) if isinstance(err, CkptError) else "invalid",
                    object="marker",
                    digest=e.path,
                    snapshots=(sid,),
                    message=f"pruned marker {e.path} cannot be read; the snapshot is treated as not pruned",
                )
            )
            continue
        ids.add(sid)
    return ids, damage


def _ref_damage(path: str, message: str, kind: Literal["missing", "corrupt", "invalid"] = "invalid") -> Damage:
    return Damage(kind=kind, object="reflog" if path.startswith(layout.LOGS) else "ref", digest=path, message=message)


def scan_liveness(parts: StoreParts, *, expire_reflog: timedelta | None, now: datetime | None = None) -> Liveness:
    """Walk every root and every snapshot it reaches; record what is live and every problem met.

    A reflog entry naming a snapshot that is not in the store is not damage (gc may have collected it after
    the entry expired, under a shorter ``expire_reflog``); a branch, tag, parent or adapter base naming a
    missing snapshot is.
    """
    now = now or utcnow()
    objects, refs = parts.objects, parts.refs
    out = Liveness()
    branches, tags, ref_damage = refs.scan()
    entries, log_damage = refs.scan_reflog()
    for d in (*ref_damage, *log_damage):
        out.damage.append(_ref_damage(d.path, d.message))
        out.all_records = True
    out.pruned, marker_damage = read_pruned(parts.backend)
    out.damage.extend(marker_damage)
    roots: dict[str, str] = {}  # id → what names it (for messages)
    named = [(f"branch {n!r}", layout.branch_path(n), h) for n, h in branches.items()]
    named += [(f"tag {n!r}", layout.tag_path(n), t.id) for n, t in tags.items()]
    for why, ref, sid in named:
        if objects.has_snapshot(sid):
            roots.setdefault(sid, why)
            continue
        # a ref pointing at nothing: the ref is the damage; what the record held is unknown, so keep all
        out.damage.append(
            Damage(
                kind="missing",
                object="ref",
                digest=ref,
                snapshots=(sid,),
                message=f"{why} points at snapshot {sid[:12]}, which is missing",
            )
        )
        out.broken.add(sid)
        out.all_records = out.all_tables = out.all_chunks = True
    for entry in entries:
        if expire_reflog is not None and now - parse_time(entry.time) > expire_reflog:
            continue
        out.reflog_ids.update(x for x in (entry.old, entry.new) if x)
    for sid in sorted(out.reflog_ids - set(roots) - out.broken):
        if objects.has_snapshot(sid):
            roots[sid] = "the reflog"
    if out.all_records:  # an unreadable ref or reflog entry could name any snapshot: every record is a root
        for sid in objects.snapshot_ids():
            roots.setdefault(sid, "every record (an unreadable ref or reflog entry could name it)")

    todo: list[tuple[str, str]] = list(roots.items())
    reported: set[str] = set()
    bases: dict[str, str] = {}  # snapshot → its adapter base
    while todo:
        sid, why = todo.pop()
        if sid in out.live or sid in reported:
            continue
        try:
            snap = objects.get_snapshot(sid, fresh=True)  # gc judges the store itself, never the record cache
        except CkptError as e:
            out.broken.add(sid)
            reported.add(sid)
            out.damage.append(
                Damage(
                    kind=damage_kind(e),
                    object="snapshot",
                    digest=sid,
                    snapshots=(sid,),
                    message=f"{e.message} (needed by {why})",
                )
            )
            out.all_records = out.all_tables = out.all_chunks = True
            continue
        out.live[sid] = (snap.table, sid in out.pruned)
        if snap.base:
            bases[sid] = snap.base
        for dep in (*snap.parents, *((snap.base,) if snap.base else ())):
            todo.append((dep, f"snapshot {sid[:12]}"))
    out.protected = parts.release_needs(tags)
    for sid, base in bases.items():  # a live adapter that keeps its tensors keeps its base's (however pruned)
        if out.live[sid][1]:
            continue
        while base and base not in out.protected:
            out.protected.add(base)
            base = bases.get(base, "")
    for sid in out.protected:
        if sid in out.live:
            out.live[sid] = (out.live[sid][0], False)
    return out
