"""Encode one chunk's raw bytes as the smallest of raw, grouped and delta, and decode any of them."""

from __future__ import annotations

import re
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ckpt.store._codecs._framing import (
    CODEC_DELTA,
    CODEC_GROUPED,
    CODEC_RAW,
    DEFAULT_BLOCK_LOG,
    DEFAULT_MAX_DEPTH,
    DELTA_PREFIX,
    DIGEST_BYTES,
    MAX_DEPTH_LIMIT,
    OP_ADD,
    OP_XOR,
    OPS,
    Layout,
    corrupt,
    too_new,
)
from ckpt.store._codecs._grouped import Buffer, Mode, decode_body, encode_body

__all__ = ["DELTA_GOOD_ENOUGH", "MIN_SAVING", "Delta", "Encoded", "decode_into", "delta_reference", "encode_chunk"]

#: A chunk is stored raw unless its encoding saves at least this fraction of its raw bytes: a raw chunk is
#: read without decoding (and can be memory-mapped), which a 2% saving does not pay for.
MIN_SAVING = 0.03
#: A delta at most this fraction of the raw bytes is taken without also trying the grouped encoding.
DELTA_GOOD_ENOUGH = 0.5
_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Encoded:
    """A chunk's payload as ``encode_chunk`` chose it.

    Attributes:
        codec: the codec byte for the chunk header (``CODEC_RAW``, ``CODEC_GROUPED``, ``CODEC_DELTA``).
        parts: the payload, in pieces to write in order after the 16-byte header.
        raw_length: bytes of the decoded chunk (the header's raw length).
        reference: the reference chunk's digest (a delta), else ``None``.
        depth: the delta chain depth (1: the reference is not a delta), 0 for raw and grouped.
        op: the delta operation (``OP_XOR``, ``OP_ADD``), ``None`` for raw and grouped.
    """

    codec: int
    parts: tuple[Buffer, ...]
    raw_length: int
    reference: str | None = None
    depth: int = 0
    op: int | None = None

    @property
    def stored_length(self) -> int:
        """Payload bytes (the 16-byte header not included)."""
        return sum(memoryview(p).nbytes for p in self.parts)


def _size(parts: list[Buffer]) -> int:
    return sum(memoryview(p).nbytes for p in parts)


@dataclass(frozen=True)
class Delta:
    """What a delta payload's 34-byte prefix says.

    Attributes:
        reference: the reference chunk's digest (64 hex characters).
        depth: this chunk's chain depth, 1–255 (1: the reference is not a delta).
        op: ``OP_XOR`` or ``OP_ADD``.
    """

    reference: str
    depth: int
    op: int


def delta_op_for(layout: Layout) -> int:
    """The delta operation writers use for a layout: ``OP_ADD`` where words fit an integer, else ``OP_XOR``."""
    return OP_ADD if layout.element_size in (1, 2, 4, 8) else OP_XOR


def encode_chunk(
    raw: Buffer,
    *,
    layout: Layout | None = None,
    reference: Buffer | None = None,
    reference_digest: str | None = None,
    reference_depth: int = 0,
    max_depth: int = DEFAULT_MAX_DEPTH,
    op: int | None = None,
    level: int | None = None,
    min_saving: float = MIN_SAVING,
    block_log: int = DEFAULT_BLOCK_LOG,
    executor: Executor | None = None,
    hasher: Any = None,
) -> Encoded:
    """Encode a chunk as the smallest of raw, grouped and (given a reference) delta.

    A delta is tried first when a reference is given and its chain would stay within ``max_depth``; it is kept
    without trying the grouped encoding when it is at most ``DELTA_GOOD_ENOUGH`` of the raw bytes. Whatever wins
    must save ``min_saving`` of the raw bytes, or the chunk is stored raw.

    Args:
        raw: the chunk's raw bytes (its address is their BLAKE3 digest, whatever the encoding).
        layout: how elements are cut into planes (``layout_for(dtype)``); default one plane.
        reference: the raw bytes of the reference chunk (the same byte range of the same tensor in the
            parent snapshot), or ``None`` for a keyframe.
        reference_digest: the reference chunk's address (64 hex characters); required with ``reference``.
        reference_depth: the reference's own chain depth (0 when it is not a delta).
        max_depth: the deepest chain to build; a reference already at ``max_depth`` gives a keyframe.
        op: the delta operation; default ``delta_op_for(layout)``. ``OP_ADD`` codes plain planes of the
            layout's element size.
        level: a zstd level, or ``None`` for ckpt's tuned fast parameters.
        min_saving: the fraction of the raw bytes an encoding must save to be kept.
        block_log: log2 of the grouped body's block size in raw bytes.
        executor: encodes blocks in parallel when given (the caller must not be one of its threads).
        hasher: a keyframe only (no ``reference``): fed every raw byte in order, from the private copy of
            each block that is encoded (``encode_body``); its digest is then the address of exactly the bytes
            encoded. Fed nothing when the chunk is empty. A raw result is a view of ``raw`` itself, which may
            differ from what was hashed if the caller changed it meanwhile.

    Returns:
        The chosen encoding; ``parts`` may be views of ``raw`` (a raw chunk), valid while ``raw`` is.

    Raises:
        ValueError: the reference's length differs, or its digest, depth or operation is malformed.

    Example:
        >>> import numpy as np
        >>> from ckpt.store._codecs import decode_into, layout_for
        >>> raw = np.zeros(1 << 16, dtype=np.float32).tobytes()
        >>> enc = encode_chunk(raw, layout=layout_for("F32"))
        >>> enc.codec, enc.stored_length < 128
        (1, True)
        >>> out = bytearray(len(raw))
        >>> decode_into(enc.codec, b"".join(enc.parts), out)
        >>> bytes(out) == raw
        True
    """
    layout = layout or Layout()
    view = memoryview(raw)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    n = view.nbytes
    raw_choice = Encoded(CODEC_RAW, (view,), n)
    if n == 0:
        return raw_choice
    best: Encoded | None = None
    if hasher is not None and reference is not None:
        raise ValueError("hasher is for keyframes: a delta's bytes are hashed by its caller")
    if reference is not None:
        if reference_digest is None or not _HEX.fullmatch(reference_digest):
            raise ValueError("a delta needs the reference's digest as 64 lowercase hex characters")
        if not 0 <= reference_depth <= MAX_DEPTH_LIMIT:
            raise ValueError(f"reference depth {reference_depth} is out of range")
        if memoryview(reference).nbytes != n:
            raise ValueError(f"the reference holds {memoryview(reference).nbytes} bytes, the chunk {n}")
        op = delta_op_for(layout) if op is None else op
        if op not in OPS:
            raise ValueError(f"unknown delta operation {op}")
        if reference_depth + 1 <= min(max_depth, MAX_DEPTH_LIMIT):
            depth = reference_depth + 1
            body_layout = Layout(layout.element_size) if op == OP_ADD else layout
            body = encode_body(
                view, body_layout, reference=reference, op=op, level=level, block_log=block_log, executor=executor
            )
            prefix = bytes.fromhex(reference_digest) + bytes([depth, op])
            best = Encoded(CODEC_DELTA, (prefix, *body), n, reference_digest, depth, op)
    if best is None or best.stored_length > DELTA_GOOD_ENOUGH * n:
        body = encode_body(view, layout, level=level, block_log=block_log, executor=executor, hasher=hasher)
        if best is None or _size(body) < best.stored_length:
            best = Encoded(CODEC_GROUPED, tuple(body), n)
    if best.stored_length > (1.0 - min_saving) * n:
        return raw_choice
    return best


