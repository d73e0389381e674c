"""Crash safety by fault injection: a save (or a gc) interrupted at every single write leaves a sound store.

``FaultyBackend(real, fail_after=n)`` lets ``n`` writes through and fails every later one, as if the process
died right there. For each ``n`` up to the number of writes a save makes, the store seen afterwards through the
real backend must verify, its branch must point at the old or the new snapshot (which loads), a new save must
succeed, and gc must leave it verified and no bigger.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import numpy as np
import pytest

import ckpt
from ckpt import Store
from ckpt.storage import Backend, open_backend
from ckpt.storage.faults import FaultyBackend, InjectedFault

CHUNK = 4096
FILES = {"config.json": b'{"hidden_size": 64}', "tokenizer.json": b"x" * (CHUNK + 100)}
_SHARED = np.arange(2 * CHUNK // 4, dtype=np.float32)  # two chunks every state has: deduplicated


def _state(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "model": {
            "shared": _SHARED,
            "w": rng.standard_normal((3 * CHUNK // 4 + 5,)).astype(np.float32),  # 4 chunks, the last short
            "b": rng.standard_normal((7,)).astype(np.float32),
        },
        "optimizer": {"lr": 1e-3, "betas": (0.9, 0.999)},
        "step": seed,
    }


OLD, NEW, NEXT = _state(1), _state(2), _state(3)


def _assert_equal(got: Any, want: Any) -> None:
    assert type(got) is type(want) or isinstance(want, np.ndarray), (got, want)
    if isinstance(want, dict):
        assert list(got) == list(want)
        for k in want:
            _assert_equal(got[k], want[k])
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            _assert_equal(a, b)
    elif isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes()
    else:
        assert got == want


def _size(backend: Backend) -> int:
    return sum(e.size for e in backend.list(""))


@pytest.fixture(params=["file", "memory"])
def new_store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Callable[[], ckpt.Store]]:
    """A factory of fresh, empty stores (4 KiB chunks) on the local disk or fsspec's memory filesystem."""
    root = str(tmp_path) if request.param == "file" else request.getfixturevalue("memory_url")
    count = iter(range(10**6))
    yield lambda: ckpt.init(f"{root}/store-{next(count)}", chunk_size=CHUNK)


def _writes_of_a_save(store: ckpt.Store) -> int:
    """How many write operations the save of NEW (after OLD) makes."""
    store.save(OLD, step=1, model="m", files=FILES)
    counter = FaultyBackend(store.backend, fail_after=None)
    Store(counter, store.config).save(NEW, step=2, files=FILES)
    assert counter.failures == 0
    return counter.writes


def _check_sound(store: ckpt.Store, old: ckpt.Snapshot, new_state: Any, *, moved: bool | None) -> None:
    """What every interrupted save must leave behind, checked through a freshly opened store."""
    store = ckpt.open(store.url)
    report = store.verify()
    assert report.ok, report.damage
    for snap in store.snapshots():  # every record in the store is whole and valid
        assert snap.id

    head = store.branches()["main"]
    if moved is not None:
        assert (head != old.id) == moved
    if head == old.id:
        _assert_equal(store.load("main"), OLD)
    else:
        snap = store.get(head)
        assert snap.parents == (old.id,) and snap.step == 2
        _assert_equal(store.load("main"), new_state)
        assert store.files("main") == FILES

    nxt = store.save(NEXT, step=3, message="after the crash")
    assert nxt.parents == (head,)
    _assert_equal(store.load("main"), NEXT)

    before = _size(store.backend)
    store.gc(grace=timedelta(0))
    assert _size(store.backend) <= before
    report = store.verify()
    assert report.ok, report.damage
    _assert_equal(store.load("main"), NEXT)
    _assert_equal(store.load("main~1"), new_state if head != old.id else OLD)
    again = store.gc(grace=timedelta(0), dry_run=True)
    assert (again.snapshots, again.tables, again.chunks, again.other) == (0, 0, 0, 0), again


@pytest.mark.parametrize("applied", [False, True], ids=["write-lost", "reply-lost"])
def test_save_interrupted_at_every_write(new_store: Callable[[], ckpt.Store], applied: bool) -> None:
    total = _writes_of_a_save(new_store())
    # 7 tensor chunks (2 deduplicated, still put_if_absent calls), 3 file chunks, table, record, ref, reflog
    assert total == 7 + 3 + 4
    cas_write = total - 1  # 1-based: the ref moves on the second-to-last write, the reflog entry is the last
    for n in range(total):
        store = new_store()
        old = store.save(OLD, step=1, model="m", files=FILES)
        faulty = FaultyBackend(store.backend, fail_after=n, applied=applied)
        moved = n >= cas_write or (applied and n + 1 == cas_write)
        if not moved:
            with pytest.raises(InjectedFault):
                Store(faulty, store.config).save(NEW, step=2, files=FILES)
        else:  # past the commit point nothing raises: the move stands, a lost reflog entry is a warning
            with pytest.warns(UserWarning, match="do not retry|the move happened"):
                snap = Store(faulty, store.config).save(NEW, step=2, files=FILES)
            assert store.branches()["main"] == snap.id
        assert faulty.failures >= 1
        reflog_lost = moved and not (applied and n == cas_write)
        if reflog_lost:  # exactly one finding, which repair fixes without any other copy
            damage = ckpt.open(store.url).verify().damage
            assert [(d.kind, d.object, d.digest, d.snapshots) for d in damage] == [
                ("missing", "reflog", "refs/heads/main", (store.branches()["main"],))
            ]
            report = store.repair()
            assert report.ok and len(report.repaired) == 1
            assert store.reflog("refs/heads/main")[-1].new == store.branches()["main"]
        _check_sound(store, old, NEW, moved=moved)
        assert len(store.log("main")) == (3 if moved else 2)  # no retry, so no duplicate


