"""Signed releases: who published a frozen release, and that it still names the snapshot they published.

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

Keys and signatures are handled by the ``cryptography`` package (the ``sign`` extra): Ed25519, or ECDSA on
P-256, P-384 or P-521 (SHA-256/384/512), in PEM or OpenSSH form; nothing here is home-made cryptography.
``sign_folder`` writes an OpenSSF ``model-signing`` signature for a restored folder (``ckpt restore --sign``),
which ``model_signing verify key`` checks; that tool signs with ECDSA keys only, so that path needs an EC key.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import BaseModel, ConfigDict

from ckpt.errors import BackendError, CkptError, MissingObjectError, RecordError, SignatureError
from ckpt.model import (
    Digest,
    ReflogEntry,
    TagRecord,
    Timestamp,
    canonical_json,
    format_time,
    parse_json,
    ref_name_readable,
    utcnow,
    validate_record,
)
from ckpt.storage import Backend
from ckpt.store import layout

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey, EllipticCurvePublicKey
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    from ckpt.store.store import Store

    PrivateKey = Ed25519PrivateKey | EllipticCurvePrivateKey
    PublicKey = Ed25519PublicKey | EllipticCurvePublicKey

__all__ = [
    "SIGNATURE_FORMAT",
    "STATEMENT_TYPE",
    "ReleaseSigner",
    "ReleaseStatement",
    "ReleaseStatus",
    "SignatureCheck",
    "SignatureRecord",
    "TrustedKey",
    "check_folder_key",
    "check_releases",
    "copy_signatures",
    "key_id",
    "key_is_encrypted",
    "load_private_key",
    "load_trusted_keys",
    "put_signature",
    "release_signatures",
    "require_signed_release",
    "sign_folder",
    "write_release_signature",
]

STATEMENT_TYPE: Final = "ckpt.release/v1"
SIGNATURE_FORMAT: Final = "ckpt.release-signature/v1"
Algorithm = Literal["ed25519", "ecdsa-p256-sha256", "ecdsa-p384-sha384", "ecdsa-p521-sha512"]
_CURVES = {"secp256r1": "ecdsa-p256-sha256", "secp384r1": "ecdsa-p384-sha384", "secp521r1": "ecdsa-p521-sha512"}
_KEY_HINT = (
    "use an Ed25519 or ECDSA P-256/P-384/P-521 key in PEM or OpenSSH form, e.g. `ssh-keygen -t ed25519 -f "
    "release-key` or `openssl ecparam -name prime256v1 -genkey -noout -out release-key.pem`"
)
_INSTALL_HINT = "install the signing extra: pip install 'ckpt[sign]'"
_MAX_KEY_FILE = 1 << 20
_MAX_SIGNATURE = 64 << 10


class ReleaseStatement(BaseModel):
    """What a release signature signs (its canonical JSON, exactly).

    Attributes:
        type: ``ckpt.release/v1``; tells a release statement from anything else the same key may sign.
        release: the frozen tag's name.
        snapshot: the snapshot id the tag points at (which commits to every byte of the release).
        signed_at: when it was signed, ISO 8601 UTC.
        key_id: the signing key's fingerprint, ``SHA256:<base64>`` as ``ssh-keygen -l`` prints it.
        signer: a name the signer gave (an e-mail address …), for people; the key is what counts.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["ckpt.release/v1"] = STATEMENT_TYPE
    release: str
    snapshot: Digest
    signed_at: Timestamp
    key_id: str
    signer: str | None = None


