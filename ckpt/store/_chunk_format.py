"""The stored chunk format: a 16-byte header (magic, format, codec, raw length) before the raw bytes, whose
BLAKE3 digest is the chunk's address."""

from __future__ import annotations

import struct

import blake3

__all__ = [
    "CHUNK_FORMAT",
    "CHUNK_HEADER_SIZE",
    "CHUNK_MAGIC",
    "CODEC_RAW",
    "HEADER",
    "VERIFY_PIECE",
    "chunk_header",
    "hash_chunk",
    "hasher",
    "stored_size",
]

CHUNK_MAGIC = b"ckpt"
CHUNK_FORMAT = 1
CODEC_RAW = 0
CHUNK_HEADER_SIZE = 16
HEADER = struct.Struct("<4sBBHQ")  # magic, format, codec, reserved, raw length
_BIG = 1 << 20

#: ``check_chunk`` reads a chunk in pieces of at most this many bytes (one piece for a default 64 MiB chunk
#: with its header and the byte that proves nothing follows).
VERIFY_PIECE = (64 << 20) + CHUNK_HEADER_SIZE + 1


def chunk_header(raw_length: int, codec: int = CODEC_RAW) -> bytes:
    """The 16-byte header of a stored chunk: ``b"ckpt"``, format 1, codec, 2 reserved bytes, raw length."""
    return HEADER.pack(CHUNK_MAGIC, CHUNK_FORMAT, codec, 0, raw_length)


def stored_size(raw_length: int) -> int:
    """The bytes a chunk of ``raw_length`` raw bytes takes in a store (its header included).

    Every byte figure ckpt reports about what a store holds (``verify``, ``gc``, ``stats``, ``sync``) counts
    stored bytes, so that they add up.
    """
    return CHUNK_HEADER_SIZE + raw_length


def hash_chunk(data: memoryview | bytes) -> str:
    """BLAKE3 of a chunk's raw bytes (multi-threaded above 1 MiB; releases the GIL)."""
    n = data.nbytes if isinstance(data, memoryview) else len(data)
    h = blake3.blake3(max_threads=blake3.blake3.AUTO) if n >= _BIG else blake3.blake3()
    h.update(data)
    return h.hexdigest()


def hasher(length: int) -> blake3.blake3:
    """A BLAKE3 hasher for ``length`` bytes (multi-threaded above 1 MiB)."""
    return blake3.blake3(max_threads=blake3.blake3.AUTO) if length >= _BIG else blake3.blake3()
