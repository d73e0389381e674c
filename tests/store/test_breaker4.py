"""Breaker tests for how chunks are saved: buffers recycled by the reference cache (``ReferenceCache.take``,
``give_back``, ``release``), the chain proof that reads every link whole (``proven_depth``, ``Objects._read_link``)
and keyframes hashed while encoded; and the memory hints (``madvise``, ``posix_fadvise``) the reads around them give.
Each asserts what a user checks: every snapshot loads equal to what was saved, ``verify`` is clean, and no buffer
a save still uses is handed out for another copy."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import ckpt
from ckpt.errors import BackendError, CkptError
from ckpt.storage.local import LocalBackend
from ckpt.store import _layout as layout
from ckpt.store import _objects
from ckpt.store._reference_cache import MAX_SPARE, REFERENCES

pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("empty_reference_cache")]

CHUNK = 16 << 10


@pytest.fixture
def pool_watch(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Checks, at every ``take``, that the buffer handed out is held by no entry, no pinned reference and no
    other copy in flight; and that nothing is given back twice. Returns the violations seen."""
    bad: list[str] = []
    out: set[int] = set()
    lock = threading.Lock()
    real_take, real_give, real_put = REFERENCES.take, REFERENCES.give_back, REFERENCES.put

    def take(length: int) -> bytearray:
        buf = real_take(length)
        with REFERENCES._lock:
            if any(e.raw is buf for e in REFERENCES._entries.values()):
                bad.append("take: a buffer an entry holds")
            if id(buf) in REFERENCES._pinned:
                bad.append("take: a pinned buffer")
            spares = [b for lst in REFERENCES._spare.values() for b in lst]
            if any(b is buf for b in spares):
                bad.append("take: a buffer still spare")
            if len({id(b) for b in spares}) != len(spares):
                bad.append("spare: one buffer twice")
        with lock:
            if id(buf) in out:
                bad.append("take: a buffer already out")
            out.add(id(buf))
        return buf

    def give_back(buf: bytearray) -> None:
        with lock:
            if id(buf) not in out:
                bad.append("give_back: a buffer not out")
            out.discard(id(buf))
        real_give(buf)

    def put(digest: str, raw: Any) -> bool:
        kept = real_put(digest, raw)
        if kept:
            with lock:
                out.discard(id(raw))
        return kept

    monkeypatch.setattr(REFERENCES, "take", take)
    monkeypatch.setattr(REFERENCES, "give_back", give_back)
    monkeypatch.setattr(REFERENCES, "put", put)
    return bad


def clone(state: dict[str, Any]) -> dict[str, Any]:
    return {k: clone(v) if isinstance(v, dict) else v.detach().clone() for k, v in state.items()}


def assert_equal(back: dict[str, Any], want: dict[str, Any]) -> None:
    assert back.keys() == want.keys()
    for k, v in want.items():
        if isinstance(v, dict):
            assert_equal(back[k], v)
        else:
            assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k


def assert_all_load(store: ckpt.Store, saved: list[tuple[str, dict[str, Any]]]) -> None:
    for sid, want in saved:
        assert_equal(store.load(sid), want)
    report = store.verify()
    assert report.ok, report


def assert_no_pins() -> None:
    assert not REFERENCES._pinned, "a reference stayed pinned after its save"
    assert REFERENCES._spare_bytes <= MAX_SPARE


