"""Golden bytes that pin the on-disk format (docs/format.md). A change here is a format change."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import ckpt
from ckpt.model import Snapshot, StoreConfig, TensorTable, canonical_json, digest_bytes
from ckpt.store import _layout as layout
from ckpt.store._objects import chunk_header

GOLDEN = Path(__file__).parent / "golden"


def _golden(name: str) -> bytes:
    return (GOLDEN / name).read_bytes().rstrip(b"\n")


def test_canonical_json_rules() -> None:
    assert canonical_json({"b": 1, "a": [1.5, None, True, "é"], "c": {"y": 2, "x": 1.0}}) == (
        '{"a":[1.5,null,true,"é"],"b":1,"c":{"x":1.0,"y":2}}'.encode()
    )
    assert digest_bytes(b"") == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"


def test_chunk_object_bytes(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "s"), chunk_size=4096)
    payload = np.array([1.0, 2.0], dtype="<f4").tobytes()
    store.save({"w": np.array([1.0, 2.0], dtype=np.float32)})
    digest = digest_bytes(payload)
    raw = (tmp_path / "s" / layout.chunk_path(digest)).read_bytes()
    assert raw[:4] == b"ckpt" and raw[4] == 1 and raw[5] == 0 and raw[6:8] == b"\0\0"
    assert int.from_bytes(raw[8:16], "little") == len(payload)
    assert raw[16:] == payload
    assert raw[:16] == chunk_header(len(payload))
    assert raw.hex() == _golden("chunk_f32_1_2.hex").decode()


def test_store_config_record() -> None:
    config = StoreConfig(
        chunk_size=67108864,
        created_at="2026-11-28T00:00:00.000000Z",
        compression=True,
        delta_depth=8,
        format_version="2.0",
    )
    assert canonical_json(config.model_dump(mode="json")) == _golden("ckpt.json")


def test_store_config_record_with_packs() -> None:
    """Format 3.0: ``pack_size`` is written (and the MAJOR is 3) only for a store that packs small tensors."""
    config = StoreConfig(
        chunk_size=67108864,
        created_at="2026-11-28T00:00:00.000000Z",
        compression=True,
        delta_depth=8,
        pack_size=4194304,
    )
    assert canonical_json(config.model_dump(mode="json")) == _golden("ckpt_packed.json")
    with pytest.raises(ValueError, match=r"format 3\.0"):
        StoreConfig(chunk_size=1 << 20, created_at="2026-11-28T00:00:00.000000Z", format_version="2.0", pack_size=16)


def test_tensor_table_record(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "s"), chunk_size=4096, pack_size=0)
    state = {
        "w": np.array([1.0, 2.0], dtype=np.float32),
        "step": 3,
        "opt": {0: {"betas": (0.9, 0.999), "lr": math.nan}},
        "names": ["a", None, True, -0.0, math.inf],
    }
    snap = store.save(state, files={"config.json": b'{"hidden": 4}'})
    table_bytes = (tmp_path / "s" / layout.table_path(snap.table)).read_bytes()
    assert table_bytes == _golden("table.json")
    assert snap.table == digest_bytes(table_bytes)
    table = TensorTable.model_validate(json.loads(table_bytes))
    assert table.tensors["w"].dtype == "F32" and table.tensors["w"].kind == "numpy"


def test_snapshot_record_and_id() -> None:
    snap = Snapshot(
        parents=("a" * 64,),
        relation="finetune",
        model="tiny-llama",
        step=1200,
        epoch=3,
        metrics={"val_loss": 0.41, "diverged": math.nan, "best": math.inf},
        message="epoch 3",
        metadata={"lr": 0.0003, "tags": ["x"]},
        created_at="2026-11-28T10:00:00.000000Z",
        ckpt_version="0.1.0",
        table="b" * 64,
        tensor_count=2,
        tensor_bytes=8,
    )
    data = snap.record_bytes()
    assert data == _golden("snapshot.json")
    assert snap.with_id().id == digest_bytes(data) == _golden("snapshot.id").decode()
    back = Snapshot.model_validate(json.loads(data))
    assert math.isnan(back.metrics["diverged"]) and back.metrics["best"] == math.inf


def _rewrite_json(path: Path, **extra: object) -> None:
    data = json.loads(path.read_bytes())
    data.update(extra)
    path.write_bytes(canonical_json(data))


def test_newer_minor_is_read_and_unknown_fields_ignored(tmp_path: Path) -> None:
    """A store from a newer MINOR version opens; fields this reader does not know are ignored."""
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=4096)
    snap = store.save({"w": np.arange(3, dtype=np.float32)}, model="m")
    _rewrite_json(root / "ckpt.json", format_version="3.7", future_setting=True)
    _rewrite_json(root / "refs" / "heads" / "main", future="x")
    # a newer writer's records carry extra fields, at the top and nested; their ids are their own digests
    table_path = root / layout.table_path(snap.table)
    table = json.loads(table_path.read_bytes())
    table["future"] = 1
    table["tensors"]["w"]["future"] = {"codec": "zstd"}
    table_bytes = canonical_json(table)
    new_table = digest_bytes(table_bytes)
    (root / layout.table_path(new_table)).parent.mkdir(parents=True, exist_ok=True)
    (root / layout.table_path(new_table)).write_bytes(table_bytes)
    record = json.loads(snap.record_bytes())
    record.update(table=new_table, future_field=[1, 2])
    record_bytes = canonical_json(record)
    new_id = digest_bytes(record_bytes)
    (root / layout.snapshot_path(new_id)).parent.mkdir(parents=True, exist_ok=True)
    (root / layout.snapshot_path(new_id)).write_bytes(record_bytes)
    reopened = ckpt.open(str(root))
    assert (reopened.load(new_id)["w"] == np.arange(3, dtype=np.float32)).all()
    assert reopened.resolve("main").id == snap.id
    assert reopened.verify().ok


def test_newer_major_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "s"
    ckpt.init(str(root))
    _rewrite_json(root / "ckpt.json", format_version="4.0")
    with pytest.raises(ckpt.FormatVersionError) as info:
        ckpt.open(str(root))
    assert "4.0" in str(info.value) and info.value.hint


def test_tied_tensors_table_record(tmp_path: Path) -> None:
    """Format 1.1: tensors that are one tensor (tied weights) are listed in ``tied``; each path keeps its entry."""
    store = ckpt.init(str(tmp_path / "s"), chunk_size=4096, pack_size=0)
    w = np.array([1.0, 2.0], dtype=np.float32)
    snap = store.save({"model": {"embed": w, "head": w, "norm": np.array([3.0], dtype=np.float32)}})
    table_bytes = (tmp_path / "s" / layout.table_path(snap.table)).read_bytes()
    assert table_bytes == _golden("table_tied.json")
    table = TensorTable.model_validate(json.loads(table_bytes))
    assert table.tied == (("model/embed", "model/head"),)
    assert table.tensors["model/embed"] == table.tensors["model/head"]
    state = store.load(snap.id)
    assert state["model"]["embed"] is state["model"]["head"]
    assert store.stats().chunks == 2  # the tied tensor's bytes once, and norm's


def test_table_without_ties_reads_unchanged_and_older_readers_ignore_ties(tmp_path: Path) -> None:
    """A table without ``tied`` is a format 1.0 table (same bytes); a 1.0 reader of a 1.1 store drops ``tied``."""
    golden = json.loads(_golden("table.json"))
    assert "tied" not in golden
    assert canonical_json(TensorTable.model_validate(golden).model_dump(mode="json")) == _golden("table.json")
    from ckpt.model import drop_unknown

    tied = json.loads(_golden("table_tied.json"))
    stripped = {k: v for k, v in tied.items() if k != "tied"}
    assert TensorTable.model_validate(drop_unknown(TensorTable, stripped)).tied == ()


@pytest.mark.parametrize(
    "tied",
    [
        [["model/embed"]],
        [["model/embed", "model/nope"]],
        [["model/embed", "model/norm"]],
        [["model/embed", "model/head"], ["model/head", "model/embed"]],
    ],
    ids=["single", "missing", "different", "twice"],
)
def test_invalid_ties_are_refused(tmp_path: Path, tied: list[list[str]]) -> None:
    """A forged ``tied`` that would make a reader choose between two values is an invalid table, never read."""
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=4096)
    w = np.array([1.0, 2.0], dtype=np.float32)
    snap = store.save({"model": {"embed": w, "head": w, "norm": np.array([3.0, 4.0], dtype=np.float32)}})
    table = json.loads((root / layout.table_path(snap.table)).read_bytes())
    table["tied"] = tied
    data = canonical_json(table)
    new_table = digest_bytes(data)
    (root / layout.table_path(new_table)).parent.mkdir(parents=True, exist_ok=True)
    (root / layout.table_path(new_table)).write_bytes(data)
    record = json.loads(snap.record_bytes())
    record["table"] = new_table
    record_bytes = canonical_json(record)
    new_id = digest_bytes(record_bytes)
    (root / layout.snapshot_path(new_id)).parent.mkdir(parents=True, exist_ok=True)
    (root / layout.snapshot_path(new_id)).write_bytes(record_bytes)
    with pytest.raises(ckpt.RecordError, match="tied"):
        store.load(new_id)


def test_sharded_tensor_table_record(tmp_path: Path) -> None:
    """Format 1.2: a tensor two ranks saved in blocks (here its two columns) is one entry with ``shards``:
    offsets, sizes and each block's own chunks; ``chunks`` stays empty. A tensor one rank held whole (the
    bias) is an ordinary entry, byte for byte a format 1.1 one."""
    torch = pytest.importorskip("torch")
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata,
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        TensorProperties,
        TensorStorageMetadata,
    )
    from torch.distributed.checkpoint.storage import WriteResult

    from ckpt.dcp import _store
    from ckpt.dcp._writer import assemble
    from ckpt.state import flatten

    store = ckpt.init(str(tmp_path / "s"), chunk_size=4096)
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    blocks = {(0, 0): w[:, :1].contiguous(), (0, 1): w[:, 1:].contiguous()}
    sources = {str(k): flatten({"b": v})[1]["b"] for k, v in blocks.items()}
    sources["bias"] = flatten({"b": torch.tensor([0.5, -0.5])})[1]["b"]
    entries, _ = _store.write_tensors(store, sources)

    def result(fqn: str, offsets: tuple[int, ...] | None, data: dict[str, object]) -> WriteResult:
        return WriteResult(index=MetadataIndex(fqn, offsets), size_in_bytes=8, storage_data=data)

    def tensor_data(key: str) -> dict[str, object]:
        e = entries[key]
        return {"dtype": e.dtype, "shape": e.shape, "chunks": e.chunks}

    f32 = TensorProperties(dtype=torch.float32)
    metadata = Metadata(
        state_dict_metadata={
            "model.w": TensorStorageMetadata(
                f32, torch.Size([2, 2]), [ChunkStorageMetadata(torch.Size(k), torch.Size([2, 1])) for k in blocks]
            ),
            "model.b": TensorStorageMetadata(
                f32, torch.Size([2]), [ChunkStorageMetadata(torch.Size([0]), torch.Size([2]))]
            ),
            "step": BytesStorageMetadata(),
        },
        planner_data={"model.w": ("model", "w"), "model.b": ("model", "b"), "step": ("step",)},
    )
    results = [
        [result("model.w", (0, 0), tensor_data("(0, 0)")), result("step", None, {"tree": 7, "tensors": {}})],
        [result("model.w", (0, 1), tensor_data("(0, 1)")), result("model.b", (0,), tensor_data("bias"))],
    ]
    tensors, tree = assemble(metadata, results)
    pending = _store.begin(
        store,
        "main",
        parents=None,
        relation=None,
        model=None,
        step=7,
        epoch=None,
        metrics=None,
        message=None,
        metadata=None,
        files=None,
        force=False,
    )
    snap = _store.commit(store, pending, tensors=tensors, tree=tree)
    table_bytes = (tmp_path / "s" / layout.table_path(snap.table)).read_bytes()
    assert table_bytes == _golden("table_sharded.json")
    entry = TensorTable.model_validate(json.loads(table_bytes)).tensors["model/w"]
    assert entry.chunks == () and [s.offsets for s in entry.shards] == [(0, 0), (0, 1)]
    state = store.load(snap.id)
    assert torch.equal(state["model"]["w"], w) and state["step"] == 7 and list(state["model"]) == ["w", "b"]
    golden = json.loads(_golden("table_sharded.json"))
    assert "shards" not in golden["tensors"]["model/b"]


def _packed_store(root: Path) -> tuple[ckpt.Store, Snapshot]:
    """Format 3.0: four small tensors cut into packs of at most 16 bytes, by dtype in table order."""
    store = ckpt.init(str(root), chunk_size=4096, compression=False, pack_size=16)
    state = {
        "a": np.array([1.0, 2.0], dtype=np.float32),
        "b": np.array([3.0], dtype=np.float32),
        "c": np.array([4.0, 5.0], dtype=np.float32),
        "n": np.array(7, dtype=np.int64),
        "e": np.zeros((0, 3), dtype=np.float32),
    }
    return store, store.save(state)


def test_packed_table_record(tmp_path: Path) -> None:
    """Format 3.0: ``a`` and ``b`` share one pack (12 bytes), ``c`` does not fit beside them (16-byte packs) and
    starts the next; the I64 ``n`` has a pack of its own; the empty ``e`` has no chunk and no pack."""
    _, snap = _packed_store(tmp_path / "s")
    table_bytes = (tmp_path / "s" / layout.table_path(snap.table)).read_bytes()
    assert table_bytes == _golden("table_packed.json")
    table = TensorTable.model_validate(json.loads(table_bytes))
    assert [table.tensors[n].pack for n in "abcne"] == [(0, 12), (8, 12), (0, 8), (0, 8), None]
    pack = table.tensors["a"].chunks[0]
    assert table.tensors["b"].chunks == (pack,)
    raw = (tmp_path / "s" / layout.chunk_path(pack)).read_bytes()
    assert raw.hex() == _golden("chunk_pack_f32_1_2_3.hex").decode()
    assert raw[16:] == np.array([1.0, 2.0, 3.0], dtype="<f4").tobytes()
    assert json.loads((tmp_path / "s" / "ckpt.json").read_bytes())["format_version"] == "3.0"


def test_packed_table_written_by_the_spec_alone_is_read(tmp_path: Path) -> None:
    """A reader decodes a packed table built from docs/format.md by hand: a raw chunk object (16-byte header,
    then the pack's bytes), a table whose entries name it with ``pack: [offset, length]``, a snapshot record."""
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=4096, compression=False)
    payload = np.array([1.5, -2.0], dtype="<f4").tobytes() + np.array([9, -1], dtype="<i2").tobytes()
    digest = digest_bytes(payload)
    chunk = b"ckpt" + bytes([1, 0, 0, 0]) + len(payload).to_bytes(8, "little") + payload
    (root / layout.chunk_path(digest)).parent.mkdir(parents=True, exist_ok=True)
    (root / layout.chunk_path(digest)).write_bytes(chunk)
    table = {
        "chunk_size": 4096,
        "tensors": {
            "x": {"dtype": "F32", "shape": [2], "chunks": [digest], "kind": "numpy", "pack": [0, 12]},
            "y": {"dtype": "I16", "shape": [2], "chunks": [digest], "kind": "numpy", "pack": [8, 12]},
            "z": {"dtype": "F32", "shape": [], "chunks": [digest], "kind": "numpy", "pack": [4, 12]},
        },
        "tree": {"$dict": [["x", {"$tensor": "x"}], ["y", {"$tensor": "y"}], ["z", {"$tensor": "z"}]]},
        "files": {},
    }
    table_bytes = canonical_json(table)
    table_id = digest_bytes(table_bytes)
    (root / layout.table_path(table_id)).parent.mkdir(parents=True, exist_ok=True)
    (root / layout.table_path(table_id)).write_bytes(table_bytes)
    snap = Snapshot(
        parents=(),
        created_at="2026-11-28T10:00:00.000000Z",
        ckpt_version="0.1.0",
        table=table_id,
        tensor_count=3,
        tensor_bytes=16,
    ).with_id()
    (root / layout.snapshot_path(snap.id)).parent.mkdir(parents=True, exist_ok=True)
    (root / layout.snapshot_path(snap.id)).write_bytes(snap.record_bytes())
    state = store.load(snap.id)
    assert state["x"].tolist() == [1.5, -2.0] and state["y"].tolist() == [9, -1] and state["z"].tolist() == -2.0
    assert list(store.tensor_bytes(snap.id, "y")) == [payload[8:12]]
    assert store.verify(snap.id).ok
