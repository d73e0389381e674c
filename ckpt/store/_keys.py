"""Release signing keys: loading them, their fingerprints, ``ReleaseSigner``, and the statement a key signs.

A release statement is the canonical JSON of::

    {"type": "ckpt.release/v1", "release": "tiny-llama-2026-11-28", "snapshot": "<64 hex>",
     "signed_at": "2026-11-28T10:02:41.123456Z", "key_id": "SHA256:…", "signer": "alice@lab" | null}

``ReleaseSigner.sign`` makes one and signs it; ``_signatures`` stores and checks the result. Keys and
signatures are handled by the ``cryptography`` package (the ``sign`` extra): Ed25519, or ECDSA on P-256, P-384
or P-521 (SHA-256/384/512), in PEM or OpenSSH form; nothing here is home-made cryptography.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import BaseModel, ConfigDict

from ckpt._extras import install_hint
from ckpt.errors import RecordError, SignatureError
from ckpt.model import Digest, Timestamp, canonical_json, format_time, utcnow, validate_record

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey, EllipticCurvePublicKey
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    PrivateKey = Ed25519PrivateKey | EllipticCurvePrivateKey
    PublicKey = Ed25519PublicKey | EllipticCurvePublicKey

__all__ = [
    "KEY_HINT",
    "SIGNATURE_FORMAT",
    "STATEMENT_TYPE",
    "Algorithm",
    "ReleaseSigner",
    "ReleaseStatement",
    "SignatureRecord",
    "TrustedKey",
    "text_path",
    "key_algorithm",
    "key_hex",
    "key_id",
    "key_is_encrypted",
    "load_private_key",
    "load_trusted_keys",
    "public_key_from_line",
    "read_key_file",
    "verify_bytes",
]

STATEMENT_TYPE: Final = "ckpt.release/v1"
SIGNATURE_FORMAT: Final = "ckpt.release-signature/v1"
Algorithm = Literal["ed25519", "ecdsa-p256-sha256", "ecdsa-p384-sha384", "ecdsa-p521-sha512"]
_CURVES = {"secp256r1": "ecdsa-p256-sha256", "secp384r1": "ecdsa-p384-sha384", "secp521r1": "ecdsa-p521-sha512"}
KEY_HINT = (
    "use an Ed25519 or ECDSA P-256/P-384/P-521 key in PEM or OpenSSH form, e.g. `ssh-keygen -t ed25519 -f "
    "release-key` or `openssl ecparam -name prime256v1 -genkey -noout -out release-key.pem`"
)
_INSTALL_HINT = f"install the signing extra: {install_hint('sign')}"
_MAX_KEY_FILE = 1 << 20


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


def key_algorithm(key: Any) -> Algorithm:
    """The signature algorithm of a key (private or public).

    Raises:
        RecordError: the key is not Ed25519 or ECDSA P-256/P-384/P-521.
    """
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "ed25519"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) and key.curve.name in _CURVES:
        return _CURVES[key.curve.name]  # type: ignore[return-value]
    kind = getattr(getattr(key, "curve", None), "name", None) or type(key).__name__
    raise RecordError(f"unsupported key type {kind}: ckpt signs with Ed25519 or ECDSA P-256/P-384/P-521", hint=KEY_HINT)


def _openssh_line(public: Any) -> str:
    serialization = _crypto()
    return str(public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode())


def key_id(public: Any) -> str:
    """The fingerprint of a public key, ``SHA256:<base64>``: what ``ssh-keygen -l -f key.pub`` prints.

    Raises:
        RecordError: the key is not Ed25519 or ECDSA P-256/P-384/P-521.
    """
    key_algorithm(public)
    blob = base64.b64decode(_openssh_line(public).split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def key_hex(kid: str) -> str:
    """The file name of a key's signatures: the hex form of its SHA-256 fingerprint (``SHA256:…``)."""
    return base64.b64decode(kid.removeprefix("SHA256:") + "==").hex()


def text_path(path: object, what: str) -> str:
    """``path`` (a str or ``os.PathLike``) as text.

    Raises:
        RecordError: it is bytes (or an ``os.PathLike`` giving bytes), or not a path at all.
    """
    try:
        text = os.fspath(path)  # type: ignore[call-overload]
    except TypeError:
        raise RecordError(f"{what} must be a path (str or os.PathLike), got {type(path).__name__}") from None
    if not isinstance(text, str):
        raise RecordError(
            f"{what} must be a str path, got bytes {text[:80]!r}", hint="decode it with os.fsdecode(path)"
        )
    return text


def read_key_file(path: str | os.PathLike[str], what: str) -> bytes:
    """The bytes of a key file (at most 1 MiB); ``what`` names it in errors.

    Raises:
        RecordError: it cannot be read, or is larger than 1 MiB.
    """
    path = text_path(path, f"the {what}")
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_KEY_FILE + 1)
    except OSError as e:
        raise RecordError(f"cannot read the {what} {os.fspath(path)!r}: {e.strerror or e}", hint=KEY_HINT) from None
    if len(data) > _MAX_KEY_FILE:
        raise RecordError(f"the {what} {os.fspath(path)!r} is larger than 1 MiB: not a key file", hint=KEY_HINT)
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
    data = read_key_file(path, "signing key")
    secret = password.encode() if isinstance(password, str) else password
    loader = (
        serialization.load_ssh_private_key if b"OPENSSH PRIVATE KEY" in data else serialization.load_pem_private_key
    )
    try:
        key = loader(data, secret)
    except TypeError as e:  # encrypted without a password, or a password for a plain key
        needs = "is encrypted: give its passphrase" if secret is None else "is not encrypted: give no passphrase"
        raise RecordError(f"the signing key {os.fspath(path)!r} {needs}", hint=KEY_HINT) from e
    except (ValueError, Exception) as e:  # bad data, wrong passphrase, unsupported format
        raise RecordError(
            f"cannot load the signing key {os.fspath(path)!r}: {str(e)[:160] or type(e).__name__}", hint=KEY_HINT
        ) from None
    key_algorithm(key)
    return key  # type: ignore[no-any-return]


