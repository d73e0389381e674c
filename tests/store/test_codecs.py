"""Chunk codecs (ckpt/store/_codecs): golden objects decode, every round trip is bit-exact, and every malformed,
truncated or hostile payload is refused with a CkptError without allocating more than the chunk's raw length."""

from __future__ import annotations

import json
import struct
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckpt.errors import CkptError, CorruptChunkError, FormatVersionError, MissingObjectError
from ckpt.store._codecs import (
    CODEC_DELTA,
    CODEC_GROUPED,
    CODEC_RAW,
    OP_ADD,
    OP_XOR,
    TRANSFORM_ROTATE,
    Layout,
    decode_chain,
    decode_into,
    delta_reference,
    encode_chunk,
    hash_raw,
    layout_for,
    map_bounded,
)

GOLDEN = Path(__file__).parent.parent / "golden" / "codecs"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())
_HEADER = struct.Struct("<4sBBHQ")
LAYOUTS = [Layout(1), Layout(2), Layout(2, TRANSFORM_ROTATE), Layout(4), Layout(4, TRANSFORM_ROTATE), Layout(8)]
LAYOUTS.append(Layout(16))


def stored_object(codec: int, payload: bytes, raw_length: int) -> bytes:
    return _HEADER.pack(b"ckpt", 1, codec, 0, raw_length) + payload


def fetcher(objects: dict[str, bytes]) -> Callable[[str], tuple[int, int, bytes]]:
    """What the store gives ``decode_chain``: the header checked, the payload after it."""

    def fetch(digest: str) -> tuple[int, int, bytes]:
        if digest not in objects:
            raise MissingObjectError(f"chunk {digest[:12]} is missing from the store")
        data = objects[digest]
        if len(data) < 16 or data[:4] != b"ckpt":
            raise CorruptChunkError(f"chunk {digest[:12]} has a bad header", digest=digest)
        _magic, _fmt, codec, _reserved, raw_length = _HEADER.unpack(data[:16])
        return codec, raw_length, data[16:]

    return fetch


def golden_objects() -> dict[str, bytes]:
    return {entry["digest"]: bytes.fromhex((GOLDEN / f"{name}.hex").read_text()) for name, entry in MANIFEST.items()}


def encoded(enc_codec: int, parts: tuple[object, ...]) -> bytes:
    return b"".join(bytes(memoryview(p)) for p in parts)  # type: ignore[arg-type]


# -- golden objects ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_golden_chunk_decodes(name: str) -> None:
    entry = MANIFEST[name]
    objects = golden_objects()
    data = objects[entry["digest"]]
    assert data[5] == entry["codec"]
    out = bytearray(entry["raw_length"])
    depth = decode_chain(entry["digest"], out, fetcher(objects))
    assert hash_raw(out) == entry["digest"]
    assert depth == {"delta_add_bf16": 1, "delta_xor_bf16": 2}.get(name, 0)


def test_golden_worked_example_bytes() -> None:
    """The example of the format page: bf16 [1.0, -2.0, 0.5, 3.0] with both planes stored."""
    data = bytes.fromhex((GOLDEN / "grouped_small.hex").read_text())
    assert data.hex() == (
        "636b7074"
        "01"
        "01"
        "0000"
        "0800000000000000"  # header: magic, format 1, codec 1, raw length 8
        "01"
        "02"
        "14"
        "00"  # rotate transform, 2-byte elements, 2**20-byte blocks, reserved
        "04000000"
        "04000000"  # plane lengths: 4 = stored
        "00010080"  # plane 0: mantissa bits and sign (rotated low bytes)
        "7f807e80"  # plane 1: exponents
    )
    out = bytearray(8)
    decode_into(CODEC_GROUPED, data[16:], out)
    assert bytes(out) == bytes.fromhex("803f00c0003f4040")


