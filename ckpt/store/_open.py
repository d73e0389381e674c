"""Creating and opening stores: where a store lives, its config file, and the format version checks.

``create`` writes a new store's config (``ckpt.json``, put-if-absent: two processes racing to create one
store cannot both succeed); ``connect`` reads it and refuses a store written by a newer major format. Both give
the ``StoreParts`` a ``Store`` is built on (``ckpt.init`` and ``ckpt.open`` in ``_store``).
"""

from __future__ import annotations

import os
from typing import Any

from ckpt import settings
from ckpt._version import __version__
from ckpt.errors import (
    BackendError,
    FormatVersionError,
    RecordError,
    StoreError,
    StoreExistsError,
    StoreNotFoundError,
)
from ckpt.model import (
    FORMAT_VERSION,
    FORMAT_VERSION_NO_DELTAS,
    FORMAT_VERSION_NO_PACKS,
    MAX_DELTA_DEPTH,
    READABLE_MAJOR,
    StoreConfig,
    canonical_json,
    format_time,
    parse_json,
    utcnow,
    validate_record,
)
from ckpt.storage import Backend, open_backend
from ckpt.store import _layout as layout
from ckpt.store._parts import StoreParts

__all__ = ["connect", "create", "location", "read_config"]

#: The delta chain limit of a new store with compression (benchmarks/delta_depth.py: bytes of 10 and 20 saves
#: against the time to load the newest, docs/benchmarks.md "Chain depth"): ten saves of a training run hold
#: one keyframe, and a load decodes at most 16 deltas per chunk.
DEFAULT_DELTA_DEPTH = 16
#: The largest chunk size a store may have.
_MAX_CHUNK = 1 << 40
_SIZE_HINT = "a number of bytes, or with a unit: 4096, 64MiB, 1GB"


def create(
    url: str | os.PathLike[str] | None,
    *,
    chunk_size: int | str | None,
    compression: bool = True,
    delta_depth: int | None = None,
    pack_size: int | str | None = None,
    **storage_options: Any,
) -> StoreParts:
    """Write a new store's config at ``url``; see ``ckpt.init``.

    Raises:
        StoreExistsError: a store exists there already.
        RecordError: ``chunk_size`` is not a positive size, or ``pack_size`` not a size.
        BackendError: the location cannot be used.
    """
    where = location(url)
    try:
        size = settings.parse_size(chunk_size) if chunk_size is not None else settings.chunk_size()
    except (ValueError, TypeError, OverflowError) as e:
        raise RecordError(f"invalid chunk_size {chunk_size!r}"[:120] + f": {e}"[:200], hint=_SIZE_HINT) from None
    if not 0 < size <= _MAX_CHUNK:
        raise RecordError(f"chunk_size must be a positive size of at most 1 TiB, got {size}"[:120], hint=_SIZE_HINT)
    backend = open_backend(where, **storage_options)
    if not isinstance(compression, bool):
        raise RecordError(f"compression must be True or False, got {compression!r}"[:120])
    depth = (DEFAULT_DELTA_DEPTH if compression else 0) if delta_depth is None else delta_depth
    if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= MAX_DELTA_DEPTH:
        raise RecordError(
            f"delta_depth must be a whole number from 0 to {MAX_DELTA_DEPTH}, got {delta_depth!r}"[:120],
            hint="0 stores no deltas; the default, 16, bounds a load to 16 decodes per chunk",
        )
    if depth and not compression:
        raise RecordError("delta_depth needs compression: deltas are compressed chunks", hint="pass delta_depth=0")
    packs = _pack_size(pack_size, size)
    if not backend.exists(layout.CONFIG):
        _refuse_occupied(backend)
    config = StoreConfig(
        chunk_size=size,
        created_at=format_time(utcnow()),
        compression=compression,
        delta_depth=depth,
        pack_size=packs,
        format_version=FORMAT_VERSION if packs else FORMAT_VERSION_NO_PACKS if depth else FORMAT_VERSION_NO_DELTAS,
    )
    data = canonical_json(config.model_dump(mode="json"))
    if not backend.put_if_absent(layout.CONFIG, data):
        raise StoreExistsError(f"a ckpt store exists already at {backend.url}")
    backend.flush()
    return StoreParts.of(backend, config)