def key_is_encrypted(path: str | os.PathLike[str]) -> bool:
    """Whether a private key file needs a passphrase (so that a command line can ask for one).

    Raises:
        RecordError: the file cannot be read.
    """
    serialization = _crypto()
    data = read_key_file(path, "signing key")
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

    algorithm = key_algorithm(key)
    if algorithm == "ed25519":
        return bytes(key.sign(data))
    digest = {"ecdsa-p256-sha256": hashes.SHA256, "ecdsa-p384-sha384": hashes.SHA384}.get(algorithm, hashes.SHA512)
    return bytes(key.sign(data, ec.ECDSA(digest())))


def verify_bytes(key: Any, algorithm: Algorithm, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` is ``key``'s signature of ``data`` with ``algorithm``."""
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
        self.algorithm: Algorithm = key_algorithm(key)
        self.key = key
        self.name = name
        self.public_key = _openssh_line(key.public_key())
        self.key_id = key_id(key.public_key())

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, password: str | bytes | None = None, name: str | None = None
    ) -> ReleaseSigner:
        """A signer from a private key file (PEM or OpenSSH).

        Args:
            path: the key file.
            password: its passphrase, if it is encrypted.
            name: who signs, recorded in the statement.

        Raises:
            RecordError: as ``load_private_key``.
        """
        return cls(load_private_key(path, password=password), name=name)

    @classmethod
    def of(cls, signer: ReleaseSigner | PrivateKey | str | os.PathLike[str]) -> ReleaseSigner:
        """A ``ReleaseSigner`` from what ``Store.freeze(signer=...)`` accepts.

        Args:
            signer: a ``ReleaseSigner`` (returned as it is), a ``cryptography`` private key, or a key file path.

        Raises:
            RecordError: the key file cannot be read, or the key type is not supported.
        """
        if isinstance(signer, ReleaseSigner):
            return signer
        if isinstance(signer, (str, os.PathLike, bytes)):
            return cls.from_file(text_path(signer, "the signing key file"))
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


def public_key_from_line(line: str) -> PublicKey:
    """A public key from one OpenSSH line (``ssh-ed25519 AAAA…``).

    Raises:
        RecordError: its type is not supported. Other exceptions of ``cryptography``: not a key line.
    """
    serialization = _crypto()
    key = serialization.load_ssh_public_key(line.encode("utf-8"))
    key_algorithm(key)
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
    if isinstance(sources, (str, os.PathLike)):  # one key file, not the characters of its name
        sources = [sources]
    try:
        items = list(sources)
    except TypeError:
        raise RecordError(
            f"trust must be a list of public key files or keys, got {type(sources).__name__}", hint=KEY_HINT
        ) from None
    for source in items:
        if isinstance(source, (str, os.PathLike)):
            source = text_path(source, "a trusted key file")
        elif not callable(getattr(source, "public_bytes", None)):
            raise RecordError(
                f"a trusted key is a public key file path (str or os.PathLike) or a cryptography public key, "
                f"got {type(source).__name__}",
                hint="decode a bytes path with os.fsdecode()" if isinstance(source, bytes) else KEY_HINT,
            )
        if not isinstance(source, str):
            line = _openssh_line(source)
            out.append(TrustedKey(key_id=key_id(source), public_key=line, source="<key>"))
            continue
        where = os.fspath(source)
        data = read_key_file(source, "trusted key file")
        if b"PRIVATE KEY" in data:
            raise RecordError(
                f"{where!r} holds a private key: trust is given to public keys",
                hint="give the public half, e.g. `ssh-keygen -y -f KEY > KEY.pub`",
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise RecordError(f"{where!r} is not a text file of public keys", hint=KEY_HINT) from None
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
                            f"{where}:{number}: not a PEM public key ({e})"[:200], hint=KEY_HINT
                        ) from None
                    out.append(
                        TrustedKey(key_id=key_id(key), public_key=_openssh_line(key), source=f"{where}:{number}")
                    )
                    found += 1
                continue
            if not line or line.startswith("#"):
                continue
            try:
                key = public_key_from_line(line)
            except RecordError:
                raise
            except Exception:
                raise RecordError(f"{where}:{number}: not an OpenSSH public key line", hint=KEY_HINT) from None
            out.append(TrustedKey(key_id=key_id(key), public_key=_openssh_line(key), source=f"{where}:{number}"))
            found += 1
        if pem:
            raise RecordError(f"{where}: a PEM block is not closed", hint=KEY_HINT)
        if not found:
            raise RecordError(f"{where!r} holds no public key", hint=KEY_HINT)
    return out
