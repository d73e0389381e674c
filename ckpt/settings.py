"""Settings read from the environment, lazily, on each call.

Precedence everywhere is: explicit argument > environment variable > default. Nothing is read at import time,
so tests and programs can change the environment at any moment.

| variable | meaning | default |
| --- | --- | --- |
| ``CKPT_STORE`` | the store ``ckpt.open()`` uses when given no URL | ``./.ckpt`` |
| ``CKPT_CHUNK_SIZE`` | chunk size for ``ckpt.init`` (bytes, or ``64MiB``, ``1GB``…) | ``64MiB`` |
| ``CKPT_THREADS`` | worker threads for hashing and I/O | ``min(8, 2 × cores)`` |
| ``CKPT_IO_CONCURRENCY`` | object requests one batched storage call keeps in flight | ``16`` |
| ``CKPT_IO_MEMORY`` | bytes of chunks a copy between stores (sync, repair) holds at once | ``1GiB`` |
| ``CKPT_REFERENCE_CACHE`` | bytes of raw chunks kept for the next save's deltas; ``0``: off | ``1GiB`` |
| ``CKPT_RECORD_CACHE`` | local cache of records read from object stores, or ``off`` | ``~/.cache/ckpt/records`` |
| ``CKPT_DEBUG`` | ``1``: the CLI prints full tracebacks | off |
"""

from __future__ import annotations

import math
import os
import re
from datetime import timedelta
from pathlib import Path

from ckpt.errors import RecordError

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_IO_CONCURRENCY",
    "DEFAULT_IO_MEMORY",
    "DEFAULT_PACK_SIZE",
    "DEFAULT_REFERENCE_CACHE",
    "DEFAULT_STORE",
    "chunk_size",
    "debug",
    "format_size",
    "io_concurrency",
    "io_memory",
    "parse_duration",
    "parse_size",
    "record_cache",
    "reference_cache",
    "store_url",
    "threads",
]

DEFAULT_STORE = ".ckpt"
DEFAULT_CHUNK_SIZE = 64 * 1024 * 1024
#: The pack size of a new store (``ckpt.init(pack_size=)``, ``ckpt init --pack-size``): small tensors are packed
#: into shared chunks of at most this many bytes (benchmarks/many_tensors.py, docs/benchmarks.md).
DEFAULT_PACK_SIZE = 4 * 1024 * 1024
#: Requests a batched storage call keeps in flight: enough to fill a 10 Gbit/s link at S3's ~100 MB/s per
#: connection, few enough that 16 × 64 MiB chunks stay a bounded amount of memory.
DEFAULT_IO_CONCURRENCY = 16

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}


_SIZE_HINT = "examples: 4096, 64MiB, 1.5GiB, 5GB (KiB/MiB/GiB/TiB are powers of 1024, kB/MB/GB/TB of 1000)"


def parse_size(text: str | int) -> int:
    """Parse a byte size such as ``4096``, ``64MiB``, ``5GB`` or ``1.5 GiB``.

    Args:
        text: the size; an int is returned as is.

    Returns:
        The size in bytes.

    Raises:
        RecordError: the text is not a size (a ``ValueError`` too), with a hint listing the units.

    Example:
        >>> parse_size("64MiB")
        67108864
    """
    if isinstance(text, bool) or not isinstance(text, (int, str)):
        raise RecordError(f"not a size: {text!r} (an int or a str such as '64MiB')", hint=_SIZE_HINT)
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise RecordError(f"not a size: {text!r}", hint=_SIZE_HINT)
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_HINT = "a timedelta, seconds as a number, or a str such as '0', '90s', '30m', '1h', '7d', '2w'"


def parse_duration(value: timedelta | int | float | str, *, name: str = "duration") -> timedelta:
    """A duration given as a ``timedelta``, seconds (``0``, ``3600``, ``1.5``) or text (``90s``, ``1h``, ``7d``).

    What ``store.gc(grace=…, expire_reflog=…)`` and ``ckpt gc --grace`` accept.

    Raises:
        RecordError: not a duration, or a negative one (a ``ValueError`` too), with a hint naming the forms.

    Example:
        >>> parse_duration("1h"), parse_duration(0)
        (datetime.timedelta(seconds=3600), datetime.timedelta(0))
    """
    out: timedelta | None = None
    if isinstance(value, timedelta):
        out = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        out = timedelta(seconds=value)
    elif isinstance(value, str):
        raw = value.strip().lower()
        m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)", raw)
        if m and (m.group(2) or float(m.group(1)) == int(float(m.group(1)))):
            out = timedelta(seconds=float(m.group(1)) * _DURATION_UNITS.get(m.group(2), 1))
    if out is None:
        raise RecordError(f"{name} is not a duration: {value!r}", hint=_DURATION_HINT)
    if out < timedelta(0):
        raise RecordError(f"{name} cannot be negative: {value!r}", hint=_DURATION_HINT)
    return out


def format_size(n: int | float) -> str:
    """A byte count for people, in IEC binary units: ``512 B``, ``1.5 KiB``, ``3.2 GiB``.

    The one place ckpt formats sizes: the CLI's figures for ``verify``, ``gc``, ``stats``, ``sync`` … all come
    from here, so the same bytes always read the same.

    Example:
        >>> format_size(1536), format_size(5), format_size(67108864)
        ('1.5 KiB', '5 B', '64.0 MiB')
    """
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def store_url() -> str:
    """The store URL to use when none is given: ``$CKPT_STORE`` or ``./.ckpt``."""
    return os.environ.get("CKPT_STORE") or DEFAULT_STORE


