"""Delta chunks (codec 2, format 2.0): a chunk coded against the same bytes of the same tensor in the parent.

What a user checks: every save loads bit-exact; chains stay within the store's limit; gc keeps every chunk a
live delta needs (prune the parent, gc, the child still loads); a damaged reference is damage of every chunk
that depends on it, named with its tensor; sync and repair leave the destination able to decode.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

import ckpt
from ckpt import CorruptChunkError, MissingObjectError
from ckpt.store import _layout as layout
from ckpt.store import store_parts
from ckpt.store._chunk_reads import CHUNK_HEADER_SIZE
from ckpt.store._gc import plan_gc

CHUNK = 16 << 10
NOW = timedelta(0)


def training(store: ckpt.Store, saves: int, *, n: int = 8192, branch: str = "main") -> list[tuple[str, dict[str, Any]]]:
    """``saves`` snapshots of a weight (fp32 and its bf16 copy) that moves a little between saves."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, generator=g) * 0.02
    out = []
    for step in range(saves):
        w = w - 1e-4 * torch.randn(n, generator=g) * w.abs()
        state = {"model": {"w": w.clone(), "half": w.to(torch.bfloat16)}}
        out.append((store.save(state, branch, step=step).id, state))
    return out


def header(store: ckpt.Store, digest: str) -> bytes:
    return store.backend.read(layout.chunk_path(digest), 0, CHUNK_HEADER_SIZE + 34)


def depth(store: ckpt.Store, digest: str) -> int:
    head = header(store, digest)
    return head[CHUNK_HEADER_SIZE + 32] if head[5] == 2 else 0


def reference(store: ckpt.Store, digest: str) -> str:
    head = header(store, digest)
    assert head[5] == 2
    return head[CHUNK_HEADER_SIZE : CHUNK_HEADER_SIZE + 32].hex()


def assert_loads(store: ckpt.Store, sid: str, state: dict[str, Any]) -> None:
    back = store.load(sid)["model"]
    for k, v in state["model"].items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k


@pytest.fixture
def deltas(location: tuple[str, dict[str, Any]]) -> ckpt.Store:
    url, opts = location
    return ckpt.init(url, chunk_size=CHUNK, delta_depth=3, pack_size=0, **opts)


def test_saves_are_deltas_within_the_chain_limit_and_load_bit_exact(deltas: ckpt.Store) -> None:
    assert deltas.config.format_version == "2.0" and deltas.config.delta_depth == 3
    history = training(deltas, 6)
    for sid, state in history:
        assert_loads(deltas, sid, state)
        assert torch.equal(deltas.tensors(sid)["model/w"], state["model"]["w"])  # a lazy read decodes its chain
    chains = [[depth(deltas, d) for d in deltas.table(sid).tensors["model/w"].chunks] for sid, _ in history]
    assert chains[0] == [0, 0]  # the root: keyframes
    assert [c[0] for c in chains] == [0, 1, 2, 3, 0, 1]  # at the limit, a keyframe
    first, last = history[0][0], history[-1][0]
    assert (
        reference(deltas, deltas.table(history[1][0]).tensors["model/w"].chunks[0])
        == (deltas.table(first).tensors["model/w"].chunks[0])
    )
    stats = deltas.stats()
    assert stats.chunk_bytes < 0.6 * stats.chunk_raw_bytes  # deltas pay (raw of 6 saves beside stored)
    assert deltas.verify().ok
    assert deltas.footprint(last).raw_bytes == deltas.table(last).nbytes


def test_gc_keeps_the_chain_of_every_live_delta(deltas: ckpt.Store) -> None:
    history = training(deltas, 3)
    (a, _), (b, _), (c, state_c) = history
    needed = set(deltas.table(c).chunk_digests())
    deltas.prune(a)
    deltas.prune(b)
    report = deltas.gc(grace=NOW)
    assert report.chunks == 0  # every chunk of a and b is a link of c's chains
    assert_loads(deltas, c, state_c)
    assert deltas.verify().ok
    # once nothing needs them, they go: a new keyframe line and c pruned too
    deltas.save({"model": {"w": torch.zeros(8192), "half": torch.zeros(8192, dtype=torch.bfloat16)}}, step=9)
    deltas.prune(c)
    assert deltas.gc(grace=NOW).chunks >= len(needed)


def test_a_reused_delta_keeps_its_chain_through_a_gc_planned_before(tmp_path: Path) -> None:
    """gc planned, then a save reuses a doomed delta (dedup), then gc deletes: the delta's chain is spared."""
    store = ckpt.init(str(tmp_path / "s"), chunk_size=CHUNK, delta_depth=4)
    history = training(store, 3)
    (a, _), (b, state_b), _ = history
    store.prune(a)
    store.prune(b)
    store.save({"model": {"w": torch.zeros(8192), "half": torch.zeros(8192, dtype=torch.bfloat16)}}, "other")
    store.delete_branch("main")
    plan = plan_gc(store_parts(store), grace=NOW, expire_reflog=NOW)
    assert plan.chunk_paths  # a's, b's and c's chunks are doomed
    again = store.save(state_b, "again")  # finds b's chunks (deltas against a's) and reuses them
    plan.execute(store.backend)
    assert_loads(store, again.id, state_b)
    assert store.verify().ok


