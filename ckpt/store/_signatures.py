"""Signed releases in the store: who published a frozen release, and that it still names the snapshot they published.

``Store.freeze(..., signer=key)`` signs a *release statement*, the canonical JSON of::

    {"type": "ckpt.release/v1", "release": "tiny-llama-2026-11-28", "snapshot": "<64 hex>",
     "signed_at": "2026-11-28T10:02:41.123456Z", "key_id": "SHA256:…", "signer": "alice@lab" | null}

The snapshot id is the BLAKE3 digest of the snapshot record, which holds the digest of the tensor table, which
holds the digest of every chunk: signing the id signs every byte of the release. The signature is stored beside
the tag, at ``signatures/<release>/<sha256 of the key, hex>.json`` (docs/format.md), written once; several
keys may sign one release.

``Store.verify(trust=[public keys])`` then checks every frozen release: each must carry a valid signature by a
trusted key over its own name and the id its tag points at. It reports releases that are *unsigned* (no
signature by a trusted key), *repointed* (the tag names another snapshot than the one signed) and *forged*
(a signature that does not verify, or a statement that does not parse). Without keys, verify still checks
what it can: every signature against the key it names, and the tags against the reflog (a frozen tag that moved,
lost its ``frozen`` flag, was deleted, or whose freeze is not in the reflog is *tampered*).

Keys, and the statement and record a key makes, are in ``_keys``; OpenSSF model-signing of restored folders is
in ``_model_signing``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ckpt.errors import BackendError, MissingObjectError, RecordError, SignatureError
from ckpt.model import ReflogEntry, TagRecord, canonical_json, parse_json, ref_name_readable, validate_record
from ckpt.storage import Backend
from ckpt.store import _layout as layout
from ckpt.store._keys import (
    ReleaseStatement,
    SignatureRecord,
    TrustedKey,
    key_algorithm,
    key_hex,
    key_id,
    public_key_from_line,
    verify_bytes,
)
from ckpt.store._parts import StoreParts

__all__ = [
    "ReleaseStatus",
    "SignatureCheck",
    "check_releases",
    "check_signature",
    "copy_signatures",
    "put_signature",
    "release_signatures",
    "require_signed_release",
    "signed_releases",
    "write_release_signature",
]

_MAX_SIGNATURE = 64 << 10


class SignatureCheck(BaseModel):
    """One signature of a release, as checked.

    Attributes:
        key_id: the key it claims (``SHA256:…``).
        signer: the name in the statement.
        signed_at: when it was signed.
        snapshot: the snapshot id it signs.
        valid: the signature verifies with its key, over a well-formed statement for this release.
        trusted: the key is one of the trusted keys (``None``: no keys were given).
        problem: why it is not valid, if it is not.
    """

    model_config = ConfigDict(frozen=True)

    key_id: str | None = None
    signer: str | None = None
    signed_at: str | None = None
    snapshot: str | None = None
    valid: bool
    trusted: bool | None = None
    problem: str | None = None


class ReleaseStatus(BaseModel):
    """A frozen release and what its signatures and the reflog say about it.

    Attributes:
        name: the release (tag) name.
        snapshot: the id its tag points at now (``None``: the tag is gone).
        status: ``signed`` (a valid signature by a trusted key, or by any key when none were given, over this
            name and id), ``unsigned``, ``repointed``, ``forged`` or ``tampered``.
        signatures: every signature stored for it.
        message: what was found, in words.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    snapshot: str | None
    status: Literal["signed", "unsigned", "repointed", "forged", "tampered"]
    signatures: tuple[SignatureCheck, ...] = ()
    message: str


# -- stored signatures --------------------------------------------------------------------------------


def _signature_path(release: str, kid: str) -> str:
    return f"{layout.SIGNATURES}{release}/{key_hex(kid)}.json"


def put_signature(backend: Backend, release: str, record: SignatureRecord) -> bool:
    """Store a release's signature (once per key; never replaced). Returns whether it was written."""
    statement = json.loads(record.statement)
    data = canonical_json(record.model_dump(mode="json"))
    return backend.put_if_absent(_signature_path(release, statement["key_id"]), data)


def release_signatures(backend: Backend, release: str) -> list[tuple[str, bytes]]:
    """``(path, bytes)`` of every signature stored for a release (unparsed)."""
    if not ref_name_readable(release):
        return []
    prefix = f"{layout.SIGNATURES}{release}/"
    out = []
    for entry in backend.list(prefix):
        rest = entry.path[len(prefix) :]
        if "/" in rest or not rest.endswith(".json"):
            continue  # another release's folder nested in this one, or a stranger
        try:
            data = backend.read(entry.path) if entry.size <= _MAX_SIGNATURE else b""
        except (FileNotFoundError, MissingObjectError):
            continue
        out.append((entry.path, data))
    return out


