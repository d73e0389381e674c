"""Breaker tests for placed mmap loads (``_mapped``) and the in-process reference cache (``_reference_cache``):
inputs tried after both features were merged, each asserting what a user checks (equal tensors, files unchanged,
damage refused and named, every save loadable)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import ckpt
from ckpt.errors import CorruptChunkError
from ckpt.store import _layout as layout
from ckpt.store import _regions, _transfer
from ckpt.store._reference_cache import REFERENCES

pytestmark = [
    pytest.mark.torch,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="placed maps are Linux only"),
]

PAGE = _regions.PAGE_SIZE


@pytest.fixture(autouse=True)
def _setup(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(_transfer, "MMAP_MIN_BYTES", 1)
    monkeypatch.delenv("CKPT_REFERENCE_CACHE", raising=False)
    REFERENCES.clear()
    yield
    REFERENCES.clear()


def noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def raw(t: Any) -> bytes:
    if isinstance(t, np.ndarray):
        return np.ascontiguousarray(t).tobytes()
    return bytes(t.contiguous().reshape(-1).view(torch.uint8).numpy()) if t.dtype != torch.bool else t.numpy().tobytes()


def chunk_maps(root: Path) -> int:
    return sum(1 for line in Path("/proc/self/maps").read_text().splitlines() if str(root) in line)


DTYPES = [torch.bool, torch.int8, torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64,
          torch.complex128]  # fmt: skip


@pytest.mark.parametrize("chunk_size", [PAGE, 2 * PAGE, 3 * PAGE, 16 * PAGE, 6000])
def test_every_dtype_and_odd_tail_loads_mapped_byte_identical(tmp_path: Path, chunk_size: int) -> None:
    store = ckpt.init(str(tmp_path / "s"), chunk_size=chunk_size, compression=False, pack_size=0)
    state: dict[str, Any] = {}
    for dt in DTYPES:
        size = torch.empty(0, dtype=dt).element_size()
        for extra in (0, 1, 15, 16, 17, chunk_size - 1):
            n = (3 * chunk_size + extra) // size
            b = noise(n * size, seed=extra)
            state[f"{dt}-{extra}"] = (b % 2).bool() if dt == torch.bool else b.view(dt)
    store.save({"m": state})
    for verify in (True, False):
        back = store.load(mmap=True, verify=verify)["m"]
        for k, v in state.items():
            assert back[k].dtype == v.dtype and back[k].shape == v.shape and raw(back[k]) == raw(v), k
    del back
    gc.collect()
    assert chunk_maps(tmp_path / "s") == 0


def test_writes_into_a_mapped_tensor_reach_neither_files_nor_tensors_sharing_its_chunks(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=2 * PAGE, compression=False, pack_size=0)
    t = noise(4 * 2 * PAGE + 17)
    store.save({"w": t, "tied": t, "prefix": t[: 2 * 2 * PAGE + 1].clone()})
    files = {p: p.read_bytes() for p in root.rglob("chunks/*/*")}
    out = store.load(mmap=True)
    assert out["w"].data_ptr() == out["tied"].data_ptr()  # tied stays tied
    out["w"].add_(1)
    assert torch.equal(out["prefix"], t[: 2 * 2 * PAGE + 1])
    assert {p: p.read_bytes() for p in files} == files
    again = store.load(mmap=True)
    view = again["w"][2 * PAGE - 3 : 2 * PAGE + 40]
    arr = again["w"].numpy()
    copy = again["w"].clone()
    del out, again
    gc.collect()
    assert torch.equal(view, t[2 * PAGE - 3 : 2 * PAGE + 40]) and (arr == t.numpy()).all() and torch.equal(copy, t)
    assert chunk_maps(root) > 0  # the views keep their region
    del view, arr
    gc.collect()
    assert chunk_maps(root) == 0
    lazy = store.tensors(mmap=True)
    assert torch.equal(lazy["w"], t)
    numpy_back = store.load(mmap=True, framework="numpy")
    assert (numpy_back["w"] == t.numpy()).all()


def test_two_threads_load_mapped_at_once(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=PAGE, compression=False, pack_size=0)
    state = {f"t{i}": noise(5 * PAGE + i, seed=i) for i in range(8)}
    store.save(state)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def load() -> None:
        try:
            barrier.wait()
            for _ in range(5):
                back = store.load(mmap=True)
                for k, v in state.items():
                    assert torch.equal(back[k], v)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    gc.collect()
    assert chunk_maps(root) == 0


def _flip(p: Path, at: int) -> None:
    b = bytearray(p.read_bytes())
    b[at] ^= 1
    p.write_bytes(bytes(b))


def _link(p: Path) -> None:
    q = p.with_name(p.name + ".real")
    q.write_bytes(p.read_bytes())
    p.unlink()
    p.symlink_to(q)


def _dir(p: Path) -> None:
    p.unlink()
    p.mkdir()


DAMAGE = {
    "header": lambda p: _flip(p, 0),
    "length": lambda p: _flip(p, 8),
    "appended": lambda p: p.write_bytes(p.read_bytes() + b"x"),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:-1]),
    "link": _link,
    "directory": _dir,
    "fifo": lambda p: (p.unlink(), os.mkfifo(p)),
    "payload-first-page": lambda p: _flip(p, 16),
    "payload-boundary": lambda p: _flip(p, min(PAGE + 4, p.stat().st_size - 1)),
    "payload-last": lambda p: _flip(p, p.stat().st_size - 1),
}


@pytest.mark.parametrize("which", [0, 2, 4])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damage_in_any_chunk_is_refused_and_named(tmp_path: Path, which: int, damage: str) -> None:
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=2 * PAGE, compression=False, pack_size=0)
    t = noise(4 * 2 * PAGE + 17)
    store.save({"weight": t})
    digest = store.table(store.log()[0].id).tensors["weight"].chunks[which]
    DAMAGE[damage](root / layout.chunk_path(digest))
    with pytest.raises(CorruptChunkError, match="weight"):
        store.load(mmap=True)
    if not damage.startswith("payload"):
        with pytest.raises(CorruptChunkError):
            store.load(mmap=True, verify=False)
    gc.collect()
    assert chunk_maps(root) == 0


# -- the reference cache -------------------------------------------------------------------------------


def adam_states(saves: int, n: int = 3 * 8192, seed: int = 0) -> Iterator[dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(n, generator=g) * 0.02)
    opt = torch.optim.Adam([w], lr=1e-4)
    for _ in range(saves):
        w.grad = torch.randn(n, generator=g)
        opt.step()
        yield {"model": {"w": w.detach().clone(), "half": w.detach().to(torch.bfloat16)}}


def assert_all_load(store: ckpt.Store, saved: list[tuple[str, dict[str, Any]]]) -> None:
    for sid, state in saved:
        back = store.load(sid)["model"]
        for k, v in state["model"].items():
            assert back[k].dtype == v.dtype and torch.equal(back[k], v), (sid, k)
    assert store.verify().ok


@pytest.mark.parametrize("budget", ["0", "1", "20KiB", "64GiB"])
def test_two_stores_one_process_every_save_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: str) -> None:
    monkeypatch.setenv("CKPT_REFERENCE_CACHE", budget)
    a = ckpt.init(str(tmp_path / "a"), chunk_size=16 << 10, delta_depth=2)
    b = ckpt.init(str(tmp_path / "b"), chunk_size=16 << 10, delta_depth=16)
    saved_a, saved_b = [], []
    for i, s in enumerate(adam_states(10)):
        saved_a.append((a.save(s, step=i).id, s))
        saved_b.append((b.save(s, step=i).id, s))
        if i == 4:
            b.prune(saved_b[1][0])
            b.gc()
            saved_b.pop(1)
    assert_all_load(a, saved_a)
    assert_all_load(b, saved_b)
    code = (
        "import ckpt, sys, torch\n"
        "for p in sys.argv[1:]:\n"
        "    s = ckpt.open(p)\n"
        "    for snap in s.log():\n"
        "        try:\n"
        "            s.load(snap.id)\n"
        "        except ckpt.errors.MissingObjectError as e:\n"
        "            assert 'pruned' in str(e)\n"
        "    assert s.verify().ok\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "a"), str(tmp_path / "b")], check=True, timeout=120)


def test_mutating_the_state_after_each_save_never_reaches_a_delta(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "s"), chunk_size=16 << 10)
    w = torch.randn(3 * 4096, generator=torch.Generator().manual_seed(0))
    saved = []
    for i in range(10):
        snap = store.save({"model": {"w": w}}, step=i)
        saved.append((snap.id, {"model": {"w": w.clone()}}))
        w.add_(1e-4)  # in place, the very buffer the save read
    assert_all_load(store, saved)


@pytest.mark.parametrize(
    "budget",
    [
        "0",
        "1GiB",
    ],
)
def test_a_reference_damaged_on_disk_does_not_make_the_next_save_unloadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: str
) -> None:
    """The parent's chunk is damaged in its payload (header and length intact): without the cache the save
    decodes it, finds the damage and stores a keyframe; with it, the kept bytes must not make the new save
    depend on a chunk the store cannot decode."""
    monkeypatch.setenv("CKPT_REFERENCE_CACHE", budget)
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=16 << 10)
    first, second = adam_states(2)
    a = store.save(first, step=0)
    for digest in set(store.table(a.id).chunk_digests()):
        p = root / layout.chunk_path(digest)
        _flip(p, p.stat().st_size - 1)
    b = store.save(second, step=1)
    back = store.load(b.id)["model"]
    for k, v in second["model"].items():
        assert torch.equal(back[k], v), k


def test_checkpointer_async_saves_all_load(tmp_path: Path) -> None:
    from ckpt import Checkpointer

    store = ckpt.init(str(tmp_path / "s"), chunk_size=16 << 10)
    torch.manual_seed(0)
    model = torch.nn.Linear(256, 128)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    expected = []
    with Checkpointer(store, async_save=True, max_pending=3) as cp:
        for step in range(8):
            model(torch.randn(4, 256)).sum().backward()
            opt.step()
            state = {"model": model.state_dict(), "optim": opt.state_dict()}
            cp.save(state, step=step)
            expected.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    snaps = list(reversed(store.log()))
    assert len(snaps) == 8
    for snap, exp in zip(snaps, expected, strict=True):
        back = store.load(snap.id)["model"]
        for k, v in exp.items():
            assert torch.equal(back[k], v), (snap.id, k)
    assert store.verify().ok


def test_a_tensor_of_identical_chunks_maps_each_privately(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=PAGE, compression=False, pack_size=0)
    store.save({"z": torch.zeros(6 * PAGE + 3, dtype=torch.uint8)})
    a = store.load(mmap=True)["z"]
    a[: 2 * PAGE].fill_(9)  # chunks 0 and 1 share one file with chunks 2..5
    assert int(a[2 * PAGE :].count_nonzero()) == 0
    assert int(store.load(mmap=True)["z"].count_nonzero()) == 0


def test_a_state_mutated_by_another_thread_during_saves_stays_consistent(tmp_path: Path) -> None:
    """Bytes torn by a writer thread may be what a save stores, but every stored chunk must decode to what its
    digest says, and the next saves (deltas against those chunks, from the cache) load exactly."""
    store = ckpt.init(str(tmp_path / "s"), chunk_size=16 << 10)
    w = torch.randn(6 * 4096, generator=torch.Generator().manual_seed(0))
    stop = threading.Event()
    started = threading.Event()

    def scribble() -> None:
        while not stop.is_set():
            w.add_(1e-6)
            started.set()

    th = threading.Thread(target=scribble)
    th.start()
    started.wait()
    try:
        for i in range(4):
            store.save({"model": {"w": w}}, step=i)
    finally:
        stop.set()
        th.join()
    assert store.verify().ok
    for snap in store.log():
        store.load(snap.id)
    saved = []
    for i in range(4, 8):
        w.add_(1e-4)
        saved.append((store.save({"model": {"w": w}}, step=i).id, {"model": {"w": w.clone()}}))
    assert_all_load(store, saved)


def test_prune_and_gc_between_saves_never_leave_a_delta_without_its_reference(tmp_path: Path) -> None:
    """Each save's grandparent is pruned and collected (``grace=0``, nothing running beside) before the next
    save, whose delta references come from the cache: every snapshot not pruned loads exactly, verify is clean,
    and so from a fresh process."""
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=16 << 10, delta_depth=3)
    saved: list[tuple[str, dict[str, Any]]] = []
    for i, s in enumerate(adam_states(10)):
        saved.append((store.save(s, step=i).id, s))
        if i >= 1:
            store.prune(saved[i - 1][0])
            store.gc(grace=0, expire_reflog=0)
    assert_all_load(store, saved[-1:])
    code = "import ckpt, sys\ns = ckpt.open(sys.argv[1])\ns.load(sys.argv[2])\nassert s.verify().ok\n"
    subprocess.run([sys.executable, "-c", code, str(root), saved[-1][0]], check=True, timeout=120)


@pytest.mark.s3
def test_saves_to_s3_memory_and_a_folder_from_one_process_all_load(
    tmp_path: Path, s3_server: dict[str, Any], memory_url: str
) -> None:
    """The cache is keyed by digest and shared by every store of the process: one state saved to three stores
    of different chain limits, each save loads exactly from each."""
    stores = [
        ckpt.init("s3://ckpt-test/breaker2-refcache", chunk_size=16 << 10, delta_depth=1, **s3_server),
        ckpt.init(memory_url, chunk_size=16 << 10, delta_depth=4),
        ckpt.init(str(tmp_path / "s"), chunk_size=16 << 10, delta_depth=16),
    ]
    saved: list[list[tuple[str, dict[str, Any]]]] = [[], [], []]
    for i, s in enumerate(adam_states(6)):
        for store, out in zip(stores, saved, strict=True):
            out.append((store.save(s, step=i).id, s))
    for store, out in zip(stores, saved, strict=True):
        assert_all_load(store, out)


def test_two_threads_saving_two_branches_with_one_cache_all_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CKPT_REFERENCE_CACHE", "48KiB")  # smaller than both states: evictions race with gets
    store = ckpt.init(str(tmp_path / "s"), chunk_size=16 << 10, delta_depth=4)
    barrier = threading.Barrier(2)
    saved: dict[str, list[tuple[str, dict[str, Any]]]] = {"a": [], "b": []}
    errors: list[BaseException] = []

    def run(branch: str, seed: int) -> None:
        try:
            barrier.wait()
            for i, s in enumerate(adam_states(6, seed=seed)):
                saved[branch].append((store.save(s, branch, step=i).id, s))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(b, n)) for n, b in enumerate(saved)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert_all_load(store, saved["a"] + saved["b"])


@pytest.mark.parametrize("which", [0, 4])
def test_a_missing_chunk_is_named_and_nothing_stays_mapped(tmp_path: Path, which: int) -> None:
    from ckpt.errors import MissingObjectError

    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=2 * PAGE, compression=False, pack_size=0)
    store.save({"weight": noise(4 * 2 * PAGE + 17)})
    digest = store.table(store.log()[0].id).tensors["weight"].chunks[which]
    (root / layout.chunk_path(digest)).unlink()
    for verify in (True, False):
        with pytest.raises(MissingObjectError, match="weight"):
            store.load(mmap=True, verify=verify)
    gc.collect()
    assert chunk_maps(root) == 0


@pytest.mark.parametrize(
    "budget",
    [
        "0",
        "1GiB",
    ],
)
def test_a_damaged_grandparent_does_not_make_the_next_save_unloadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: str
) -> None:
    monkeypatch.setenv("CKPT_REFERENCE_CACHE", budget)
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=16 << 10)
    first, second, third = adam_states(3)
    a = store.save(first, step=0)
    b = store.save(second, step=1)
    kept = set(store.table(b.id).chunk_digests())
    for digest in set(store.table(a.id).chunk_digests()) - kept:
        p = root / layout.chunk_path(digest)
        _flip(p, p.stat().st_size - 1)
    c = store.save(third, step=2)
    back = store.load(c.id)["model"]
    for k, v in third["model"].items():
        assert torch.equal(back[k], v), k
