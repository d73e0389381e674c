"""The safetensors header: its dtypes, its parser (every rule the safetensors library applies) and the header
safetensors writes, byte for byte (``_safetensors`` reads and writes whole files with it)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ckpt.errors import RecordError, UnsupportedStateError
from ckpt.model import DTYPE_SIZES

__all__ = [
    "MAX_HEADER_SIZE",
    "SAFETENSORS_DTYPES",
    "TensorInfo",
    "build_header",
    "check_size",
    "no_such_dtype",
    "not_safetensors",
    "parse_header",
    "parse_header_bytes",
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
        return parse_header_bytes(header_bytes, data_size, what)
    except RecordError as e:
        if e.hint is not None:
            raise
        raise RecordError(
            str(e), hint="the file is damaged or was not written by a safetensors writer: download or copy it again"
        ) from e


def parse_header_bytes(
    header_bytes: bytes, data_size: int | None, what: str
) -> tuple[dict[str, Any], list[TensorInfo]]:
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


def not_safetensors(head: bytes, size: int, what: str) -> RecordError | None:
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
            raise no_such_dtype(name, dtype)
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
    check_size(len(header_bytes))
    return header_bytes, infos


def no_such_dtype(name: str, dtype: Any) -> RecordError:
    if dtype in DTYPE_SIZES:
        return RecordError(
            f"tensor {name!r} is {dtype}, which the safetensors format does not have; its readers would refuse "
            "the file",
            hint="load the snapshot with store.load() instead, or store complex128 as float64 pairs "
            "(torch.view_as_real)",
        )
    return RecordError(f"tensor {name!r}: unknown dtype {dtype!r}")


def check_size(n: int) -> None:
    if n > MAX_HEADER_SIZE:
        raise RecordError(
            f"the safetensors header would be {n} bytes, over the {MAX_HEADER_SIZE}-byte limit its readers apply",
            hint="too many tensors (or too long names) for one file: cut the export into more files with a smaller "
            "shard size",
        )
