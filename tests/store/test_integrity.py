"""Damage is found: every chunk and record is checked against its digest, and errors say where it hit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import ckpt
from ckpt import CkptError, CorruptChunkError, FormatVersionError, IntegrityError, MissingObjectError, RecordError

pytestmark = pytest.mark.torch

HEADER = 16


@pytest.fixture
def root(local_store: ckpt.Store, tmp_path: Path) -> Path:
    """The local store's folder."""
    path = tmp_path / "store"
    assert (path / "ckpt.json").is_file()
    return path


def chunk_file(root: Path, digest: str) -> Path:
    path = root / "chunks" / digest[:2] / digest
    assert path.is_file()
    return path


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def first_chunk(store: ckpt.Store, snap: ckpt.Snapshot, tensor: str, index: int = 0) -> str:
    return store.table(snap.id).tensors[tensor].chunks[index]


def make_state(seed: int) -> dict[str, object]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model": {"w": torch.randn(3000, generator=g), "b": torch.randn(10, generator=g)},  # w: 3 chunks
        "step": seed,
    }


# -- one damaged chunk ------------------------------------------------------------------------------------


@dataclass
class Case:
    """A local store holding one snapshot, and the chunk of one tensor to damage."""

    store: ckpt.Store
    root: Path
    snap: ckpt.Snapshot
    state: dict[str, Any]
    tensor: str
    digest: str