class SignatureRecord(BaseModel):
    """A stored release signature: ``signatures/<release>/<key hex>.json``.

    Attributes:
        format: ``ckpt.release-signature/v1``.
        statement: the statement's canonical JSON, exactly the UTF-8 bytes that were signed.
        algorithm: ``ed25519`` or ``ecdsa-p256-sha256`` / ``ecdsa-p384-sha384`` / ``ecdsa-p521-sha512``.
        public_key: the signer's public key, one OpenSSH line (``ssh-ed25519 AAAA…``). Whether to trust it is
            decided by the reader (``verify --trust``), never by the record.
        signature: the signature, base64 (ECDSA: DER).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["ckpt.release-signature/v1"] = SIGNATURE_FORMAT
    statement: str
    algorithm: Algorithm
    public_key: str
    signature: str


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


class TrustedKey(BaseModel):
    """A public key whose release signatures count.

    Attributes:
        key_id: its fingerprint, ``SHA256:<base64>``.
        public_key: its OpenSSH line.
        source: where it was read from (``file:line``).
    """

    model_config = ConfigDict(frozen=True)

    key_id: str
    public_key: str
    source: str


# -- keys ----------------------------------------------------------------------------------------------


def _crypto() -> Any:
    try:
        import cryptography  # noqa: F401
    except ImportError as e:  # pragma: no cover - the dev and sign extras install it
        raise SignatureError("signing releases needs the cryptography package", hint=_INSTALL_HINT) from e
    from cryptography.hazmat.primitives import serialization

    return serialization


def _algorithm(key: Any) -> Algorithm:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "ed25519"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) and key.curve.name in _CURVES:
        return _CURVES[key.curve.name]  # type: ignore[return-value]
    kind = getattr(getattr(key, "curve", None), "name", None) or type(key).__name__
    raise RecordError(
        f"unsupported key type {kind}: ckpt signs with Ed25519 or ECDSA P-256/P-384/P-521", hint=_KEY_HINT
    )


def _openssh_line(public: Any) -> str:
    serialization = _crypto()
    return str(public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode())


def key_id(public: Any) -> str:
    """The fingerprint of a public key, ``SHA256:<base64>``: what ``ssh-keygen -l -f key.pub`` prints.

    Raises:
        RecordError: the key is not Ed25519 or ECDSA P-256/P-384/P-521.
    """
    _algorithm(public)
    blob = base64.b64decode(_openssh_line(public).split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _key_hex(kid: str) -> str:
    """The file name of a key's signature: the hex form of its SHA-256 fingerprint."""
    return base64.b64decode(kid.removeprefix("SHA256:") + "==").hex()


def _read_key_file(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_KEY_FILE + 1)
    except OSError as e:
        raise RecordError(f"cannot read the {what} {os.fspath(path)!r}: {e.strerror or e}", hint=_KEY_HINT) from None
    if len(data) > _MAX_KEY_FILE:
        raise RecordError(f"the {what} {os.fspath(path)!r} is larger than 1 MiB: not a key file", hint=_KEY_HINT)
    return data


def load_private_key(path: str | os.PathLike[str], *, password: str | bytes | None = None) -> PrivateKey:
    """Read a private key (PEM: PKCS#8, SEC1 or PKCS#1; or OpenSSH) for signing.

    Args:
        path: the key file.
        password: its passphrase, if it is encrypted.

    Raises:
        RecordError: the file cannot be read, is not a private key, is encrypted and no (or a wrong) password
            was given, or the key type is not supported.
    """
    serialization = _crypto()
    data = _read_key_file(path, "signing key")
    secret = password.encode() if isinstance(password, str) else password
    loader = (
        serialization.load_ssh_private_key if b"OPENSSH PRIVATE KEY" in data else serialization.load_pem_private_key
    )
    try:
        key = loader(data, secret)
    except TypeError as e:  # encrypted without a password, or a password for a plain key
        needs = "is encrypted: give its passphrase" if secret is None else "is not encrypted: give no passphrase"
        raise RecordError(f"the signing key {os.fspath(path)!r} {needs}", hint=_KEY_HINT) from e
    except (ValueError, Exception) as e:  # bad data, wrong passphrase, unsupported format
        raise RecordError(
            f"cannot load the signing key {os.fspath(path)!r}: {str(e)[:160] or type(e).__name__}", hint=_KEY_HINT
        ) from None
    _algorithm(key)
    return key  # type: ignore[no-any-return]


def _loader(serialization: Any, data: bytes) -> Any:
    if b"OPENSSH PRIVATE KEY" in data:
        return serialization.load_ssh_private_key
    return serialization.load_pem_private_key


