"""Tensor tables: name → dtype, shape and chunk digests, plus the typed-JSON state tree and attached files."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

__all__ = ["DTYPE_SIZES", "RESERVED_FILE_PREFIX", "FileEntry", "TensorEntry", "TensorTable"]

#: Attached files under this prefix are ckpt's own bookkeeping (e.g. the headers of imported safetensors
#: files): kept with the snapshot, never shown as the user's files, never exported.
RESERVED_FILE_PREFIX = ".ckpt/"

#: Every tensor dtype ckpt stores, by safetensors name, with its size in bytes.
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E4M3FNUZ": 1,
    "F8_E5M2": 1,
    "F8_E5M2FNUZ": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
    "C128": 16,
}

Digest = str


class TensorEntry(BaseModel):
    """One tensor of a snapshot.

    Attributes:
        dtype: the safetensors dtype name (``F32``, ``BF16``, ``I64`` …), a key of ``DTYPE_SIZES``.
        shape: the dimensions; ``[]`` for a 0-dim tensor.
        chunks: the BLAKE3 digests of the tensor's raw bytes (C order, little-endian), cut every
            ``chunk_size`` bytes; an empty tensor has no chunk.
        kind: which array type comes back on load: ``torch`` tensors or ``numpy`` arrays.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    dtype: str
    shape: tuple[int, ...]
    chunks: tuple[Digest, ...]
    kind: Literal["torch", "numpy"] = "torch"

    @property
    def numel(self) -> int:
        """Number of elements."""
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        """Size of the raw bytes."""
        return self.numel * DTYPE_SIZES[self.dtype]


class FileEntry(BaseModel):
    """One attached file (config.json, tokenizer files …), stored as chunks like a tensor's bytes.

    Attributes:
        size: length in bytes.
        chunks: BLAKE3 digests of its bytes cut every ``chunk_size`` bytes.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(ge=0)
    chunks: tuple[Digest, ...]


class TensorTable(BaseModel):
    """Everything a snapshot holds, addressed by its own digest.

    Attributes:
        chunk_size: the chunk size the tensors were cut with.
        tensors: tensor path → entry. Paths are the keys of the state tree joined with ``/``.
        tree: the state tree in typed JSON; tensors appear as ``{"$tensor": path}`` (see docs/format.md).
        files: attached file path (relative, ``/``-separated) → entry.
        tied: groups of tensor paths that were one tensor when saved (the same memory: tied weights such as
            an input embedding and an output head). Each group has two or more paths of ``tensors``, in tree
            order, whose entries are equal; a path is in one group at most. Loading gives each group one
            tensor. Written only when not empty (format 1.1), so a table without ties has the bytes it had
            in format 1.0.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    chunk_size: int = Field(gt=0)
    tensors: dict[str, TensorEntry]
    tree: Any
    files: dict[str, FileEntry] = Field(default_factory=dict)
    tied: tuple[tuple[str, ...], ...] = ()

    @model_serializer(mode="wrap")
    def _without_empty_ties(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict) and not self.tied:
            data.pop("tied", None)
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TensorTable:
        cs = self.chunk_size
        grouped: set[str] = set()
        for group in self.tied:
            if len(group) < 2:
                raise ValueError(f"tied group {list(group)}: a group names two or more tensors")
            first = self.tensors.get(group[0])
            for name in group:
                entry = self.tensors.get(name)
                if entry is None:
                    raise ValueError(f"tied group {list(group)}: no tensor {name!r}")
                if name in grouped:
                    raise ValueError(f"tensor {name!r} is in two tied groups")
                grouped.add(name)
                if entry != first:
                    raise ValueError(
                        f"tied tensors {group[0]!r} and {name!r} have different entries (dtype, shape, chunks or kind)"
                    )
        for name, t in self.tensors.items():
            if t.dtype not in DTYPE_SIZES:
                raise ValueError(f"tensor {name!r}: unknown dtype {t.dtype!r}")
            if any(d < 0 for d in t.shape):
                raise ValueError(f"tensor {name!r}: negative dimension in shape {list(t.shape)}")
            if len(t.chunks) != -(-t.nbytes // cs):
                raise ValueError(f"tensor {name!r}: {len(t.chunks)} chunks for {t.nbytes} bytes in {cs}-byte chunks")
        for path, f in self.files.items():
            if len(f.chunks) != -(-f.size // cs):
                raise ValueError(f"file {path!r}: {len(f.chunks)} chunks for {f.size} bytes in {cs}-byte chunks")
        return self

    def chunk_digests(self) -> set[str]:
        """Every chunk digest the table needs, tensors and files."""
        out: set[str] = set()
        for t in self.tensors.values():
            out.update(t.chunks)
        for f in self.files.values():
            out.update(f.chunks)
        return out

    @property
    def nbytes(self) -> int:
        """Total raw bytes of all tensors."""
        return sum(t.nbytes for t in self.tensors.values())