def test_golden_delta_names_reference() -> None:
    data = bytes.fromhex((GOLDEN / "delta_xor_bf16.hex").read_text())
    delta = delta_reference(data[5], data[16:])
    assert delta is not None
    assert (delta.reference, delta.depth, delta.op) == (MANIFEST["delta_add_bf16"]["digest"], 2, OP_XOR)


# -- round trips ---------------------------------------------------------------------------------------------


def round_trip(raw: bytes, layout: Layout, **kw: object) -> bytes:
    enc = encode_chunk(raw, layout=layout, **kw)  # type: ignore[arg-type]
    assert enc.raw_length == len(raw)
    payload = encoded(enc.codec, enc.parts)
    assert len(payload) == enc.stored_length
    if enc.codec != CODEC_RAW:
        assert enc.stored_length <= (1 - float(kw.get("min_saving", 0.03))) * len(raw)  # type: ignore[arg-type]
    out = bytearray(len(raw))
    decode_into(enc.codec, payload, out, reference=kw.get("reference"))  # type: ignore[arg-type]
    assert bytes(out) == raw
    return payload


def _array(kind: str, n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    if kind == "zeros":
        return bytes(n)
    if kind == "ones":
        return b"\xff" * n
    if kind == "normal":
        return (rng.normal(size=n // 4 + 1) * 0.02).astype("<f4").tobytes()[:n]
    if kind == "ramp":
        return (np.arange(n, dtype=np.uint32) * 2654435761 % 7).astype(np.uint8).tobytes()
    raise AssertionError(kind)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    layout=st.sampled_from(LAYOUTS),
    kind=st.sampled_from(["random", "zeros", "ones", "normal", "ramp"]),
    n=st.one_of(st.integers(1, 300), st.integers(65530, 65550), st.integers(1, 140_000)),
    seed=st.integers(0, 2**32 - 1),
    block_log=st.sampled_from([16, 20]),
    level=st.sampled_from([None, 1]),
)
def test_round_trip_grouped(layout: Layout, kind: str, n: int, seed: int, block_log: int, level: int | None) -> None:
    raw = _array(kind, n, seed)
    round_trip(raw, layout, block_log=block_log, level=level, min_saving=0.0)
    round_trip(raw, layout, block_log=block_log, level=level)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    layout=st.sampled_from(LAYOUTS),
    n=st.one_of(st.integers(1, 300), st.integers(1, 140_000)),
    seed=st.integers(0, 2**32 - 1),
    change=st.sampled_from(["few", "all", "unrelated", "same"]),
    op=st.sampled_from([OP_XOR, OP_ADD]),
    depth=st.integers(0, 3),
)
def test_round_trip_delta(layout: Layout, n: int, seed: int, change: str, op: int, depth: int) -> None:
    rng = np.random.default_rng(seed)
    ref = _array("normal", n, seed)
    new = np.frombuffer(ref, dtype=np.uint8).copy()
    if change == "few":
        new[rng.integers(0, n, max(1, n // 100))] += 1
    elif change == "all":
        new += rng.integers(0, 3, n, dtype=np.uint8)
    elif change == "unrelated":
        new = rng.integers(0, 256, n, dtype=np.uint8)
    if op == OP_ADD and layout.element_size == 16:
        op = OP_XOR
    kw = {"reference": ref, "reference_digest": hash_raw(ref), "reference_depth": depth, "op": op, "block_log": 16}
    payload = round_trip(new.tobytes(), layout, min_saving=0.0, **kw)
    enc_delta = encode_chunk(new.tobytes(), layout=layout, min_saving=-1.0, **kw)  # type: ignore[arg-type]
    if enc_delta.codec == CODEC_DELTA:
        assert enc_delta.depth == depth + 1
        out = bytearray(ref)  # the residual applied in place over the reference
        decode_into(CODEC_DELTA, encoded(CODEC_DELTA, enc_delta.parts), out)
        assert bytes(out) == new.tobytes()
    assert payload is not None


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32", "F64", "C64", "C128"])
def test_adversarial_float_bits(dtype: str) -> None:
    """NaNs with payloads, signed zeros, infinities, subnormals, the largest values: bit for bit."""
    k = layout_for(dtype).element_size
    words = {
        2: [0x7FC1, 0xFFFF, 0x7F80, 0xFF80, 0x8000, 0x0000, 0x0001, 0x807F, 0x7F7F, 0x7E00],
        4: [0x7FC00001, 0xFFFFFFFF, 0x7F800000, 0x80000000, 0x00000001, 0x807FFFFF, 0x7F7FFFFF, 0],
        8: [0x7FF8000000000001, 0xFFF0000000000000, 0x8000000000000000, 1, 0x7FEFFFFFFFFFFFFF, 0],
        16: [0x7FF8000000000001, 0xFFF0000000000000, 1, 0],
    }[k]
    wide = {2: "<u2", 4: "<u4", 8: "<u8", 16: "<u8"}[k]
    base = np.array(words, dtype=wide)
    for n in (1, 7, 40_000):
        raw = np.resize(base, n).tobytes()
        round_trip(raw, layout_for(dtype), min_saving=0.0)
        round_trip(raw + b"\x05", layout_for(dtype), min_saving=0.0)  # a tail byte past the last element
        moved = np.resize(base[::-1], n).tobytes()
        round_trip(moved, layout_for(dtype), min_saving=0.0, reference=raw, reference_digest=hash_raw(raw))


def test_encoder_choices() -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    assert encode_chunk(noise, layout=layout_for("F32")).codec == CODEC_RAW  # saves nothing: stored raw
    assert encode_chunk(b"", layout=layout_for("F32")).codec == CODEC_RAW
    weights = (rng.normal(size=50_000) * 0.02).astype("<f4").tobytes()
    grouped = encode_chunk(weights, layout=layout_for("F32"))
    assert grouped.codec == CODEC_GROUPED and grouped.stored_length < 0.9 * len(weights)
    assert encode_chunk(weights, layout=layout_for("F32"), min_saving=0.5).codec == CODEC_RAW
    moved = np.frombuffer(weights, dtype="<u4").copy()
    moved[::50] += 1
    delta = encode_chunk(
        moved.tobytes(), layout=layout_for("F32"), reference=weights, reference_digest=hash_raw(weights)
    )
    assert delta.codec == CODEC_DELTA and delta.depth == 1 and delta.op == OP_ADD and delta.stored_length < 2000
    # a reference already at the chain limit gives a keyframe
    key = encode_chunk(
        moved.tobytes(),
        layout=layout_for("F32"),
        reference=weights,
        reference_digest=hash_raw(weights),
        reference_depth=4,
        max_depth=4,
    )
    assert key.codec == CODEC_GROUPED and key.depth == 0
    # an unrelated reference loses to the grouped encoding
    unrelated = encode_chunk(
        weights,
        layout=layout_for("F32"),
        reference=noise[: len(weights)],
        reference_digest=hash_raw(noise[: len(weights)]),
    )
    assert unrelated.codec == CODEC_GROUPED
    with pytest.raises(ValueError, match="reference holds"):
        encode_chunk(weights, reference=weights[:-1], reference_digest=hash_raw(weights[:-1]))
    with pytest.raises(ValueError, match="64 lowercase hex"):
        encode_chunk(weights, reference=weights, reference_digest="ABC")


# -- hostile payloads ----------------------------------------------------------------------------------------


def body(transform: int, k: int, block_log: int, lengths: list[int], data: bytes, reserved: int = 0) -> bytes:
    return bytes([transform, k, block_log, reserved]) + struct.pack(f"<{len(lengths)}I", *lengths) + data


def refused(payload: bytes, n: int, codec: int = CODEC_GROUPED, error: type[CkptError] = CorruptChunkError) -> str:
    with pytest.raises(error) as info:
        decode_into(codec, payload, bytearray(n))
    return str(info.value)


def test_hostile_grouped_bodies() -> None:
    assert "less than its 4-byte header" in refused(b"\x01\x02", 8)
    assert "bytes follow" in refused(body(0, 2, 20, [4, 4], bytes(8) + b"x"), 8)
    assert "end past the payload" in refused(body(0, 2, 20, [4, 4], bytes(7)), 8)
    assert "more than its 4" in refused(body(0, 2, 20, [5, 3], bytes(8)), 8)
    assert "more than its" in refused(body(0, 2, 20, [0xFFFFFFFF, 0], bytes(8)), 8)
    assert "plane table" in refused(body(0, 2, 16, [4], b""), 8 << 16)  # 8 blocks need 16 lengths
    assert "element size 3" in refused(body(0, 3, 20, [1, 1, 1], bytes(3)), 3)
    assert "element size 8 for transform 1" in refused(body(1, 8, 20, [1] * 8, bytes(8)), 8)
    assert "blocks of 2**15" in refused(body(0, 1, 15, [8], bytes(8)), 8)
    assert "blocks of 2**31" in refused(body(0, 1, 31, [8], bytes(8)), 8)
    refused(body(2, 2, 20, [4, 4], bytes(8)), 8, error=FormatVersionError)  # an unknown transform
    refused(body(0, 2, 20, [4, 4], bytes(8), reserved=1), 8, error=FormatVersionError)
    refused(bytes(8), 8, codec=3, error=FormatVersionError)  # an unknown codec
    assert "raw payload holds 7" in refused(bytes(7), 8, codec=CODEC_RAW)
    assert "raw payload holds 9" in refused(bytes(9), 8, codec=CODEC_RAW)


def test_hostile_delta_prefixes() -> None:
    ref = "ab" * 32
    good = bytes.fromhex(ref) + bytes([1, OP_XOR]) + body(0, 1, 20, [8], bytes(8))
    decode_into(CODEC_DELTA, good, bytearray(8))
    assert "34-byte prefix" in refused(good[:33], 8, codec=CODEC_DELTA)
    assert "depth 0" in refused(bytes.fromhex(ref) + bytes([0, OP_XOR]) + good[34:], 8, codec=CODEC_DELTA)
    refused(bytes.fromhex(ref) + bytes([1, 7]) + good[34:], 8, codec=CODEC_DELTA, error=FormatVersionError)
    rotated = bytes.fromhex(ref) + bytes([1, OP_ADD]) + body(1, 2, 20, [4, 4], bytes(8))
    assert "OP_ADD delta has transform 1" in refused(rotated, 8, codec=CODEC_DELTA)
    wide = bytes.fromhex(ref) + bytes([1, OP_ADD]) + body(0, 16, 20, [1] * 16, bytes(16))
    assert "element size 16" in refused(wide, 16, codec=CODEC_DELTA)
    with pytest.raises(CorruptChunkError, match=r"reference .* holds 4 bytes"):
        decode_into(CODEC_DELTA, good, bytearray(8), reference=bytes(4))


def frame_body(frame: bytes, m: int) -> bytes:
    """A one-plane body whose plane is ``frame`` (the plane holds ``m`` bytes)."""
    return body(0, 1, 20, [len(frame)], frame)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda m: zstandard.ZstdCompressor(write_content_size=False).compress(bytes(m)), "no content size"),
        (lambda m: zstandard.ZstdCompressor().compress(bytes(m - 1)), "declares"),
        (lambda m: zstandard.ZstdCompressor().compress(bytes(1 << 20)), "declares"),
        (lambda m: zstandard.ZstdCompressor().compress(bytes(m // 2)) * 2, "declares"),
        (lambda m: zstandard.ZstdCompressor().compress(bytes(m))[:-3], "decode|ends inside"),
        (lambda m: zstandard.ZstdCompressor().compress(bytes(m)) + b"\0", "not exactly one zstd frame"),
        (lambda m: b"\x50\x2a\x4d\x18" + struct.pack("<I", 4) + b"abcd", "declares|not a zstd frame"),
        (lambda m: b"\x28\xb5\x2f\xfd" + b"\xff" * 20, "not a zstd frame|declares|decode"),
    ],
)
def test_hostile_zstd_frames(make: Callable[[int], bytes], message: str) -> None:
    m = 4096
    frame = make(m)
    assert len(frame) < m
    with pytest.raises(CorruptChunkError, match=message):
        decode_into(CODEC_GROUPED, frame_body(frame, m), bytearray(m))


def test_dictionary_frames_are_refused() -> None:
    dictionary = zstandard.ZstdCompressionDict(b"weights " * 64, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    frame = zstandard.ZstdCompressor(dict_data=dictionary, write_dict_id=True).compress(b"weights " * 512)
    with pytest.raises(CorruptChunkError):
        decode_into(CODEC_GROUPED, frame_body(frame, 4096), bytearray(4096))


def test_decompression_bomb_allocates_nothing_past_the_raw_length() -> None:
    """A frame claiming the plane's length but expanding to 64 MiB, and one claiming 1 TiB: refused before or
    while decoding into exactly the plane's bytes."""
    m = 1 << 16
    big = zstandard.ZstdCompressor(level=19).compress(bytes(64 << 20))
    params = zstandard.get_frame_parameters(big)
    assert params.content_size == 64 << 20
    # rewrite the frame's declared content size (the 4 bytes after a 1-byte descriptor) to the plane's length
    descriptor = big[4]
    assert descriptor >> 6 == 2  # a 4-byte content size field
    header_size = zstandard.frame_header_size(big)
    lying = bytearray(big)
    lying[header_size - 4 : header_size] = struct.pack("<I", m)
    claims = bytearray(big)
    descriptor_claim = (descriptor & 0x3F) | (3 << 6)  # an 8-byte content size of 1 TiB
    claims = bytearray(big[:4]) + bytes([descriptor_claim]) + big[5 : header_size - 4] + struct.pack("<Q", 1 << 40)
    claims += big[header_size:]
    for frame in (bytes(lying), bytes(claims)):
        tracemalloc.start()
        try:
            with pytest.raises(CorruptChunkError):
                decode_into(CODEC_GROUPED, frame_body(frame, m), bytearray(m))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 4 * m, peak


def test_every_truncation_and_byte_flip_is_refused_or_exact() -> None:
    """Damage anywhere in a stored object: an error from the CkptError tree, never another exception, and never
    wrong bytes (the chain is checked against its digest)."""
    objects = golden_objects()
    for name in ("grouped_small", "grouped_bf16", "grouped_f32_blocks", "delta_add_bf16", "delta_xor_bf16"):
        entry = MANIFEST[name]
        digest, good = entry["digest"], objects[entry["digest"]]
        step = max(1, len(good) // 300)
        for cut in range(0, len(good), step):
            damaged = dict(objects)
            damaged[digest] = good[:cut]
            with pytest.raises(CkptError):
                decode_chain(digest, bytearray(entry["raw_length"]), fetcher(damaged))
        for pos in range(16, len(good), step):
            for flip in (0x01, 0x80, 0xFF):
                bad = bytearray(good)
                bad[pos] ^= flip
                damaged = dict(objects)
                damaged[digest] = bytes(bad)
                out = bytearray(entry["raw_length"])
                try:
                    decode_chain(digest, out, fetcher(damaged))
                except CkptError:
                    continue
                assert hash_raw(out) == digest  # a flip that changes nothing decoded (a stored plane's twin)


# -- chains --------------------------------------------------------------------------------------------------


def chain(depth: int, n: int = 70_000, seed: int = 0) -> tuple[list[str], dict[str, bytes], list[bytes]]:
    """A keyframe and ``depth`` deltas on it, as a store would hold them."""
    rng = np.random.default_rng(seed)
    raws = [(rng.normal(size=n // 2) * 0.02).astype(np.float32).view("<u4").__rshift__(16).astype("<u2").tobytes()]
    for _ in range(depth):
        moved = np.frombuffer(raws[-1], dtype="<u2").copy()
        moved[rng.integers(0, moved.size, moved.size // 3)] += 1
        raws.append(moved.tobytes())
    objects: dict[str, bytes] = {}
    digests: list[str] = []
    for i, raw in enumerate(raws):
        kw = {} if i == 0 else {"reference": raws[i - 1], "reference_digest": digests[-1], "reference_depth": i - 1}
        enc = encode_chunk(raw, layout=layout_for("BF16"), max_depth=255, **kw)  # type: ignore[arg-type]
        assert enc.depth == i
        digests.append(hash_raw(raw))
        objects[digests[-1]] = stored_object(enc.codec, encoded(enc.codec, enc.parts), len(raw))
    return digests, objects, raws


def test_chain_decodes_every_link() -> None:
    digests, objects, raws = chain(5)
    for i, (digest, raw) in enumerate(zip(digests, raws, strict=True)):
        out = bytearray(len(raw))
        assert decode_chain(digest, out, fetcher(objects)) == i
        assert bytes(out) == raw
    with ThreadPoolExecutor(2) as pool:
        out = bytearray(len(raws[-1]))
        decode_chain(digests[-1], out, fetcher(objects), executor=pool)
        assert bytes(out) == raws[-1]


def test_chain_deeper_than_allowed_is_refused() -> None:
    digests, objects, raws = chain(3)
    with pytest.raises(CorruptChunkError, match="3 links deep, more than the 2 allowed"):
        decode_chain(digests[3], bytearray(len(raws[3])), fetcher(objects), max_depth=2)
    assert decode_chain(digests[2], bytearray(len(raws[2])), fetcher(objects), max_depth=2) == 2


def test_missing_reference_names_both_chunks() -> None:
    digests, objects, raws = chain(2)
    del objects[digests[0]]
    with pytest.raises(MissingObjectError, match=f"{digests[2][:12]}.*reference {digests[0][:12]} is missing"):
        decode_chain(digests[2], bytearray(len(raws[2])), fetcher(objects))
    with pytest.raises(MissingObjectError, match=f"chunk {digests[2][:12]} is missing"):
        decode_chain(digests[2], bytearray(len(raws[2])), fetcher({}))


def test_damaged_reference_is_damage_of_its_dependents() -> None:
    """A keyframe whose bytes changed (still a valid encoding): every chunk above it reports it by name."""
    digests, objects, raws = chain(3)
    key = bytearray(raws[0])
    key[100] ^= 1
    objects[digests[0]] = stored_object(CODEC_RAW, bytes(key), len(key))
    for i in (1, 2, 3):
        with pytest.raises(CorruptChunkError, match=f"delta reference {digests[0][:12]} \\({i} links?"):
            decode_chain(digests[i], bytearray(len(raws[i])), fetcher(objects))
    with pytest.raises(CorruptChunkError, match="do not match its digest"):
        decode_chain(digests[0], bytearray(len(raws[0])), fetcher(objects))


def test_lying_chain_depths_and_loops_are_refused() -> None:
    digests, objects, raws = chain(2)
    n = len(raws[0])

    def relink(digest: str, reference: str, depth: int) -> None:
        data = bytearray(objects[digest])
        data[16:48] = bytes.fromhex(reference)
        data[48] = depth
        objects[digest] = bytes(data)

    relink(digests[2], digests[1], 1)  # the link below says 1 too: depths must fall
    with pytest.raises(CorruptChunkError, match="at depth 0 or less, not 1"):
        decode_chain(digests[2], bytearray(n), fetcher(objects))
    relink(digests[2], digests[1], 3)  # deeper than written, the link below shallower: valid, and decodes
    decode_chain(digests[2], bytearray(n), fetcher(objects))
    relink(digests[2], digests[0], 2)  # the wrong reference (a keyframe ends a chain anywhere): wrong bytes
    with pytest.raises(CorruptChunkError, match="do not match"):
        decode_chain(digests[2], bytearray(n), fetcher(objects))
    relink(digests[1], digests[2], 1)  # a loop: 2 → 1 → 2
    relink(digests[2], digests[1], 2)
    with pytest.raises(CorruptChunkError):
        decode_chain(digests[2], bytearray(n), fetcher(objects))
    short = stored_object(CODEC_RAW, bytes(10), 10)  # a reference of another length
    objects["cd" * 32] = short
    relink(digests[1], "cd" * 32, 1)
    with pytest.raises(CorruptChunkError, match="holds 10 bytes"):
        decode_chain(digests[1], bytearray(n), fetcher(objects))


# -- parallel and streaming ----------------------------------------------------------------------------------


def test_parallel_blocks_equal_serial() -> None:
    raw = (np.random.default_rng(3).normal(size=300_000) * 0.02).astype("<f4").tobytes()
    serial = encode_chunk(raw, layout=layout_for("F32"), block_log=16)
    with ThreadPoolExecutor(2) as pool:
        parallel = encode_chunk(raw, layout=layout_for("F32"), block_log=16, executor=pool)
        assert encoded(0, parallel.parts) == encoded(0, serial.parts)
        out = bytearray(len(raw))
        decode_into(parallel.codec, encoded(0, parallel.parts), out, executor=pool)
    assert bytes(out) == raw


def test_map_bounded_keeps_few_chunks_in_flight() -> None:
    pulled = 0
    lock = threading.Lock()

    def items() -> Iterator[int]:
        nonlocal pulled
        for i in range(100):
            with lock:
                pulled += 1
            yield i

    with ThreadPoolExecutor(2) as pool:
        results = map_bounded(lambda x: x * x, items(), executor=pool, max_in_flight=3)
        assert next(results) == 0
        assert pulled <= 3
        assert list(results) == [i * i for i in range(1, 100)]
        with pytest.raises(ValueError):
            next(map_bounded(abs, [1], executor=pool, max_in_flight=0))


@pytest.mark.parametrize("dtype", ["BF16", "F32", "I64", None])
def test_a_chain_decodes_block_major_alike_on_every_core(dtype: str | None) -> None:
    """A chain whose links share one block size decodes block by block through every link (in parallel on an
    executor); links of other block sizes decode link by link: the same bytes either way, tail included."""
    from ckpt.store._codecs import OP_XOR, decode_chain, encode_chunk, hash_raw, layout_for

    rng = np.random.default_rng(3)
    n = 5 * (1 << 16) + 7  # five 64 KiB blocks and a tail of 7 bytes
    for key_log, key_raw in ((16, False), (17, False), (16, True)):
        base = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        stored: dict[str, tuple[int, int, bytes]] = {}
        if key_raw:
            stored[hash_raw(base)] = (0, n, base)
        else:
            enc = encode_chunk(base, layout=layout_for(dtype), block_log=key_log, min_saving=-1.0)
            stored[hash_raw(base)] = (enc.codec, n, b"".join(bytes(memoryview(p)) for p in enc.parts))
        prev, depth = base, 0
        for step in range(3):
            cur = bytearray(prev)
            cur[step::97] = bytes((b + 1) % 256 for b in cur[step::97])
            op = OP_XOR if step == 1 else None
            enc = encode_chunk(
                bytes(cur),
                layout=layout_for(dtype),
                reference=prev,
                reference_digest=hash_raw(prev),
                reference_depth=depth,
                op=op,
                block_log=16,
                min_saving=-1.0,
            )
            assert enc.depth == depth + 1
            stored[hash_raw(bytes(cur))] = (enc.codec, n, b"".join(bytes(memoryview(p)) for p in enc.parts))
            prev, depth = bytes(cur), enc.depth
        alone, parallel = bytearray(n), bytearray(n)
        assert decode_chain(hash_raw(prev), alone, stored.__getitem__) == 3
        with ThreadPoolExecutor(4) as pool:
            assert decode_chain(hash_raw(prev), parallel, stored.__getitem__, executor=pool) == 3
        assert bytes(alone) == bytes(parallel) == prev
