"""The storage layer: backends that keep bytes (layer 3, the only layer that touches fsspec).

``open_backend(url)`` picks the backend for a URL: a plain path or ``file://`` URL gets ``LocalBackend``,
anything else an ``FsspecBackend``.
"""

from __future__ import annotations

import os
from typing import Any

from ckpt.errors import BackendError
from ckpt.storage._batch import BatchedVerbs
from ckpt.storage.base import Backend, BatchErrors, Buffer, CasResult, Entry, RangeRead
from ckpt.storage.faults import FaultyBackend, InjectedFault
from ckpt.storage.local import LocalBackend

__all__ = [
    "Backend",
    "BatchErrors",
    "BatchedVerbs",
    "Buffer",
    "CasResult",
    "Entry",
    "FaultyBackend",
    "InjectedFault",
    "LocalBackend",
    "RangeRead",
    "is_local_url",
    "open_backend",
]


def is_local_url(url: str | os.PathLike[str]) -> bool:
    """Whether ``url`` names a folder on the local disk (a path, ``pathlib.Path``, or ``file://…``)."""
    text = os.fspath(url)
    return "://" not in text or text.startswith(("file://", "local://"))


def open_backend(url: str | os.PathLike[str], **storage_options: Any) -> Backend:
    """The backend for a store URL.

    Args:
        url: a local path (``str`` or ``os.PathLike``), ``file://`` URL, or any fsspec URL (``memory://x``,
            ``s3://bucket/prefix`` …). Chained URLs (``simplecache::s3://…``) are refused: a cache would
            answer reads of refs from a stale copy.
        storage_options: for fsspec (credentials, ``endpoint_url`` …); ``durable=False`` on a local store
            skips fsync.

    Returns:
        The backend.

    Raises:
        BackendError: the filesystem cannot be opened (e.g. its package is not installed), the URL is chained,
            or a local store holds a symbolic link.

    Example:
        >>> open_backend("memory://docs").url
        'memory:///docs'
    """
    try:
        text = os.fspath(url)
    except TypeError:
        raise BackendError(
            f"a store location must be a path or a URL string, got {type(url).__name__}",
            hint="pass a str or pathlib.Path, e.g. ckpt.open('runs') or ckpt.open('s3://bucket/models')",
        ) from None
    _check_url(text)
    if "::" in text:
        raise BackendError(
            f"chained URLs such as {text!r} are not supported for a store",
            hint="a caching layer (simplecache::, filecache:: …) would answer reads of refs from a stale copy "
            "and let two writers overwrite each other; open the store with its plain URL (s3://…)",
        )
    if is_local_url(text):
        path = text.split("://", 1)[1] if "://" in text else text
        return LocalBackend(path, durable=bool(storage_options.pop("durable", True)))
    from ckpt.storage.fsspec import FsspecBackend

    return FsspecBackend(text, **storage_options)


def _check_url(url: object) -> None:
    """Refuse what no file system or object store can name: not a string, empty, control characters (NUL…),
    invalid Unicode."""
    if not isinstance(url, str) or not url.strip():
        raise BackendError(f"not a store URL: {url!r}", hint="give a local path or an fsspec URL such as s3://bucket/x")
    problem = None
    if any(ord(c) < 0x20 or c == "\x7f" for c in url):
        problem = "it holds a control character"
    else:
        try:
            url.encode("utf-8")
        except UnicodeEncodeError:
            problem = "it is not valid Unicode (a lone surrogate)"
    if problem:
        shown = repr(url[:80]).encode("utf-8", "backslashreplace").decode("utf-8")
        raise BackendError(f"not a store URL: {shown}: {problem}", hint="give a local path or an fsspec URL")
