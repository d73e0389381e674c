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
import json
import mmap
import os
import struct
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ckpt.errors import CkptError, RecordError, StateMismatchError, UnsupportedStateError
from ckpt.interop._folders import os_error
from ckpt.model import DTYPE_SIZES
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

#: The largest header safetensors accepts (100 MB); a bigger one is refused before it is read.
MAX_HEADER_SIZE = 100_000_000

#: safetensors' dtype order, narrowest first: ``save_file`` sorts tensors by this order, descending, then by
#: name. ``C128`` is not a safetensors dtype; ckpt stores it and sorts it first (widest).
_DTYPE_ORDER = (
    "BOOL",
    "U8",
    "I8",
    "F8_E5M2",
    "F8_E4M3",
    "F8_E8M0",
    "F8_E4M3FNUZ",
    "F8_E5M2FNUZ",
    "I16",
    "U16",
    "F16",
    "BF16",
    "I32",
    "U32",
    "F32",
    "C64",
    "F64",
    "I64",
    "U64",
    "C128",
)
_DTYPE_RANK = {name: i for i, name in enumerate(_DTYPE_ORDER)}

#: The dtypes ckpt stores that the safetensors format has (so its readers accept them): every stored dtype
#: but ``C128``. A file is never written with another.
SAFETENSORS_DTYPES = frozenset(d for d in _DTYPE_ORDER if d != "C128")

Bytes = bytes | bytearray | memoryview
#: One tensor to write: name, dtype name, shape, and its raw bytes (C order, little-endian) in pieces.
TensorBytes = tuple[str, str, Sequence[int], Iterable[Bytes]]


@dataclass(frozen=True)
class TensorInfo:
    """One tensor entry of a validated safetensors header.

    Attributes:
        name: the tensor's name.
        dtype: the safetensors dtype name (``F32``, ``BF16`` …).
        shape: the dimensions.
        begin: offset of its first byte in the data region (after the header).
        end: offset just past its last byte.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        """Size of the tensor's bytes."""
        return self.end - self.begin


def parse_header(
    header_bytes: bytes, *, data_size: int | None = None, what: str = "safetensors header"
) -> tuple[dict[str, Any], list[TensorInfo]]:
    """Parse and validate the JSON header of a safetensors file.

    Args:
        header_bytes: the N header bytes (without the 8-byte length before them), padding included.
        data_size: the length of the data region that follows; ``None``: the one the header describes.
        what: how to name the file in error messages.

    Returns:
        ``(header, infos)``: the parsed JSON object, in file order, and its tensors in data-offset order.

    Raises:
        RecordError: the header is not a valid safetensors header, or its offsets do not tile the data region.
        UnsupportedStateError: a tensor has a dtype ckpt does not store (e.g. the 4- and 6-bit floats).

    Example:
        >>> header, infos = parse_header(b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}')
        >>> infos[0].name, infos[0].shape, infos[0].nbytes
        ('w', (2,), 8)
    """
    try:
        return _parse_header(header_bytes, data_size, what)
    except RecordError as e:
        if e.hint is not None:
            raise
        raise RecordError(
            str(e), hint="the file is damaged or was not written by a safetensors writer: download or copy it again"
        ) from e


