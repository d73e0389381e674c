"""Compression in the store (codec 1, byte-grouped zstd): every path that touches a chunk, on real files and S3.

The address is the BLAKE3 digest of the raw bytes whatever the encoding, so a chunk saved raw and the same
chunk saved compressed are one object; every read decodes and checks the digest; older raw stores read as
they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import ckpt
from ckpt import CorruptChunkError, FormatVersionError
from ckpt.cli._app import cli
from ckpt.store import _layout as layout
from ckpt.store._objects import CHUNK_HEADER_SIZE, hash_chunk

CHUNK = 64 << 10


def weights(seed: int = 0, n: int = 40_000) -> dict[str, Any]:
    """A bf16 and an fp32 weight (the scale of trained weights), an int64 index and a bias."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=g) * 0.02
    return {
        "bf16": w.to(torch.bfloat16),
        "f32": w.clone(),
        "idx": torch.arange(n // 4, dtype=torch.int64),
        "bias": torch.zeros(7),
    }


def objects(store: ckpt.Store) -> dict[str, bytes]:
    """Every chunk object: digest → its stored bytes."""
    return {layout.digest_from_path(e.path): store.backend.read(e.path) for e in store.backend.list("chunks/")}


def codec_of(store: ckpt.Store, digest: str) -> int:
    return store.backend.read(layout.chunk_path(digest), 0, 16)[5]


def assert_same(back: dict[str, Any], want: dict[str, Any]) -> None:
    assert set(back) == set(want)
    for k, v in want.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k


@pytest.fixture
def compressed(location: tuple[str, dict[str, Any]]) -> ckpt.Store:
    url, opts = location
    return ckpt.init(url, chunk_size=CHUNK, **opts)


def test_weights_are_stored_compressed_and_load_bit_exact(compressed: ckpt.Store) -> None:
    state = weights()
    snap = compressed.save(
        state, files={"config.json": json.dumps({"hidden": 384} | {str(i): i for i in range(900)}).encode()}
    )
    stored = objects(compressed)
    table = compressed.table(snap.id)
    for name in ("bf16", "f32", "idx"):
        for digest in table.tensors[name].chunks:
            assert codec_of(compressed, digest) == 1, name  # grouped
    assert codec_of(compressed, table.tensors["bias"].chunks[0]) == 0  # 28 bytes: raw
    stats = compressed.stats()
    assert stats.chunk_raw_bytes == table.nbytes + sum(f.size for f in table.files.values())
    assert stats.chunk_bytes == sum(len(b) for b in stored.values())
    assert stats.chunk_bytes < 0.8 * stats.chunk_raw_bytes
    foot = compressed.footprint(snap.id)
    assert (foot.chunks, foot.raw_bytes, foot.stored_bytes) == (len(stored), stats.chunk_raw_bytes, stats.chunk_bytes)
    assert_same(compressed.load(snap.id), state)  # every byte decoded and checked against its digest
    lazy = compressed.tensors(snap.id)
    assert torch.equal(lazy["f32"], state["f32"])
    assert b"".join(compressed.tensor_bytes(snap.id, "bf16")) == state["bf16"].view(torch.int16).numpy().tobytes()
    assert json.loads(compressed.files(snap.id)["config.json"])["hidden"] == 384
    report = compressed.verify()
    assert report.ok and report.bytes == stats.chunk_bytes  # bytes as stored, as stats counts them


def test_the_address_is_the_raw_bytes_digest_so_encodings_dedup(compressed: ckpt.Store) -> None:
    state = weights()
    raw = compressed.save(state, compression=False)
    before = objects(compressed)
    assert {codec_of(compressed, d) for d in before} == {0}
    again = compressed.save(state)  # compression on: every chunk is there already, raw, and stays so
    assert objects(compressed) == before and again.table == raw.table
    data = state["f32"].numpy().tobytes()[:CHUNK]
    assert compressed.table(raw.id).tensors["f32"].chunks[0] == hash_chunk(data)


def test_random_bytes_stay_raw(compressed: ckpt.Store) -> None:
    noise = torch.from_numpy(np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8))
    snap = compressed.save({"noise": noise})
    for digest in compressed.table(snap.id).tensors["noise"].chunks:
        assert codec_of(compressed, digest) == 0  # compression would not save 3%
    assert torch.equal(compressed.load(snap.id)["noise"], noise)


def test_a_store_made_without_compression_stays_raw(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "s"), chunk_size=CHUNK, compression=False)
    snap = store.save(weights())
    assert {codec_of(store, d) for d in objects(store)} == {0}
    on = store.save(weights(1), compression=True)  # a save can ask for it
    new = set(objects(store)) - set(store.table(snap.id).chunk_digests())
    assert new and {codec_of(store, d) for d in new} >= {1}
    assert_same(store.load(on.id), weights(1))


