"""The stored chunk format: a 16-byte header (magic, format, codec, raw length) before the payload (the raw
bytes, or their encoding: ``_encoded``), whose raw bytes' BLAKE3 digest is the chunk's address."""

from __future__ import annotations

import struct

import blake3

from ckpt.errors import CorruptChunkError, FormatVersionError
from ckpt.store._encoded import ENCODED, max_payload

__all__ = [
    "CHUNK_FORMAT",
    "CHUNK_HEADER_SIZE",
    "CHUNK_MAGIC",
    "CODEC_RAW",
    "HEADER",
    "VERIFY_PIECE",
    "check_stored",
    "check_stored_codec",
    "encoded_length",
    "encoded_prefix",
    "chunk_header",
    "describe",
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


def check_stored(
    digest: str,
    header: bytes,
    stored: int,
    expected: int | None,
    tensor: str | None,
    snapshot: str | None,
) -> int:
    """Check a stored chunk's header and size (``check_stored_codec``); returns its raw length."""
    return check_stored_codec(digest, header, stored, expected, tensor, snapshot)[1]


def check_stored_codec(
    digest: str,
    header: bytes,
    stored: int,
    expected: int | None,
    tensor: str | None,
    snapshot: str | None,
) -> tuple[int, int]:
    """Check a stored chunk's header and size; returns its codec and raw length.

    A raw chunk (codec 0) holds exactly ``16 + n`` bytes; an encoded one (codec 1, byte-grouped; codec 2, delta)
    at most ``16 + max_payload(n)`` (its payload is proven by decoding it, which ``verify`` and every load do).

    Args:
        digest: the chunk's address.
        header: its first 16 bytes (fewer if the object is shorter).
        stored: how many bytes the object holds, or a lower bound past its expected end (a reader asks
            for one byte more than it expects, to see whether anything follows).
        expected: the raw length the table implies, or ``None`` to take the header's (then the digest
            check, not the length, is what proves the bytes).
        tensor: the tensor or file it belongs to, for messages.
        snapshot: the snapshot being read, for messages.

    Raises:
        CorruptChunkError: a bad magic, a length other than the table's, a raw payload of the wrong size, an
            encoded payload longer than any encoding of its length.
        FormatVersionError: a chunk format or codec this ckpt does not know (a newer ckpt wrote it).
    """
    where = describe(tensor, snapshot)

    def corrupt(what: str) -> CorruptChunkError:
        return CorruptChunkError(
            f"chunk {digest[:12]} of {where} is corrupt: {what}", digest=digest, tensor=tensor, snapshot=snapshot
        )

    if len(header) < CHUNK_HEADER_SIZE:
        raise corrupt(f"it holds {stored} bytes, less than its {CHUNK_HEADER_SIZE}-byte header")
    magic, fmt, codec, _reserved, raw_length = HEADER.unpack(header[:CHUNK_HEADER_SIZE])
    if magic != CHUNK_MAGIC:
        raise corrupt("its header does not start with the chunk magic")
    if fmt != CHUNK_FORMAT or (codec != CODEC_RAW and codec not in ENCODED):
        raise FormatVersionError(
            f"chunk {digest[:12]} of {where} uses chunk format {fmt}, codec {codec}, which this ckpt does not "
            f"know (it reads format {CHUNK_FORMAT}, codecs 0 = raw, 1 = grouped, 2 = delta)"
        )
    if expected is not None and raw_length != expected:
        raise corrupt(f"its header says {raw_length} bytes, its table {expected}")
    if codec != CODEC_RAW:
        if stored > CHUNK_HEADER_SIZE + max_payload(raw_length):
            raise corrupt(f"its codec {codec} payload is longer than any encoding of {raw_length} bytes")
        return int(codec), int(raw_length)
    if stored < CHUNK_HEADER_SIZE + raw_length:
        raise corrupt(f"it holds {stored - CHUNK_HEADER_SIZE} bytes of its {raw_length}")
    if stored > CHUNK_HEADER_SIZE + raw_length:
        raise corrupt(f"bytes follow its {raw_length}-byte payload")
    return int(codec), int(raw_length)


def encoded_prefix(raw_length: int) -> int:
    """How many payload bytes ``encoded_length`` may need to read: a delta prefix, a grouped body's header and
    its plane-length table at the smallest block size (docs/format.md, "Grouped body")."""
    blocks = -(-raw_length // (1 << 16)) if raw_length else 0
    return 34 + 4 + 4 * 16 * blocks


def encoded_length(codec: int, payload_start: bytes, raw_length: int) -> int | None:
    """The exact payload length of an encoded chunk, from the start of its payload: the delta prefix (codec 2),
    the grouped body's header and its table of plane lengths. ``None`` when that start is not a valid grouped
    body (damage, or a newer writer's transform): the caller decodes instead of trusting a length.

    Cheap: reads no plane. A chunk whose object is not exactly this long is damaged (truncated or extended).
    """
    offset = 34 if codec == 2 else 0
    head = payload_start[offset : offset + 4]
    if len(head) < 4:
        return None
    transform, k, block_log, reserved = head
    if transform not in (0, 1) or reserved or k not in (1, 2, 4, 8, 16) or not 16 <= block_log <= 30:
        return None
    blocks = -(-raw_length // (1 << block_log)) if raw_length else 0
    table = payload_start[offset + 4 : offset + 4 + 4 * blocks * k]
    if len(table) < 4 * blocks * k:
        return None
    planes = sum(struct.unpack(f"<{blocks * k}I", table)) if blocks else 0
    return offset + 4 + 4 * blocks * k + planes + raw_length % k


def describe(tensor: str | None, snapshot: str | None) -> str:
    parts = []
    if tensor:
        parts.append(f"tensor {tensor!r}")
    if snapshot:
        parts.append(f"snapshot {snapshot[:12]}")
    return " in ".join(parts) if parts else "the store"
