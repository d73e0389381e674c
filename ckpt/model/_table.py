"""Tensor tables: name → dtype, shape and chunk digests, plus the typed-JSON state tree and attached files."""

from __future__ import annotations

import re
import reprlib
from itertools import product
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from ckpt.model._types import Digest

__all__ = [
    "DTYPE_SIZES",
    "MAX_DIMS",
    "MAX_ELEMENTS",
    "RESERVED_FILE_PREFIX",
    "SAFETENSORS_INDEX_SUFFIX",
    "FileEntry",
    "TensorEntry",
    "TensorShard",
    "TensorTable",
    "file_path_problem",
    "tree_problem",
]

#: Attached files under this prefix are ckpt's own bookkeeping (e.g. the headers of imported safetensors
#: files): kept with the snapshot, never shown as the user's files, never exported.
RESERVED_FILE_PREFIX = ".ckpt/"

#: The name ending of a sharded safetensors checkpoint's index file (``model.safetensors.index.json``, as Hugging
#: Face's ``save_pretrained`` writes it): it maps tensor names to shard files.
SAFETENSORS_INDEX_SUFFIX = ".safetensors.index.json"

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

#: The most dimensions a tensor may have (numpy's limit).
MAX_DIMS = 64
#: The most elements a tensor's dimensions may describe (zero dimensions counted as one): more cannot be
#: allocated by numpy or torch on any machine, so such a table is refused before anything is allocated.
MAX_ELEMENTS = 1 << 62
#: The longest attached file path, in UTF-8 bytes, its longest component, and its deepest nesting: every
#: path within these limits can be written under any export folder on common file systems.
MAX_FILE_PATH_BYTES = 1024
MAX_FILE_COMPONENT_BYTES = 255
MAX_FILE_DEPTH = 32
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class TensorShard(BaseModel):
    """One block of a sharded tensor, as one rank of a distributed save held it (format 1.2).

    The block is the sub-array ``tensor[o0:o0+s0, o1:o1+s1, …]`` for ``offsets`` (o) and ``sizes`` (s), the
    terms of ``torch.distributed.checkpoint``'s ``ChunkStorageMetadata``. Its bytes are the block's elements in
    C order (little-endian), cut every ``chunk_size`` bytes like a whole tensor's.

    Attributes:
        offsets: where the block starts, one index per dimension.
        sizes: the block's extent in each dimension (all ≥ 1).
        chunks: BLAKE3 digests of the block's bytes, in order.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    chunks: tuple[Digest, ...]

    @property
    def numel(self) -> int:
        """Number of elements in the block."""
        n = 1
        for d in self.sizes:
            n *= d
        return n


class TensorEntry(BaseModel):
    """One tensor of a snapshot.

    Attributes:
        dtype: the safetensors dtype name (``F32``, ``BF16``, ``I64`` …), a key of ``DTYPE_SIZES``.
        shape: the dimensions; ``[]`` for a 0-dim tensor.
        chunks: the BLAKE3 digests of the tensor's raw bytes (C order, little-endian), cut every
            ``chunk_size`` bytes; an empty tensor has no chunk. Empty for a sharded tensor.
        kind: which array type comes back on load: ``torch`` tensors or ``numpy`` arrays.
        shards: for a tensor saved in blocks by several ranks (``ckpt.dcp``), its blocks, ordered by
            ``offsets``, that cover the tensor exactly, each with its own chunks; ``()`` for a tensor stored
            whole (written only when not empty, format 1.2).
        pack: for a small tensor packed with others into one shared chunk (format 3.0), ``(offset, length)``:
            its bytes are bytes ``[offset, offset + nbytes)`` of its one chunk (the *pack*), whose raw length
            is ``length``; ``offset`` is a multiple of the dtype's size. ``None`` (not written) for a tensor
            whose chunks hold its bytes alone.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    dtype: str
    shape: tuple[int, ...] = Field(max_length=MAX_DIMS)
    chunks: tuple[Digest, ...]
    kind: Literal["torch", "numpy"] = "torch"
    shards: tuple[TensorShard, ...] = ()
    pack: (
        tuple[
            Annotated[int, Field(strict=True, ge=0, le=MAX_ELEMENTS)],
            Annotated[int, Field(strict=True, gt=0, le=MAX_ELEMENTS)],
        ]
        | None
    ) = None

    @model_serializer(mode="wrap")
    def _without_empty_shards(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            if not self.shards:
                data.pop("shards", None)
            if self.pack is None:
                data.pop("pack", None)
        return data

    @model_validator(mode="after")
    def _sane_shape(self) -> TensorEntry:
        extent = 1
        for d in self.shape:
            if d < 0:
                raise ValueError(f"negative dimension in shape {list(self.shape)}")
            extent *= max(d, 1)
            if extent > MAX_ELEMENTS:
                raise ValueError(f"shape {_shape_text(self.shape)} describes more than 2**62 elements")
        if self.pack is not None:
            offset, length = self.pack
            if self.shards or len(self.chunks) != 1:
                raise ValueError("a packed tensor ('pack') is stored whole, in exactly one chunk")
            size = DTYPE_SIZES.get(self.dtype, 1)
            nbytes = self.numel * size
            if nbytes == 0:
                raise ValueError("an empty tensor has no chunk, so it is never packed")
            if offset % size or offset + nbytes > length:
                raise ValueError(
                    f"'pack' [{offset}, {length}]: {nbytes} bytes at offset {offset} do not lie inside the pack's "
                    f"{length} bytes at a multiple of the element size ({size})"
                )
        return self

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

    def pieces(self, chunk_size: int) -> list[tuple[Digest, int]]:
        """Every chunk of the tensor with its raw length in bytes, shard by shard for a sharded tensor.

        Example:
            >>> entry = TensorEntry(dtype="F32", shape=(3,), chunks=("a" * 64, "b" * 64))
            >>> len(entry.pieces(8)), sum(length for _, length in entry.pieces(8))
            (2, 12)
        """
        if self.pack is not None:
            return [(self.chunks[0], self.pack[1])]
        size = DTYPE_SIZES[self.dtype]
        blocks = [(self.chunks, self.nbytes)] if not self.shards else [(s.chunks, s.numel * size) for s in self.shards]
        return [(d, min(chunk_size, n - i * chunk_size)) for chunks, n in blocks for i, d in enumerate(chunks)]


class FileEntry(BaseModel):
    """One attached file (config.json, tokenizer files …), stored as chunks like a tensor's bytes.

    Attributes:
        size: length in bytes.
        chunks: BLAKE3 digests of its bytes cut every ``chunk_size`` bytes.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(ge=0, le=MAX_ELEMENTS)
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

    chunk_size: int = Field(gt=0, le=MAX_ELEMENTS)
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
        packs: dict[str, int] = {}
        for name, t in self.tensors.items():
            if t.dtype not in DTYPE_SIZES:
                raise ValueError(f"tensor {name!r}: unknown dtype {t.dtype!r}")
            if t.shards:
                _check_shards(name, t, cs)
            elif t.pack is not None:
                length = t.pack[1]
                if length > cs:
                    raise ValueError(f"tensor {name!r}: its pack of {length} bytes is longer than a chunk ({cs} bytes)")
                if packs.setdefault(t.chunks[0], length) != length:
                    raise ValueError(
                        f"tensor {name!r}: the pack {t.chunks[0][:12]} is given the lengths {packs[t.chunks[0]]} "
                        f"and {length} by two tensors"
                    )
            elif len(t.chunks) != -(-t.nbytes // cs):
                raise ValueError(f"tensor {name!r}: {len(t.chunks)} chunks for {t.nbytes} bytes in {cs}-byte chunks")
        if packs:
            _check_pack_lengths(self, packs)
        for path, f in self.files.items():
            problem = file_path_problem(path)
            if problem:
                raise ValueError(f"attached file path {path[:80]!r}: {problem}")
            if len(f.chunks) != -(-f.size // cs):
                raise ValueError(f"file {path!r}: {len(f.chunks)} chunks for {f.size} bytes in {cs}-byte chunks")
        problem = tree_problem(self.tree, self.tensors)
        if problem:
            raise ValueError(f"state tree: {problem}")
        return self

    def json_value(self) -> dict[str, Any]:
        """The table as JSON values: exactly ``model_dump(mode="json")``, built without a pydantic call per entry
        (a table of 30,000 tensors dumps several times faster). ``put_table`` writes its canonical JSON."""
        tensors: dict[str, Any] = {}
        for name, t in self.tensors.items():
            out: dict[str, Any] = {"dtype": t.dtype, "shape": list(t.shape), "chunks": list(t.chunks), "kind": t.kind}
            if t.shards:
                out["shards"] = [s.model_dump(mode="json") for s in t.shards]
            if t.pack is not None:
                out["pack"] = list(t.pack)
            tensors[name] = out
        data: dict[str, Any] = {
            "chunk_size": self.chunk_size,
            "tensors": tensors,
            "tree": self.tree,
            "files": {path: {"size": f.size, "chunks": list(f.chunks)} for path, f in self.files.items()},
        }
        if self.tied:
            data["tied"] = [list(group) for group in self.tied]
        return data

    def chunk_digests(self) -> set[str]:
        """Every chunk digest the table needs, tensors and files."""
        out: set[str] = set()
        for t in self.tensors.values():
            out.update(t.chunks)
            for shard in t.shards:
                out.update(shard.chunks)
        for f in self.files.values():
            out.update(f.chunks)
        return out

    @property
    def nbytes(self) -> int:
        """Total raw bytes of all tensors."""
        return sum(t.nbytes for t in self.tensors.values())


def _check_pack_lengths(table: TensorTable, packs: dict[str, int]) -> None:
    """No chunk is named as a pack of one length and as a plain chunk (or a file's) of another: a reader would be
    told two lengths for one object."""
    cs = table.chunk_size
    for name, t in table.tensors.items():
        if t.pack is None:
            for digest, length in t.pieces(cs):
                if packs.get(digest, length) != length:
                    raise ValueError(f"tensor {name!r}: its chunk {digest[:12]} is a pack of {packs[digest]} bytes")
    for path, f in table.files.items():
        for i, digest in enumerate(f.chunks):
            length = min(cs, f.size - i * cs)
            if packs.get(digest, length) != length:
                raise ValueError(f"file {path!r}: its chunk {digest[:12]} is a pack of {packs[digest]} bytes")


def _shape_text(shape: tuple[int, ...]) -> str:
    text = str(list(shape))
    return text if len(text) <= 80 else text[:79] + "…"


def file_path_problem(path: object) -> str | None:
    """Why ``path`` cannot be an attached file's path, or ``None`` when it can.

    An attached file path is relative and ``/``-separated, without empty, ``.`` or ``..`` components, without
    backslashes or control characters, at most 1024 bytes in UTF-8 with components of at most 255 bytes and
    at most 32 levels: so that restoring it always lands inside the target folder, on any file system.

    Example:
        >>> file_path_problem("tokenizer/vocab.json") is None
        True
        >>> file_path_problem("../secret")
        "it has a '..' component"
    """
    if not isinstance(path, str) or not path:
        return "it is empty" if isinstance(path, str) else f"it is a {type(path).__name__}, not a string"
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        return "it is not valid Unicode (a lone surrogate)"
    if "\\" in path:
        return "it holds a backslash"
    if _CONTROL.search(path):
        return "it holds a control character"
    if path.startswith("/"):
        return "it is absolute"
    if size > MAX_FILE_PATH_BYTES:
        return f"it is longer than {MAX_FILE_PATH_BYTES} bytes"
    parts = path.split("/")
    if len(parts) > MAX_FILE_DEPTH:
        return f"it is nested deeper than {MAX_FILE_DEPTH} folders"
    for part in parts:
        if part in ("", ".", ".."):
            return f"it has a {part or 'empty'!r} component" if part else "it has an empty component"
        if len(part.encode("utf-8")) > MAX_FILE_COMPONENT_BYTES:
            return f"the component {part[:20]!r}… is longer than {MAX_FILE_COMPONENT_BYTES} bytes"
    return None


def tree_problem(tree: Any, tensors: Any = None) -> str | None:
    """Why ``tree`` is not a valid typed-JSON state tree (docs/format.md), or ``None`` when it is.

    Checks every node without recursion: scalars, arrays, and one-key objects ``$dict`` (a list of
    ``[key, value]`` pairs, keys str or int), ``$tuple`` (a list), ``$float`` (``nan``, ``inf`` or ``-inf``)
    and ``$tensor`` (a str naming a tensor of ``tensors``, when given).
    """
    todo = [tree]
    while todo:
        node = todo.pop()
        if node is None or isinstance(node, (bool, int, float, str)):
            continue
        if isinstance(node, list):
            todo.extend(node)
            continue
        if not isinstance(node, dict) or len(node) != 1:
            return f"invalid node {_node_text(node)}"
        ((tag, body),) = node.items()
        if tag == "$dict" and isinstance(body, list):
            for pair in body:
                if not isinstance(pair, list) or len(pair) != 2:
                    return f"a $dict entry is not a [key, value] pair: {_node_text(pair)}"
                key, value = pair
                if isinstance(key, bool) or not isinstance(key, (str, int)):
                    return f"a $dict key is not a string or an integer: {_node_text(key)}"
                todo.append(value)
        elif tag == "$tuple" and isinstance(body, list):
            todo.extend(body)
        elif tag == "$tensor" and isinstance(body, str):
            if tensors is not None and body not in tensors:
                return f"it names the tensor {body[:80]!r}, which the table does not hold"
        elif not (tag == "$float" and body in ("nan", "inf", "-inf")):
            return f"invalid node {_node_text(node)}"
    return None


def _node_text(node: Any) -> str:
    return reprlib.repr(node)


#: A sharded tensor's blocks may cut it into at most this many grid cells (a check of exact cover, below).
_MAX_SHARD_CELLS = 1 << 22


def _check_shards(name: str, t: TensorEntry, cs: int) -> None:
    """A sharded entry's blocks lie inside the tensor, are sorted, do not overlap and cover it exactly.

    A reader fills a tensor from its blocks: an overlap would pick one of two values and a gap would leave
    memory unwritten, so both are refused. Cover is checked on the grid that all block edges cut the tensor
    into: every cell must belong to exactly one block.
    """
    where = f"tensor {name!r}"
    if t.chunks:
        raise ValueError(f"{where}: a sharded tensor lists its chunks in its shards, not in 'chunks'")
    if len(t.shards) < 2:
        raise ValueError(f"{where}: a tensor in one block is stored whole (in 'chunks'), not as one shard")
    ndim = len(t.shape)
    size = DTYPE_SIZES[t.dtype]
    previous: tuple[int, ...] | None = None
    total = 0
    for shard in t.shards:
        if len(shard.offsets) != ndim or len(shard.sizes) != ndim:
            raise ValueError(f"{where}: shard at {list(shard.offsets)} does not have {ndim} dimensions")
        for o, s, d in zip(shard.offsets, shard.sizes, t.shape, strict=True):
            if o < 0 or s < 1 or o + s > d:
                raise ValueError(
                    f"{where}: shard at {list(shard.offsets)} of sizes {list(shard.sizes)} is empty or outside the "
                    f"shape {list(t.shape)}"
                )
        if previous is not None and shard.offsets <= previous:
            raise ValueError(f"{where}: shards must be sorted by offsets, without repeats")
        previous = shard.offsets
        nbytes = shard.numel * size
        if len(shard.chunks) != -(-nbytes // cs):
            raise ValueError(
                f"{where}: shard at {list(shard.offsets)} has {len(shard.chunks)} chunks for {nbytes} bytes in "
                f"{cs}-byte chunks"
            )
        total += shard.numel
    if total != t.numel:
        raise ValueError(f"{where}: its shards hold {total} elements, the tensor {t.numel}")
    cuts = [
        sorted({0, d, *(s.offsets[k] for s in t.shards), *(s.offsets[k] + s.sizes[k] for s in t.shards)})
        for k, d in enumerate(t.shape)
    ]
    cells = 1
    for c in cuts:
        cells *= len(c) - 1
    if cells > _MAX_SHARD_CELLS:
        raise ValueError(f"{where}: its shards cut it into {cells} blocks, more than ckpt checks")
    seen = bytearray(cells)
    index = [{v: i for i, v in enumerate(c)} for c in cuts]
    for shard in t.shards:
        spans = enumerate(zip(shard.offsets, shard.sizes, strict=True))
        ranges = [range(index[k][o], index[k][o + s]) for k, (o, s) in spans]
        for cell in product(*ranges):
            flat = 0
            for k, i in enumerate(cell):
                flat = flat * (len(cuts[k]) - 1) + i
            if seen[flat]:
                raise ValueError(f"{where}: shards overlap at {list(shard.offsets)}")
            seen[flat] = 1
    # with every element counted once and no overlap, the blocks cover the tensor exactly