def chunk_size() -> int:
    """The chunk size for new stores: ``$CKPT_CHUNK_SIZE`` or 64 MiB."""
    raw = os.environ.get("CKPT_CHUNK_SIZE")
    if not raw:
        return DEFAULT_CHUNK_SIZE
    try:
        return parse_size(raw)
    except RecordError as e:
        raise RecordError(f"CKPT_CHUNK_SIZE: {e.message}", hint=e.hint or "", cli_hint=e.cli_hint or "") from None


def threads() -> int:
    """How many worker threads hash and move chunks: ``$CKPT_THREADS`` or ``min(8, 2 × cores)``."""
    raw = os.environ.get("CKPT_THREADS")
    if raw:
        try:
            return max(1, int(raw))
        except ValueError:
            raise RecordError(f"CKPT_THREADS must be a whole number, got {raw!r}") from None
    return max(2, min(8, 2 * (os.cpu_count() or 1)))


def ceiling_directories() -> list[str]:
    """``$CKPT_CEILING_DIRECTORIES``: folders (``os.pathsep``-separated) the search for ``./.ckpt`` does not enter.

    As Git's ``GIT_CEILING_DIRECTORIES``: the command line looks for ``.ckpt`` in the current folder and then its
    parents, but never enters a folder listed here from below, nor goes above one it started in.
    """
    raw = os.environ.get("CKPT_CEILING_DIRECTORIES", "")
    return [part for part in raw.split(os.pathsep) if part.strip()]


def io_concurrency(value: int | None = None) -> int:
    """How many requests a batched storage call (``put_many``, ``read_ranges`` …) keeps in flight.

    Precedence: ``value`` > ``$CKPT_IO_CONCURRENCY`` > ``DEFAULT_IO_CONCURRENCY`` (16). The same setting serves
    every store: it bounds the open connections and the memory of one call (at most this many objects are
    taken from the caller and not yet done), whatever the backend.

    Args:
        value: an explicit count (the ``concurrency`` argument of a batched call), or ``None``.

    Returns:
        The count, at least 1.

    Raises:
        RecordError: the count (or the variable) is not a whole number of at least 1.

    Example:
        >>> io_concurrency(4)
        4
    """
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RecordError(f"concurrency must be a whole number >= 1, got {value!r}")
        return value
    raw = os.environ.get("CKPT_IO_CONCURRENCY", "").strip()
    if not raw:
        return DEFAULT_IO_CONCURRENCY
    try:
        count = int(raw)
    except ValueError:
        count = 0
    if count < 1:
        raise RecordError(
            f"CKPT_IO_CONCURRENCY must be a whole number >= 1, got {raw!r}",
            hint="unset it for the default (16), or give e.g. CKPT_IO_CONCURRENCY=32",
        )
    return count


DEFAULT_IO_MEMORY = 1 << 30


def io_memory() -> int:
    """Bytes of chunks one transfer that copies them (``sync``, ``repair``) may hold in memory at once.

    ``$CKPT_IO_MEMORY`` (a size: ``512MiB``, ``4GiB`` …), else 1 GiB. With 64 MiB chunks the default lets 16
    copies run at once, as many as ``CKPT_IO_CONCURRENCY``'s default; a smaller value runs fewer, never none.

    Raises:
        RecordError: the variable is not a size.
    """
    return _size_variable("CKPT_IO_MEMORY", DEFAULT_IO_MEMORY, least=1)


DEFAULT_REFERENCE_CACHE = 1 << 30


def reference_cache() -> int:
    """Bytes of raw chunks one process keeps in memory as the references of its next save's deltas.

    ``$CKPT_REFERENCE_CACHE`` (a size: ``512MiB``, ``4GiB`` …; ``0`` turns the cache off), else 1 GiB. A save
    that stores a chunk as a delta needs its parent's chunk raw; kept here, it is not decoded through its chain
    again (docs/environment.md, ``CKPT_REFERENCE_CACHE``). Set it to at least the bytes of the state a training
    loop saves.

    Raises:
        RecordError: the variable is not a size.
    """
    return _size_variable("CKPT_REFERENCE_CACHE", DEFAULT_REFERENCE_CACHE, least=0)


def _size_variable(name: str, default: int, *, least: int) -> int:
    """The size in ``$name`` (at least ``least``), or ``default`` when it is unset or blank.

    Raises:
        RecordError: the variable is not a size (named in the message).
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return max(least, parse_size(raw))
    except RecordError as e:
        raise RecordError(f"{name}: {e.message}", hint=e.hint or "", cli_hint=e.cli_hint or "") from None


def record_cache() -> Path | None:
    """The folder of the local record cache, or ``None`` when it is off.

    ``$CKPT_RECORD_CACHE`` names the folder; ``off`` (or ``0``, ``false``, ``no``, ``none``) turns the cache off.
    Unset: ``$XDG_CACHE_HOME/ckpt/records``, else ``~/.cache/ckpt/records``. The cache holds immutable,
    content-addressed records only, each checked against its digest when read (see
    docs/guides/remote-storage.md), so a stale or tampered entry can never be taken for a record.
    """
    raw = os.environ.get("CKPT_RECORD_CACHE")
    if raw is not None and raw.strip():
        if raw.strip().lower() in ("off", "0", "false", "no", "none"):
            return None
        return Path(raw.strip()).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".cache") / "ckpt" / "records"


def debug() -> bool:
    """Whether ``$CKPT_DEBUG`` asks for full tracebacks."""
    return os.environ.get("CKPT_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")
