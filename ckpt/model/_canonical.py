"""Canonical JSON and content ids: the only place ids are computed.

Canonical JSON is ``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
allow_nan=False)`` encoded as UTF-8: keys sorted by code point, no whitespace, floats in Python's shortest
round-trip form, non-finite floats refused. An id is the lowercase BLAKE3 hex digest (64 characters) of
those bytes; a chunk's id is the BLAKE3 digest of its raw bytes.
"""

from __future__ import annotations

import gc
import json
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, get_args, get_origin

import blake3
from pydantic import BaseModel, ValidationError

from ckpt.errors import Hint, RecordError

__all__ = [
    "DIGEST_LENGTH",
    "MAX_JSON_DEPTH",
    "canonical_json",
    "digest_bytes",
    "drop_unknown",
    "is_digest",
    "json_problem",
    "parse_json",
    "parse_record",
    "paused_gc",
    "validate_record",
    "validation_summary",
]

DIGEST_LENGTH = 64
#: The deepest nesting of arrays and objects a record may have (a state tree of ~150 levels fits). Deeper
#: documents are refused before anything walks them, so no reader can run out of stack.
MAX_JSON_DEPTH = 512
_HEX = frozenset("0123456789abcdef")
_M = TypeVar("_M", bound=BaseModel)
#: What to do about a record that does not parse: it is damaged (or was written by something else).
RECORD_HINT = Hint(
    "find every damaged object with store.verify(); store.repair(good_copy) puts them back from a good copy",
    cli="run `ckpt verify` to find every damaged object; `ckpt repair --from URL` puts them back from a good copy",
)


def canonical_json(value: Any) -> bytes:
    """Encode a JSON value canonically.

    Args:
        value: dicts with str keys, lists, str, int, finite float, bool and None.

    Returns:
        The canonical UTF-8 bytes.

    Raises:
        RecordError: the value holds something JSON cannot express exactly (nan, a non-str key, a lone
            surrogate…), or nests deeper than ``MAX_JSON_DEPTH`` (no reader would accept it).

    Example:
        >>> canonical_json({"b": 1, "a": [1.5, None]})
        b'{"a":[1.5,null],"b":1}'
    """
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        data = text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate: named by json_problem
        raise RecordError(f"cannot encode as canonical JSON: {json_problem(value) or _short(str(e))}") from None
    except (TypeError, ValueError, RecursionError) as e:
        raise RecordError(f"cannot encode as canonical JSON: {_short(str(e))}") from None
    # what every reader would refuse is never written (every string is valid Unicode: it was encoded above)
    problem = json_problem(value, strings=False)
    if problem:
        raise RecordError(f"cannot encode as canonical JSON: {problem}")
    return data


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a block that makes many container objects and frees none
    of them (parsing a tensor table of 30,000 entries, building its records): each generation-0 collection
    would walk every object alive, so the block would cost several times its own work. Reference counting
    still frees memory; the collector resumes (if it ran before) when the block ends, also on an error.

    Only on the main thread: the collector is the process's, and a background save (the ``Checkpointer``'s) must
    not pause it under the training loop running beside it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def parse_json(data: bytes, *, what: str, hint: str | None = RECORD_HINT) -> Any:
    """Parse JSON bytes read from a store or a folder.

    Args:
        data: the bytes (UTF-8).
        what: what the bytes are, for the error message (e.g. ``snapshot 1a2b…``).
        hint: the hint of the error raised.

    Raises:
        RecordError: the bytes are not UTF-8 JSON (``NaN``, ``Infinity`` and numbers out of a float's range are
            not), nest deeper than ``MAX_JSON_DEPTH``, or hold a string that is not valid Unicode.
    """
    data = bytes(data)
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: bad JSON, or a huge int literal
        if isinstance(e, RecursionError):
            problem = "it nests too deeply"
        elif isinstance(e, UnicodeDecodeError):  # its message would quote the byte: name the position only
            problem = f"it is not UTF-8 (at byte {e.start})"
        else:
            problem = _short(str(e))
        raise RecordError(f"{what} is not valid JSON: {problem}", hint=hint) from None
    # strict UTF-8 decoding lets no surrogate through: only a \u escape can make a lone one
    bad = json_problem(value, strings=b"\\u" in data)
    if bad:
        raise RecordError(f"{what} is invalid: {bad}", hint=hint)
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON (canonical JSON has no non-finite numbers)")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text[:20]} is out of range")
    return value


