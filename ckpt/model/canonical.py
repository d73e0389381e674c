"""Canonical JSON and content ids: the only place ids are computed.

Canonical JSON is ``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
allow_nan=False)`` encoded as UTF-8: keys sorted by code point, no whitespace, floats in Python's shortest
round-trip form, non-finite floats refused. An id is the lowercase BLAKE3 hex digest (64 characters) of
those bytes; a chunk's id is the BLAKE3 digest of its raw bytes.
"""

from __future__ import annotations

import json
from typing import Any, get_args, get_origin

import blake3
from pydantic import BaseModel

from ckpt.errors import RecordError

__all__ = ["DIGEST_LENGTH", "canonical_json", "digest_bytes", "drop_unknown", "is_digest", "parse_json"]

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
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:  # the message would quote the byte: name the position only
        raise RecordError(f"{what} is not valid UTF-8 (at byte {e.start})") from e
    try:
        return json.loads(text)
    except ValueError as e:  # JSONDecodeError's message names a position, never the text
        raise RecordError(f"{what} is not valid JSON: {e}") from e
    except RecursionError as e:
        raise RecordError(f"{what} is nested too deeply to be a record") from e


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


def drop_unknown(model: type[BaseModel], raw: Any) -> Any:
    """Drop the fields of ``raw`` (and of its nested records) that ``model`` does not know.

    A store written by a newer MINOR format version may carry fields this ckpt does not know; readers
    ignore them at every level (docs/format.md, compatibility). Records are never re-serialized from the
    parsed form, so dropping fields never changes an id.
    """
    if not isinstance(raw, dict):
        return raw
    out = {}
    for name, value in raw.items():
        field = model.model_fields.get(name)
        if field is None:
            continue
        out[name] = _drop_nested(field.annotation, value)
    return out


def _drop_nested(annotation: Any, value: Any) -> Any:
    origin = get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return drop_unknown(annotation, value)
    if origin is dict and isinstance(value, dict):
        args = get_args(annotation)
        if len(args) == 2:
            return {k: _drop_nested(args[1], v) for k, v in value.items()}
    return value