def copy_signatures(src: Backend, dst: Backend, release: str) -> int:
    """Copy a release's signatures to another store (as they are: the destination's verify checks them)."""
    return sum(dst.put_if_absent(path, data) for path, data in release_signatures(src, release) if data)


def signed_releases(backend: Backend) -> set[str]:
    """Names of every release that has a signature folder."""
    out = set()
    for entry in backend.list(layout.SIGNATURES):
        name = entry.path[len(layout.SIGNATURES) :].rsplit("/", 1)[0]
        if name and entry.path.endswith(".json"):
            out.add(name)
    return out


def _strict_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def check_signature(
    path: str, data: bytes, release: str, trusted: set[str] | None
) -> tuple[SignatureCheck, ReleaseStatement | None]:
    """Check one stored signature of ``release``: record, key, signature, then statement, in that order."""
    try:
        record = validate_record(
            SignatureRecord, parse_json(data, what=f"signature {path}"), what=f"signature {path}", hint=None
        )
    except RecordError as e:
        return SignatureCheck(valid=False, problem=e.message), None
    try:
        key = public_key_from_line(record.public_key)
        kid = key_id(key)
    except Exception:
        return SignatureCheck(valid=False, problem="its public key cannot be read"), None
    trust = None if trusted is None else kid in trusted
    if key_algorithm(key) != record.algorithm:
        return SignatureCheck(
            key_id=kid, valid=False, trusted=trust, problem="its algorithm does not fit its key"
        ), None
    try:
        signature = base64.b64decode(record.signature, validate=True)
        statement_bytes = record.statement.encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        return SignatureCheck(key_id=kid, valid=False, trusted=trust, problem="its signature is not base64"), None
    if not verify_bytes(key, record.algorithm, signature, statement_bytes):
        return SignatureCheck(
            key_id=kid, valid=False, trusted=trust, problem="the signature does not verify: forged or damaged"
        ), None
    try:
        raw = json.loads(record.statement, object_pairs_hook=_strict_pairs)
        statement = validate_record(ReleaseStatement, raw, what="the signed statement", hint=None)
    except (ValueError, RecordError) as e:
        problem = f"the signed statement is not a release statement: {str(e)[:120]}"
        return SignatureCheck(key_id=kid, valid=False, trusted=trust, problem=problem), None
    check = SignatureCheck(
        key_id=kid,
        signer=statement.signer,
        signed_at=statement.signed_at,
        snapshot=statement.snapshot,
        valid=True,
        trusted=trust,
    )
    if canonical_json(raw) != statement_bytes:
        return check.model_copy(update={"valid": False, "problem": "the signed statement is not canonical"}), None
    if statement.key_id != kid:
        return check.model_copy(update={"valid": False, "problem": f"it claims the key {statement.key_id}"}), None
    if statement.release != release:
        problem = f"it signs the release {statement.release!r}, not {release!r}"
        return check.model_copy(update={"valid": False, "problem": problem}), None
    if not path.endswith(f"/{key_hex(kid)}.json"):
        return check.model_copy(update={"valid": False, "problem": "it is stored under another key's name"}), None
    return check, statement


def check_releases(
    backend: Backend,
    tags: dict[str, TagRecord],
    reflog: Sequence[ReflogEntry],
    *,
    trust: Sequence[TrustedKey] | None = None,
) -> list[ReleaseStatus]:
    """Check every frozen release (and every name that was once frozen or signed) against its signatures and
    the reflog.

    Args:
        backend: the store's backend.
        tags: the store's tags.
        reflog: the store's whole reflog, oldest first.
        trust: trusted public keys; ``None`` checks signatures only against their own keys and requires none.

    Returns:
        The status of each release, by name. Every status but ``signed`` is a problem, except ``unsigned`` when
        no trusted keys were given (signatures are then not required).
    """
    trusted = None if trust is None else {k.key_id for k in trust}
    by_ref: dict[str, list[ReflogEntry]] = {}
    for entry in reflog:
        if entry.ref.startswith(layout.REFS_TAGS):
            by_ref.setdefault(entry.ref[len(layout.REFS_TAGS) :], []).append(entry)
    ever_frozen = {name for name, entries in by_ref.items() if any(e.action == "freeze" for e in entries)}
    names = sorted({n for n, t in tags.items() if t.frozen} | ever_frozen | signed_releases(backend))
    statuses: list[ReleaseStatus] = []
    for name in names:
        tag = tags.get(name)
        checks = [check_signature(path, data, name, trusted)[0] for path, data in release_signatures(backend, name)]
        statuses.append(_judge(name, tag, checks, by_ref.get(name, []), trusted))
    return statuses