def delta_reference(codec: int, payload: Buffer, digest: str = "") -> Delta | None:
    """The reference a stored chunk needs: its delta prefix, or ``None`` for a raw or grouped chunk.

    This is all gc, sync and verify need to follow chains: it reads the payload's first 34 bytes.

    Raises:
        CorruptChunkError: a delta payload too short for its prefix, or with depth 0.
        FormatVersionError: an unknown codec or delta operation.
    """
    if codec in (CODEC_RAW, CODEC_GROUPED):
        return None
    if codec != CODEC_DELTA:
        raise too_new(f"codec {codec}", digest)
    view = memoryview(payload)
    if view.nbytes < DELTA_PREFIX:
        raise corrupt(f"its delta payload holds {view.nbytes} bytes, less than its {DELTA_PREFIX}-byte prefix", digest)
    depth, op = view[DIGEST_BYTES], view[DIGEST_BYTES + 1]
    if depth == 0:
        raise corrupt("its delta declares chain depth 0", digest)
    if op not in OPS:
        raise too_new(f"delta operation {op}", digest)
    return Delta(bytes(view[:DIGEST_BYTES]).hex(), int(depth), int(op))


def _bytes(data: Buffer) -> memoryview:
    view = memoryview(data)
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def decode_into(
    codec: int,
    payload: Buffer,
    out: Buffer,
    *,
    reference: Buffer | None = None,
    digest: str = "",
    executor: Executor | None = None,
) -> None:
    """Decode one stored chunk's payload into ``out``, whose length is the chunk's raw length.

    Args:
        codec: the header's codec byte.
        payload: the bytes after the 16-byte header.
        out: where the raw bytes go (writable, exactly the raw length; the caller checks the header's raw length
            against the table's).
        reference: for a delta, the reference chunk's raw bytes (decoded and verified by the caller); ``None``
            to apply the residual to ``out``, which must then hold the reference's raw bytes already.
        digest: the chunk's address, for messages.
        executor: decodes blocks in parallel when given (the caller must not be one of its threads).

    Never allocates more than one block's planes per task beyond ``out``, whatever the payload claims.

    Raises:
        CorruptChunkError: the payload breaks the format (wrong length, bad plane table, a frame that does not
            decode or decodes to another length, bytes left over, a reference of the wrong length).
        FormatVersionError: an unknown codec, transform, operation or reserved value (a newer writer's).
    """
    target = _bytes(out)
    view = _bytes(payload)
    n = target.nbytes
    dst = np.frombuffer(target, dtype=np.uint8)
    if codec == CODEC_RAW:
        if view.nbytes != n:
            raise corrupt(f"its raw payload holds {view.nbytes} bytes of its {n}", digest)
        dst[:] = np.frombuffer(view, dtype=np.uint8)
    elif codec == CODEC_GROUPED:
        decode_body(view, target, digest=digest, executor=executor)
    else:
        delta = delta_reference(codec, view, digest)
        assert delta is not None
        if reference is not None:
            ref = _bytes(reference)
            if ref.nbytes != n:
                raise corrupt(f"its reference {delta.reference[:12]} holds {ref.nbytes} bytes, not {n}", digest)
            dst[:] = np.frombuffer(ref, dtype=np.uint8)
        mode: Mode = "add" if delta.op == OP_ADD else "xor"
        decode_body(view[DELTA_PREFIX:], target, mode=mode, digest=digest, executor=executor)
