"""Tensor-level differences between two snapshots, without torch.

``diff(store, a, b)`` compares two snapshots tensor by tensor from their tensor tables (so it reads no tensor
bytes to tell what is added, removed, changed or unchanged: equal chunk digests mean equal bytes), then, for
every changed floating-point tensor whose shape is unchanged, reads both versions and computes the relative
change ``‖B − A‖ / ‖A‖`` with numpy, block by block (bf16 is decoded as ``uint16 << 16`` viewed as float32; fp8
has no numpy type, so its norm is skipped and the result says so). It also reports how many bytes B adds to the
store over A: the bytes of B's chunks that A does not reference, raw and as stored (compressed, deltas).

Example:
    >>> import numpy as np, ckpt
    >>> from ckpt.diff import diff
    >>> store = ckpt.init("memory://doc-diff", chunk_size=4096)
    >>> _ = store.save({"layers.0.w": np.ones(4, np.float32), "layers.1.w": np.ones(4, np.float32)})
    >>> _ = store.save({"layers.0.w": np.ones(4, np.float32), "layers.1.w": np.full(4, 2, np.float32)})
    >>> d = diff(store, "main~1", "main")
    >>> d.changed, d.unchanged, d.tensors[1].relative_change
    (1, 1, 1.0)
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from ckpt import settings
from ckpt.errors import CkptError, IntegrityError
from ckpt.model import DTYPE_SIZES, RESERVED_FILE_PREFIX, TensorEntry, TensorTable
from ckpt.state import tensor_paths

if TYPE_CHECKING:
    from ckpt.model import Snapshot
    from ckpt.store import LazyTensors, Store

__all__ = [
    "FLOAT_DTYPES",
    "DiffStatus",
    "FileDiff",
    "LayerDiff",
    "SnapshotDiff",
    "TensorDiff",
    "chunk_sizes",
    "diff",
    "group_of",
    "layer_of",
    "tensor_order",
]

#: Whether a tensor is added, removed, changed or unchanged from A to B.
DiffStatus = Literal["added", "removed", "changed", "unchanged"]

#: The dtypes whose relative change is computed (fp8 is floating but has no numpy type: it is skipped).
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64", "C64", "C128"})

_FP8 = frozenset({"F8_E4M3", "F8_E4M3FNUZ", "F8_E5M2", "F8_E5M2FNUZ", "F8_E8M0"})
_NUMPY = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "C64": np.complex64, "C128": np.complex128}
_BLOCK = 1 << 20  # elements decoded at a time
_TOKENS = re.compile(r"([./])")


class TensorDiff(BaseModel):
    """How one tensor differs between A and B.

    Attributes:
        name: the tensor's path in the state tree.
        status: ``added`` (only in B), ``removed`` (only in A), ``changed`` or ``unchanged``.
        layer: the layer it belongs to (see ``layer_of``).
        dtype_a: dtype in A (``None`` when added).
        dtype_b: dtype in B (``None`` when removed).
        shape_a: shape in A (``None`` when added).
        shape_b: shape in B (``None`` when removed).
        bytes_a: raw bytes in A (0 when added).
        bytes_b: raw bytes in B (0 when removed).
        relative_change: ``‖B − A‖ / ‖A‖`` (L2 norms over all elements) for a changed floating tensor of
            unchanged shape; ``0.0`` when unchanged; otherwise ``None`` and ``note`` says why.
        note: why ``relative_change`` is missing for a changed tensor (fp8, integer dtype, new shape, pruned …).
    """

    model_config = ConfigDict(frozen=True)

    name: str
    status: DiffStatus
    layer: str
    dtype_a: str | None = None
    dtype_b: str | None = None
    shape_a: tuple[int, ...] | None = None
    shape_b: tuple[int, ...] | None = None
    bytes_a: int = 0
    bytes_b: int = 0
    relative_change: float | None = None
    note: str | None = None

    @property
    def dtype_changed(self) -> bool:
        """Present in both with different dtypes."""
        return self.status == "changed" and self.dtype_a != self.dtype_b

    @property
    def shape_changed(self) -> bool:
        """Present in both with different shapes."""
        return self.status == "changed" and self.shape_a != self.shape_b


class LayerDiff(BaseModel):
    """The tensors of one layer, counted by status.

    Attributes:
        layer: the layer prefix, e.g. ``model/layers.3``.
        added: tensors only in B.
        removed: tensors only in A.
        changed: tensors in both whose dtype, shape or bytes differ.
        unchanged: tensors identical in both.
        max_relative_change: the largest ``relative_change`` of its changed tensors, if any was computed.
    """

    model_config = ConfigDict(frozen=True)

    layer: str
    added: int = 0
    removed: int = 0
    changed: int = 0
    unchanged: int = 0
    max_relative_change: float | None = None


class FileDiff(BaseModel):
    """An attached file (config.json, tokenizer files …) that differs between A and B.

    Attributes:
        path: the file's relative path.
        status: ``added``, ``removed`` or ``changed`` (unchanged files are not listed).
        size_a: its size in A (``None`` when added).
        size_b: its size in B (``None`` when removed).
    """

    model_config = ConfigDict(frozen=True)

    path: str
    status: DiffStatus
    size_a: int | None = None
    size_b: int | None = None


class SnapshotDiff(BaseModel):
    """The tensor-level difference from snapshot A to snapshot B.

    Attributes:
        a: the id of A.
        b: the id of B.
        tensors: every tensor of A or B, in B's order, then the removed ones in A's order.
        layers: the same tensors counted by layer, in order of first appearance.
        files: the attached files that differ.
        state_changed: whether the state tree differs: its structure, or a non-tensor value (step, lr …).
        added: number of tensors only in B.
        removed: number of tensors only in A.
        changed: number of tensors that differ.
        unchanged: number of identical tensors.
        added_chunks: distinct chunks of B (tensors and files) that A does not reference.
        added_bytes: raw bytes of those chunks: what B adds to a store that already holds A.
        added_stored_bytes: the bytes those chunks' objects take in the store, headers included (compressed
            chunks and deltas at their stored size): what B cost on disk over A. ``None`` when B was pruned or
            one of those chunks is not in the store (``verify`` says more).
    """

    model_config = ConfigDict(frozen=True)

    a: str
    b: str
    tensors: tuple[TensorDiff, ...]
    layers: tuple[LayerDiff, ...]
    files: tuple[FileDiff, ...]
    state_changed: bool
    added: int
    removed: int
    changed: int
    unchanged: int
    added_chunks: int
    added_bytes: int
    added_stored_bytes: int | None = None


def _split(name: str) -> list[str]:
    return _TOKENS.split(name)  # tokens at even indices, separators at odd ones


def layer_of(name: str) -> str:
    """The layer a tensor belongs to: its path up to the first numeric component, else without its last one.

    Args:
        name: a tensor path such as ``model/layers.3.self_attn.q_proj.weight``.

    Returns:
        The layer prefix.

    Example:
        >>> layer_of("model/layers.3.self_attn.q_proj.weight"), layer_of("model/embed_tokens.weight")
        ('model/layers.3', 'model/embed_tokens')
        >>> layer_of("optimizer/state/0/exp_avg"), layer_of("w")
        ('optimizer/state/0', 'w')
    """
    parts = _split(name)
    tokens = parts[0::2]
    for i, token in enumerate(tokens):
        if token.isdigit() and i > 0:
            return "".join(parts[: 2 * i + 1])
    if len(tokens) == 1:
        return name
    return "".join(parts[:-2])


def group_of(name: str) -> str:
    """The top-level group of a tensor: its first ``/`` component, or its first ``.`` component.

    Example:
        >>> group_of("model/layers.0.weight"), group_of("lm_head.weight"), group_of("w")
        ('model', 'lm_head', 'w')
    """
    if "/" in name:
        return name.split("/", 1)[0]
    return name.split(".", 1)[0]


def chunk_sizes(table: TensorTable) -> dict[str, int]:
    """Every distinct chunk a tensor table references (tensors and files), with its raw length.

    Example:
        >>> sizes = chunk_sizes(store.table("main"))  # doctest: +SKIP
        >>> sum(sizes.values())  # raw bytes of the snapshot's distinct chunks  # doctest: +SKIP
    """
    cs = table.chunk_size
    out: dict[str, int] = {}
    for t in table.tensors.values():
        for d, length in t.pieces(cs):
            out.setdefault(d, length)
    for f in table.files.values():
        for i, d in enumerate(f.chunks):
            out.setdefault(d, min(cs, f.size - i * cs))
    return out


def _decode(raw: bytes | memoryview, dtype: str) -> np.ndarray[Any, Any]:
    if dtype == "BF16":
        half = np.frombuffer(raw, dtype="<u2")
        return (half.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    arr = np.frombuffer(raw, dtype=np.dtype(_NUMPY[dtype]).newbyteorder("<"))
    return arr.astype(np.complex128 if arr.dtype.kind == "c" else np.float64)


class _Elements:
    """Elements of a tensor, decoded block by block from its chunks (whose edges need not fall on elements)."""

    def __init__(self, chunks: Iterable[bytes], dtype: str) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._dtype = dtype
        self._size = DTYPE_SIZES[dtype]
        self._cur = memoryview(b"")
        self._pos = 0

    def take(self, count: int) -> np.ndarray[Any, Any]:
        need = count * self._size
        parts: list[memoryview] = []
        while need:
            if self._pos >= len(self._cur):
                try:
                    self._cur = memoryview(next(self._chunks))
                except StopIteration:
                    raise IntegrityError("a tensor's chunks hold fewer bytes than its shape needs") from None
                self._pos = 0
            piece = self._cur[self._pos : self._pos + need]
            parts.append(piece)
            self._pos += len(piece)
            need -= len(piece)
        raw: bytes | memoryview = parts[0] if len(parts) == 1 else b"".join(parts)
        return _decode(raw, self._dtype)


def _why_no_norm(ea: TensorEntry, eb: TensorEntry, sa: Snapshot, sb: Snapshot) -> str | None:
    for label, e in (("A", ea), ("B", eb)):
        if e.dtype in _FP8:
            return f"fp8 ({e.dtype}) in {label}: numpy has no fp8 type, relative change not computed"
        if e.dtype not in FLOAT_DTYPES:
            return f"{e.dtype} in {label} is not a floating-point dtype"
    if ea.shape != eb.shape:
        return "shape changed"
    if sa.pruned:
        return "A was pruned: its tensors were released"
    if sb.pruned:
        return "B was pruned: its tensors were released"
    return None


def _lazy_pair(
    store: Store, sa: Snapshot, ta: TensorTable, sb: Snapshot, tb: TensorTable
) -> tuple[LazyTensors, LazyTensors]:
    """Lazy readers of both snapshots over the tables already read (a table of 30,000 tensors is not parsed
    twice); neither snapshot is pruned (the callers left those out)."""
    from ckpt.store import LazyTensors, store_parts

    parts = store_parts(store)
    return LazyTensors(parts, sa, ta, verify=True, framework=None), LazyTensors(
        parts, sb, tb, verify=True, framework=None
    )


def _relative_change(la: LazyTensors, lb: LazyTensors, name: str, ea: TensorEntry, eb: TensorEntry) -> float:
    """``‖B − A‖ / ‖A‖``, accumulated in float64 over blocks of elements; ``inf`` when ‖A‖ = 0 < ‖B − A‖.

    Chunks are read through the two snapshots' already-read tables, so the work is linear in tensors.
    """
    a = _Elements(la.byte_pieces(name), ea.dtype)
    b = _Elements(lb.byte_pieces(name), eb.dtype)
    num = den = 0.0
    left = ea.numel
    while left:
        n = min(_BLOCK, left)
        xa, xb = a.take(n), b.take(n)
        d = xb - xa
        num += float(np.vdot(d, d).real)
        den += float(np.vdot(xa, xa).real)
        left -= n
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return math.sqrt(num) / math.sqrt(den)


def _added_stored(store: Store, sa: Snapshot, sb: Snapshot, count: int) -> int | None:
    """Stored bytes of B's chunks that A does not reference (``Store.footprint(b, over=a)``), or ``None`` when
    they cannot all be counted: B was pruned, or a chunk is missing."""
    if count == 0:
        return 0
    if sb.pruned:
        return None
    try:
        foot = store.footprint(sb.id, over=sa.id)
    except CkptError:
        return None
    return None if foot.missing else foot.stored_bytes


def tensor_order(table: TensorTable) -> list[str]:
    """The tensor paths of a table in the order of the saved state tree (a table's own mapping is sorted)."""
    order = [p for p in tensor_paths(table.tree) if p in table.tensors]
    return order if len(order) == len(table.tensors) else list(table.tensors)


def diff(store: Store, a: str, b: str, *, norms: bool = True) -> SnapshotDiff:
    """Compare two snapshots tensor by tensor.

    Args:
        store: the store holding both snapshots.
        a: the revision to compare from.
        b: the revision to compare to.
        norms: compute ``relative_change`` for changed floating tensors (reads both versions of each);
            ``False`` reads only the two tensor tables.

    Returns:
        The difference: per tensor, per layer, attached files, and the bytes B adds over A.

    Raises:
        RevisionError: a revision does not resolve.
        CorruptChunkError: a chunk read for a norm does not match its digest.
        MissingObjectError: a chunk read for a norm is missing from the store.

    Example:
        >>> d = diff(store, "main~1", "main")  # doctest: +SKIP
        >>> [(t.name, t.relative_change) for t in d.tensors if t.status == "changed"]  # doctest: +SKIP
    """
    sa, sb = store.resolve(a), store.resolve(b)
    ta, tb = store.table(sa.id), store.table(sb.id)

    rows: list[TensorDiff] = []
    todo: list[tuple[int, str, TensorEntry, TensorEntry]] = []
    relaid: list[tuple[int, str, TensorEntry, TensorEntry]] = []  # same tensor, stored in other blocks?
    for name in tensor_order(tb):
        eb = tb.tensors[name]
        ea = ta.tensors.get(name)
        base: dict[str, Any] = {"name": name, "layer": layer_of(name), "dtype_b": eb.dtype, "shape_b": eb.shape}
        base["bytes_b"] = eb.nbytes
        if ea is None:
            rows.append(TensorDiff(status="added", **base))
            continue
        base.update(dtype_a=ea.dtype, shape_a=ea.shape, bytes_a=ea.nbytes)
        if (ea.dtype, ea.shape, ea.chunks, ea.shards, ea.pack) == (eb.dtype, eb.shape, eb.chunks, eb.shards, eb.pack):
            rows.append(TensorDiff(status="unchanged", relative_change=0.0, **base))
            continue
        note = _why_no_norm(ea, eb, sa, sb) if norms else "not computed (norms=False)"
        # the chunks of blocks, or a pack shared with other tensors, say nothing of one tensor: compare its bytes
        by_bytes = ea.shards or eb.shards or ea.pack or eb.pack
        if by_bytes and (ea.dtype, ea.shape) == (eb.dtype, eb.shape) and not (sa.pruned or sb.pruned):
            relaid.append((len(rows), name, ea, eb))
        elif note is None:
            todo.append((len(rows), name, ea, eb))
        rows.append(TensorDiff(status="changed", note=note, **base))
    for name in tensor_order(ta):
        if name not in tb.tensors:
            ea = ta.tensors[name]
            rows.append(
                TensorDiff(
                    name=name,
                    status="removed",
                    layer=layer_of(name),
                    dtype_a=ea.dtype,
                    shape_a=ea.shape,
                    bytes_a=ea.nbytes,
                )
            )

    lazy = _lazy_pair(store, sa, ta, sb, tb) if relaid or todo else None
    if relaid:
        assert lazy is not None
        la, lb = lazy  # one pair for both passes: the packs read stay cached
        for i, name, ea, eb in relaid:
            if b"".join(la.byte_pieces(name)) == b"".join(lb.byte_pieces(name)):
                rows[i] = rows[i].model_copy(update={"status": "unchanged", "relative_change": 0.0, "note": None})
            elif rows[i].note is None:
                todo.append((i, name, ea, eb))
    if todo:
        la, lb = lazy if lazy is not None else (store.tensors(sa.id), store.tensors(sb.id))
        pool = ThreadPoolExecutor(settings.threads(), thread_name_prefix="ckpt-diff")
        try:
            futures = [(i, pool.submit(_relative_change, la, lb, n, ea, eb)) for i, n, ea, eb in todo]
            for i, fut in futures:
                value = fut.result()
                if math.isfinite(value):
                    rows[i] = rows[i].model_copy(update={"relative_change": value})
                else:
                    why = "A is all zeros" if math.isinf(value) else "the tensors hold nan or inf"
                    rows[i] = rows[i].model_copy(update={"note": f"relative change undefined: {why}"})
        finally:  # on Ctrl-C the norms still queued are dropped, not computed first
            pool.shutdown(wait=True, cancel_futures=True)

    layers: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = layers.setdefault(row.layer, {"layer": row.layer})
        entry[row.status] = entry.get(row.status, 0) + 1
        if row.status == "changed" and row.relative_change is not None:
            entry["max_relative_change"] = max(entry.get("max_relative_change", 0.0), row.relative_change)

    files: list[FileDiff] = []
    for path, fb in tb.files.items():
        if path.startswith(RESERVED_FILE_PREFIX):
            continue  # ckpt's own bookkeeping, not the user's files
        fa = ta.files.get(path)
        if fa is None:
            files.append(FileDiff(path=path, status="added", size_b=fb.size))
        elif fa.chunks != fb.chunks or fa.size != fb.size:
            files.append(FileDiff(path=path, status="changed", size_a=fa.size, size_b=fb.size))
    files.extend(
        FileDiff(path=path, status="removed", size_a=fa.size)
        for path, fa in ta.files.items()
        if path not in tb.files and not path.startswith(RESERVED_FILE_PREFIX)
    )

    in_a = ta.chunk_digests()
    new = {d: n for d, n in chunk_sizes(tb).items() if d not in in_a}
    counts = {s: sum(1 for r in rows if r.status == s) for s in ("added", "removed", "changed", "unchanged")}
    return SnapshotDiff(
        a=sa.id,
        b=sb.id,
        tensors=tuple(rows),
        layers=tuple(LayerDiff(**v) for v in layers.values()),
        files=tuple(files),
        state_changed=ta.tree != tb.tree,
        added_chunks=len(new),
        added_bytes=sum(new.values()),
        added_stored_bytes=_added_stored(store, sa, sb, len(new)),
        **counts,
    )