def json_problem(value: Any, *, strings: bool = True) -> str | None:
    """Why a parsed JSON value cannot be a record, or ``None``: it nests deeper than ``MAX_JSON_DEPTH``, or
    holds a string that is not valid Unicode (JSON's ``\\ud800`` escapes can make lone surrogates, which no
    file name, message or UTF-8 writer accepts). Walks the value without recursion; with ``strings=False`` (the
    caller knows every string is valid Unicode), only its arrays and objects, for their depth."""
    if not strings:
        return _depth_problem(value)
    todo: list[tuple[Any, int]] = [(value, 0)]
    while todo:
        node, depth = todo.pop()
        if isinstance(node, str):
            if not _is_unicode(node):
                return f"the string {_short(node, 40)!r} is not valid Unicode (a lone surrogate)"
            continue
        if isinstance(node, dict):
            for key in node:
                if not _is_unicode(key):
                    return f"the key {_short(key, 40)!r} is not valid Unicode (a lone surrogate)"
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth >= MAX_JSON_DEPTH:
            return f"it nests deeper than {MAX_JSON_DEPTH} levels"
        todo.extend((child, depth + 1) for child in children if isinstance(child, (dict, list, str)))
    return None


def _depth_problem(value: Any) -> str | None:
    """``json_problem`` for a value whose strings are known to be valid Unicode: its depth alone."""
    level = [value] if isinstance(value, (dict, list)) else []
    depth = 0
    while level:
        if depth >= MAX_JSON_DEPTH:
            return f"it nests deeper than {MAX_JSON_DEPTH} levels"
        depth += 1
        below: list[Any] = []
        for node in level:
            for child in node.values() if isinstance(node, dict) else node:
                if isinstance(child, (dict, list)):
                    below.append(child)
        level = below
    return None


def _is_unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_record(
    model: type[_M],
    data: bytes,
    *,
    what: str,
    minor_newer: bool = False,
    extra: dict[str, Any] | None = None,
    hint: str | None = RECORD_HINT,
) -> _M:
    """Parse and validate one record (snapshot, tensor table, ref, reflog entry, config…) read from a store.

    Every malformed input, whatever its shape (not UTF-8, not JSON, too deep, a JSON string instead of an
    object, a field of the wrong type), ends as one ``RecordError`` naming the record.

    Args:
        model: the record's pydantic model.
        data: the stored bytes.
        what: the record, for messages (``snapshot 1a2b3c4d5e6f``).
        minor_newer: the store was written by a newer minor format: unknown fields are dropped.
        extra: fields set from outside the bytes (a snapshot's ``id``), applied after parsing.
        hint: the hint of the error raised.

    Raises:
        RecordError: the bytes are not a valid record; the message says what is wrong.
    """
    with paused_gc():
        return validate_record(
            model, parse_json(data, what=what, hint=hint), what=what, minor_newer=minor_newer, extra=extra, hint=hint
        )


def validate_record(
    model: type[_M],
    raw: Any,
    *,
    what: str,
    minor_newer: bool = False,
    extra: dict[str, Any] | None = None,
    hint: str | None = RECORD_HINT,
) -> _M:
    """Validate an already parsed record (see ``parse_record``).

    Raises:
        RecordError: ``raw`` is not a valid record.
    """
    if not isinstance(raw, dict):
        raise RecordError(f"{what} is invalid: a JSON object was expected, found {_json_type(raw)}", hint=hint)
    if minor_newer:
        raw = drop_unknown(model, {k: v for k, v in raw.items() if not extra or k not in extra})
    try:
        return model.model_validate({**raw, **extra} if extra else raw)
    except ValidationError as e:
        raise RecordError(f"{what} is invalid: {validation_summary(e)}", hint=hint) from None
    except (RecursionError, ValueError, TypeError) as e:  # pragma: no cover - pydantic wraps these itself
        raise RecordError(f"{what} is invalid: {_short(str(e))}", hint=hint) from None


def validation_summary(error: ValidationError, limit: int = 3) -> str:
    """A pydantic ``ValidationError`` as one short line: ``field.path: problem`` for the first few errors,
    without quoting the (possibly huge or hostile) input values."""
    parts = []
    for item in error.errors(include_url=False, include_input=False)[:limit]:
        loc = ".".join(_short(str(x), 40) for x in item.get("loc", ())) or "<record>"
        parts.append(f"{loc}: {_short(item.get('msg', 'invalid'), 160)}")
    more = error.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _short(text: str, limit: int = 200) -> str:
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array"}.get(
        type(value), type(value).__name__
    )


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
