"""Constants of the chunk codecs and the errors their decoders raise (docs/format.md, "Chunk codecs")."""

from __future__ import annotations

from dataclasses import dataclass

from ckpt.errors import CorruptChunkError, FormatVersionError

#: Codec byte (offset 5 of the 16-byte chunk header): the payload is the raw bytes themselves.
CODEC_RAW = 0
#: Codec byte: the payload is a grouped body (byte planes, each stored or one zstd frame).
CODEC_GROUPED = 1
#: Codec byte: the payload names a reference chunk and holds a grouped body of (raw XOR reference raw).
CODEC_DELTA = 2
CODECS = (CODEC_RAW, CODEC_GROUPED, CODEC_DELTA)

#: Grouped-body transform: the planes are the element's bytes by position (plane 0: least significant).
TRANSFORM_BYTES = 0
#: Grouped-body transform: before the planes are cut, the top 16 bits of each little-endian element are rotated
#: left by one bit, so that the 8-bit exponent of a bf16 / fp32 value fills one byte and its sign joins the
#: mantissa's top bits in the next. Only for 2- and 4-byte elements.
TRANSFORM_ROTATE = 1
TRANSFORMS = (TRANSFORM_BYTES, TRANSFORM_ROTATE)

#: Element sizes a grouped body may declare (bytes per element = planes per block).
ELEMENT_SIZES = (1, 2, 4, 8, 16)
#: Block sizes a grouped body may declare, as log2 of their raw bytes.
MIN_BLOCK_LOG = 16
MAX_BLOCK_LOG = 30
#: The block size writers use: 1 MiB of raw bytes, cut into planes and coded independently (one task each).
DEFAULT_BLOCK_LOG = 20

#: A delta payload starts with the reference chunk's 32-byte BLAKE3 digest, a one-byte chain depth and a
#: one-byte operation.
DIGEST_BYTES = 32
DELTA_PREFIX = DIGEST_BYTES + 2
#: Delta operation: the residual is (raw XOR reference raw), coded with the body's transform.
OP_XOR = 0
#: Delta operation: the residual is the zigzag-coded difference (raw − reference raw) of k-byte little-endian
#: words modulo 2**(8k), coded as plain byte planes (k = the body's element size, 1, 2, 4 or 8). A weight that
#: moved by one unit in the last place is a residual of 1 or 2, where XOR spreads a carry over several bits:
#: 15% smaller deltas of bf16 weights in training (benchmarks/storage.py).
OP_ADD = 1
OPS = (OP_XOR, OP_ADD)
#: The deepest chain the format allows (a depth is one byte); stores bound it far lower (a setting).
MAX_DEPTH_LIMIT = 255
#: The chain depth a reader accepts unless told otherwise, and writers use by default (benchmarks/delta_depth.py).
DEFAULT_MAX_DEPTH = 16

#: The size of a grouped body's own header: transform, element size, block log, reserved.
BODY_HEADER = 4


@dataclass(frozen=True)
class Layout:
    """How a chunk's raw bytes are cut into planes.

    Attributes:
        element_size: bytes per element, one of ``ELEMENT_SIZES``; the number of planes.
        transform: ``TRANSFORM_BYTES`` or ``TRANSFORM_ROTATE`` (2- and 4-byte elements only).
    """

    element_size: int = 1
    transform: int = TRANSFORM_BYTES

    def __post_init__(self) -> None:
        if self.element_size not in ELEMENT_SIZES:
            raise ValueError(f"element size must be one of {ELEMENT_SIZES}, not {self.element_size}")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"unknown transform {self.transform}")
        if self.transform == TRANSFORM_ROTATE and self.element_size not in (2, 4):
            raise ValueError("the rotate transform is for 2- and 4-byte elements")


# One dtype name → its layout. bf16 and fp32 (and complex64, a pair of fp32) share the 8-bit exponent that the
# rotation aligns; fp16 (5-bit) and fp64 (11-bit) exponents do not fit a byte, so their planes are plain bytes.
_LAYOUTS: dict[str, Layout] = {
    "BF16": Layout(2, TRANSFORM_ROTATE),
    "F32": Layout(4, TRANSFORM_ROTATE),
    "C64": Layout(4, TRANSFORM_ROTATE),
    "C128": Layout(8),
    "F16": Layout(2),
    "I16": Layout(2),
    "U16": Layout(2),
    "I32": Layout(4),
    "U32": Layout(4),
    "I64": Layout(8),
    "U64": Layout(8),
    "F64": Layout(8),
}


def layout_for(dtype: str | None) -> Layout:
    """The layout writers use for a tensor of ``dtype`` (a safetensors name); ``None`` (a file's bytes): 1 plane.

    Example:
        >>> layout_for("BF16")
        Layout(element_size=2, transform=1)
        >>> layout_for("I8")
        Layout(element_size=1, transform=0)
    """
    if dtype is None:
        return Layout()
    return _LAYOUTS.get(dtype, Layout())


def corrupt(what: str, digest: str) -> CorruptChunkError:
    """The error for a payload that breaks the format (``digest`` names the chunk, ``""`` if unknown)."""
    name = f"chunk {digest[:12]}" if digest else "a chunk"
    return CorruptChunkError(f"{name} is corrupt: {what}", digest=digest)


def too_new(what: str, digest: str) -> FormatVersionError:
    """The error for a payload that uses a variant this ckpt does not know (a newer writer's)."""
    name = f"chunk {digest[:12]}" if digest else "a chunk"
    return FormatVersionError(f"{name} uses {what}, which this ckpt does not know")