def _parse_header(header_bytes: bytes, data_size: int | None, what: str) -> tuple[dict[str, Any], list[TensorInfo]]:
    try:
        text = header_bytes.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(f"{what} is not valid UTF-8: {e}") from e
    if not text.startswith("{"):
        raise RecordError(f"{what} does not start with a JSON object")
    try:
        header = json.loads(text, object_pairs_hook=_unique_pairs)
    except (ValueError, RecursionError) as e:
        raise RecordError(f"{what} is not valid JSON: {e}") from e
    if not isinstance(header, dict):
        raise RecordError(f"{what} is not a JSON object")

    metadata = header.get("__metadata__")
    if metadata is not None and (
        not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values())
    ):
        raise RecordError(f"{what}: __metadata__ must map strings to strings")
    try:  # JSON escapes can spell lone surrogates, which no UTF-8 file, record or name can hold
        for key, value in header.items():
            key.encode("utf-8")
            if key == "__metadata__" and value is not None:
                for k, v in value.items():
                    k.encode("utf-8"), v.encode("utf-8")
    except UnicodeEncodeError:
        raise RecordError(
            f"{what}: a tensor name or metadata string is not valid Unicode (a lone surrogate escape)"
        ) from None

    infos: list[TensorInfo] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise RecordError(f"{what}: the entry of tensor {_q(name)} is not a JSON object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str):
            raise RecordError(f"{what}: tensor {_q(name)} has no dtype string")
        if dtype not in DTYPE_SIZES:
            raise UnsupportedStateError(
                f"{what}: tensor {_q(name)} has dtype {dtype}, which ckpt does not store",
                hint=f"ckpt stores {', '.join(sorted(DTYPE_SIZES))}",
            )
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise RecordError(f"{what}: tensor {_q(name)} has an invalid shape {_q(shape)}")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
            raise RecordError(f"{what}: tensor {_q(name)} has invalid data_offsets {_q(offsets)}")
        begin, end = offsets
        if end < begin:
            raise RecordError(f"{what}: tensor {_q(name)} ends (at {end}) before it begins (at {begin})")
        numel = 1
        for d in shape:
            numel *= d
        if numel * DTYPE_SIZES[dtype] != end - begin:
            raise RecordError(
                f"{what}: tensor {_q(name)} ({dtype} {shape}) needs {numel * DTYPE_SIZES[dtype]} bytes, "
                f"but its data_offsets span {end - begin}"
            )
        infos.append(TensorInfo(name, dtype, tuple(shape), begin, end))

    infos.sort(key=lambda i: (i.begin, i.end))  # stable: equal offsets keep header order
    position = 0
    for info in infos:
        if info.begin != position:
            problem = "overlaps the tensor before it" if info.begin < position else "leaves a gap before it"
            raise RecordError(f"{what}: tensor {_q(info.name)} at offset {info.begin} {problem} (expected {position})")
        position = info.end
    if data_size is not None and position != data_size:
        problem = "is truncated" if position > data_size else f"has {data_size - position} trailing bytes"
        raise RecordError(
            f"{what} {problem}: its tensors cover {position} bytes of data, but the file holds {data_size}",
            hint="download or copy the file again",
        )
    return header, infos


def _q(value: Any) -> str:
    """``repr(value)``, cut to 80 characters (names in hostile headers can be megabytes long)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)  # fast; only when a key was repeated, find which
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return out


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


#: The first line of a Git LFS pointer file (what a clone without ``git lfs`` leaves instead of the weights).
_LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def _not_safetensors(head: bytes, size: int, what: str) -> RecordError | None:
    """A clear error when the first bytes show the file is something else than safetensors.

    Called only once the first 8 bytes failed as a header length, so a real header is never misjudged.
    """
    if head.startswith(_LFS_POINTER):
        return RecordError(
            f"{what} is a Git LFS pointer ({size} bytes), not the weights it stands for",
            hint="fetch the real file: run `git lfs pull` in the repository (or download the file again)",
        )
    if head.startswith(b"PK\x03\x04"):
        return RecordError(
            f"{what} is a zip archive (as torch.save writes), not a safetensors file",
            hint="convert it to safetensors in an environment you trust; ckpt never loads pickles",
        )
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return RecordError(
            f"{what} is a Python pickle, not a safetensors file",
            hint="convert it to safetensors in an environment you trust; ckpt never loads pickles",
        )
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head[:8]):
        return RecordError(
            f"{what} is a text file ({head[:24].decode('ascii', 'replace')!r}…), not a safetensors file",
            hint="a failed download saves an error page: download the file again",
        )
    return None


def _read_prefix(f: BinaryIO, size: int, what: str) -> bytes:
    head = f.read(64)
    if size < 8 or len(head) < 8:
        raise _not_safetensors(head, size, what) or RecordError(
            f"{what} is not a safetensors file: it is only {max(size, len(head))} bytes long"
        )
    (n,) = struct.unpack("<Q", head[:8])
    if 8 + n > size:  # first whether it fits, then whether it is too big: a wrong file is named as such
        raise _not_safetensors(head, size, what) or RecordError(
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


def build_header(
    tensors: Iterable[tuple[str, str, Sequence[int]]], metadata: Mapping[str, str] | None = None
) -> tuple[bytes, list[TensorInfo]]:
    """The header safetensors writes for these tensors, and where each tensor's data goes.

    Args:
        tensors: ``(name, dtype, shape)`` of each tensor, in any order.
        metadata: the ``__metadata__`` map (string → string), written first, in the given order; ``None``:
            no ``__metadata__`` at all (an empty map writes an empty one, as safetensors does).

    Returns:
        ``(header_bytes, infos)``: the padded header (without the 8-byte length) and the tensors in the order
        their data must follow, which is safetensors' order: widest dtype first, then by name.

    Raises:
        RecordError: a name is repeated or reserved, a dtype unknown, a shape invalid, or metadata not strings.

    Example:
        >>> header, infos = build_header([("b", "F16", (2,)), ("a", "F32", (1,))], {"format": "pt"})
        >>> [i.name for i in infos]
        ['a', 'b']
    """
    specs: list[tuple[str, str, tuple[int, ...]]] = []
    seen: set[str] = set()
    for name, dtype, shape in tensors:
        if not isinstance(name, str) or name == "__metadata__":
            raise RecordError(f"{name!r} cannot name a tensor in a safetensors file")
        if name in seen:
            raise RecordError(f"tensor {name!r} is given twice")
        seen.add(name)
        if dtype not in SAFETENSORS_DTYPES:
            raise _no_such_dtype(name, dtype)
        dims = tuple(shape)
        if not all(_is_count(d) for d in dims):
            raise RecordError(f"tensor {name!r}: invalid shape {shape!r}")
        specs.append((name, dtype, dims))
    specs.sort(key=lambda s: (-_DTYPE_RANK[s[1]], s[0]))

    header: dict[str, Any] = {}
    if metadata is not None:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise RecordError("safetensors metadata must map strings to strings")
        header["__metadata__"] = dict(metadata)
    infos: list[TensorInfo] = []
    position = 0
    for name, dtype, dims in specs:
        numel = 1
        for d in dims:
            numel *= d
        end = position + numel * DTYPE_SIZES[dtype]
        header[name] = {"dtype": dtype, "shape": list(dims), "data_offsets": [position, end]}
        infos.append(TensorInfo(name, dtype, dims, position, end))
        position = end
    try:
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        raise RecordError(f"a tensor name or metadata string is not valid Unicode: {e}") from e
    header_bytes = raw + b" " * (-len(raw) % 8)
    _check_size(len(header_bytes))
    return header_bytes, infos


def _no_such_dtype(name: str, dtype: Any) -> RecordError:
    if dtype in DTYPE_SIZES:
        return RecordError(
            f"tensor {name!r} is {dtype}, which the safetensors format does not have; its readers would refuse "
            "the file",
            hint="load the snapshot with store.load() instead, or store complex128 as float64 pairs "
            "(torch.view_as_real)",
        )
    return RecordError(f"tensor {name!r}: unknown dtype {dtype!r}")


def _check_size(n: int) -> None:
    if n > MAX_HEADER_SIZE:
        raise RecordError(
            f"the safetensors header would be {n} bytes, over the {MAX_HEADER_SIZE}-byte limit its readers apply",
            hint="too many tensors (or too long names) for one file: cut the export into more files with a smaller "
            "shard size",
        )


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
        _check_size(len(header_bytes))
        if infos is None:
            _, infos = parse_header(header_bytes, what=f"the header given for {os.fspath(path)}")
        for info in infos:
            if info.dtype not in SAFETENSORS_DTYPES:
                raise _no_such_dtype(info.name, info.dtype)
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