def key_is_encrypted(path: str | os.PathLike[str]) -> bool:
    """Whether a private key file needs a passphrase (so that a command line can ask for one).

    Raises:
        RecordError: the file cannot be read.
    """
    serialization = _crypto()
    data = _read_key_file(path, "signing key")
    loader = (
        serialization.load_ssh_private_key if b"OPENSSH PRIVATE KEY" in data else serialization.load_pem_private_key
    )
    try:
        loader(data, None)
    except TypeError:
        return True
    except Exception:  # not a key at all: load_private_key says so
        return False
    return False


def _sign_bytes(key: Any, data: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    algorithm = _algorithm(key)
    if algorithm == "ed25519":
        return bytes(key.sign(data))
    digest = {"ecdsa-p256-sha256": hashes.SHA256, "ecdsa-p384-sha384": hashes.SHA384}.get(algorithm, hashes.SHA512)
    return bytes(key.sign(data, ec.ECDSA(digest())))


def _verify_bytes(key: Any, algorithm: Algorithm, signature: bytes, data: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        if algorithm == "ed25519":
            key.verify(signature, data)
        else:
            digest = {"ecdsa-p256-sha256": hashes.SHA256, "ecdsa-p384-sha384": hashes.SHA384}.get(
                algorithm, hashes.SHA512
            )
            key.verify(signature, data, ec.ECDSA(digest()))
    except InvalidSignature:
        return False
    return True


class ReleaseSigner:
    """A private key that signs releases.

    Args:
        key: an Ed25519 or ECDSA (P-256/P-384/P-521) private key from ``cryptography``.
        name: who signs, for people (an e-mail address …); recorded in the statement.

    Example:
        >>> signer = ReleaseSigner.from_file("release-key", name="alice@lab")  # doctest: +SKIP
        >>> store.freeze("main", model="tiny-llama", signer=signer)  # doctest: +SKIP
        'tiny-llama-2026-11-28'
    """

    def __init__(self, key: PrivateKey, *, name: str | None = None) -> None:
        self.algorithm: Algorithm = _algorithm(key)
        self.key = key
        self.name = name
        self.public_key = _openssh_line(key.public_key())
        self.key_id = key_id(key.public_key())

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, password: str | bytes | None = None, name: str | None = None
    ) -> ReleaseSigner:
        """A signer from a private key file (PEM or OpenSSH); see ``load_private_key``."""
        return cls(load_private_key(path, password=password), name=name)

    @classmethod
    def of(cls, signer: ReleaseSigner | PrivateKey | str | os.PathLike[str]) -> ReleaseSigner:
        """A ``ReleaseSigner`` from what ``Store.freeze(signer=...)`` accepts: a signer, a key, or a key file."""
        if isinstance(signer, ReleaseSigner):
            return signer
        if isinstance(signer, (str, os.PathLike)):
            return cls.from_file(signer)
        return cls(signer)

    def sign(self, release: str, snapshot_id: str, *, signed_at: str | None = None) -> SignatureRecord:
        """Sign the statement that ``release`` is ``snapshot_id``.

        Args:
            release: the release (frozen tag) name.
            snapshot_id: the id its tag points at.
            signed_at: the time to state (``format_time``'s form); default: now.

        Raises:
            RecordError: the statement cannot be made (an invalid id, name or time).
        """
        statement = validate_record(
            ReleaseStatement,
            {
                "release": release,
                "snapshot": snapshot_id,
                "signed_at": signed_at or format_time(utcnow()),
                "key_id": self.key_id,
                "signer": self.name,
            },
            what="release statement",
            hint=None,
        )
        data = canonical_json(statement.model_dump(mode="json"))
        return SignatureRecord(
            statement=data.decode("utf-8"),
            algorithm=self.algorithm,
            public_key=self.public_key,
            signature=base64.b64encode(_sign_bytes(self.key, data)).decode(),
        )

    def __repr__(self) -> str:
        return f"ReleaseSigner({self.key_id}, {self.algorithm}{f', {self.name!r}' if self.name else ''})"


def _public_key(line: str) -> PublicKey:
    serialization = _crypto()
    key = serialization.load_ssh_public_key(line.encode("utf-8"))
    _algorithm(key)
    return key  # type: ignore[no-any-return]


def load_trusted_keys(sources: Iterable[str | os.PathLike[str] | PublicKey]) -> list[TrustedKey]:
    """Read trusted public keys: key files, trust files (many keys, one per line or PEM block), or key objects.

    A file may hold PEM public keys (``-----BEGIN PUBLIC KEY-----``) and OpenSSH public key lines
    (``ssh-ed25519 AAAA… comment``, ``ecdsa-sha2-nistp256 AAAA…``); blank lines and ``#`` comments are skipped.

    Raises:
        RecordError: a file cannot be read, holds a private key or something that is not a public key, or
            holds no key at all.
    """
    serialization = _crypto()
    out: list[TrustedKey] = []
    for source in sources:
        if not isinstance(source, (str, os.PathLike)):
            line = _openssh_line(source)
            out.append(TrustedKey(key_id=key_id(source), public_key=line, source="<key>"))
            continue
        where = os.fspath(source)
        data = _read_key_file(source, "trusted key file")
        if b"PRIVATE KEY" in data:
            raise RecordError(
                f"{where!r} holds a private key: trust is given to public keys",
                hint="give the public half, e.g. `ssh-keygen -y -f KEY > KEY.pub`",
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise RecordError(f"{where!r} is not a text file of public keys", hint=_KEY_HINT) from None
        found = 0
        pem: list[str] = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if pem or line.startswith("-----BEGIN"):
                pem.append(line)
                if line.startswith("-----END"):
                    block = "\n".join(pem).encode()
                    pem = []
                    try:
                        key = serialization.load_pem_public_key(block)
                    except Exception as e:
                        raise RecordError(
                            f"{where}:{number}: not a PEM public key ({e})"[:200], hint=_KEY_HINT
                        ) from None
                    out.append(
                        TrustedKey(key_id=key_id(key), public_key=_openssh_line(key), source=f"{where}:{number}")
                    )
                    found += 1
                continue
            if not line or line.startswith("#"):
                continue
            try:
                key = _public_key(line)
            except RecordError:
                raise
            except Exception:
                raise RecordError(f"{where}:{number}: not an OpenSSH public key line", hint=_KEY_HINT) from None
            out.append(TrustedKey(key_id=key_id(key), public_key=_openssh_line(key), source=f"{where}:{number}"))
            found += 1
        if pem:
            raise RecordError(f"{where}: a PEM block is not closed", hint=_KEY_HINT)
        if not found:
            raise RecordError(f"{where!r} holds no public key", hint=_KEY_HINT)
    return out


# -- stored signatures ------------------------------------------------------------------------------------


def _signature_path(release: str, kid: str) -> str:
    return f"{layout.SIGNATURES}{release}/{_key_hex(kid)}.json"


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
        key = _public_key(record.public_key)
        kid = key_id(key)
    except Exception:
        return SignatureCheck(valid=False, problem="its public key cannot be read"), None
    trust = None if trusted is None else kid in trusted
    if _algorithm(key) != record.algorithm:
        return SignatureCheck(
            key_id=kid, valid=False, trusted=trust, problem="its algorithm does not fit its key"
        ), None
    try:
        signature = base64.b64decode(record.signature, validate=True)
        statement_bytes = record.statement.encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        return SignatureCheck(key_id=kid, valid=False, trusted=trust, problem="its signature is not base64"), None
    if not _verify_bytes(key, record.algorithm, signature, statement_bytes):
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
    if not path.endswith(f"/{_key_hex(kid)}.json"):
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


def require_signed_release(store: Store, rev: str, trust: Sequence[TrustedKey]) -> tuple[str, ReleaseStatus]:
    """The frozen release ``rev`` names, if a trusted key signed it as it is now.

    Raises:
        SignatureError: ``rev`` is not a frozen release, or it is not signed by one of ``trust`` as it is now
            (unsigned, repointed, forged or tampered); nothing is written.
    """
    tags = store.tags()
    tag = tags.get(rev)
    if tag is None or not tag.frozen:
        raise SignatureError(
            f"{rev!r} is not a frozen release: only a signed release can be restored with a signature",
            hint="give the release's name (store.tags() lists them), frozen with store.freeze(rev, signer=key)",
            cli_hint="give the release's name (`ckpt ls` lists them), frozen with `ckpt freeze --sign KEY`",
        )
    statuses = check_releases(store.backend, {rev: tag}, store.reflog(f"{layout.REFS_TAGS}{rev}"), trust=trust)
    status = next(s for s in statuses if s.name == rev)
    if status.status != "signed":
        raise SignatureError(
            f"release {rev!r} cannot be vouched for: {status.message}",
            hint="store.verify(trust=['KEY.pub']).releases gives every release's state",
            cli_hint="run `ckpt verify --trust KEY.pub` to see every release's state",
        )
    return rev, status


# -- OpenSSF model-signing for restored folders ------------------------------------------------------------


def check_folder_key(private_key: str | os.PathLike[str], *, password: str | None = None) -> Any:
    """Check, before anything is written, that ``sign_folder`` can sign with this key; returns ``model_signing``.

    Raises:
        SignatureError: model-signing is not installed, or the key is not a PEM ECDSA key.
        RecordError: the key cannot be read.
    """
    try:
        import model_signing
    except ImportError as e:
        raise SignatureError(
            "signing a folder needs OpenSSF model-signing", hint="pip install model-signing pyopenssl"
        ) from e
    key = load_private_key(private_key, password=password)
    if _algorithm(key) == "ed25519":
        raise SignatureError(
            "OpenSSF model-signing signs with ECDSA keys only (P-256, P-384, P-521), not Ed25519",
            hint="sign the release with an EC key: `openssl ecparam -name prime256v1 -genkey -noout -out key.pem`",
        )
    if b"OPENSSH PRIVATE KEY" in _read_key_file(private_key, "signing key"):
        raise SignatureError(
            "OpenSSF model-signing reads PEM keys, not OpenSSH ones",
            hint="convert it: `ssh-keygen -p -m PEM -f KEY` (or make one with `openssl ecparam … -out key.pem`)",
        )
    return model_signing


def sign_folder(
    folder: str | os.PathLike[str],
    private_key: str | os.PathLike[str],
    *,
    signature: str | os.PathLike[str] | None = None,
    password: str | None = None,
) -> Path:
    """Sign a folder with OpenSSF ``model-signing`` (a Sigstore bundle over every file's SHA-256).

    ``model_signing verify key FOLDER --signature SIG --public_key KEY.pub`` (or its Python API) checks it.
    model-signing signs with ECDSA keys only (P-256, P-384, P-521), read from a PEM file; the signature file,
    if inside the folder, is left out of what it signs.

    Args:
        folder: the folder (e.g. written by ``ckpt restore``).
        private_key: an ECDSA private key in PEM form.
        signature: where to write the signature; default ``FOLDER/model.sig``.
        password: the key's passphrase, if it is encrypted.

    Returns:
        The signature's path.

    Raises:
        SignatureError: model-signing is not installed, or the key is not one it can sign with.
    """
    model_signing = check_folder_key(private_key, password=password)
    folder = Path(folder)
    out = Path(signature) if signature is not None else folder / "model.sig"
    ignored = []
    with contextlib.suppress(ValueError):  # a signature outside the folder needs no leaving out
        ignored.append(out.resolve().relative_to(folder.resolve()))
    try:
        hashing = model_signing.hashing.Config().set_ignored_paths(paths=ignored, ignore_git_paths=True)
        model_signing.signing.Config().use_elliptic_key_signer(
            private_key=os.fspath(private_key), password=password
        ).set_hashing_config(hashing).sign(folder, out)
    except CkptError:
        raise
    except Exception as e:  # model-signing's own errors are plain exceptions
        raise SignatureError(f"model-signing could not sign {folder}: {str(e)[:200]}") from e
    return out


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
            f"release {release!r} is frozen, but its signature could not be written: {e}",
            hint=f"add it with store.sign_release({release!r}, signer=KEY) once the store is writable",
        ) from e