def test_an_older_raw_store_reads_unchanged_and_stays_raw(tmp_path: Path) -> None:
    """A format 1.2 store (no compression setting, every chunk raw) is read as it is and written raw."""
    root = tmp_path / "old"
    store = ckpt.init(str(root), chunk_size=CHUNK, compression=False, pack_size=0)
    first = store.save(weights())
    config = json.loads((root / "ckpt.json").read_bytes())
    del config["compression"]
    config["format_version"] = "1.2"
    (root / "ckpt.json").write_bytes(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    before = objects(store)
    old = ckpt.open(str(root))
    assert old.config.compression is False and old.config.format_version == "1.2"
    assert_same(old.load(first.id), weights())
    assert old.verify().ok
    second = old.save(weights(1))
    assert {codec_of(old, d) for d in objects(old)} == {0}
    assert all(objects(old)[d] == b for d, b in before.items())
    assert_same(old.load(second.id), weights(1))


def test_mmap_maps_raw_chunks_and_decodes_encoded_ones(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "s"), chunk_size=4 << 20)
    w = torch.randn(1 << 18) * 0.02  # 1 MiB: one chunk, memory-mapped when raw
    noise = torch.from_numpy(np.random.default_rng(1).integers(0, 256, 2 << 20, dtype=np.uint8))
    snap = store.save({"w": w, "noise": noise})
    table = store.table(snap.id)
    assert codec_of(store, table.tensors["w"].chunks[0]) == 1 and codec_of(store, table.tensors["noise"].chunks[0]) == 0
    back = store.load(snap.id, mmap=True)
    assert torch.equal(back["w"], w) and torch.equal(back["noise"], noise)


# -- damage ---------------------------------------------------------------------------------------------


def damaged(tmp_path: Path) -> tuple[ckpt.Store, ckpt.Snapshot, str, Path]:
    store = ckpt.init(str(tmp_path / "s"), chunk_size=CHUNK)
    snap = store.save({"model": {"w": weights()["f32"]}})
    digest = store.table(snap.id).tensors["model/w"].chunks[1]
    assert codec_of(store, digest) == 1
    return store, snap, digest, tmp_path / "s" / layout.chunk_path(digest)


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "where", ["body header", "plane table", "first plane", "middle", "last byte", "truncated", "appended"]
)
def test_a_damaged_encoded_chunk_is_corrupt_and_named(tmp_path: Path, where: str) -> None:
    store, snap, digest, path = damaged(tmp_path)
    size = path.stat().st_size
    if where == "truncated":
        path.write_bytes(path.read_bytes()[: size - 100])
    elif where == "appended":
        path.write_bytes(path.read_bytes() + b"\0" * 3)
    else:
        at = {"body header": 0, "plane table": 5, "first plane": 40, "middle": (size - 16) // 2, "last byte": size - 17}
        flip(path, CHUNK_HEADER_SIZE + at[where])
    with pytest.raises(CorruptChunkError) as info:  # never FormatVersionError: no 1.3 writer makes this
        store.load(snap.id)
    err = info.value
    assert not isinstance(err, FormatVersionError)
    assert err.digest == digest and err.tensor == "model/w" and err.snapshot == snap.id
    assert "model/w" in str(err) and snap.short_id in str(err)
    with pytest.raises(CorruptChunkError, match="model/w"):
        store.tensors(snap.id)["model/w"]
    report = store.verify()
    assert [(d.kind, d.object, d.digest, d.tensors) for d in report.damage] == [
        ("corrupt", "chunk", digest, ("model/w",))
    ]


def test_a_codec_this_ckpt_does_not_know_is_refused(tmp_path: Path) -> None:
    store, snap, _, path = damaged(tmp_path)
    data = bytearray(path.read_bytes())
    data[5] = 9
    path.write_bytes(bytes(data))
    with pytest.raises(FormatVersionError, match="codec 9"):
        store.load(snap.id)


@pytest.mark.s3
def test_repair_puts_back_the_encoded_object_from_a_good_copy(tmp_path: Path, s3_server: dict[str, Any]) -> None:
    store, snap, _, path = damaged(tmp_path)
    good = ckpt.init("s3://ckpt-test/codecs-repair", chunk_size=CHUNK, **s3_server)
    report = store.sync_to(good, ["main"])
    assert report.chunks == len(objects(store)) and report.bytes == store.stats().chunk_bytes
    assert objects(good) == objects(store)  # sync copies each object as it is stored: compressed stays so
    flip(path, CHUNK_HEADER_SIZE + 40)
    assert not store.verify().ok
    fixed = store.repair(good)
    assert fixed.ok
    assert objects(store) == objects(good)
    assert torch.equal(store.load(snap.id)["model"]["w"], weights()["f32"])


# -- choosing it ------------------------------------------------------------------------------------------


def test_cli_init_compression_flag_and_show_report_stored_beside_raw(tmp_path: Path) -> None:
    runner = CliRunner()
    on, off = str(tmp_path / "on"), str(tmp_path / "off")
    result = runner.invoke(cli, ["init", on, "--chunk-size", "64KiB", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["compression"] is True
    result = runner.invoke(cli, ["init", off, "--no-compression", "--json"])
    assert json.loads(result.stdout)["compression"] is False
    assert ckpt.open(off).config.compression is False and ckpt.open(on).config.format_version == "3.0"
    ckpt.open(on).save(weights())
    result = runner.invoke(cli, ["--store", on, "show", "main", "--json"])
    storage = json.loads(result.stdout)["storage"]
    assert 0 < storage["stored_bytes"] < storage["raw_bytes"] == ckpt.open(on).stats().chunk_raw_bytes
    text = runner.invoke(cli, ["--store", on, "show", "main"]).stdout
    assert "stored" in text and "raw" in text


def test_compression_must_be_a_bool(tmp_path: Path) -> None:
    with pytest.raises(ckpt.RecordError):
        ckpt.init(str(tmp_path / "s"), compression="yes")  # type: ignore[arg-type]
    store = ckpt.init(str(tmp_path / "t"))
    with pytest.raises(ckpt.RecordError):
        store.save(weights(), compression=1)  # type: ignore[arg-type]
