"""Canonical JSON and content ids: the only place ids are computed.

Canonical JSON is ``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
allow_nan=False)`` encoded as UTF-8: keys sorted by code point, no whitespace, floats in Python's shortest
round-trip form, non-finite floats refused. An id is the lowercase BLAKE3 hex digest (64 characters) of
those bytes; a chunk's id is the BLAKE3 digest of its raw bytes.
"""

from __future__ import annotations

import json
from typing import Any

import blake3

from ckpt.errors import RecordError

__all__ = ["DIGEST_LENGTH", "canonical_json", "digest_bytes", "is_digest", "parse_json"]

DIGEST_LENGTH = 64
_HEX = frozenset("0123456789abcdef")


def canonical_json(value: Any) -> bytes:
    """Encode a JSON value canonically.

    Args:
        value: dicts with str keys, lists, str, int, finite float, bool and None.

    Returns:
        The canonical UTF-8 bytes.

    Raises:
        RecordError: the value holds something JSON cannot express exactly (nan, a non-str key…).

    Example:
        >>> canonical_json({"b": 1, "a": [1.5, None]})
        b'{"a":[1.5,null],"b":1}'
    """
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8")
    except (TypeError, ValueError) as e:  # UnicodeEncodeError is a ValueError
        raise RecordError(f"cannot encode as canonical JSON: {e}") from e


def parse_json(data: bytes, *, what: str) -> Any:
    """Parse JSON bytes read from a store.

    Args:
        data: the bytes.
        what: what the bytes are, for the error message (e.g. ``snapshot 1a2b…``).

    Raises:
        RecordError: the bytes are not JSON.
    """
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise RecordError(f"{what} is not valid JSON: {e}") from e


def digest_bytes(data: bytes | bytearray | memoryview) -> str:
    """The BLAKE3 hex digest of some bytes (multi-threaded for large inputs).

    Example:
        >>> digest_bytes(b"")[:16]
        'af1349b9f5f9a1a6'
    """
    n = len(data) if not isinstance(data, memoryview) else data.nbytes
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO) if n >= (1 << 20) else blake3.blake3()
    hasher.update(data)
    return hasher.hexdigest()


def is_digest(text: str) -> bool:
    """Whether ``text`` is a full lowercase 64-character hex digest."""
    return len(text) == DIGEST_LENGTH and set(text) <= _HEX