def walk(n: int, seed: int, steps: int) -> Iterator[torch.Tensor]:
    """A weight a few Adam-sized steps apart: consecutive saves are deltas of each other."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=g) * 0.02
    for _ in range(steps):
        yield w.clone()
        w = w + torch.randn(n, generator=g) * 1e-4


# -- buffers recycled while a save still uses them ---------------------------------------------------------


@pytest.mark.parametrize("budget", ["64MiB", "40KiB", "17KiB"])
def test_identical_tensors_changed_alike_then_apart_under_every_budget_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pool_watch: list[str], budget: str
) -> None:
    """Two (then three) tensors with the same bytes make one digest the reference of several chunks of one save,
    coded on several threads at once; they then drift apart. Budgets hold the state, a few chunks, one chunk."""
    monkeypatch.setenv("CKPT_REFERENCE_CACHE", budget)
    store = ckpt.init(str(tmp_path / "s"), chunk_size=CHUNK, pack_size=0)
    saved: list[tuple[str, dict[str, Any]]] = []
    for step, w in enumerate(walk(4 * CHUNK // 4, 1, 6)):
        if step < 3:
            state = {"a": w, "b": w.clone(), "c": w.clone().to(torch.bfloat16).float()}
        else:
            state = {"a": w, "b": w + step * 1e-4, "c": w - step * 1e-4}
        saved.append((store.save(state, step=step).id, clone(state)))
        assert_no_pins()
    assert not pool_watch, pool_watch
    assert_all_load(store, saved)


def test_the_budget_changed_between_saves_keeps_every_save_loadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pool_watch: list[str]
) -> None:
    """Large, zero, tiny (under one chunk), one chunk, large again: entries kept under a larger budget are used
    and evicted under a smaller one."""
    store = ckpt.init(str(tmp_path / "s"), chunk_size=CHUNK, pack_size=0)
    saved: list[tuple[str, dict[str, Any]]] = []
    budgets = ["64MiB", "64MiB", "0", "64MiB", "5000", "16KiB", "64MiB", "64MiB"]
    for step, (budget, w) in enumerate(zip(budgets, walk(3 * CHUNK // 4 + 5, 2, len(budgets)), strict=True)):
        monkeypatch.setenv("CKPT_REFERENCE_CACHE", budget)
        state = {"w": w, "h": w.to(torch.bfloat16)}
        saved.append((store.save(state, step=step).id, clone(state)))
        assert_no_pins()
    assert not pool_watch, pool_watch
    assert_all_load(store, saved)


def test_the_cache_cleared_in_the_middle_of_a_save_keeps_every_save_loadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pool_watch: list[str]
) -> None:
    """``REFERENCES.clear()`` (a test, or a user freeing memory) while a save codes deltas against kept buffers:
    those buffers are never handed out again while in use."""
    store = ckpt.init(str(tmp_path / "s"), chunk_size=CHUNK, pack_size=0)
    real = _objects.encode
    calls = {"n": 0}

    def clearing(data: memoryview, dtype: Any, reference: Any = None, *args: Any, **kwargs: Any) -> Any:
        if reference is not None:
            calls["n"] += 1
            if calls["n"] % 3 == 1:
                REFERENCES.clear()
        return real(data, dtype, reference, *args, **kwargs)

    monkeypatch.setattr(_objects, "encode", clearing)
    saved: list[tuple[str, dict[str, Any]]] = []
    for step, w in enumerate(walk(6 * CHUNK // 4, 3, 5)):
        state = {"w": w, "twin": w.clone()}
        saved.append((store.save(state, step=step).id, clone(state)))
    assert calls["n"] > 0
    assert not pool_watch, pool_watch
    assert_all_load(store, saved)


class _Boom(BackendError):
    pass


@pytest.mark.parametrize("url", ["folder", "memory"])
def test_a_write_failing_in_the_middle_of_a_delta_save_unpins_and_the_next_saves_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pool_watch: list[str], url: str
) -> None:
    """A chunk write fails (disk full, a backend error) while other chunks of the save code against kept
    references: the save fails with a CkptError, nothing stays pinned, and the retried and later saves load."""
    if url == "folder":
        target = str(tmp_path / "s")
        cls: Any = LocalBackend
    else:
        target = f"memory://brk4-{os.getpid()}-{tmp_path.name}"
        from ckpt.storage.fsspec import FsspecBackend

        cls = FsspecBackend
    store = ckpt.init(target, chunk_size=CHUNK, pack_size=0)
    real = cls.put_if_absent
    state_of = {"fail": False, "n": 0}
    lock = threading.Lock()

    def failing(self: Any, path: str, data: Any) -> bool:
        if state_of["fail"] and "chunks/" in path:
            with lock:
                state_of["n"] += 1
                n = state_of["n"]
            if n in (2, 5):
                raise _Boom(f"no space left writing {path}")
        return real(self, path, data)

    monkeypatch.setattr(cls, "put_if_absent", failing)
    saved: list[tuple[str, dict[str, Any]]] = []
    for step, w in enumerate(walk(8 * CHUNK // 4, 4, 6)):
        state = {"w": w, "twin": w.clone()}
        state_of["fail"], state_of["n"] = step in (2, 4), 0
        if step in (2, 4):
            with pytest.raises(CkptError):
                store.save(state, step=step)
            assert_no_pins()
            state_of["fail"] = False
        saved.append((store.save(state, step=step).id, clone(state)))
        assert_no_pins()
    assert not pool_watch, pool_watch
    assert_all_load(store, saved)


def test_two_stores_and_two_branches_saving_at_once_from_one_parent_all_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pool_watch: list[str]
) -> None:
    """Four threads: two branches of one store and the same two runs in a second store, all from the same first
    state (one digest referenced by every thread at once), under a budget of about two states."""
    monkeypatch.setenv("CKPT_REFERENCE_CACHE", "200KiB")
    stores = [ckpt.init(str(tmp_path / name), chunk_size=CHUNK, pack_size=0) for name in ("s1", "s2")]
    first = next(walk(4 * CHUNK // 4, 5, 1))
    parents = [s.save({"w": first, "twin": first.clone()}, step=0).id for s in stores]
    for s, p in zip(stores, parents, strict=True):
        s.branch("x", at=p)
        s.branch("y", at=p)
    saved: dict[tuple[int, str], list[tuple[str, dict[str, Any]]]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run(i: int, branch: str, seed: int) -> None:
        try:
            g = torch.Generator().manual_seed(seed)
            w = first.clone()
            out = saved.setdefault((i, branch), [])
            for step in range(1, 5):
                w = w + torch.randn(w.shape, generator=g) * 1e-4
                state = {"w": w, "twin": w.clone()}
                if step == 1:
                    barrier.wait(timeout=60)
                out.append((stores[i].save(state, branch, step=step).id, clone(state)))
        except BaseException as e:
            errors.append(e)

    threads = [
        threading.Thread(target=run, args=(i, b, 10 * i + j)) for i in range(2) for j, b in enumerate(("x", "y"))
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert_no_pins()
    assert not pool_watch, pool_watch
    for (i, _), runs in saved.items():
        assert_all_load(stores[i], runs)


# -- the chain proof: links changed between saves ----------------------------------------------------------


def _head_chunks(store: ckpt.Store, sid: str) -> list[str]:
    return list(store.table(sid).tensors["w"].chunks)


@pytest.mark.parametrize(
    "how",
    [
        "symlink",
        "raw",
        "other-delta",
        "fifo",
        "dir",
        "hardlink-outside",
        "depth0",
        "op99",
        "ref-self",
        "header",
        "truncate",
        "empty",
        "grown",
    ],
)
def test_a_proven_link_replaced_between_saves_is_never_built_on(tmp_path: Path, how: str) -> None:
    """After three saves (the chain proven from kept bytes), the latest chunk's object is replaced by: a symlink
    to a copy of itself, the same bytes stored raw (a valid object of another encoding), another chunk's object,
    a FIFO, a folder, or a hard link shared with a file outside the store. The next saves load exactly and
    stand on no damage."""
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=CHUNK, pack_size=0)
    saved: list[tuple[str, dict[str, Any]]] = []
    ws = list(walk(3 * CHUNK // 4, 6, 6))
    for step in range(3):
        state = {"w": ws[step]}
        saved.append((store.save(state, step=step).id, clone(state)))
    heads = _head_chunks(store, saved[-1][0])
    path = root / layout.chunk_path(heads[0])
    data = path.read_bytes()
    assert data[5] == 2  # a delta: its chain was proven
    outside = tmp_path / "outside"
    path.chmod(0o644)
    path.unlink()
    if how == "symlink":
        outside.write_bytes(data)
        path.symlink_to(outside)
    elif how == "raw":
        raw = ws[2].numpy().tobytes()[:CHUNK]
        path.write_bytes(data[:5] + b"\x00" + data[6:16] + raw)
    elif how == "other-delta":
        path.write_bytes((root / layout.chunk_path(heads[1])).read_bytes())
    elif how in ("depth0", "op99", "ref-self"):  # the delta prefix: reference digest (32 bytes), depth, operation
        body = bytearray(data)
        if how == "depth0":
            body[16 + 32] = 0
        elif how == "op99":
            body[16 + 33] = 99
        else:
            body[16 : 16 + 32] = bytes.fromhex(heads[0])
        path.write_bytes(bytes(body))
    elif how in ("truncate", "empty", "grown"):
        path.write_bytes({"truncate": data[: len(data) // 2], "empty": b"", "grown": data + b"\0" * 64}[how])
    elif how == "header":
        path.write_bytes(b"ckpt\x09" + data[5:])
    elif how == "fifo":
        os.mkfifo(path)
    elif how == "dir":
        path.mkdir()
    else:
        outside.write_bytes(data)
        os.link(outside, path)
        with open(outside, "r+b") as f:  # someone changes "their" file, which is the store's object
            f.seek(100)
            f.write(b"\xff" * 8)
    for step in range(3, 6):
        state = {"w": ws[step]}
        saved.append((store.save(state, step=step).id, clone(state)))
    assert_no_pins()
    for sid, want in saved[3:]:
        assert_equal(store.load(sid), want)
        assert store.verify(sid).ok, sid
    for sid, want in saved[:3]:
        with contextlib.suppress(CkptError):
            assert_equal(store.load(sid), want)


def test_a_chain_continued_from_another_process_then_pruned_and_collected_loads(tmp_path: Path) -> None:
    """A second process (here: a cleared cache and a fresh Store object) continues a run, the first process's
    kept bytes then come back into use after prune and gc with grace 0 removed part of their chain."""
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=CHUNK, pack_size=0, delta_depth=4)
    ws = list(walk(4 * CHUNK // 4, 7, 9))
    saved: list[tuple[str, dict[str, Any]]] = []
    kept_cache = None
    for step in range(9):
        state = {"w": ws[step], "f": ws[0]}
        saved.append((store.save(state, step=step).id, clone(state)))
        if step == 2:
            kept_cache = dict(REFERENCES._entries)
            REFERENCES.clear()
            store = ckpt.open(str(root))
        if step == 5:
            store.prune(saved[3][0])
            store.prune(saved[4][0])
            store.gc(grace=0, expire_reflog=0)
            saved = [x for x in saved if x[0] not in (saved[3][0], saved[4][0])]
    assert kept_cache is not None
    assert_no_pins()
    assert_all_load(store, saved)


@pytest.mark.parametrize("budget", ["64MiB", "0"])
def test_a_reference_collected_while_a_save_codes_against_it_is_written_back_or_not_built_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: str
) -> None:
    """A gc running beside a save deletes the reference a chunk is being coded against (a keyframe at the second
    save, a delta later; kept bytes with the cache on, decoded ones with it off): every save loads and the store
    verifies clean."""
    monkeypatch.setenv("CKPT_REFERENCE_CACHE", budget)
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=CHUNK, pack_size=0, delta_depth=5)
    real = _objects.encode
    deleted: list[str] = []

    def collecting(data: memoryview, dtype: Any, reference: Any = None, *args: Any, **kwargs: Any) -> Any:
        if reference is not None:
            path = root / layout.chunk_path(reference.digest)
            if path.exists():
                path.unlink()
                deleted.append(reference.digest)
        return real(data, dtype, reference, *args, **kwargs)

    saved: list[tuple[str, dict[str, Any]]] = []
    for step, w in enumerate(walk(3 * CHUNK // 4, 8, 7)):
        monkeypatch.setattr(_objects, "encode", collecting if step in (1, 3, 5) else real)
        state = {"w": w}
        saved.append((store.save(state, step=step).id, clone(state)))
        assert_no_pins()
    assert deleted
    assert_all_load(store, saved)


@pytest.mark.s3
def test_on_s3_a_failing_upload_mid_save_and_a_link_replaced_between_saves_leave_every_save_loadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_server: dict[str, Any], pool_watch: list[str]
) -> None:
    """On S3: an upload fails while other chunks code against kept references (the save raises a CkptError and
    pins nothing); later the latest chunk of a proven chain is replaced by another valid object (the same bytes
    stored raw) and by another chunk's object. The saves after each load exactly and verify clean."""
    import boto3

    from ckpt.storage._s3 import S3Objects

    prefix = f"brk4-s3-{tmp_path.name[-10:]}"
    store = ckpt.init(f"s3://ckpt-test/{prefix}", chunk_size=CHUNK, pack_size=0, **s3_server)
    client = boto3.client("s3", endpoint_url=s3_server["endpoint_url"], region_name="us-east-1")
    real = S3Objects.put
    fail = {"on": False, "n": 0}

    async def failing(self: Any, full: str, path: str, data: Any, **kwargs: Any) -> bool:
        if fail["on"] and "chunks/" in path:
            fail["n"] += 1
            if fail["n"] == 2:
                raise BackendError(f"cannot write {path}: SlowDown")
        return await real(self, full, path, data, **kwargs)

    monkeypatch.setattr(S3Objects, "put", failing)
    ws = list(walk(3 * CHUNK // 4, 9, 6))
    saved: list[tuple[str, dict[str, Any]]] = []
    for step in range(6):
        state = {"w": ws[step]}
        if step == 2:
            fail["on"] = True
            with pytest.raises(CkptError):
                store.save(state, step=step)
            fail["on"] = False
            assert_no_pins()
        if step in (3, 4):
            heads = _head_chunks(store, saved[-1][0])
            key = f"{prefix}/{layout.chunk_path(heads[0])}"
            data = client.get_object(Bucket="ckpt-test", Key=key)["Body"].read()
            if step == 3:
                body = ws[step - 1].numpy().tobytes()[:CHUNK]
                new = data[:5] + b"\x00" + data[6:16] + body  # the same raw bytes, stored raw: valid
            else:
                other = f"{prefix}/{layout.chunk_path(heads[1])}"
                new = client.get_object(Bucket="ckpt-test", Key=other)["Body"].read()
            client.put_object(Bucket="ckpt-test", Key=key, Body=new)
        saved.append((store.save(state, step=step).id, clone(state)))
        assert_no_pins()
    assert not pool_watch, pool_watch
    for sid, want in saved[4:]:
        assert_equal(store.load(sid), want)
        assert store.verify(sid).ok, sid
    for sid, want in saved[:3]:
        assert_equal(store.load(sid), want)


@pytest.mark.parametrize("budget", ["20KiB"])
def test_async_checkpointer_with_a_failing_save_and_frozen_weights_all_others_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pool_watch: list[str], budget: str
) -> None:
    """Async saves of a model trained in place (a frozen embedding: known digests; staging buffers reused), one
    save failing on a chunk write in its worker while the next is staged: the failed one raises a CkptError from
    its handle, every other loads exactly, nothing stays pinned and the store verifies clean."""
    monkeypatch.setenv("CKPT_REFERENCE_CACHE", budget)
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=CHUNK)
    real = LocalBackend.put_if_absent
    fail = {"step": -1, "n": 0}
    lock = threading.Lock()
    current = {"step": -1}

    def failing(self: Any, path: str, data: Any) -> bool:
        if "chunks/" in path and current["step"] == fail["step"]:
            with lock:
                fail["n"] += 1
                if fail["n"] == 3:
                    raise BackendError(f"cannot write {path}: No space left on device")
        return real(self, path, data)

    monkeypatch.setattr(LocalBackend, "put_if_absent", failing)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(256, 32), torch.nn.Linear(32, 300), torch.nn.Linear(300, 32))
    model[0].weight.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x = torch.randint(0, 256, (16,))
    handles: list[tuple[Any, dict[str, Any], int]] = []
    fail["step"] = 3
    raised: list[int] = []
    ckpts = ckpt.Checkpointer(store, "main", async_save=True, max_pending=1)
    for step in range(7):
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        state = {"model": model.state_dict()}
        try:
            ckpts.wait()  # the previous save's writes are done: the failure hits the save of its step
        except CkptError:
            raised.append(step)  # the failed save's error, raised at the next call (the Checkpointer's contract)
        current["step"] = step
        handles.append((ckpts.save(state, step=step), clone(state), step))
    try:
        ckpts.close()
    except CkptError:
        raised.append(7)
    assert raised == [fail["step"] + 1]
    loaded = 0
    for handle, want, step in handles:
        try:
            snap = handle.result()
        except CkptError:
            assert step == fail["step"]
            continue
        assert_equal(store.load(snap.id), want)
        loaded += 1
    assert loaded >= 6
    assert_no_pins()
    assert not pool_watch, pool_watch
    assert store.verify().ok


