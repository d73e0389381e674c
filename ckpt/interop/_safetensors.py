"""The safetensors file format, read and written without torch.

A safetensors file is::

    8 bytes       N, the header length, unsigned little-endian
    N bytes       the header: a UTF-8 JSON object, usually padded with spaces to a multiple of 8 bytes
    the rest      the tensor data; each tensor's bytes sit at ``data_offsets`` [begin, end) of this region

The header maps each tensor name to ``{"dtype", "shape", "data_offsets"}`` and may hold ``"__metadata__"``, a
string → string map. Reading checks everything before any byte is trusted: the header parses, every entry is
well formed, ``end - begin`` equals the size its dtype and shape need, and the entries tile the data region
exactly (no gap, no overlap, nothing past the end), as the safetensors library itself demands.

Writing follows safetensors (0.8) byte for byte: ``"__metadata__"`` first when given, then the tensors sorted by
dtype (widest first, in safetensors' dtype order) and then by name, each entry's keys in the order ``dtype``,
``shape``, ``data_offsets``, compact JSON with non-ASCII text kept as UTF-8, padded with spaces to a multiple of
8 bytes. A file written here from the same tensors as ``safetensors.torch.save_file`` is byte-identical to it
(safetensors writes a metadata map of several keys in an arbitrary order; ckpt keeps the order it is given).
Alternatively the writer takes an original header verbatim, so that an imported file can be written again
byte for byte.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from ckpt.errors import CkptError, RecordError, StateMismatchError
from ckpt.interop._folders import os_error
from ckpt.interop._safetensors_header import (
    MAX_HEADER_SIZE,
    SAFETENSORS_DTYPES,
    TensorInfo,
    build_header,
    check_size,
    no_such_dtype,
    not_safetensors,
    parse_header,
)
from ckpt.state import TensorSource

__all__ = [
    "MAX_HEADER_SIZE",
    "SAFETENSORS_DTYPES",
    "TensorBytes",
    "TensorInfo",
    "build_header",
    "open_mapped",
    "open_tensors",
    "parse_header",
    "read_header",
    "write_file",
]

Bytes = bytes | bytearray | memoryview
#: One tensor to write: name, dtype name, shape, and its raw bytes (C order, little-endian) in pieces.
TensorBytes = tuple[str, str, Sequence[int], Iterable[Bytes]]


def _read_prefix(f: BinaryIO, size: int, what: str) -> bytes:
    head = f.read(64)
    if size < 8 or len(head) < 8:
        raise not_safetensors(head, size, what) or RecordError(
            f"{what} is not a safetensors file: it is only {max(size, len(head))} bytes long"
        )
    (n,) = struct.unpack("<Q", head[:8])
    if 8 + n > size:  # first whether it fits, then whether it is too big: a wrong file is named as such
        raise not_safetensors(head, size, what) or RecordError(
            f"{what} is not a valid safetensors file: its first 8 bytes give a header of {n} bytes, which does "
            f"not fit in the {size}-byte file",
            hint="the file is truncated or is not safetensors: download or copy it again",
        )
    if n > MAX_HEADER_SIZE:
        raise RecordError(
            f"{what}: header length {n} is over the {MAX_HEADER_SIZE}-byte limit safetensors readers apply",
            hint="safetensors itself cannot load this file either",
        )
    f.seek(8)
    header_bytes = f.read(n)
    if len(header_bytes) != n:
        raise RecordError(f"{what}: the file changed while it was read")
    return header_bytes


def _read(path: Path) -> tuple[bytes, dict[str, Any]]:
    what = str(path)
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            header_bytes = _read_prefix(f, size, what)
    except OSError as e:
        raise RecordError(f"cannot read {what}: {e}") from e
    header, _ = parse_header(header_bytes, data_size=size - 8 - len(header_bytes), what=what)
    return header_bytes, header


def read_header(path: str | os.PathLike[str]) -> tuple[bytes, dict[str, Any]]:
    """Read and validate the header of a safetensors file, without reading its tensors.

    Args:
        path: the ``.safetensors`` file.

    Returns:
        ``(header_bytes, header)``: the N header bytes exactly as in the file (padding included, without the
        8-byte length before them), and the parsed JSON object, in file order.

    Raises:
        RecordError: the file cannot be read, or it is not a valid safetensors file.
        UnsupportedStateError: a tensor has a dtype ckpt does not store.

    Example:
        >>> header_bytes, header = read_header("model.safetensors")  # doctest: +SKIP
        >>> header["__metadata__"]  # doctest: +SKIP
        {'format': 'pt'}
    """
    return _read(Path(path))


def open_tensors(path: str | os.PathLike[str]) -> dict[str, TensorSource]:
    """Memory-map a safetensors file and view each tensor's bytes, without copying and without torch.

    The file must not change while the returned sources are in use (they view its pages). The map closes when
    the last source is dropped.

    Args:
        path: the ``.safetensors`` file.

    Returns:
        Tensor name → ``TensorSource`` (``kind="torch"``), in data-offset order; each source's ``data`` is a
        read-only slice of the map, and its ``owner`` the map. Pass them to ``Store.save`` as state leaves.

    Raises:
        RecordError: the file cannot be read, or it is not a valid safetensors file.
        UnsupportedStateError: a tensor has a dtype ckpt does not store.

    Example:
        >>> snap = store.save({"model": open_tensors("model.safetensors")})  # doctest: +SKIP
    """
    _, sources = open_mapped(path)
    return sources


def open_mapped(
    path: str | os.PathLike[str] | BinaryIO, *, what: str | None = None
) -> tuple[bytes, dict[str, TensorSource]]:
    """The exact header bytes and the memory-mapped tensors of a safetensors file, from one read of the header.

    Args:
        path: the ``.safetensors`` file, or a file already open for reading in binary mode (e.g. from
            ``_folders.open_file``, which opens without following links); it is not closed.
        what: how to name the file in error messages; default: its path.

    Returns:
        ``(header_bytes, sources)``: as ``read_header``'s first value and ``open_tensors``' result.

    Raises:
        RecordError: the file cannot be read, or it is not a valid safetensors file (a Git LFS pointer, a
            pickle, a truncated file … is named as such).
        UnsupportedStateError: a tensor has a dtype ckpt does not store.
    """
    if isinstance(path, (str, os.PathLike)):
        name = what or os.fspath(path)
        try:
            with open(path, "rb") as f:
                return _map(f, name)
        except OSError as e:
            raise RecordError(f"cannot read {name}: {e.strerror or e}") from e
    return _map(path, what or str(getattr(path, "name", "safetensors file")))


def _map(f: BinaryIO, what: str) -> tuple[bytes, dict[str, TensorSource]]:
    try:
        size = os.fstat(f.fileno()).st_size
        header_bytes = _read_prefix(f, size, what)
        _, infos = parse_header(header_bytes, data_size=size - 8 - len(header_bytes), what=what)
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
    except CkptError:
        raise
    except (OSError, ValueError) as e:
        raise RecordError(f"cannot read {what}: {getattr(e, 'strerror', None) or e}") from e
    if mm is None or len(mm) != size:
        raise RecordError(f"{what} changed while it was read")
    base = 8 + len(header_bytes)
    view = memoryview(mm)
    sources = {
        i.name: TensorSource(i.dtype, i.shape, "torch", view[base + i.begin : base + i.end], owner=mm) for i in infos
    }
    return header_bytes, sources


def write_file(
    path: str | os.PathLike[str],
    tensors: Iterable[TensorBytes],
    metadata: Mapping[str, str] | None = None,
    header_bytes: bytes | None = None,
    *,
    infos: Sequence[TensorInfo] | None = None,
) -> Path:
    """Write a safetensors file, streaming each tensor's bytes piece by piece (never the whole file in memory).

    The file appears atomically: it is written to a temporary name in the same folder and renamed at the end,
    so a failure leaves no partial file behind.

    Args:
        path: the file to write (replaced if it exists).
        tensors: ``(name, dtype, shape, pieces)`` for each tensor, ``pieces`` an iterable of byte buffers
            that together hold the tensor's raw bytes (C order, little-endian). They are consumed in the
            order the data is written; lazy iterators (e.g. ``Store.tensor_bytes``) are read only then.
        metadata: the ``__metadata__`` map, when the header is built here (see ``build_header``).
        header_bytes: an original header (as ``read_header`` returns it) to write verbatim instead of building
            one; ``tensors`` must then be exactly the tensors it names, with the same dtypes and shapes, and
            their data goes at the header's offsets. ``metadata`` must be ``None``.
        infos: the entries of ``header_bytes`` as ``parse_header`` or ``build_header`` returned them for it
            (in data order), so that a header already parsed is not parsed again.

    Returns:
        The path written.

    Raises:
        RecordError: invalid names, dtypes, shapes or metadata; an invalid ``header_bytes``; or both
            ``metadata`` and ``header_bytes`` given.
        StateMismatchError: the tensors do not match ``header_bytes``, or a tensor's pieces do not add up to the
            size its dtype and shape need.

    Example:
        >>> write_file("w.safetensors", [("w", "F32", (2,), [b"\\0" * 8])], metadata={"format": "pt"})  # doctest: +SKIP
    """
    given = list(tensors)
    if header_bytes is None:
        header_bytes, infos = build_header(((n, d, s) for n, d, s, _ in given), metadata)
    else:
        if metadata is not None:
            raise RecordError("pass either metadata or header_bytes, not both (the header holds the metadata)")
        header_bytes = bytes(header_bytes)
        check_size(len(header_bytes))
        if infos is None:
            _, infos = parse_header(header_bytes, what=f"the header given for {os.fspath(path)}")
        for info in infos:
            if info.dtype not in SAFETENSORS_DTYPES:
                raise no_such_dtype(info.name, info.dtype)
        _check_against(infos, given, os.fspath(path))
    pieces = {name: chunks for name, _, _, chunks in given}

    target = Path(path)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(struct.pack("<Q", len(header_bytes)))
            f.write(header_bytes)
            for info in infos:
                _write_tensor(f, info, pieces[info.name])
        os.replace(tmp, target)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise os_error(e, f"writing {target}") from e
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    return target


def _check_against(infos: Sequence[TensorInfo], given: list[TensorBytes], where: str) -> None:
    by_name: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, dtype, shape, _ in given:
        if name in by_name:
            raise RecordError(f"tensor {name!r} is given twice")
        by_name[name] = (dtype, tuple(shape))
    expected = {i.name for i in infos}
    missing, extra = sorted(expected - by_name.keys()), sorted(by_name.keys() - expected)
    if missing or extra:
        raise StateMismatchError(
            f"the tensors for {where} do not match its header: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for info in infos:
        dtype, shape = by_name[info.name]
        if (dtype, shape) != (info.dtype, info.shape):
            raise StateMismatchError(
                f"tensor {info.name!r} is {dtype} {list(shape)}, but the header of {where} says "
                f"{info.dtype} {list(info.shape)}"
            )


def _write_tensor(f: BinaryIO, info: TensorInfo, pieces: Iterable[Bytes]) -> None:
    written = 0
    for piece in pieces:
        n = piece.nbytes if isinstance(piece, memoryview) else len(piece)
        written += n
        if written > info.nbytes:
            break
        f.write(piece)
    if written != info.nbytes:
        raise StateMismatchError(
            f"tensor {info.name!r} ({info.dtype} {list(info.shape)}) needs {info.nbytes} bytes, "
            f"but {'more' if written > info.nbytes else written} were given"
        )