@pytest.fixture(params=["read", "mapped"])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Case:
    """``read``: a tensor of 3 chunks, read into new memory. ``mapped``: a 1 MiB single-chunk tensor, which a
    local store memory-maps instead of reading. Raw chunks (compression off), whose payload bytes are the
    tensor's: tests/store/test_codecs_store.py damages encoded ones."""
    g = torch.Generator().manual_seed(1)
    if request.param == "read":
        store = ckpt.init(str(tmp_path / "store"), chunk_size=4096, compression=False)
        state = make_state(1)
        name, index = "model/w", 1
    else:
        store = ckpt.init(str(tmp_path / "store"), chunk_size=2 << 20, compression=False)
        state = {"model": {"w": torch.randn(1 << 18, generator=g), "b": torch.randn(10, generator=g)}, "step": 1}
        name, index = "model/w", 0
    snap = store.save(state)
    entry = store.table(snap.id).tensors[name]
    assert len(entry.chunks) == (3 if request.param == "read" else 1)
    return Case(store, tmp_path / "store", snap, state, name, entry.chunks[index])


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_flipped_payload_byte_names_tensor_and_snapshot(case: Case, where: str) -> None:
    path = chunk_file(case.root, case.digest)
    size = path.stat().st_size
    flip(path, {"first": HEADER, "middle": (HEADER + size) // 2, "last": size - 1}[where])

    with pytest.raises(CorruptChunkError) as info:
        case.store.load(case.snap.id)
    err = info.value
    assert isinstance(err, IntegrityError) and isinstance(err, CkptError)
    assert case.tensor in str(err)
    assert case.snap.short_id in str(err)
    assert err.tensor == case.tensor
    assert err.snapshot == case.snap.id
    assert err.digest == case.digest
    assert err.hint
    with pytest.raises(CorruptChunkError, match=case.tensor):
        case.store.tensors(case.snap.id)[case.tensor]
    report = case.store.verify()
    assert [(d.kind, d.object, d.digest, d.tensors) for d in report.damage] == [
        ("corrupt", "chunk", case.digest, (case.tensor,))
    ]


def test_load_without_verify_does_not_catch_a_flipped_payload(case: Case) -> None:
    """Verification (on by default) is what catches silent corruption: without it, the damage gets through."""
    flip(chunk_file(case.root, case.digest), HEADER + 8)
    back = case.store.load(case.snap.id, verify=False)
    want = case.state["model"]
    assert back["model"]["w"].shape == want["w"].shape
    assert not torch.equal(back["model"]["w"], want["w"])
    assert torch.equal(back["model"]["b"], want["b"])
    assert not torch.equal(case.store.tensors(case.snap.id, verify=False)["model/w"], want["w"])
    with pytest.raises(CorruptChunkError):
        case.store.load(case.snap.id)


def test_deleted_chunk_is_missing(case: Case) -> None:
    chunk_file(case.root, case.digest).unlink()
    with pytest.raises(MissingObjectError, match=case.tensor) as info:
        case.store.load(case.snap.id)
    assert isinstance(info.value, IntegrityError)
    assert case.snap.short_id in str(info.value)
    report = case.store.verify()
    assert not report.ok
    assert [(d.kind, d.object, d.digest, d.tensors, d.snapshots) for d in report.damage] == [
        ("missing", "chunk", case.digest, (case.tensor,), (case.snap.id,))
    ]


@pytest.mark.parametrize("keep", [0, HEADER, HEADER + 10], ids=["empty", "header-only", "partial"])
def test_truncated_chunk_is_detected(case: Case, keep: int) -> None:
    path = chunk_file(case.root, case.digest)
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(IntegrityError, match=case.tensor):
        case.store.load(case.snap.id)
    # the file is there but damaged: that is corruption, not a pruned or collected object
    with pytest.raises(CorruptChunkError):
        case.store.load(case.snap.id)
    with pytest.raises(CorruptChunkError):
        case.store.tensors(case.snap.id)[case.tensor]
    report = case.store.verify()
    assert [(d.kind, d.digest, d.tensors) for d in report.damage] == [("corrupt", case.digest, (case.tensor,))]


@pytest.mark.parametrize("offset", [0, 3, 8, 9, 15], ids=lambda o: f"byte{o}")
def test_flipped_header_byte_is_corruption(local_store: ckpt.Store, root: Path, offset: int) -> None:
    # bytes 0-3 magic, 8-15 raw length
    snap = local_store.save(make_state(1))
    flip(chunk_file(root, first_chunk(local_store, snap, "model/b")), offset)
    with pytest.raises(CorruptChunkError) as info:
        local_store.load(snap.id)
    assert "model/b" in str(info.value) and snap.short_id in str(info.value)
    assert (info.value.tensor, info.value.snapshot) == ("model/b", snap.id)
    report = local_store.verify()
    assert [(d.kind, d.object, d.tensors) for d in report.damage] == [("corrupt", "chunk", ("model/b",))]


@pytest.mark.parametrize("offset", [4, 5], ids=["format", "codec"])
def test_flipped_format_or_codec_byte_is_refused(local_store: ckpt.Store, root: Path, offset: int) -> None:
    """A format or codec byte this ckpt does not know reads as a newer format; either way nothing loads."""
    snap = local_store.save(make_state(1))
    digest = first_chunk(local_store, snap, "model/b")
    flip(chunk_file(root, digest), offset)
    with pytest.raises((CorruptChunkError, FormatVersionError)) as info:
        local_store.load(snap.id)
    assert "model/b" in str(info.value) and snap.short_id in str(info.value)
    report = local_store.verify()
    assert [(d.object, d.digest, d.tensors) for d in report.damage] == [("chunk", digest, ("model/b",))]


def test_lazy_read_of_a_corrupt_tensor_names_it(local_store: ckpt.Store, root: Path) -> None:
    snap = local_store.save(make_state(1))
    flip(chunk_file(root, first_chunk(local_store, snap, "model/w", 2)), HEADER + 5)
    lazy = local_store.tensors(snap.id)
    assert torch.equal(lazy["model/b"], make_state(1)["model"]["b"])  # type: ignore[index]
    with pytest.raises(CorruptChunkError, match="model/w") as info:
        lazy["model/w"]
    assert info.value.snapshot == snap.id


# -- many damaged chunks, one pass ------------------------------------------------------------------------


def test_verify_reports_every_damaged_chunk_in_one_pass(local_store: ckpt.Store, root: Path) -> None:
    g = torch.Generator().manual_seed(0)  # 68 kB tensors: above the pack threshold, a chunk each
    shared = torch.randn(17_000, generator=g)
    a = local_store.save({"shared": shared, "only_a": torch.randn(17_000, generator=g)}, step=1)
    b = local_store.save({"shared": shared, "only_b": torch.randn(17_000, generator=g)}, step=2)
    c = local_store.save({"ok": torch.randn(17_000, generator=g)}, step=3, branch="other")
    assert local_store.verify().ok

    d_shared = first_chunk(local_store, a, "shared")
    d_a = first_chunk(local_store, a, "only_a")
    d_b = first_chunk(local_store, b, "only_b")
    flip(chunk_file(root, d_shared), HEADER + 3)  # payload
    flip(chunk_file(root, d_a), 9)  # header (length)
    flip(chunk_file(root, d_b), HEADER)  # payload

    report = local_store.verify()
    assert not report.ok
    assert report.snapshots == 3
    found = {d.digest: d for d in report.damage}
    assert set(found) == {d_shared, d_a, d_b} and len(report.damage) == 3
    assert all(d.kind == "corrupt" and d.object == "chunk" for d in report.damage)
    assert found[d_shared].tensors == ("shared",)
    assert set(found[d_shared].snapshots) == {a.id, b.id}
    assert (found[d_a].tensors, found[d_a].snapshots) == (("only_a",), (a.id,))
    assert (found[d_b].tensors, found[d_b].snapshots) == (("only_b",), (b.id,))
    for d in report.damage:
        assert d.message

    # verify one snapshot only
    only_b = local_store.verify(b.id)
    assert {d.digest for d in only_b.damage} == {d_shared, d_b}

    # nothing else is lost: the undamaged snapshot still loads
    assert torch.equal(local_store.load(c.id)["ok"], local_store.tensors(c.id)["ok"])
    assert local_store.verify(c.id).ok


# -- damaged records --------------------------------------------------------------------------------------


def test_corrupt_snapshot_record_is_detected(local_store: ckpt.Store, root: Path) -> None:
    first = local_store.save(make_state(1), step=1)
    second = local_store.save(make_state(2), step=2, branch="other")
    record = root / "snapshots" / first.id[:2] / f"{first.id}.json"
    assert record.is_file()
    text = record.read_bytes()
    record.write_bytes(text.replace(b'"step":1', b'"step":7'))  # still valid JSON, wrong digest
    assert record.read_bytes() != text

    with pytest.raises(CkptError) as info:
        local_store.load(first.id)
    assert isinstance(info.value, (CorruptChunkError, RecordError))
    assert first.id[:12] in str(info.value)
    report = local_store.verify()
    assert [(d.object, d.digest) for d in report.damage] == [("snapshot", first.id)]
    assert torch.equal(local_store.load(second.id)["model"]["w"], make_state(2)["model"]["w"])  # type: ignore[index]


def test_garbled_snapshot_record_is_detected(local_store: ckpt.Store, root: Path) -> None:
    snap = local_store.save(make_state(1))
    record = root / "snapshots" / snap.id[:2] / f"{snap.id}.json"
    record.write_bytes(b"\xff{not json")
    with pytest.raises((CorruptChunkError, RecordError)):
        local_store.load(snap.id)
    assert [d.object for d in local_store.verify().damage] == ["snapshot"]


def test_corrupt_tensor_table_is_detected(local_store: ckpt.Store, root: Path) -> None:
    first = local_store.save(make_state(1), step=1)
    second = local_store.save(make_state(2), step=2)
    table = root / "tables" / first.table[:2] / f"{first.table}.json"
    assert table.is_file()
    flip(table, len(table.read_bytes()) // 2)

    with pytest.raises(CkptError) as info:
        local_store.load(first.id)
    assert isinstance(info.value, (CorruptChunkError, RecordError))
    assert first.table[:12] in str(info.value)
    report = local_store.verify()
    assert [(d.kind, d.object, d.digest, d.snapshots) for d in report.damage] == [
        ("corrupt", "table", first.table, (first.id,))
    ]
    assert local_store.load(second.id)["step"] == 2


def test_missing_tensor_table_is_detected(local_store: ckpt.Store, root: Path) -> None:
    snap = local_store.save(make_state(1))
    (root / "tables" / snap.table[:2] / f"{snap.table}.json").unlink()
    with pytest.raises(MissingObjectError):
        local_store.load(snap.id)
    assert [(d.kind, d.object) for d in local_store.verify().damage] == [("missing", "table")]


def test_corrupt_attached_file_is_detected(local_store: ckpt.Store, root: Path) -> None:
    snap = local_store.save(make_state(1), files={"config.json": b'{"hidden": 64}'})
    digest = local_store.table(snap.id).files["config.json"].chunks[0]
    flip(chunk_file(root, digest), HEADER + 2)
    with pytest.raises(CorruptChunkError, match=r"config\.json"):
        local_store.files(snap.id)
    report = local_store.verify()
    assert [(d.digest, d.tensors) for d in report.damage] == [(digest, ("config.json",))]


def test_undamaged_store_verifies_clean(local_store: ckpt.Store) -> None:
    local_store.save(make_state(1), compression=False)  # raw: the byte figure below is exact
    local_store.save(make_state(2), files={"a.txt": b"hello"}, compression=False)
    report = local_store.verify()
    assert report.ok and report.damage == ()
    assert report.snapshots == 2
    assert report.chunks == 9  # w: 3 chunks and b: 1 chunk per snapshot (all distinct), and the file's
    assert report.bytes == 2 * (3000 * 4 + 10 * 4) + 5 + 9 * 16  # as stored: each chunk with its 16-byte header
