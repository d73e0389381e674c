"""Write the golden chunk objects of tests/store/test_codecs.py (run once; the files pin the format).

    python tests/golden/codecs/generate.py

Each ``<name>.hex`` is a whole stored chunk object (16-byte header + payload) in hex; ``manifest.json`` gives
its address (the BLAKE3 digest of its raw bytes), raw length, codec and how its raw bytes were made. Readers
must decode these forever; the encoder may one day choose other bytes for the same input (a newer zstd), so
only decoding is pinned.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from ckpt.store._codecs import OP_XOR, encode_chunk, hash_raw, layout_for

HERE = Path(__file__).parent


def header(codec: int, raw_length: int) -> bytes:
    return struct.pack("<4sBBHQ", b"ckpt", 1, codec, 0, raw_length)


def bf16(values: np.ndarray) -> bytes:
    """Round-to-nearest-even float32 → bfloat16 bits (as torch does), little-endian."""
    u = values.astype("<f4").view("<u4").astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype("<u2").tobytes()


def inputs() -> dict[str, tuple[str, bytes]]:
    i = np.arange(4096, dtype=np.float64)
    weights = bf16((np.sin(i * 0.7) * np.exp(-((i % 97) / 40.0)) * 0.05).astype(np.float32))
    moved = np.frombuffer(weights, dtype="<u2").copy()
    moved[::3] += 1  # one unit in the last place, as an optimizer step moves a bf16 weight
    moved[::7] -= 1
    moved_b = moved.tobytes()
    again = np.frombuffer(moved_b, dtype="<u2").copy()
    again[::5] ^= 0x0003
    f32 = (np.arange(16385, dtype=np.float32) * 0.25).tobytes() + b"\x01\x02\x03"
    i64 = (np.arange(3000, dtype=np.int64) * 1000003).tobytes()
    return {
        "raw": ("64 bytes 0..63", bytes(range(64))),
        "grouped_bf16": ("4096 bf16: sin(0.7 i) * exp(-(i mod 97) / 40) * 0.05", weights),
        "grouped_f32_blocks": ("16385 f32 i/4 then bytes 01 02 03, 64 KiB blocks", f32),
        "grouped_i64": ("3000 i64 1000003 i", i64),
        "delta_add_bf16": ("grouped_bf16 with +1 every 3rd, -1 every 7th element (u16)", moved_b),
        "delta_xor_bf16": ("delta_add_bf16 with every 5th element XOR 0x0003", again.tobytes()),
    }


def main() -> None:
    data = inputs()
    manifest: dict[str, dict[str, object]] = {}

    def put(name: str, codec: int, payload: bytes) -> None:
        what, raw = data[name]
        (HERE / f"{name}.hex").write_text((header(codec, len(raw)) + payload).hex() + "\n")
        manifest[name] = {"digest": hash_raw(raw), "raw_length": len(raw), "codec": codec, "raw": what}

    put("raw", 0, data["raw"][1])
    for name, dtype, block_log in (
        ("grouped_bf16", "BF16", 20),
        ("grouped_f32_blocks", "F32", 16),
        ("grouped_i64", "I64", 20),
    ):
        enc = encode_chunk(data[name][1], layout=layout_for(dtype), block_log=block_log)
        assert enc.codec == 1, name
        put(name, 1, b"".join(enc.parts))
    base = data["grouped_bf16"][1]
    enc = encode_chunk(
        data["delta_add_bf16"][1], layout=layout_for("BF16"), reference=base, reference_digest=hash_raw(base)
    )
    assert enc.codec == 2 and enc.depth == 1
    put("delta_add_bf16", 2, b"".join(enc.parts))
    ref = data["delta_add_bf16"][1]
    enc = encode_chunk(
        data["delta_xor_bf16"][1],
        layout=layout_for("BF16"),
        reference=ref,
        reference_digest=hash_raw(ref),
        reference_depth=1,
        op=OP_XOR,
    )
    assert enc.codec == 2 and enc.depth == 2
    put("delta_xor_bf16", 2, b"".join(enc.parts))
    # the worked example of docs/format.md: bf16 [1.0, -2.0, 0.5, 3.0], both planes stored (a valid encoding
    # the encoder would not choose: it saves nothing)
    small = bf16(np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32))
    data["grouped_small"] = ("bf16 [1.0, -2.0, 0.5, 3.0]", small)
    u = np.frombuffer(small, dtype="<u2")
    r = ((u << 1) | (u >> 15)).astype("<u2")
    planes = (r & 0xFF).astype(np.uint8).tobytes() + (r >> 8).astype(np.uint8).tobytes()
    put("grouped_small", 1, bytes([1, 2, 20, 0]) + struct.pack("<II", 4, 4) + planes)
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