def _judge(
    name: str,
    tag: TagRecord | None,
    checks: list[SignatureCheck],
    entries: list[ReflogEntry],
    trusted: set[str] | None,
) -> ReleaseStatus:
    sid = tag.id if tag else None

    def status(kind: Literal["signed", "unsigned", "repointed", "forged", "tampered"], message: str) -> ReleaseStatus:
        return ReleaseStatus(name=name, snapshot=sid, status=kind, signatures=tuple(checks), message=message)

    # what the reflog says, without keys
    if tag is None:
        return status("tampered", f"the frozen release {name!r} is gone: frozen releases are never deleted")
    if not tag.frozen:
        return status("tampered", f"tag {name!r} was frozen (reflog or signature) but is not frozen now")
    created = [e for e in entries if e.action in ("freeze", "sync") and e.new is not None]
    if not created:
        return status("tampered", f"no reflog entry records the freeze of {name!r}: the reflog was edited or lost")
    if created[-1].new != tag.id or any(e.new != tag.id for e in created if e.action == "freeze"):
        logged = created[-1].new or ""
        return status("repointed", f"{name!r} points at {tag.id[:12]} but was frozen at {logged[:12]} (reflog)")
    # what the signatures say
    forged = [c for c in checks if not c.valid]
    moved = [c for c in checks if c.valid and c.snapshot != tag.id]
    counted = [c for c in checks if c.valid and c.snapshot == tag.id and (trusted is None or c.trusted)]
    if moved:
        c = moved[0]
        return status(
            "repointed", f"{name!r} points at {tag.id[:12]} but {c.key_id} signed {str(c.snapshot)[:12]} as {name!r}"
        )
    if forged:  # damaged or forged, by whatever key: someone wrote it, and it is not what was signed
        return status("forged", f"a signature of {name!r} is invalid: {forged[0].problem}")
    if counted:
        who = ", ".join(sorted({c.key_id or "?" for c in counted}))
        return status("signed", f"{name!r} is {tag.id[:12]}, signed by {who}")
    if checks:
        who = ", ".join(sorted({c.key_id or "?" for c in checks}))
        return status("unsigned", f"{name!r} is signed only by keys you do not trust: {who}")
    return status("unsigned", f"{name!r} has no signature")


def require_signed_release(parts: StoreParts, rev: str, trust: Sequence[TrustedKey]) -> tuple[str, ReleaseStatus]:
    """The frozen release ``rev`` names, if a trusted key signed it as it is now.

    Raises:
        SignatureError: ``rev`` is not a frozen release, or it is not signed by one of ``trust`` as it is now
            (unsigned, repointed, forged or tampered); nothing is written.
    """
    tags = parts.refs.tags()
    tag = tags.get(rev)
    if tag is None or not tag.frozen:
        raise SignatureError(
            f"{rev!r} is not a frozen release: only a signed release can be restored with a signature",
            hint="give the release's name (store.tags() lists them), frozen with store.freeze(rev, signer=key)",
            cli_hint="give the release's name (`ckpt ls` lists them), frozen with `ckpt freeze --sign KEY`",
        )
    statuses = check_releases(parts.backend, {rev: tag}, parts.refs.reflog(f"{layout.REFS_TAGS}{rev}"), trust=trust)
    status = next(s for s in statuses if s.name == rev)
    if status.status != "signed":
        raise SignatureError(
            f"release {rev!r} cannot be vouched for: {status.message}",
            hint="store.verify(trust=['KEY.pub']).releases gives every release's state",
            cli_hint="run `ckpt verify --trust KEY.pub` to see every release's state",
        )
    return rev, status


def write_release_signature(backend: Backend, release: str, record: SignatureRecord) -> None:
    """Store the signature of a release that was just frozen.

    Raises:
        BackendError: it could not be written; the release is frozen but unsigned (sign it again with
            ``Store.sign_release``).
    """
    try:
        put_signature(backend, release, record)
    except BackendError as e:
        raise BackendError(
            f"release {release!r} is frozen, but its signature could not be written: {e.message}",
            hint=f"add it with store.sign_release({release!r}, signer=KEY) once the store is writable",
        ) from e