def _pack_size(pack_size: int | str | None, chunk_size: int) -> int:
    """The pack size of a new store: ``pack_size`` (0: no packing), else ``DEFAULT_PACK_SIZE``, never above
    ``chunk_size`` (a pack is one chunk)."""
    if pack_size is None:
        return min(settings.DEFAULT_PACK_SIZE, chunk_size)
    try:
        packs = settings.parse_size(pack_size) if not isinstance(pack_size, bool) else -1
    except (ValueError, TypeError, OverflowError, RecordError):
        packs = -1
    if not 0 <= packs <= chunk_size:
        raise RecordError(
            f"pack_size must be a size from 0 to the chunk size ({chunk_size} bytes), got {pack_size!r}"[:160],
            hint="small tensors are packed into shared chunks of at most this size; 0 packs nothing. " + _SIZE_HINT,
        )
    return packs


def _refuse_occupied(backend: Backend) -> None:
    """Refuse a location that holds anything: a store never mixes its objects with other files (``gc`` would
    have to tell them apart, and a folder named ``chunks/`` or ``tmp/`` of a user's project is not ckpt's).

    Raises:
        StoreError: the folder or prefix is not empty.
    """
    local = backend.local_path(layout.CONFIG)
    try:
        if local is not None:
            root = os.path.dirname(local)
            found = sorted(os.listdir(root))[:4] if os.path.isdir(root) else []
        else:
            found = [e.path for e, _ in zip(backend.list(""), range(4), strict=False)]
    except OSError as e:
        raise BackendError(f"cannot list {backend.url}: {e}") from e
    if found:
        shown = ", ".join(repr(f) for f in found[:3]) + (", …" if len(found) > 3 else "")
        raise StoreError(
            f"{backend.url} is not empty ({shown}) and is not a ckpt store: a store needs a folder of its own",
            hint=f"create the store in a new or empty folder, e.g. {backend.url.rstrip('/')}/ckpt-store",
        )


def connect(url: str | os.PathLike[str] | None, **storage_options: Any) -> StoreParts:
    """The parts of the existing store at ``url``; see ``ckpt.open``.

    Raises:
        StoreNotFoundError: there is no store at ``url``.
        FormatVersionError: the store was written by a newer, incompatible ckpt.
        BackendError: the location cannot be used.
    """
    backend = open_backend(location(url), **storage_options)
    return StoreParts.of(backend, read_config(backend))


def read_config(backend: Backend) -> StoreConfig:
    """The config of the store on ``backend``, after the format checks.

    Raises:
        StoreNotFoundError: no config, or not a ckpt config.
        RecordError: the config cannot be read, or its format version is not ``MAJOR.MINOR``.
        FormatVersionError: a newer major format than this ckpt reads.
    """
    if not backend.exists(layout.CONFIG):
        raise StoreNotFoundError(f"no ckpt store at {backend.url}")
    what = f"{backend.url}/{layout.CONFIG}"
    hint = "this file says what the store is; restore it from a backup or a replica (see docs/format.md)"
    raw = parse_json(backend.read(layout.CONFIG), what=what, hint=hint)
    if not isinstance(raw, dict) or raw.get("format") != "ckpt":
        raise StoreNotFoundError(f"{backend.url} is not a ckpt store ({layout.CONFIG} is not a ckpt config)")
    version = raw.get("format_version")
    text = version if isinstance(version, str) and len(version) <= 13 else ""
    major, _, minor = text.partition(".")
    if not (major.isascii() and major.isdigit() and minor.isascii() and minor.isdigit()):
        raise RecordError(f"{what}: invalid format_version {str(version)[:40]!r}", hint=hint)
    if int(major) > READABLE_MAJOR:
        raise FormatVersionError(
            f"the store at {backend.url} uses format {version}; this ckpt ({__version__}) reads format "
            f"{READABLE_MAJOR}.x and older"
        )
    known = {k: v for k, v in raw.items() if k in StoreConfig.model_fields}
    return validate_record(StoreConfig, known, what=what, hint=hint)


def location(url: str | os.PathLike[str] | None) -> str:
    """The store location as text: ``url`` (a str or ``os.PathLike``), else ``$CKPT_STORE`` or ``./.ckpt``."""
    if url is None:
        return settings.store_url()
    try:
        text = os.fspath(url)
    except TypeError:
        raise StoreError(
            f"a store location must be a path or a URL, got {type(url).__name__}",
            hint="pass a str or pathlib.Path, e.g. ckpt.open('runs') or ckpt.open('s3://bucket/models')",
        ) from None
    if not isinstance(text, str):
        raise StoreError(
            f"a store location must be a str path, got {type(text).__name__}", hint="decode it with os.fsdecode(path)"
        )
    return text or settings.store_url()