def test_save_interrupted_by_a_base_exception(new_store: Callable[[], ckpt.Store]) -> None:
    """A KeyboardInterrupt in the middle of writing chunks (raised in a worker thread) is no worse."""
    store = new_store()
    old = store.save(OLD, step=1, model="m", files=FILES)
    faulty = FaultyBackend(store.backend, fail_after=3, exc=KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        Store(faulty, store.config).save(NEW, step=2, files=FILES)
    _check_sound(store, old, NEW, moved=False)


def test_gc_interrupted_at_every_delete(new_store: Callable[[], ckpt.Store]) -> None:
    """gc deletes records before tables before chunks: stopping it anywhere never breaks a live snapshot."""

    def garbage_store() -> tuple[ckpt.Store, ckpt.Snapshot]:
        store = new_store()
        first = store.save(OLD, step=1, model="m", files=FILES)
        store.save(NEW, step=2, files=FILES)
        store.reset("main", first.id)
        store.save(_state(4), step=2)
        store.prune("main~1")  # `first` stays in the log, its own chunks are released
        # an interrupted save: orphan chunks, table and record
        with pytest.raises(InjectedFault):
            Store(FaultyBackend(store.backend, fail_after=9), store.config).save(_state(5), step=3)
        return store, store.resolve("main")

    store, _ = garbage_store()
    counter = FaultyBackend(store.backend, fail_after=None)
    Store(counter, store.config).gc(grace=timedelta(0), expire_reflog=timedelta(0))
    total = counter.writes
    assert total >= 3
    for applied in (False, True):
        for n in range(total):
            store, head = garbage_store()
            faulty = FaultyBackend(store.backend, fail_after=n, applied=applied)
            with pytest.raises(InjectedFault):
                Store(faulty, store.config).gc(grace=timedelta(0), expire_reflog=timedelta(0))
            store = ckpt.open(store.url)
            report = store.verify()
            assert report.ok, report.damage
            assert store.branches()["main"] == head.id
            _assert_equal(store.load("main"), _state(4))
            before = _size(store.backend)
            store.gc(grace=timedelta(0), expire_reflog=timedelta(0))
            after = _size(store.backend)
            assert after < before if n < 2 else after <= before  # the chunks went last
            assert store.verify().ok
            assert [s.pruned for s in store.log("main")] == [False, True]
            store.save(NEXT, step=3)
            _assert_equal(store.load("main"), NEXT)


# -- the wrapper itself -----------------------------------------------------------------------------------


def test_faulty_backend_is_a_backend(memory_url: str) -> None:
    real = open_backend(memory_url)
    faulty = FaultyBackend(real, fail_after=2)
    assert isinstance(faulty, Backend)
    assert faulty.url == real.url and faulty.conditional_writes == real.conditional_writes
    assert faulty.local_path("x") is None
    faulty.flush()


def test_faulty_backend_counts_and_fails_every_write_after_the_limit(memory_url: str) -> None:
    real = open_backend(memory_url)
    faulty = FaultyBackend(real, fail_after=3)
    assert faulty.put_if_absent("a", b"1") is True
    faulty.replace("b", b"2")
    assert faulty.compare_and_swap("b", b"2", b"3").ok
    for op in (
        lambda: faulty.put_if_absent("c", b"4"),
        lambda: faulty.replace("b", b"5"),
        lambda: faulty.compare_and_swap("b", b"3", b"6"),
        lambda: faulty.delete(["a"]),
    ):
        with pytest.raises(InjectedFault) as info:
            op()
        assert isinstance(info.value, ckpt.BackendError)
    assert (faulty.writes, faulty.failures) == (7, 4)
    # reads still work, and none of the failed writes reached the real backend
    assert faulty.read("a") == b"1" and faulty.read("b") == b"3" and not faulty.exists("c")
    assert sorted(e.path for e in faulty.list("")) == ["a", "b"]
    out = bytearray(1)
    faulty.read_into("b", [memoryview(out)])
    assert out == b"3"


def test_faulty_backend_applied_lets_only_the_first_failing_write_through(memory_url: str) -> None:
    real = open_backend(memory_url)
    faulty = FaultyBackend(real, fail_after=1, applied=True, exc=TimeoutError)
    faulty.put_if_absent("a", b"1")
    with pytest.raises(TimeoutError, match="injected fault on write 2"):
        faulty.put_if_absent("b", b"2")
    with pytest.raises(TimeoutError):
        faulty.put_if_absent("c", b"3")
    assert real.exists("b") and not real.exists("c")


def test_faulty_backend_never_fails_without_a_limit(memory_url: str) -> None:
    faulty = FaultyBackend(open_backend(memory_url), fail_after=None)
    for i in range(5):
        faulty.put_if_absent(f"k{i}", b"v")
    faulty.delete(["k0"])
    assert (faulty.writes, faulty.failures) == (6, 0)
    with pytest.raises(ValueError):
        FaultyBackend(open_backend(memory_url), fail_after=-1)
