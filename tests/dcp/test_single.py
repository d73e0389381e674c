"""ckpt.dcp in one process (``no_dist=True``) and sharded snapshots through every reader of the store."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from click.testing import CliRunner
from safetensors.torch import load_file
from torch.distributed.checkpoint import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.planner import LoadPlan

import ckpt
import ckpt.dcp
from ckpt.cli import cli
from ckpt.dcp import _store
from ckpt.dcp._reader import _byte_range
from ckpt.dcp._tree import dcp_leaves
from ckpt.errors import RecordError, RefConflictError, StateError
from ckpt.model import TensorEntry, TensorShard, TensorTable, canonical_json, digest_bytes
from ckpt.state import flatten
from ckpt.store import _layout as layout
from ckpt.store import store_parts

pytestmark = [
    pytest.mark.torch,
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning"),
]


def _blocks(full: torch.Tensor, cuts: list[list[int]]) -> list[tuple[tuple[int, ...], torch.Tensor]]:
    """The blocks of ``full`` on the grid of ``cuts`` (per dimension, the starts of its blocks)."""
    import itertools

    edges = [[*c, d] for c, d in zip(cuts, full.shape, strict=True)]
    out = []
    for cell in itertools.product(*[range(len(e) - 1) for e in edges]):
        offsets = tuple(edges[k][i] for k, i in enumerate(cell))
        index = tuple(slice(edges[k][i], edges[k][i + 1]) for k, i in enumerate(cell))
        out.append((offsets, full[index].contiguous()))
    return out


def sharded_save(store: ckpt.Store, state: dict[str, Any], cuts: dict[str, list[list[int]]], **fields: Any) -> Any:
    """Save ``state`` (a flat dict) as a distributed save would: the tensors named in ``cuts`` in blocks."""
    pending = _store.begin(
        store,
        fields.pop("branch", "main"),
        parents=None,
        relation=None,
        model=None,
        step=fields.pop("step", None),
        epoch=None,
        metrics=None,
        message=None,
        metadata=None,
        files=None,
        force=False,
    )
    tree, sources = flatten(state)
    entries = {}
    for name, src in sources.items():
        if name not in cuts:
            entries[name] = _store.write_tensors(store, {name: src})[0][name]
            continue
        shards = []
        for offsets, block in _blocks(state[name], cuts[name]):
            (written,) = _store.write_tensors(store, {"b": flatten({"b": block})[1]["b"]})[0].values()
            shards.append(TensorShard(offsets=offsets, sizes=tuple(block.shape), chunks=written.chunks))
        entries[name] = TensorEntry(dtype=src.dtype, shape=src.shape, chunks=(), shards=tuple(shards))
    return _store.commit(store, pending, tensors=entries, tree=tree)


def _state() -> dict[str, Any]:
    g = torch.Generator().manual_seed(3)
    return {
        "rows": torch.randn(6, 4, generator=g),
        "cols": torch.randn(5, 6, generator=g),
        "grid": torch.randn(3, 4, 6, generator=g),
        "half": torch.randn(4, 6, generator=g).to(torch.bfloat16),
        "whole": torch.arange(10, dtype=torch.int64),
        "step": 9,
    }


CUTS = {"rows": [[0, 4], [0]], "cols": [[0], [0, 3]], "grid": [[0, 2], [0], [0, 2, 5]], "half": [[0], [0, 1]]}


def test_a_sharded_snapshot_reads_like_any_other(tmp_path: Path) -> None:
    """Blocks in rows, columns, a 3-d grid and bf16, in 16-byte chunks: load, lazy tensors, raw bytes, gc,
    verify, sync, diff and export all see the whole tensors."""
    store = ckpt.init(str(tmp_path / "s"), chunk_size=16)
    state = _state()
    snap = sharded_save(store, state, CUTS, step=9)
    table = store.table(snap.id)
    assert [len(table.tensors[n].shards) for n in CUTS] == [2, 2, 6, 2]

    def check(got: dict[str, Any]) -> None:
        for k, v in state.items():
            assert torch.equal(got[k], v) if isinstance(v, torch.Tensor) else got[k] == v, k

    check(store.load(snap.id))
    into = {k: torch.zeros_like(v) for k, v in state.items() if isinstance(v, torch.Tensor)}
    loaded = store.load(snap.id, into=into)
    assert loaded["cols"] is into["cols"] and torch.equal(into["cols"], state["cols"])
    lazy = store.tensors(snap.id)
    assert torch.equal(lazy["grid"], state["grid"])
    assert b"".join(lazy.byte_pieces("cols")) == state["cols"].numpy().tobytes()
    assert b"".join(store.tensor_bytes(snap.id, "half")) == state["half"].view(torch.int16).numpy().tobytes()
    with pytest.raises(IndexError, match="byte_pieces"):
        lazy.chunk_bytes("cols", 0)

    store.gc(grace=timedelta(0))  # the blocks' chunks are live
    check(store.load(snap.id))
    assert store.verify().ok

    other = ckpt.init("memory://dcp-sync-target", chunk_size=16)
    store.sync_to(other, ["main"])
    check(other.load("main"))
    assert other.verify().ok

    plain = store.save(state, branch="plain")
    d = ckpt.diff.diff(store, snap.id, plain.id)
    assert d.changed == 0 and d.unchanged == 5 and not d.state_changed
    changed = store.save({**state, "cols": state["cols"] * 2}, branch="plain")
    d = ckpt.diff.diff(store, snap.id, changed.id)
    assert [(t.name, t.status) for t in d.tensors if t.status != "unchanged"] == [("cols", "changed")]
    assert d.tensors[1].relative_change == pytest.approx(1.0)

    out = CliRunner().invoke(cli, ["--store", store.url, "restore", snap.id, "--to", str(tmp_path / "out")])
    assert out.exit_code == 0, out.output
    exported = load_file(tmp_path / "out" / "model.safetensors")
    assert all(torch.equal(exported[k], state[k]) for k in exported) and set(exported) == set(CUTS) | {"whole"}

    # a damaged block is found and named
    digest = table.tensors["cols"].shards[1].chunks[0]
    path = tmp_path / "s" / layout.chunk_path(digest)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    report = store.verify()
    assert not report.ok and report.damage[0].tensors == ("cols",)
    with pytest.raises(ckpt.CorruptChunkError, match="cols"):
        store.load(snap.id)
    assert store.repair(other).ok  # put back from the copy that sync made
    check(store.load(snap.id))


def _table_with(entry: dict[str, Any]) -> dict[str, Any]:
    return {"chunk_size": 64, "files": {}, "tensors": {"w": entry}, "tree": {"$dict": [["w", {"$tensor": "w"}]]}}


D = "a" * 64


def _b(offsets: list[int], sizes: list[int], chunks: int = 1) -> dict[str, Any]:
    return {"offsets": offsets, "sizes": sizes, "chunks": [D] * chunks}


@pytest.mark.parametrize(
    ("shards", "why"),
    [
        ([_b([0, 0], [4, 2])], "stored whole"),
        ([_b([0, 0], [2, 2]), _b([1, 0], [2, 2])], "overlap"),
        ([_b([0, 0], [2, 2]), _b([3, 0], [1, 2])], "hold 6 elements"),
        ([_b([2, 0], [2, 2]), _b([0, 0], [2, 2])], "sorted"),
        ([_b([0, 0], [2, 2]), _b([2, 0], [3, 2])], "outside"),
        ([_b([0, 0], [2, 2], 0), _b([2, 0], [2, 2])], "0 chunks for 16 bytes"),
        ([_b([0], [2]), _b([2], [2])], "dimensions"),
        ([_b([0, 0], [4, 1]), _b([0, 1], [4, 0], 0)], "empty"),
        ([_b([0, 0], [2, 1]), _b([0, 1], [3, 1]), _b([1, 1], [1, 1]), _b([2, 0], [2, 1])], "overlap"),
    ],
    ids=["one-block", "overlap", "gap", "unsorted", "outside", "chunk-count", "ndim", "empty-block", "overlap-gap"],
)
def test_tables_whose_blocks_do_not_cover_the_tensor_exactly_are_refused(
    tmp_path: Path, shards: list[Any], why: str
) -> None:
    """A reader fills a tensor from its blocks: an overlap would pick a value, a gap leave memory unwritten."""
    store = ckpt.init(str(tmp_path / "s"), chunk_size=64)
    snap = store.save({"w": torch.zeros(4, 2)})
    raw = _table_with({"chunks": [], "dtype": "F32", "kind": "torch", "shape": [4, 2], "shards": shards})
    with pytest.raises(ValueError, match=why):
        TensorTable.model_validate(raw)
    data = canonical_json(raw)
    digest = digest_bytes(data)
    store.backend.put_if_absent(layout.table_path(digest), data)
    record = store.resolve(snap.id).model_copy(update={"table": digest})
    bad = store_parts(store).objects.put_snapshot(record)
    with pytest.raises(RecordError):
        store.load(bad.id)


def test_a_sharded_entry_keeps_chunks_empty() -> None:
    """``chunks`` and ``shards`` never both hold digests, so a reader that drops ``shards`` (a format 1.1
    reader of a newer store) finds too few chunks and refuses, instead of reading blocks as rows."""
    entry = {"chunks": [D], "dtype": "F32", "kind": "torch", "shape": [4, 2]}
    shards = [{"offsets": [0, 0], "sizes": [2, 2], "chunks": [D]}, {"offsets": [2, 0], "sizes": [2, 2], "chunks": [D]}]
    with pytest.raises(ValueError, match="not in 'chunks'"):
        TensorTable.model_validate(_table_with({**entry, "shards": shards}))
    with pytest.raises(ValueError, match="0 chunks for 32 bytes"):
        TensorTable.model_validate(_table_with({**entry, "chunks": []}))


@pytest.mark.parametrize(
    ("value", "what"),
    [(b"\x80\x04pickle", "bytes"), (io.BytesIO(b"x"), "BytesIO"), ({1, 2}, "set"), (object(), "object")],
    ids=["bytes", "bytesio", "set", "object"],
)
def test_values_typed_json_cannot_hold_are_refused_and_nothing_moves(tmp_path: Path, value: Any, what: str) -> None:
    """DCP's planner would torch.save them; ckpt refuses them by key before any chunk is written."""
    store = ckpt.init(str(tmp_path / "s"), chunk_size=64)
    with pytest.raises(CheckpointException, match=rf"loader_state.*{what}|{what}.*loader_state"):
        dcp.save(
            {"model": {"w": torch.ones(64)}, "loader_state": value},
            storage_writer=ckpt.dcp.StorageWriter(store),
            no_dist=True,
        )
    assert store.branches() == {} and list(store.backend.list("chunks/")) == []


