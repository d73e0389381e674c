"""Chunk codecs: how a stored chunk's payload encodes its raw bytes (docs/format.md, "Chunk codecs").

Pure functions over bytes: nothing here reads or writes a store. A chunk's address is the BLAKE3 digest of its
raw bytes whatever its codec, so dedup works across encodings and a reader checks what it decoded.

- ``CODEC_RAW`` (0): the payload is the raw bytes.
- ``CODEC_GROUPED`` (1): the raw bytes cut into 1 MiB blocks, each block's elements split into byte planes
  (bf16 and fp32 after a one-bit rotation that puts the exponent in one byte), each plane stored or zstd-coded.
- ``CODEC_DELTA`` (2): the residual of the raw bytes against a reference chunk's (the same byte range of the
  same tensor in the parent snapshot): their XOR, or the zigzag-coded difference of their words; as a grouped
  body, after the reference's digest, the chain depth and the operation.

Writers call ``encode_chunk``; readers call ``decode_chain`` (any codec, chains included) or ``decode_into``;
gc, sync and verify follow references with ``delta_reference``.
"""

from typing import TYPE_CHECKING, Any

from ckpt.store._codecs._framing import (
    CODEC_DELTA,
    CODEC_GROUPED,
    CODEC_RAW,
    CODECS,
    DEFAULT_BLOCK_LOG,
    DEFAULT_MAX_DEPTH,
    MAX_DEPTH_LIMIT,
    OP_ADD,
    OP_XOR,
    TRANSFORM_BYTES,
    TRANSFORM_ROTATE,
    Layout,
    layout_for,
)

if TYPE_CHECKING:  # numpy and zstandard load with the first codec used: `ckpt log` needs neither
    from ckpt.store._codecs._chain import Fetch, decode_chain, hash_raw
    from ckpt.store._codecs._chunk import (
        DELTA_GOOD_ENOUGH,
        MIN_SAVING,
        Delta,
        Encoded,
        decode_into,
        delta_op_for,
        delta_reference,
        encode_chunk,
    )
    from ckpt.store._codecs._pool import block_pool, map_bounded

_LAZY = {
    "Fetch": "_chain",
    "decode_chain": "_chain",
    "hash_raw": "_chain",
    "DELTA_GOOD_ENOUGH": "_chunk",
    "MIN_SAVING": "_chunk",
    "Delta": "_chunk",
    "Encoded": "_chunk",
    "decode_into": "_chunk",
    "delta_op_for": "_chunk",
    "delta_reference": "_chunk",
    "encode_chunk": "_chunk",
    "block_pool": "_pool",
    "map_bounded": "_pool",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CODECS",
    "CODEC_DELTA",
    "CODEC_GROUPED",
    "CODEC_RAW",
    "DEFAULT_BLOCK_LOG",
    "DEFAULT_MAX_DEPTH",
    "DELTA_GOOD_ENOUGH",
    "MAX_DEPTH_LIMIT",
    "MIN_SAVING",
    "OP_ADD",
    "OP_XOR",
    "TRANSFORM_BYTES",
    "TRANSFORM_ROTATE",
    "Delta",
    "Encoded",
    "Fetch",
    "Layout",
    "block_pool",
    "decode_chain",
    "decode_into",
    "delta_op_for",
    "delta_reference",
    "encode_chunk",
    "hash_raw",
    "layout_for",
    "map_bounded",
]
