"""Create, open and copy stores: ``init``, ``open`` and ``sync`` (``ckpt.init`` …)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from ckpt.errors import RecordError
from ckpt.store._open import connect, create
from ckpt.store._store import Store
from ckpt.store._sync import SyncReport
from ckpt.store._types import Progress

__all__ = ["init", "open", "sync"]


def init(
    url: str | os.PathLike[str] | None = None,
    *,
    chunk_size: int | str | None = None,
    compression: bool = True,
    delta_depth: int | None = None,
    pack_size: int | str | None = None,
    **storage_options: Any,
) -> Store:
    """Create a new, empty store.

    Args:
        url: a local path (``str`` or ``pathlib.Path``) or any fsspec URL; default ``$CKPT_STORE`` or
            ``./.ckpt``.
        chunk_size: bytes per chunk (int or ``"64MiB"``); default ``$CKPT_CHUNK_SIZE`` or 64 MiB.
        compression: store new chunks byte-grouped and zstd-coded where that saves at least 3% (lossless; the
            default). ``False``: every chunk raw, as stores before format 1.3. A save can override it.
        delta_depth: with compression, store a new chunk as a delta against the same bytes of the same tensor in
            its snapshot's first parent when that is smaller, in chains of at most this many deltas (a store
            setting; default 16, 0 for none). A store with deltas is format 2.0, which ckpt before 0.2 refuses.
        pack_size: tensors under 64 KiB are packed, by dtype in table order, into shared chunks of at most this
            many bytes (int or ``"4MiB"``; default 4 MiB, at most ``chunk_size``): one object and one write per
            pack instead of per tensor. 0: no packing. A store with packs is format 3.0, which older ckpt
            refuses.
        storage_options: passed to fsspec (``endpoint_url``, credentials …).

    Returns:
        The new store.

    Raises:
        StoreExistsError: a store exists there already.
        RecordError: ``chunk_size`` is not a positive size, ``compression`` is not a bool, or ``delta_depth``
            is not 0–64 (or is above 0 without compression), or ``pack_size`` is not a size up to ``chunk_size``.
        BackendError: the location cannot be used (a chained URL, a symbolic link inside a local store…).

    Example:
        >>> store = ckpt.init("memory://docs-init")  # doctest: +SKIP
    """
    parts = create(
        url,
        chunk_size=chunk_size,
        compression=compression,
        delta_depth=delta_depth,
        pack_size=pack_size,
        **storage_options,
    )
    return Store(parts.backend, parts.config)


def open(url: str | os.PathLike[str] | None = None, **storage_options: Any) -> Store:
    """Open an existing store.

    Args:
        url: a local path (``str`` or ``pathlib.Path``) or any fsspec URL; default ``$CKPT_STORE`` or
            ``./.ckpt``.
        storage_options: passed to fsspec (``endpoint_url``, credentials …).

    Returns:
        The store.

    Raises:
        StoreNotFoundError: there is no store at ``url`` (the hint says how to create one).
        FormatVersionError: the store was written by a newer, incompatible ckpt.
        BackendError: the location cannot be used (a chained URL, a symbolic link inside a local store…).

    Example:
        >>> store = ckpt.open("s3://bucket/models", endpoint_url="http://127.0.0.1:5000")  # doctest: +SKIP
    """
    parts = connect(url, **storage_options)
    return Store(parts.backend, parts.config)


def sync(
    src: Store | str | os.PathLike[str],
    dst: Store | str | os.PathLike[str],
    revs: Sequence[str] | None = None,
    *,
    progress: Progress | None = None,
    progress_total: Callable[[int], None] | None = None,
) -> SyncReport:
    """Copy snapshots, their history and their refs from ``src`` to ``dst``: ``src.sync_to(dst, revs, …)``.

    First the chunks the destination lacks (each read from ``src``, checked against its digest, written once
    however many snapshots share it), then tables and snapshot records, ancestors first, then the refs. The
    arguments, what is returned and raised are ``Store.sync_to``'s; ``src`` and ``dst`` may be a ``Store`` or
    the URL or path of one (opened with ``ckpt.open``). ``RecordError``: ``src`` is neither.

    Example:
        >>> ckpt.sync(ckpt.open("runs"), ckpt.open("s3://bucket/models"), ["main"])  # doctest: +SKIP
    """
    if isinstance(src, (str, os.PathLike)):
        src = open(src)
    if not isinstance(src, Store):
        raise RecordError(
            f"ckpt.sync copies from a Store (or its URL or path), not a {type(src).__name__}",
            hint="ckpt.sync(ckpt.open('runs'), 's3://bucket/models')",
        )
    return src.sync_to(dst, revs, progress=progress, progress_total=progress_total)
