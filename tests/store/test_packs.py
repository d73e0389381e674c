"""Small tensors packed into shared chunks (format 3.0): round trips, dedup, deltas, readers, damage, gc, sync."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import ckpt
from ckpt.diff import diff
from ckpt.errors import CorruptChunkError, FormatVersionError, RecordError
from ckpt.model import canonical_json, digest_bytes
from ckpt.store import _layout as layout
from ckpt.store._packs import PACK_MAX_TENSOR

NOW = timedelta(0)


def chunk_files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (root / "chunks").rglob("*") if p.is_file()}


def small_state(seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {
        "scalar": torch.tensor(3.5),
        "one": torch.tensor([7], dtype=torch.int64),
        "flags": torch.tensor([True, False, True]),
        "i8": torch.arange(-5, 6, dtype=torch.int8),
        "bf16": torch.randn(33, generator=g).to(torch.bfloat16),
        "f32": torch.randn(4, 5, generator=g),
        "f64": torch.randn(3, generator=g, dtype=torch.float64),
        "under": torch.randn(PACK_MAX_TENSOR // 4 - 1, generator=g),  # the largest packed F32 tensor
        "threshold": torch.randn(PACK_MAX_TENSOR // 4, generator=g),  # exactly 64 KiB: a chunk of its own
        "empty": torch.zeros(0, 4),
        "np": np.arange(6, dtype=np.float32).reshape(2, 3),
    }


def assert_equal(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got.keys() == want.keys()
    for k, v in want.items():
        if isinstance(v, np.ndarray):
            assert isinstance(got[k], np.ndarray) and got[k].dtype == v.dtype and (got[k] == v).all(), k
        else:
            assert got[k].dtype == v.dtype and got[k].shape == v.shape and torch.equal(got[k], v), k


def test_mixed_dtypes_round_trip_in_one_pack_per_dtype(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "s"))
    assert store.config.format_version == "3.0" and store.config.pack_size == 4 << 20
    state = small_state()
    state["tied_a"] = state["tied_b"] = torch.randn(8)
    snap = store.save(state)
    table = store.table(snap.id)
    t = table.tensors
    assert t["threshold"].pack is None and t["empty"].pack is None and t["empty"].chunks == ()
    packed = [n for n, e in t.items() if e.pack is not None]
    assert set(packed) == set(state) - {"threshold", "empty"}
    # one pack per dtype: F32 holds f32, under, np and the tied tensor (once)
    assert len({t[n].chunks[0] for n in packed}) == len({t[n].dtype for n in packed})
    assert t["tied_a"] == t["tied_b"] and table.tied == (("tied_a", "tied_b"),)
    f32 = t["f32"].chunks[0]
    in_f32 = {"scalar", "f32", "under", "np", "tied_a", "tied_b"}
    assert {n for n in packed if t[n].chunks[0] == f32} == in_f32
    assert sum(t[n].nbytes for n in in_f32 - {"tied_b"}) == t["f32"].pack[1]  # type: ignore[index]
    loaded = store.load(snap.id)
    assert_equal(loaded, state)
    assert loaded["tied_a"] is loaded["tied_b"]
    # stored bytes: one object per pack and one for the 64 KiB tensor; the pack counted once in stats
    assert len(chunk_files(tmp_path / "s")) == len({t[n].dtype for n in packed}) + 1
    assert store.stats().chunk_raw_bytes == sum(e.nbytes for n, e in t.items() if n != "tied_b")
    lazy = store.tensors(snap.id)
    assert torch.equal(lazy["bf16"], state["bf16"]) and (lazy["np"] == state["np"]).all()
    assert b"".join(store.tensor_bytes(snap.id, "i8")) == state["i8"].numpy().tobytes()


def test_unchanged_resave_writes_nothing_and_one_change_rewrites_one_pack_as_a_delta(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=1 << 20, pack_size=64 << 10)
    g = torch.Generator().manual_seed(1)
    state = {f"layer{i}.norm": torch.randn(256, generator=g) for i in range(200)}  # 200 kB: 4 packs
    first = store.save(state)
    before = chunk_files(root)
    assert len(before) == 4
    store.save(state)
    assert chunk_files(root) == before  # the same cut: every pack deduplicated
    changed = dict(state)
    changed["layer100.norm"] = state["layer100.norm"] + 1e-3
    second = store.save(changed)
    after = chunk_files(root)
    new = set(after) - set(before)
    assert len(new) == 1
    (digest,) = new
    assert after[digest][5] == 2  # codec 2: a delta against the parent's pack at the same place
    assert len(after[digest]) < (64 << 10) // 2
    assert_equal(store.load(second.id), changed)
    assert_equal(store.load(first.id), state)
    rows = {r.name: r.status for r in diff(store, first.id, second.id).tensors}
    assert [n for n, s in rows.items() if s != "unchanged"] == ["layer100.norm"]
    assert rows["layer100.norm"] == "changed"


def test_export_is_byte_identical_to_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from ckpt.interop import export, import_folder

    g = torch.Generator().manual_seed(2)
    sd = {f"experts.{i}.w": torch.randn(64, generator=g) for i in range(300)}
    sd["big"] = torch.randn(40_000, generator=g)
    sd["ids"] = torch.arange(5, dtype=torch.int64)
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file(sd, str(folder / "model.safetensors"))
    store = ckpt.init(str(tmp_path / "s"))
    import_folder(store, folder)
    assert any(e.pack is not None for e in store.table("main").tensors.values())
    out = tmp_path / "out"
    export(store, "main", out)
    assert (out / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()


def test_damaged_pack_names_its_tensors_and_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = ckpt.init(str(root), compression=False)
    snap = store.save({"a": torch.ones(3), "b": torch.zeros(2), "c": torch.arange(4.0)})
    digest = store.table(snap.id).tensors["a"].chunks[0]
    path = root / layout.chunk_path(digest)
    data = bytearray(path.read_bytes())
    data[20] ^= 0xFF
    path.write_bytes(bytes(data))
    report = store.verify()
    (damage,) = report.damage
    assert damage.digest == digest and damage.tensors == ("a", "b", "c")
    with pytest.raises(CorruptChunkError, match="'a, b, c"):
        store.load(snap.id)
    with pytest.raises(CorruptChunkError):
        store.tensors(snap.id)["b"]


def test_gc_keeps_a_pack_while_any_snapshot_names_it(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = ckpt.init(str(root), compression=False)
    first = store.save({"w": torch.ones(4), "step": torch.tensor([1], dtype=torch.int64)})
    second = store.save({"w": torch.ones(4) * 2, "step": torch.tensor([1], dtype=torch.int64)})
    t1, t2 = store.table(first.id).tensors, store.table(second.id).tensors
    assert t1["step"].chunks == t2["step"].chunks and t1["w"].chunks != t2["w"].chunks
    store.prune(first.id)
    store.gc(grace=NOW, expire_reflog=NOW)
    files = chunk_files(root)
    assert t1["w"].chunks[0] not in files and t2["step"].chunks[0] in files
    assert store.load(second.id)["step"].tolist() == [1]
    assert store.verify().ok


@pytest.mark.s3
def test_sync_of_a_packed_store_to_s3_and_back(tmp_path: Path, s3_server: dict[str, Any]) -> None:
    store = ckpt.init(str(tmp_path / "s"))
    state = small_state(3)
    snap = store.save(state)
    remote = ckpt.init("s3://ckpt-test/packs-sync", **s3_server)
    report = store.sync_to(remote)
    assert report.chunks == len(store.table(snap.id).chunk_digests())
    assert remote.verify().ok
    assert_equal(remote.load(snap.id), state)
    back = ckpt.init(str(tmp_path / "back"))
    remote.sync_to(back)
    assert_equal(back.load(snap.id), state)
    assert chunk_files(tmp_path / "back") == chunk_files(tmp_path / "s")


def test_sync_into_an_older_format_store_is_refused(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "s"))
    store.save({"w": torch.ones(3)})
    old = ckpt.init(str(tmp_path / "old"), pack_size=0)
    assert old.config.format_version == "2.0"
    with pytest.raises(FormatVersionError, match=r"format 3\.0"):
        store.sync_to(old)
    assert not chunk_files(tmp_path / "old")


def test_a_store_without_pack_size_never_packs(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = ckpt.init(str(root), pack_size=0)
    config = json.loads((root / "ckpt.json").read_bytes())
    assert "pack_size" not in config and config["format_version"] == "2.0"
    snap = ckpt.open(str(root)).save(small_state())
    assert all(e.pack is None for e in store.table(snap.id).tensors.values())
    with pytest.raises(RecordError, match="pack_size"):
        ckpt.init(str(tmp_path / "bad"), chunk_size="1MiB", pack_size="2MiB")


def _forge(root: Path, snap: ckpt.Snapshot, edit: Any) -> str:
    """A copy of ``snap`` whose table was changed by ``edit`` (a valid digest, so only the table rules stand)."""
    table = json.loads((root / layout.table_path(snap.table)).read_bytes())
    edit(table)
    data = canonical_json(table)
    table_id = digest_bytes(data)
    (root / layout.table_path(table_id)).parent.mkdir(parents=True, exist_ok=True)
    (root / layout.table_path(table_id)).write_bytes(data)
    record = json.loads(snap.record_bytes())
    record["table"] = table_id
    record_bytes = canonical_json(record)
    new_id = digest_bytes(record_bytes)
    (root / layout.snapshot_path(new_id)).parent.mkdir(parents=True, exist_ok=True)
    (root / layout.snapshot_path(new_id)).write_bytes(record_bytes)
    return new_id


def _set(name: str, key: str, value: Any) -> Any:
    def edit(table: dict[str, Any]) -> None:
        table["tensors"][name][key] = value

    return edit


def _pack_empty(table: dict[str, Any]) -> None:
    table["tensors"]["e"]["chunks"] = table["tensors"]["a"]["chunks"]
    table["tensors"]["e"]["pack"] = [0, 28]


def _both(value: Any) -> Any:
    def edit(table: dict[str, Any]) -> None:
        table["tensors"]["a"]["pack"] = table["tensors"]["b"]["pack"] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set("a", "pack", [0, 32]), "lengths"),  # two lengths for one pack (a, b and c share one of 28 bytes)
        (_set("b", "pack", [24, 28]), "do not lie inside"),  # past the pack's end
        (_set("b", "pack", [6, 28]), "multiple of the element size"),  # misaligned
        (_set("b", "pack", [-4, 28]), "pack"),
        (_set("b", "pack", [0]), "pack"),
        (_set("b", "pack", [0, "28"]), "pack"),
        (_set("b", "pack", [0.0, 28]), "pack"),
        (_pack_empty, "empty tensor"),
        (_both([0, 8192]), "longer than a chunk"),
        (_set("c", "chunks", []), "exactly one chunk"),
    ],
    ids=[
        "two-lengths",
        "outside",
        "misaligned",
        "negative",
        "short",
        "string",
        "float",
        "empty",
        "over-chunk",
        "no-chunk",
    ],
)
def test_an_inconsistent_pack_is_refused(tmp_path: Path, edit: Any, message: str) -> None:
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=4096)
    snap = store.save({"a": torch.ones(3), "b": torch.zeros(2), "c": torch.ones(2), "e": torch.zeros(0)})
    forged = _forge(root, snap, edit)
    with pytest.raises(RecordError, match=message):
        store.load(forged)


def test_a_pack_whose_stored_length_differs_from_the_table_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=4096, compression=False)
    snap = store.save({"a": torch.ones(3), "b": torch.zeros(2)})
    forged = _forge(root, snap, _lengthen)
    with pytest.raises(CorruptChunkError):
        store.load(forged)
    with pytest.raises(CorruptChunkError):
        store.tensors(forged)["a"]
    assert not store.verify(forged).ok


def _lengthen(table: dict[str, Any]) -> None:
    table["tensors"]["a"]["pack"] = [0, 24]
    table["tensors"]["b"]["pack"] = [12, 24]


@pytest.mark.parametrize("golden", ["table.json", "table_tied.json", "table_sharded.json", "table_packed.json"])
def test_table_json_value_is_its_model_dump(golden: str) -> None:
    """``put_table`` writes ``json_value()``: the same JSON as pydantic's dump, for every kind of entry."""
    from ckpt.model import TensorTable

    data = (Path(__file__).parent.parent / "golden" / golden).read_bytes().rstrip(b"\n")
    table = TensorTable.model_validate_json(data)
    assert table.json_value() == table.model_dump(mode="json")
    assert canonical_json(table.json_value()) == data


