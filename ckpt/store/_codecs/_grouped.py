"""The grouped body: a chunk cut into blocks, each block's elements split into byte planes, each plane stored
as it is or as one zstd frame (docs/format.md, "Grouped body").

Blocks are independent, so a chunk encodes and decodes on every core (zstd and numpy release the GIL), and the
memory a block needs beyond the output is its planes: one block (1 MiB by default) per task in flight.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
import zstandard

from ckpt.store._codecs._framing import (
    BODY_HEADER,
    DEFAULT_BLOCK_LOG,
    ELEMENT_SIZES,
    MAX_BLOCK_LOG,
    MIN_BLOCK_LOG,
    OP_ADD,
    OP_XOR,
    TRANSFORM_BYTES,
    TRANSFORM_ROTATE,
    TRANSFORMS,
    Layout,
    corrupt,
    too_new,
)
from ckpt.store._codecs._pool import map_bounded
from ckpt.store._codecs._work import BLOCKS, IN_FLIGHT, incompressible, scratch

__all__ = ["BodyPlan", "Mode", "body_layout", "decode_body", "encode_body", "plan_body"]

_U8 = np.uint8
_HEAD = struct.Struct("<BBBB")  # transform, element size, block log, reserved
Bytes = npt.NDArray[np.uint8]
Buffer = bytes | bytearray | memoryview
_T = TypeVar("_T")

# zstd's fast strategy with a 7-byte minimum match and a 64-entry hash table: on a byte plane of weights (a
# skewed alphabet, few real repeats) it keeps nearly every byte a literal for the Huffman coder, which codes
# the exponent plane within 0.2% of zstd -19 at more than 1 GB/s, where the default levels spend both time and
# ratio on short matches (benchmarks/storage.py measures it). Long runs (a delta's zero planes) still match.
_FAST = zstandard.ZstdCompressionParameters(
    window_log=17,
    hash_log=6,
    chain_log=6,
    search_log=1,
    min_match=7,
    target_length=0,
    strategy=zstandard.STRATEGY_FAST,
    write_content_size=True,
    write_checksum=False,
    write_dict_id=False,
)
# A frame may not need a window larger than this to be decoded (zstd's own default limit, 128 MiB). zstd
# allocates no more than the frame's declared content size for it, which the reader has checked first.
_MAX_WINDOW = 1 << 27


def _compressor(level: int | None) -> zstandard.ZstdCompressor:
    if level is None:
        return zstandard.ZstdCompressor(compression_params=_FAST)
    return zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False, write_dict_id=False)


def _map(fn: Callable[[int], _T], n: int, executor: Executor | None) -> Iterator[_T]:
    if executor is None or n < 2:
        return map(fn, range(n))
    return executor.map(fn, range(n))


def _u8(data: Buffer) -> Bytes:
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return np.frombuffer(view, dtype=_U8)


# -- planes ------------------------------------------------------------------------------------------------


_WIDE: dict[int, np.dtype[Any]] = {1: np.dtype(_U8), 2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}
_ADD_SIZES = (1, 2, 4, 8)


def _split(block: Bytes, m: int, layout: Layout) -> Sequence[Bytes]:
    """``m`` whole elements → ``k`` planes of ``m`` bytes (plane ``i``: byte ``i`` of each, transformed).

    Each plane is one shift of the elements as wide integers, truncated to a byte on the way out (numpy's
    fastest path; a transposing copy is 3-5× slower). The planes are this thread's scratch (``_work.scratch``):
    valid until its next split.
    """
    k = layout.element_size
    if k == 1:
        return [block]
    planes = scratch("planes", k * m).reshape(k, m)
    if k == 2 and layout.transform == TRANSFORM_ROTATE:  # bf16: rotate the 16-bit words, then cut (2.5× faster)
        half = block.view(_WIDE[2])
        rotated = np.left_shift(half, 1, out=scratch("words", m, _WIDE[2]))
        carry = np.right_shift(half, 15, out=scratch("carry", m, _WIDE[2]))
        rotated |= carry
        np.copyto(planes[0], rotated, casting="unsafe")
        np.right_shift(rotated, 8, out=carry)
        np.copyto(planes[1], carry, casting="unsafe")
        return list(planes)
    if k == 16:  # complex128: no integer that wide
        planes[:] = block.reshape(m, k).T
        return list(planes)
    words = block.view(_WIDE[k])
    for i in range(k):
        np.right_shift(words, 8 * i, out=planes[i], casting="unsafe")
    if layout.transform == TRANSFORM_ROTATE:
        # the top two bytes hold s eeeeeee | e mmmmmmm; after a one-bit left rotation: eeeeeeee | mmmmmmm s
        hi, lo = planes[k - 1], planes[k - 2]
        sign = np.right_shift(hi, 7, out=scratch("sign", m))
        np.right_shift(words, 8 * k - 9, out=hi, casting="unsafe")  # the 8 exponent bits
        lo <<= 1
        lo |= sign
    return list(planes)


Mode = Literal["set", "xor", "add"]


def _merge(planes: Sequence[Buffer], out: Bytes, m: int, layout: Layout, mode: Mode) -> None:
    """Inverse of ``_split``: the ``m`` elements the planes hold go into ``out``: written (``set``), XORed
    (``xor``), or, read as zigzag-coded differences of words, added modulo 2**(8k) (``add``, plain planes)."""
    k = layout.element_size
    views: list[npt.NDArray[Any]] = [_u8(p) for p in planes]
    if k == 1 and mode != "add":
        if mode == "xor":
            np.bitwise_xor(out, views[0], out=out)
        else:
            out[:] = views[0]
        return
    if layout.transform == TRANSFORM_ROTATE and k == 2:  # bf16: the word's one-bit right rotation, on words
        words2 = out.view(_WIDE[2]) if mode == "set" else scratch("words", m, _WIDE[2])
        np.copyto(words2, views[1], casting="unsafe")
        words2 <<= 8
        words2 |= views[0]
        low_bit = np.left_shift(words2, 15, out=scratch("carry", m, _WIDE[2]))
        words2 >>= 1
        words2 |= low_bit
        if mode == "xor":
            np.bitwise_xor(out, words2.view(_U8), out=out)
        return
    if layout.transform == TRANSFORM_ROTATE:
        exp, low = views[k - 1], views[k - 2]
        hi = np.right_shift(exp, 1, out=scratch("hi", m))
        t = np.left_shift(low, 7, out=scratch("t", m))
        hi |= t
        lo = np.left_shift(exp, 7, out=scratch("lo", m))
        np.right_shift(low, 1, out=t)
        lo |= t
        views[k - 1], views[k - 2] = hi, lo
    if k == 16:
        grid = out.reshape(m, k)
        for i, plane in enumerate(views):
            if mode == "xor":
                grid[:, i] ^= plane
            else:
                grid[:, i] = plane
        return
    wide = _WIDE[k]
    words = out.view(wide) if mode == "set" else scratch("words", m, wide)
    np.copyto(words, views[k - 1], casting="unsafe")
    for i in range(k - 2, -1, -1):
        words <<= 8
        words |= views[i]
    if mode == "xor":
        np.bitwise_xor(out, words.view(_U8), out=out)
    elif mode == "add":
        # zigzag: d = (z >> 1) XOR −(z AND 1), then out += d, all modulo 2**(8k)
        sign = np.bitwise_and(words, 1, out=scratch("carry", m, wide))
        np.negative(sign, out=sign)
        words >>= 1
        words ^= sign
        target = out.view(wide)
        target += words


def _residual(piece: Bytes, ref: Bytes, k: int, op: int) -> Bytes:
    """The delta residual of one block: ``piece XOR ref``, or the zigzag-coded difference of k-byte words
    (this thread's scratch: valid until its next residual)."""
    if op == OP_XOR:
        out: Bytes = np.bitwise_xor(piece, ref, out=scratch("residual", piece.size))
        return out
    wide = _WIDE[k]
    m = piece.size // k
    d = np.subtract(piece.view(wide), ref.view(wide), out=scratch("residual", m, wide))
    top = np.right_shift(d, 8 * k - 1, out=scratch("carry", m, wide))
    np.negative(top, out=top)
    d <<= 1
    d ^= top
    return np.frombuffer(d.data, dtype=_U8)


# -- encode ------------------------------------------------------------------------------------------------


def encode_body(
    raw: Buffer,
    layout: Layout,
    *,
    reference: Buffer | None = None,
    op: int = OP_XOR,
    level: int | None = None,
    block_log: int = DEFAULT_BLOCK_LOG,
    executor: Executor | None = None,
    hasher: Any = None,
) -> list[Buffer]:
    """Encode ``raw`` (or its residual against ``reference``, for a delta) as a grouped body.

    Args:
        raw: the chunk's raw bytes.
        layout: how elements are cut into planes (``OP_ADD`` needs plain planes of 1, 2, 4 or 8 bytes).
        reference: the reference chunk's raw bytes (same length), or ``None``.
        op: the delta operation (``OP_XOR`` or ``OP_ADD``), with a reference.
        level: a zstd level, or ``None`` for ckpt's tuned fast parameters.
        block_log: log2 of the block size in raw bytes (``MIN_BLOCK_LOG``–``MAX_BLOCK_LOG``).
        executor: runs blocks in parallel when given.
        hasher: a keyframe only (no ``reference``): each block is first copied into private memory, cut into
            planes from that copy, and the copy fed to ``hasher.update`` in order (then the tail), so that the
            bytes hashed are exactly the bytes encoded even while the caller's buffer changes, and ``raw`` is
            read from memory once (the hash reads the copy while it is in cache).

    Returns:
        The parts of the body, in order (their concatenation is the body).
    """
    if not MIN_BLOCK_LOG <= block_log <= MAX_BLOCK_LOG:
        raise ValueError(f"block_log must be in [{MIN_BLOCK_LOG}, {MAX_BLOCK_LOG}]")
    data = _u8(raw)
    ref = _u8(reference) if reference is not None else None
    n = data.size
    if ref is not None and ref.size != n:
        raise ValueError(f"the reference holds {ref.size} bytes, the chunk {n}")
    k = layout.element_size
    if ref is not None and op == OP_ADD and (layout.transform != TRANSFORM_BYTES or k not in _ADD_SIZES):
        raise ValueError("an OP_ADD delta needs plain planes of 1, 2, 4 or 8 bytes")
    if hasher is not None and ref is not None:
        raise ValueError("hasher is for keyframes: a delta's bytes are hashed by its caller")
    block = 1 << block_log
    nblocks = -(-n // block)

    def task(j: int) -> tuple[list[Buffer], Bytes | None]:
        start = j * block
        m = min(block, n - start) // k
        piece = data[start : start + m * k]
        copy = None
        if hasher is not None:
            copy = BLOCKS.take(piece.size)
            np.copyto(copy, piece)
            piece = copy
        elif ref is not None:
            piece = _residual(piece, ref[start : start + m * k], k, op)
        compressor = _compressor(level)
        out: list[Buffer] = []
        for plane in _split(piece, m, layout):  # scratch: what is kept is compressed or copied
            if ref is None and incompressible(plane, compressor):  # a residual's planes are worth coding
                out.append(plane.tobytes())
                continue
            packed = compressor.compress(plane.data) if m else b""
            out.append(packed if len(packed) < m else plane.tobytes())
        return out, copy

    parts: list[Buffer] = []
    lengths: list[int] = []
    if hasher is not None and executor is not None and nblocks > 1:
        # bounded: each block in flight holds a private copy until it is hashed here, in order
        results = map_bounded(task, range(nblocks), executor=executor, max_in_flight=IN_FLIGHT)
    else:
        results = _map(task, nblocks, executor)
    for planes, copy in results:
        for plane in planes:
            lengths.append(memoryview(plane).nbytes)
            parts.append(plane)
        if copy is not None:
            hasher.update(copy)
            BLOCKS.give(copy)
    tail_start = n - n % k
    if hasher is not None:
        tail = data[tail_start:].copy()
        hasher.update(tail)
    else:
        tail = data[tail_start:] if ref is None else np.bitwise_xor(data[tail_start:], ref[tail_start:])
    head = _HEAD.pack(layout.transform, k, block_log, 0)
    return [head, np.asarray(lengths, dtype="<u4").tobytes(), *parts, tail.data]


# -- decode ------------------------------------------------------------------------------------------------


def body_layout(body: Buffer, digest: str = "") -> tuple[Layout, int]:
    """Parse a grouped body's 4-byte header: its layout and block log.

    Raises:
        CorruptChunkError: the body is shorter than its header, or declares an impossible block size.
        FormatVersionError: an unknown transform, element size or reserved value (a newer writer's).
    """
    view = memoryview(body)
    if view.nbytes < BODY_HEADER:
        raise corrupt(f"its grouped body holds {view.nbytes} bytes, less than its {BODY_HEADER}-byte header", digest)
    transform, k, block_log, reserved = _HEAD.unpack(view[:BODY_HEADER])
    if transform not in TRANSFORMS or reserved != 0:
        raise too_new(f"grouped transform {transform} (reserved byte {reserved})", digest)
    if k not in ELEMENT_SIZES or (transform == TRANSFORM_ROTATE and k not in (2, 4)):
        raise corrupt(f"its grouped body declares element size {k} for transform {transform}", digest)
    if not MIN_BLOCK_LOG <= block_log <= MAX_BLOCK_LOG:
        raise corrupt(f"its grouped body declares blocks of 2**{block_log} bytes", digest)
    return Layout(k, transform), block_log


def _frame_size(frame: memoryview, has_checksum: bool, where: str, digest: str) -> int:
    """The bytes one zstd frame takes (RFC 8878 §3.1.1: its header, its blocks to the last, its checksum),
    read from the block headers alone, so that bytes after the frame are found before anything is decoded."""
    pos = zstandard.frame_header_size(frame)
    end = frame.nbytes
    while True:
        if pos + 3 > end:
            raise corrupt(f"{where} ends inside a zstd block header", digest)
        head = frame[pos] | frame[pos + 1] << 8 | frame[pos + 2] << 16
        last, kind, size = head & 1, (head >> 1) & 3, head >> 3
        if kind == 3:
            raise corrupt(f"{where} has a reserved zstd block type", digest)
        pos += 3 + (1 if kind == 1 else size)
        if pos > end:
            raise corrupt(f"{where} ends inside a zstd block", digest)
        if last:
            return pos + (4 if has_checksum else 0)


def _decompress(frame: memoryview, m: int, digest: str, where: str) -> bytes:
    """One zstd frame that must decode to exactly ``m`` bytes and fill its plane: allocates exactly ``m``.

    The frame must declare its content size, equal to ``m``, before anything is decoded; zstd then decodes into
    a buffer of ``m`` bytes and fails rather than write past it, so a frame that would expand further (a
    decompression bomb) costs nothing. Bytes after the frame (a second frame, garbage) are damage.
    """
    try:
        params = zstandard.get_frame_parameters(frame)
        if params.content_size != m:
            unknown = params.content_size in (-1, zstandard.CONTENTSIZE_UNKNOWN)
            size = "no content size" if unknown else f"{params.content_size} bytes"
            raise corrupt(f"{where} declares {size}, its plane holds {m}", digest)
        if params.dict_id:
            raise corrupt(f"{where} needs a zstd dictionary", digest)
        if _frame_size(frame, params.has_checksum, where, digest) != frame.nbytes:
            raise corrupt(f"{where} is not exactly one zstd frame", digest)
        data = zstandard.ZstdDecompressor(max_window_size=_MAX_WINDOW).decompress(frame)
    except zstandard.ZstdError as e:
        raise corrupt(f"{where} does not decode ({e})", digest) from e
    if len(data) != m:
        raise corrupt(f"{where} decodes to {len(data)} bytes, its plane holds {m}", digest)
    return data


class BodyPlan:
    """A grouped body whose whole layout was checked (``plan_body``), ready to decode block by block.

    Blocks are independent: ``decode_block(j, out)`` for every ``j`` in any order (or in parallel), then
    ``finish(out)`` (the trailing ``n mod k`` bytes), decodes the body into ``out``. A chain of bodies with the
    same block size can be decoded block-major (``_chain``): block ``j`` of every link while it is in cache.

    Attributes:
        block_log: log2 of the block size in raw bytes.
        nblocks: the number of blocks.
    """

    def __init__(
        self,
        view: memoryview,
        n: int,
        layout: Layout,
        block_log: int,
        mode: Mode,
        digest: str,
        starts: npt.NDArray[np.int64],
        lengths: npt.NDArray[np.int64],
        sizes: npt.NDArray[np.int64],
        expected: int,
    ) -> None:
        self.view = view
        self.n = n
        self.layout = layout
        self.block_log = block_log
        self.nblocks = int(sizes.size)
        self.mode = mode
        self.digest = digest
        self._starts = starts
        self._lengths = lengths
        self._sizes = sizes
        self._expected = expected

    def decode_block(self, j: int, target: Bytes) -> None:
        """Decode block ``j`` into its place in ``target`` (the chunk's whole raw length, as ``uint8``)."""
        k = self.layout.element_size
        m = int(self._sizes[j])
        planes: list[Buffer] = []
        for i in range(k):
            start, length = int(self._starts[j, i]), int(self._lengths[j, i])
            frame = self.view[start : start + length]
            planes.append(frame if length == m else _decompress(frame, m, self.digest, f"plane {i} of block {j}"))
        lo = j << self.block_log
        _merge(planes, target[lo : lo + m * k], m, self.layout, self.mode)

    def finish(self, target: Bytes) -> None:
        """The trailing ``n mod k`` bytes, stored as they are (XORed in for a delta)."""
        tail = self.n % self.layout.element_size
        if tail:
            n = self.n
            end = _u8(self.view[self._expected - tail :])
            if self.mode != "set":
                np.bitwise_xor(target[n - tail :], end, out=target[n - tail :])
            else:
                target[n - tail :] = end


def plan_body(body: Buffer, n: int, *, mode: Mode = "set", digest: str = "") -> BodyPlan:
    """Check a grouped body's whole layout against a raw length of ``n`` bytes, before a byte is written: the
    plane table fits the body, no plane is longer than its raw length, and the planes and tail fill the body
    exactly.

    Raises:
        CorruptChunkError: the body breaks the format.
        FormatVersionError: the body uses a variant this ckpt does not know.
    """
    view = memoryview(body)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    layout, block_log = body_layout(view, digest)
    k = layout.element_size
    if mode == "add" and (layout.transform != TRANSFORM_BYTES or k not in _ADD_SIZES):
        raise corrupt(f"its OP_ADD delta has transform {layout.transform} and element size {k}", digest)
    block = 1 << block_log
    nblocks = -(-n // block)
    table_end = BODY_HEADER + 4 * nblocks * k
    if view.nbytes < table_end:
        raise corrupt(f"its grouped body is too short for the plane table of {nblocks} blocks", digest)
    lengths = np.frombuffer(view[BODY_HEADER:table_end], dtype="<u4").astype(np.int64).reshape(nblocks, k)
    sizes = np.full(nblocks, block // k, dtype=np.int64)
    if nblocks:
        sizes[-1] = (n - (nblocks - 1) * block) // k
    if (lengths > sizes[:, None]).any():
        j, i = (int(x) for x in np.argwhere(lengths > sizes[:, None])[0])
        raise corrupt(f"plane {i} of block {j} claims {lengths[j, i]} bytes, more than its {sizes[j]}", digest)
    tail = n % k
    expected = table_end + int(lengths.sum()) + tail
    if view.nbytes != expected:
        what = "bytes follow its last plane" if view.nbytes > expected else "its planes end past the payload"
        raise corrupt(f"{what} ({view.nbytes} bytes, the plane table implies {expected})", digest)
    starts = table_end + np.concatenate(([0], np.cumsum(lengths.reshape(-1))[:-1])).reshape(nblocks, k)
    return BodyPlan(view, n, layout, block_log, mode, digest, starts, lengths, sizes, expected)


def decode_body(
    body: Buffer,
    out: Buffer,
    *,
    mode: Mode = "set",
    digest: str = "",
    executor: Executor | None = None,
) -> None:
    """Decode a grouped body into ``out`` (exactly the chunk's raw length), or apply it to ``out`` as a delta
    residual (``mode="xor"`` or ``"add"``; the trailing ``n mod k`` bytes are XORed in both).

    Checks the whole layout before it writes a byte (``plan_body``). Allocates at most one block's planes per
    task beyond ``out`` (each zstd frame's declared size is checked to be its plane's before it is decoded).

    Raises:
        CorruptChunkError: the body breaks the format (bad lengths, a frame that does not decode, bytes left).
        FormatVersionError: the body uses a variant this ckpt does not know.
    """
    target = _u8(out)
    if not target.flags.writeable:
        raise ValueError("out must be writable")
    plan = plan_body(body, target.size, mode=mode, digest=digest)
    for _ in _map(lambda j: plan.decode_block(j, target), plan.nblocks, executor):
        pass
    plan.finish(target)