@pytest.mark.parametrize("damage", ["flipped", "deleted"])
def test_a_damaged_reference_is_damage_of_every_chunk_that_needs_it(tmp_path: Path, damage: str) -> None:
    store = ckpt.init(str(tmp_path / "s"), chunk_size=CHUNK, delta_depth=8)
    good = ckpt.init(str(tmp_path / "good"), chunk_size=CHUNK, delta_depth=8)
    history = training(store, 4)
    store.sync_to(good)
    root, _ = history[0]
    keyframe = store.table(root).tensors["model/w"].chunks[0]
    store.prune(root)  # the keyframe is needed only through the deltas of later saves
    path = tmp_path / "s" / layout.chunk_path(keyframe)
    if damage == "flipped":
        data = bytearray(path.read_bytes())
        data[-1] ^= 0x01
        path.write_bytes(bytes(data))
    else:
        path.unlink()
    dependents = [(sid, store.table(sid).tensors["model/w"].chunks[0]) for sid, _ in history[1:]]
    error = CorruptChunkError if damage == "flipped" else MissingObjectError
    with pytest.raises(error, match=keyframe[:12]) as info:
        store.load(history[-1][0])
    assert "model/w" in str(info.value)
    report = store.verify()
    damaged = {(d.digest, d.tensors) for d in report.damage if d.object == "chunk"}
    assert {(digest, ("model/w",)) for _, digest in dependents} <= damaged
    assert not report.ok
    store.gc(grace=NOW)  # keeps what the dependents need, damaged or not: repair can still use it
    assert path.exists() == (damage == "flipped")
    fixed = store.repair(good)
    assert fixed.ok, fixed.unrepaired
    for sid, state in history[1:]:
        assert_loads(store, sid, state)


@pytest.mark.s3
def test_sync_gives_the_destination_what_it_needs_to_decode(tmp_path: Path, s3_server: dict[str, Any]) -> None:
    store = ckpt.init(str(tmp_path / "s"), chunk_size=CHUNK, delta_depth=8)
    history = training(store, 4)
    dst = ckpt.init("s3://ckpt-test/deltas-sync", chunk_size=CHUNK, delta_depth=8, **s3_server)
    store.sync_to(dst)
    assert dst.verify().ok
    for sid, state in history:
        assert_loads(dst, sid, state)


def test_a_store_without_deltas_writes_none(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "s"), chunk_size=CHUNK, delta_depth=0, pack_size=0)
    assert store.config.format_version == "1.3"
    for sid, _ in training(store, 3):
        assert {header(store, d)[5] for d in store.table(sid).chunk_digests()} <= {0, 1}


def test_the_checkpointer_codes_each_save_against_the_previous(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "s"), chunk_size=CHUNK)  # the defaults: compression and deltas on
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(64, 64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    with ckpt.Checkpointer(store) as ckpts:
        for step in range(3):
            opt.zero_grad()
            model(torch.randn(8, 64, generator=g)).square().mean().backward()
            opt.step()
            ckpts.save({"model": model.state_dict()}, step=step).result()
    last = store.log()[0]
    assert {header(store, d)[5] for d in store.table(last.id).chunk_digests()} & {2}
    back = store.load(last.id)["model"]
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_delta_depth_is_checked(tmp_path: Path) -> None:
    for bad in (-1, 65, 2.5, True):
        with pytest.raises(ckpt.RecordError):
            ckpt.init(str(tmp_path / f"s{bad}"), delta_depth=bad)  # type: ignore[arg-type]
    with pytest.raises(ckpt.RecordError):
        ckpt.init(str(tmp_path / "raw"), compression=False, delta_depth=4)
    config = json.loads((Path(ckpt.init(str(tmp_path / "ok")).url) / "ckpt.json").read_bytes())
    assert config["delta_depth"] == 16 and config["format_version"] == "3.0" and config["pack_size"] == 4 << 20


def test_a_link_stored_again_whole_keeps_its_dependents_readable(tmp_path: Path) -> None:
    """A repair writes a damaged delta back as its raw bytes: the deltas coded against it still decode."""
    store = ckpt.init(str(tmp_path / "s"), chunk_size=CHUNK, delta_depth=8)
    history = training(store, 4)
    middle = store.table(history[1][0]).tensors["model/w"].chunks[0]
    assert depth(store, middle) == 1
    objects = store_parts(store).objects
    raw = store.backend.read(layout.chunk_path(middle))  # a good copy, as another store's sync would give it
    whole = objects.read_stored(middle, None)
    assert whole[5] == 0 and len(whole) > len(raw)
    objects.replace_stored(middle, whole)
    for sid, state in history:
        assert_loads(store, sid, state)
    assert store.verify().ok