def test_packs_are_cut_by_top_level_key_and_dtype_in_order() -> None:
    from ckpt.store._packs import plan_packs

    tensors = [
        ("w1", "F32", 8),
        ("w2", "F32", 8),  # a flat state dict: one group
        ("model/a", "F32", 12),
        ("optimizer/a", "F32", 4),
        ("model/b", "BF16", 2),
        ("model/c", "F32", 8),
        ("model/big", "F32", PACK_MAX_TENSOR),  # not packed
        ("model/empty", "F32", 0),  # not packed
        ("model/d", "F32", 4),
    ]
    assert plan_packs(tensors, 20) == [
        ("F32", [("w1", 0), ("w2", 8)]),
        ("F32", [("model/a", 0), ("model/c", 12)]),  # 20 bytes: d does not fit
        ("F32", [("model/d", 0)]),
        ("F32", [("optimizer/a", 0)]),
        ("BF16", [("model/b", 0)]),
    ]
    assert plan_packs(tensors, 0) == []


def test_paused_gc_pauses_the_collector_on_the_main_thread_only() -> None:
    import gc
    import threading

    from ckpt.model import paused_gc

    assert gc.isenabled()
    with pytest.raises(ValueError), paused_gc():
        assert not gc.isenabled()
        raise ValueError
    assert gc.isenabled()  # resumed after an error too
    seen: list[bool] = []

    def background() -> None:
        with paused_gc():
            seen.append(gc.isenabled())

    thread = threading.Thread(target=background)
    thread.start()
    thread.join()
    assert seen == [True] and gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()  # a collector the caller paused stays paused
    finally:
        gc.enable()