def test_planners_that_pickle_are_refused(tmp_path: Path) -> None:
    """A save planner without ``lookup_object`` would hand over a pickle; a load planner that overrides
    ``load_bytes`` would unpickle what it gets: both are refused, and the override never runs."""
    store = ckpt.init(str(tmp_path / "s"), chunk_size=64)

    class Blind(DefaultSavePlanner):
        lookup_object = None  # type: ignore[assignment]

    with pytest.raises(CheckpointException, match="lookup_object"):
        dcp.save({"step": 1}, storage_writer=ckpt.dcp.StorageWriter(store), planner=Blind(), no_dist=True)
    dcp.save({"step": 1, "w": torch.ones(2)}, storage_writer=ckpt.dcp.StorageWriter(store), no_dist=True)

    called = []

    class Unpickler(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: Any) -> None:
            called.append(read_item)

    with pytest.raises(CheckpointException, match="load_bytes"):
        dcp.load(
            {"step": 0, "w": torch.zeros(2)},
            storage_reader=ckpt.dcp.StorageReader(store),
            planner=Unpickler(),
            no_dist=True,
        )
    assert called == []


def test_a_one_process_tree_offers_dcp_its_own_keys(tmp_path: Path) -> None:
    """A snapshot saved by ``store.save`` loads through DCP by DCP's flat keys: int keys as strings, lists
    of mappings walked, tuples (even of tensors) and plain lists as single values; dtype converted as DCP
    does (``copy_``)."""
    store = ckpt.init(str(tmp_path / "s"), chunk_size=64)
    w = torch.randn(3, 4)
    state = {
        "model": {"w": w, "half": w.clone()},
        "optim": {"state": {0: {"exp_avg": w * 2}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
        "pair": (torch.ones(2), torch.zeros(3)),
        "empty": [],
        "nan": float("nan"),
    }
    snap = store.save(state)
    table = store.table(snap.id)  # small tensors packed (format 3.0): DCP reads each from its pack
    assert table.tensors["model/w"].pack == (0, 48) and table.tensors["optim/state/0/exp_avg"].pack is not None
    fqns = [leaf.fqn for leaf in dcp_leaves(store.table(snap.id).tree)]
    assert fqns == [
        "model.w",
        "model.half",
        "optim.state.0.exp_avg",
        "optim.param_groups.0.lr",
        "optim.param_groups.0.params",
        "pair",
        "empty",
        "nan",
    ]
    target = {
        "model": {"w": torch.zeros(3, 4), "half": torch.zeros(3, 4, dtype=torch.bfloat16)},
        "optim": {"state": {"0": {"exp_avg": torch.zeros(3, 4)}}, "param_groups": [{"lr": 0.0, "params": []}]},
        "pair": None,
        "empty": None,
        "nan": 0.0,
    }
    dcp.load(target, storage_reader=ckpt.dcp.StorageReader(store, snap.id), no_dist=True)
    assert torch.equal(target["model"]["w"], w) and torch.equal(target["model"]["half"], w.to(torch.bfloat16))
    assert torch.equal(target["optim"]["state"]["0"]["exp_avg"], w * 2)
    assert target["optim"]["param_groups"] == [{"lr": 0.1, "params": [0]}]
    assert torch.equal(target["pair"][0], torch.ones(2)) and target["empty"] == [] and np.isnan(target["nan"])


@pytest.mark.parametrize(
    ("state", "match"),
    [([torch.ones(1)], "not a mapping"), ({"a.b": 1, "a": {"b": 2}}, "DCP key 'a.b'")],
    ids=["list-root", "same-key"],
)
def test_trees_dcp_cannot_address_are_refused(tmp_path: Path, state: Any, match: str) -> None:
    store = ckpt.init(str(tmp_path / "s"), chunk_size=64)
    snap = store.save(state)
    with pytest.raises(StateError, match=match):
        ckpt.dcp.StorageReader(store, snap.id).read_metadata()


def test_ranks_that_resolved_different_snapshots_are_refused(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "s"), chunk_size=64)
    reader = ckpt.dcp.StorageReader(store)
    plans = [LoadPlan([], storage_data="a" * 64), LoadPlan([], storage_data="b" * 64)]
    with pytest.raises(StateError, match="different snapshots"):
        reader.prepare_global_plan(plans)
    assert reader.prepare_global_plan(plans[:1]) == plans[:1]


def test_checkpoint_ids_name_the_branch_and_the_revision(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "s"), chunk_size=64)
    meta = dcp.save(
        {"w": torch.ones(3)}, checkpoint_id="exp/a", storage_writer=ckpt.dcp.StorageWriter(store), no_dist=True
    )
    assert store.branches() == {"exp/a": meta.storage_data["snapshot"]}
    target = {"w": torch.zeros(3)}
    dcp.load(target, checkpoint_id="exp/a", storage_reader=ckpt.dcp.StorageReader(store, "nothing"), no_dist=True)
    assert torch.equal(target["w"], torch.ones(3))
    assert not ckpt.dcp.StorageWriter.validate_checkpoint_id("/tmp/x")


