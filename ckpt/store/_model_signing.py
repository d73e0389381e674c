"""OpenSSF model-signing for restored folders (``ckpt restore --sign``).

``sign_folder`` writes an OpenSSF ``model-signing`` signature (a Sigstore bundle over every file's SHA-256) for
a folder, which ``model_signing verify key`` checks; that tool signs with ECDSA keys only, read from PEM files,
so this path needs such a key.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from ckpt._extras import install_hint
from ckpt.errors import CkptError, SignatureError
from ckpt.store._keys import key_algorithm, load_private_key, read_key_file

__all__ = ["check_folder_key", "sign_folder"]


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
            "signing a folder needs OpenSSF model-signing",
            hint=f"install the model-signing extra: {install_hint('model-signing')}",
        ) from e
    key = load_private_key(private_key, password=password)
    if key_algorithm(key) == "ed25519":
        raise SignatureError(
            "OpenSSF model-signing signs with ECDSA keys only (P-256, P-384, P-521), not Ed25519",
            hint="sign the release with an EC key: `openssl ecparam -name prime256v1 -genkey -noout -out key.pem`",
        )
    if b"OPENSSH PRIVATE KEY" in read_key_file(private_key, "signing key"):
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
