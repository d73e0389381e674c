"""Encoded chunks in the store: what ``Objects`` writes when compression is on, and how it decodes what it reads.

The codecs themselves are pure functions over bytes (``ckpt.store._codecs``); this module is their seam with
the store: the bound on an encoded object's size (so that every read is bounded before it starts), the choice
of encoding for a chunk being saved, and decoding a payload (through its delta chain) with the tensor and
snapshot named in every error.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ckpt.errors import CorruptChunkError, FormatVersionError, MissingObjectError
from ckpt.store._codecs._framing import CODEC_DELTA, CODEC_GROUPED, CODEC_RAW, DEFAULT_MAX_DEPTH, layout_for

if TYPE_CHECKING:  # numpy and zstandard load with the first chunk encoded or decoded
    from ckpt.store._codecs._chunk import Encoded

Buffer = bytes | bytearray | memoryview

__all__ = [
    "DEFAULT_MAX_DEPTH_READ",
    "ENCODED",
    "MIN_ENCODE",
    "Reference",
    "decode_payload",
    "delta_depth",
    "encode",
    "max_payload",
]

#: Codec bytes whose payload must be decoded (everything but raw).
ENCODED = (CODEC_GROUPED, CODEC_DELTA)
#: Chunks smaller than this are stored raw: a few hundred bytes do not pay for a zstd frame and a decode.
MIN_ENCODE = 4096

# The most a valid grouped body can hold beyond the raw bytes: its 4-byte header, a 4-byte length per plane
# (at most 16 planes per 64 KiB block), and a delta's 34-byte prefix.
_SMALLEST_BLOCK = 1 << 16


def max_payload(raw_length: int) -> int:
    """The largest payload a valid chunk of ``raw_length`` raw bytes can have, whatever its codec.

    A reader asks for at most this many bytes (plus the header and one byte to see that nothing follows), so
    that a damaged object cannot make it read or allocate more.

    Example:
        >>> max_payload(1 << 20)
        1049638
    """
    blocks = -(-raw_length // _SMALLEST_BLOCK)
    return 34 + 4 + 64 * blocks + raw_length


def encode(
    data: memoryview,
    dtype: str | None,
    reference: Reference | None = None,
    max_depth: int = 0,
    executor: Executor | None = None,
    hasher: Any = None,
) -> Encoded | None:
    """The encoding to store for a chunk of a tensor of ``dtype`` (a safetensors name; ``None``: a file), or
    ``None`` when raw is best: the chunk is small, or no encoding saves 3% (``MIN_SAVING``).

    With a ``reference`` whose depth is below ``max_depth``, a delta against it is tried first (and kept when
    it is the smallest); otherwise the chunk is a keyframe (grouped or raw). ``executor`` codes the chunk's
    blocks in parallel (the caller must not be one of its threads). ``hasher`` (a keyframe only) is fed the
    bytes encoded, from private copies (``encode_chunk``); it is fed nothing for a chunk under ``MIN_ENCODE``,
    and when the result is ``None`` (raw) its digest is of what was encoded, not of what ``data`` holds now.
    """
    if data.nbytes < MIN_ENCODE:
        return None
    from ckpt.store._codecs._chunk import encode_chunk

    if reference is not None and reference.depth < max_depth:
        enc = encode_chunk(
            data,
            layout=layout_for(dtype),
            reference=reference.raw,
            reference_digest=reference.digest,
            reference_depth=reference.depth,
            max_depth=max_depth,
            executor=executor,
        )
    else:
        enc = encode_chunk(data, layout=layout_for(dtype), executor=executor, hasher=hasher)
    return None if enc.codec == CODEC_RAW else enc


@dataclass(frozen=True)
class Reference:
    """A chunk a new chunk may be stored as a delta against: the same byte range of the same tensor in the
    snapshot's first parent.

    Attributes:
        digest: its address.
        raw: its raw bytes (decoded and checked).
        depth: its own chain depth (0: not a delta).
    """

    digest: str
    raw: Buffer
    depth: int


#: Reads one stored chunk: ``(codec, raw length from its header, payload)``; see ``ckpt.store._codecs.Fetch``.
Fetch = Callable[[str], tuple[int, int, Buffer]]


def decode_payload(
    digest: str,
    codec: int,
    payload: Buffer,
    out: memoryview,
    fetch: Fetch,
    *,
    verify: bool,
    where: str,
    tensor: str | None,
    snapshot: str | None,
    newer: bool = False,
    executor: Executor | None = None,
) -> int:
    """Decode an encoded chunk's payload into ``out`` (its raw length), following a delta's chain with
    ``fetch``, and check the bytes against ``digest`` when ``verify``. Returns the chain depth (0: no delta).

    A variant this ckpt does not know inside a payload (a grouped transform, a delta operation, a reserved
    byte) is a newer writer's only in a store of a newer format (``newer``); in a store of a format this ckpt
    reads in full, no writer could have made it, so it is damage. ``executor`` decodes blocks in parallel (the
    caller must not be one of its threads).

    Raises:
        CorruptChunkError: the payload or a link of its chain is damaged, or the bytes do not hash to
            ``digest``; the message names the tensor and snapshot (``where``) and the damaged link.
        MissingObjectError: a delta reference is not in the store.
        FormatVersionError: a variant this ckpt does not know, in a store of a newer format (``newer``).
    """
    from ckpt.store._codecs._chain import decode_chain

    first = (codec, out.nbytes, payload)

    def links(d: str) -> tuple[int, int, Buffer]:
        return first if d == digest else fetch(d)

    label = f"chunk {digest[:12]}"
    try:
        return decode_chain(digest, out, links, max_depth=DEFAULT_MAX_DEPTH_READ, verify=verify, executor=executor)
    except CorruptChunkError as e:
        if e.digest and e.digest != digest:  # a link down the chain broke the format: damage of this chunk too
            of = f" of {where}" if where else ""
            message = f"{label}{of} is corrupt: its delta reference {e.digest[:12]} is damaged ({e.message})"
        else:
            message = e.message.replace(label, f"{label} of {where}", 1) if where else e.message
        raise CorruptChunkError(
            message, digest=digest, tensor=tensor, snapshot=snapshot, hint=e.hint, cli_hint=e.cli_hint
        ) from e
    except FormatVersionError as e:
        if newer:
            raise
        message = e.message.replace(label, f"{label} of {where}", 1) if where else e.message
        raise CorruptChunkError(
            f"{message}; this store's format defines no such variant, so the chunk is corrupt",
            digest=digest,
            tensor=tensor,
            snapshot=snapshot,
        ) from e
    except MissingObjectError as e:
        message = e.message.replace(label, f"{label} of {where}", 1) if where else e.message
        raise MissingObjectError(message, hint=e.hint, cli_hint=e.cli_hint) from e


#: The deepest delta chain a reader follows: the format's bound on what writers build (a store setting of at
#: most this much), so that a damaged store cannot make a read follow references without end.
DEFAULT_MAX_DEPTH_READ = max(DEFAULT_MAX_DEPTH, 64)


def delta_depth(codec: int, payload: Buffer, digest: str = "") -> tuple[str | None, int]:
    """A stored chunk's delta reference and chain depth from its codec and the start of its payload (34 bytes
    suffice): ``(None, 0)`` for a raw or grouped chunk.

    Raises:
        CorruptChunkError: a delta prefix that is short or says depth 0.
        FormatVersionError: a codec or operation this ckpt does not know.
    """
    from ckpt.store._codecs._chunk import delta_reference

    delta = delta_reference(codec, payload, digest)
    return (None, 0) if delta is None else (delta.reference, delta.depth)