def test_saves_refused_before_a_byte_is_written(tmp_path: Path) -> None:
    """A non-fast-forward save, and a save without collectives, fail before writing anything."""
    store = ckpt.init(str(tmp_path / "s"), chunk_size=64)
    first = store.save({"w": torch.zeros(1)})
    store.save({"w": torch.ones(1)})
    chunks = len(list(store.backend.list("chunks/")))
    writer = ckpt.dcp.StorageWriter(store, "main", parents=[first.id])
    with pytest.raises(CheckpointException, match="not among the parents"):
        dcp.save({"w": torch.full((100,), 2.0)}, storage_writer=writer, no_dist=True)
    assert len(list(store.backend.list("chunks/"))) == chunks
    with pytest.raises(StateError, match="use_collectives"):
        ckpt.dcp.StorageWriter(store).set_up_storage_writer(True, rank=0, use_collectives=False)
    with pytest.raises(ckpt.InvalidNameError):
        ckpt.dcp.StorageWriter(store, "bad..name")
    with pytest.raises(TypeError, match="Store"):
        ckpt.dcp.StorageWriter(str(tmp_path / "s"))  # type: ignore[arg-type]


def test_a_save_whose_results_miss_a_block_is_not_committed(tmp_path: Path) -> None:
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        Metadata,
        TensorProperties,
        TensorStorageMetadata,
    )

    from ckpt.dcp._writer import assemble

    md = Metadata(
        state_dict_metadata={
            "w": TensorStorageMetadata(
                TensorProperties(dtype=torch.float32),
                torch.Size([4]),
                [
                    ChunkStorageMetadata(torch.Size([0]), torch.Size([2])),
                    ChunkStorageMetadata(torch.Size([2]), torch.Size([2])),
                ],
            )
        },
        planner_data={"w": ("w",)},
    )
    with pytest.raises(RecordError, match="no rank wrote it"):
        assemble(md, [[]])