def test_objects_this_process_wrote_rewritten_by_another_process_are_never_trusted(tmp_path: Path) -> None:
    """This process saves a chain (its kept bytes and the hashes of the objects it wrote stay in memory); another
    process (its own empty cache) prunes it, collects it with grace 0 and saves the same state again as a keyframe
    of a new branch (the same digest, another object); this process then continues from it. Every save loads."""
    import blake3

    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=CHUNK, pack_size=0)
    ws = list(walk(4 * CHUNK // 4, 11, 6))
    saved = [(store.save({"w": ws[s]}, step=s).id, {"w": ws[s].clone()}) for s in range(4)]
    before = _head_chunks(store, saved[3][0])[0]
    mine = (dict(REFERENCES._entries), dict(REFERENCES._written), REFERENCES._size, REFERENCES._used)
    REFERENCES._entries.clear()  # the other process: a cache of its own, empty
    REFERENCES._written.clear()
    REFERENCES._size = REFERENCES._used = 0
    other = ckpt.open(str(root))
    other.reset("main", saved[0][0])
    for sid, _ in saved[1:]:
        other.prune(sid)
    other.gc(grace=0, expire_reflog=0)
    again = other.save({"w": ws[3].clone()}, "again", step=3).id
    REFERENCES._entries.clear()  # back in this process, with what it kept
    REFERENCES._entries.update(mine[0])
    REFERENCES._written.clear()
    REFERENCES._written.update(mine[1])
    REFERENCES._size, REFERENCES._used = mine[2], mine[3]
    assert_equal(store.load(again), {"w": ws[3]})
    head = _head_chunks(store, again)[0]
    assert head == before  # the same digest, another object
    recorded = REFERENCES.written(f"{store.backend.url}\0{head}")
    assert recorded is not None and recorded != blake3.blake3((root / layout.chunk_path(head)).read_bytes()).digest()
    assert REFERENCES.get(head, CHUNK) is not None  # this process still keeps its bytes
    REFERENCES.release(REFERENCES._entries[head].raw)
    store.branch("on", at=again)
    later = [(store.save({"w": ws[s]}, "on", step=s).id, {"w": ws[s].clone()}) for s in (4, 5)]
    assert_no_pins()
    assert_all_load(store, [saved[0], (again, {"w": ws[3]}), *later])


# -- a memory hint the kernel refuses ------------------------------------------------------------------------


@pytest.mark.parametrize("hint", ["willneed-encoded", "willneed-mapped", "hugepage", "fadvise-raw"])
def test_a_memory_hint_the_kernel_refuses_is_not_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hint: str
) -> None:
    """``madvise`` is advice: a kernel built without transparent huge pages answers ``MADV_HUGEPAGE`` with EINVAL,
    and one that does not know an advice refuses it. Here the advice number is one no kernel knows, so the real
    call fails the way it does there. Loads (copied, mapped, into fresh memory), the chain proof of the next save
    and ``verify`` go on without the hint; before, a healthy store was reported damaged ("cannot be mapped"),
    a mapped load crashed with a bare OSError, and a load of a tensor of 4 MiB or more said it could not allocate
    memory."""
    import mmap

    if not hasattr(mmap, "MADV_WILLNEED") or not hasattr(mmap, "MADV_HUGEPAGE") or not hasattr(os, "posix_fadvise"):
        pytest.skip("no madvise here")
    compression = hint not in ("willneed-mapped", "fadvise-raw")
    # 4 MiB and more: fresh memory asks for huge pages, and a raw chunk is read piece by piece (fadvise)
    n = (1 << 20) + 8 if hint in ("hugepage", "fadvise-raw") else 1 << 18
    store = ckpt.init(str(tmp_path / "s"), chunk_size=8 << 20 if not compression else CHUNK, compression=compression)
    ws = list(walk(n, 12, 3 if n < 1 << 20 else 2))
    saved = [(store.save({"w": ws[0]}, step=0).id, {"w": ws[0].clone()})]
    if hint == "fadvise-raw":  # a raw chunk read (and hashed) piece by piece
        monkeypatch.setattr(os, "POSIX_FADV_SEQUENTIAL", 0x7FFF)
    else:
        monkeypatch.setattr(mmap, "MADV_HUGEPAGE" if hint == "hugepage" else "MADV_WILLNEED", 0x7FFF)
    saved += [(store.save({"w": w}, step=s).id, {"w": w.clone()}) for s, w in enumerate(ws[1:], 1)]
    for sid, want in saved:
        assert_equal(store.load(sid, mmap=hint == "willneed-mapped"), want)
    report = store.verify()
    assert report.ok, report