def test_byte_range_of_a_sub_block() -> None:
    assert _byte_range((8, 4), 4, torch.Size([2, 0]), torch.Size([3, 4])) == (32, 80)  # rows 2..4: contiguous
    assert _byte_range((8, 4), 4, torch.Size([0, 2]), torch.Size([8, 2])) == (8, 128)  # columns: first to last
    assert _byte_range((8, 4), 4, torch.Size([0, 0]), torch.Size([0, 4])) == (0, 0)


def test_conflicting_move_is_reported_with_the_snapshot_kept(tmp_path: Path) -> None:
    """The branch moves by compare-and-swap from the head read when the save began."""
    store = ckpt.init(str(tmp_path / "s"), chunk_size=64)
    writer = ckpt.dcp.StorageWriter(store)
    writer.reset()
    writer.set_up_storage_writer(True, rank=0)
    store.save({"other": torch.ones(1)})  # another writer wins the race
    state = {"w": torch.ones(2)}
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner as Planner

    planner = Planner()
    planner.set_up_planner(state, is_coordinator=True)
    plan = planner.create_local_plan()
    plans, md = planner.create_global_plan([plan])
    results = writer.write_data(planner.finish_plan(plans[0]), planner).wait()
    with pytest.raises(RefConflictError) as e:
        writer.finish(md, [results])
    assert e.value.snapshot is not None and torch.equal(store.load(e.value.snapshot)["w"], torch.ones(2))
    assert [entry.action for entry in store.reflog()] == ["commit", "conflict"]


@pytest.mark.parametrize("compression", [True, False])
def test_a_dcp_save_follows_the_stores_compression(tmp_path: Path, compression: bool) -> None:
    """A distributed save stores its chunks as ``Store.save`` would: byte-grouped where the store compresses
    and that pays (bf16 weights: about two thirds of raw), raw where it does not; loads back equal either way."""
    store = ckpt.init(str(tmp_path / "s"), compression=compression)
    w = torch.randn(512, 1024, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    dcp.save({"w": w}, storage_writer=ckpt.dcp.StorageWriter(store), no_dist=True)
    chunks = [p for p in (tmp_path / "s").rglob("chunks/*/*") if p.is_file()]
    codecs = {p.read_bytes()[5] for p in chunks}
    assert codecs == ({1} if compression else {0})
    stored = sum(p.stat().st_size for p in chunks)
    assert (stored < 0.8 * w.numel() * 2) == compression
    assert torch.equal(store.load()["w"], w)
    out = {"w": torch.empty_like(w)}
    dcp.load(out, storage_reader=ckpt.dcp.StorageReader(store), no_dist=True)
    assert torch.equal(out["w"], w)
    assert store.verify().ok


def test_a_dcp_save_may_override_the_stores_compression(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "s"))  # compresses by default
    w = torch.randn(512, 1024, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    dcp.save({"w": w}, storage_writer=ckpt.dcp.StorageWriter(store, compression=False), no_dist=True)
    assert {p.read_bytes()[5] for p in (tmp_path / "s").rglob("chunks/*/*") if p.is_file()} == {0}
    assert torch.equal(store.load()["w"], w)
    with pytest.raises(RecordError, match="compression"):
        ckpt.dcp.StorageWriter(store, compression="yes")  # type: ignore[arg-type]
