"""The contract every ``ckpt.storage.Backend`` keeps, as one reusable test suite.

Use it by subclassing ``BackendContract`` and providing a ``make_backend`` fixture: a callable that opens a
*new* backend instance on a root named ``name`` (default ``"root"``) inside a place that is fresh for each
test. Calling it twice with the same name must give two instances on the same root (as two processes would
have); different names must give sibling roots.

    class TestMyBackend(BackendContract):
        @pytest.fixture
        def make_backend(self, tmp_path):
            return lambda name="root": MyBackend(str(tmp_path / name))
"""

from __future__ import annotations

import array
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from ckpt.errors import BackendError, MissingObjectError, RecordError
from ckpt.storage import Backend, CasResult, FaultyBackend, InjectedFault, RangeRead

MakeBackend = Callable[..., Backend]

_ESCAPES = ["../x", "../../etc/passwd", "a/../../x", "..", "/abs", "/etc/passwd"]


def _paths(backend: Backend, prefix: str = "") -> set[str]:
    return {e.path for e in backend.list(prefix)}


def _run_threads(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run ``fn(i)`` in ``n`` threads that start together; re-raise the first failure."""
    barrier = threading.Barrier(n)

    def start(i: int) -> Any:
        barrier.wait(timeout=30)
        return fn(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(start, range(n)))


class BackendContract:
    """Tests every backend must pass. Subclasses provide the ``make_backend`` fixture."""

    #: CAS increments each of the 8 racing threads performs (lower it for slow backends).
    cas_increments_per_thread = 20

    @pytest.fixture
    def backend(self, make_backend: MakeBackend) -> Backend:
        return make_backend()

    # -- shape -----------------------------------------------------------------------------------------

    def test_is_a_backend(self, backend: Backend) -> None:
        assert isinstance(backend, Backend)
        assert isinstance(backend.url, str) and backend.url
        assert isinstance(backend.conditional_writes, bool)

    # -- put_if_absent ---------------------------------------------------------------------------------

    def test_put_if_absent_writes_once(self, backend: Backend) -> None:
        assert backend.put_if_absent("objects/a", b"first") is True
        assert backend.put_if_absent("objects/a", b"second, longer") is False
        assert backend.read("objects/a") == b"first"

    def test_put_if_absent_is_idempotent(self, backend: Backend) -> None:
        assert backend.put_if_absent("x/y/z", b"same") is True
        for _ in range(3):
            assert backend.put_if_absent("x/y/z", b"same") is False
        assert backend.read("x/y/z") == b"same"
        assert _paths(backend) == {"x/y/z"}

    def test_put_if_absent_accepts_every_buffer_kind(self, backend: Backend) -> None:
        floats = array.array("f", [1.0, 2.0, -3.5])
        backend.put_if_absent("bytes", b"abc")
        backend.put_if_absent("bytearray", bytearray(b"abc"))
        backend.put_if_absent("memoryview", memoryview(b"xabcx")[1:4])
        backend.put_if_absent("parts", [b"a", bytearray(b"b"), memoryview(b"c"), memoryview(floats)])
        backend.put_if_absent("empty", b"")
        assert backend.read("bytes") == b"abc"
        assert backend.read("bytearray") == b"abc"
        assert backend.read("memoryview") == b"abc"
        assert backend.read("parts") == b"abc" + floats.tobytes()
        assert backend.read("empty") == b""
        assert backend.exists("empty")

    def test_put_if_absent_is_atomic_for_readers(self, make_backend: MakeBackend) -> None:
        writer, reader = make_backend(), make_backend()
        data = bytes(range(256)) * 4096  # 1 MiB
        seen: list[bytes] = []

        def read_until_present() -> None:
            for _ in range(100_000):
                try:
                    seen.append(reader.read("big"))
                    return
                except MissingObjectError:
                    continue

        t = threading.Thread(target=read_until_present)
        t.start()
        try:
            assert writer.put_if_absent("big", data)
        finally:
            t.join(timeout=60)
        assert all(got == data for got in seen), "a reader saw a partly written object"
        assert reader.read("big") == data

    def test_put_if_absent_race_has_exactly_one_winner(self, make_backend: MakeBackend) -> None:
        backends = [make_backend() for _ in range(8)]

        def put(i: int) -> bool:
            return backends[i].put_if_absent("contested", f"writer {i}".encode())

        won = _run_threads(8, put)
        assert won.count(True) == 1, won
        winner = won.index(True)
        assert backends[0].read("contested") == f"writer {winner}".encode()

    # -- replace ---------------------------------------------------------------------------------------

    def test_replace_creates_and_overwrites(self, backend: Backend) -> None:
        backend.replace("r/obj", b"one")
        assert backend.read("r/obj") == b"one"
        backend.replace("r/obj", [b"t", b"wo"])
        assert backend.read("r/obj") == b"two"
        backend.replace("r/obj", b"")
        assert backend.read("r/obj") == b""
        assert _paths(backend) == {"r/obj"}

    def test_replace_is_atomic_for_readers(self, make_backend: MakeBackend) -> None:
        writer, reader = make_backend(), make_backend()
        versions = [bytes([i]) * (256 * 1024) for i in range(1, 6)]
        writer.replace("obj", versions[0])
        bad: list[bytes] = []
        done = threading.Event()

        def read_loop() -> None:
            while not done.is_set():
                got = reader.read("obj")
                if got not in versions:
                    bad.append(got[:16])

        t = threading.Thread(target=read_loop)
        t.start()
        try:
            for v in versions[1:]:
                writer.replace("obj", v)
        finally:
            done.set()
            t.join(timeout=60)
        assert not bad, "a reader saw a partly replaced object"
        assert reader.read("obj") == versions[-1]

    # -- compare_and_swap ------------------------------------------------------------------------------

    def test_cas_creates_when_absent(self, backend: Backend) -> None:
        assert backend.compare_and_swap("refs/x", None, b"v1") == CasResult(True, None)
        assert backend.read("refs/x") == b"v1"

    def test_cas_create_fails_when_present_and_reports_current(self, backend: Backend) -> None:
        backend.compare_and_swap("refs/x", None, b"v1")
        result = backend.compare_and_swap("refs/x", None, b"v2")
        assert result == CasResult(False, b"v1")
        assert backend.read("refs/x") == b"v1"

    def test_cas_swaps_when_expected(self, backend: Backend) -> None:
        backend.replace("refs/x", b"v1")
        assert backend.compare_and_swap("refs/x", b"v1", b"v2") == CasResult(True, None)
        assert backend.read("refs/x") == b"v2"

    def test_cas_fails_on_stale_expectation_and_reports_current(self, backend: Backend) -> None:
        backend.replace("refs/x", b"v1")
        backend.compare_and_swap("refs/x", b"v1", b"v2")
        result = backend.compare_and_swap("refs/x", b"v1", b"v3")
        assert result.ok is False
        assert result.current == b"v2"
        assert backend.read("refs/x") == b"v2"

    def test_cas_fails_when_absent_but_expected(self, backend: Backend) -> None:
        result = backend.compare_and_swap("refs/missing", b"v1", b"v2")
        assert result == CasResult(False, None)
        assert not backend.exists("refs/missing")

    def test_cas_deletes(self, backend: Backend) -> None:
        backend.replace("refs/x", b"v1")
        assert backend.compare_and_swap("refs/x", b"v1", None) == CasResult(True, None)
        assert not backend.exists("refs/x")
        with pytest.raises(MissingObjectError):
            backend.read("refs/x")

    def test_cas_delete_fails_on_stale_expectation(self, backend: Backend) -> None:
        backend.replace("refs/x", b"v2")
        assert backend.compare_and_swap("refs/x", b"v1", None) == CasResult(False, b"v2")
        assert backend.read("refs/x") == b"v2"

    def test_cas_then_recreate_after_delete(self, backend: Backend) -> None:
        backend.compare_and_swap("refs/x", None, b"v1")
        backend.compare_and_swap("refs/x", b"v1", None)
        assert backend.compare_and_swap("refs/x", None, b"v3") == CasResult(True, None)
        assert backend.read("refs/x") == b"v3"

    def test_cas_across_instances_sees_the_other_writer(self, make_backend: MakeBackend) -> None:
        a, b = make_backend(), make_backend()
        assert a.compare_and_swap("refs/main", None, b"1").ok
        assert b.compare_and_swap("refs/main", b"1", b"2").ok
        assert a.compare_and_swap("refs/main", b"1", b"3") == CasResult(False, b"2")

    def test_cas_increment_race_counts_exactly(self, make_backend: MakeBackend) -> None:
        first = make_backend()
        if not first.conditional_writes:
            pytest.skip("compare_and_swap is best-effort on this backend")
        threads, per_thread = 8, self.cas_increments_per_thread
        first.replace("counter", b"0")
        backends = [make_backend() for _ in range(threads)]

        def increment(i: int) -> int:
            backend, retries = backends[i], 0
            current = backend.read("counter")
            for _ in range(per_thread):
                while True:
                    result = backend.compare_and_swap("counter", current, str(int(current) + 1).encode())
                    if result.ok:
                        current = str(int(current) + 1).encode()
                        break
                    assert result.current is not None
                    current = result.current
                    retries += 1
            return retries

        _run_threads(threads, increment)
        assert first.read("counter") == str(threads * per_thread).encode()

    def test_cas_delete_race_loses_no_update(self, make_backend: MakeBackend) -> None:
        """A conditional delete must not remove a value another writer swapped in after it was read."""
        first = make_backend()
        if not first.conditional_writes:
            pytest.skip("compare_and_swap is best-effort on this backend")
        incrementers, per_thread = 6, self.cas_increments_per_thread
        first.replace("counter", b"0")
        backends = [make_backend() for _ in range(incrementers + 1)]
        finished = threading.Event()

        def peek(backend: Backend) -> bytes | None:
            try:
                return backend.read("counter")
            except MissingObjectError:
                return None

        def increment(backend: Backend) -> None:
            current, done = peek(backend), 0
            while done < per_thread:
                if current is None:  # the deleter holds it for a moment: look again
                    current = peek(backend)
                    continue
                result = backend.compare_and_swap("counter", current, str(int(current) + 1).encode())
                if result.ok:
                    current = str(int(current) + 1).encode()
                    done += 1
                else:
                    current = result.current

        def delete_and_restore(backend: Backend) -> None:
            while not finished.is_set():
                seen = peek(backend)
                if seen is not None and backend.compare_and_swap("counter", seen, None).ok:
                    assert backend.compare_and_swap("counter", None, seen).ok

        def run(i: int) -> None:
            if i == incrementers:
                delete_and_restore(backends[i])
            else:
                increment(backends[i])

        with ThreadPoolExecutor(max_workers=incrementers + 1) as pool:
            deleter = pool.submit(run, incrementers)
            workers = [pool.submit(run, i) for i in range(incrementers)]
            try:
                for w in workers:
                    w.result(timeout=120)
            finally:
                finished.set()
            deleter.result(timeout=60)
        assert first.read("counter") == str(incrementers * per_thread).encode()

    # -- reading ---------------------------------------------------------------------------------------

    def test_read_ranges(self, backend: Backend) -> None:
        data = bytes(range(100))
        backend.put_if_absent("data", data)
        assert backend.read("data") == data
        assert backend.read("data", 10) == data[10:]
        assert backend.read("data", 10, 20) == data[10:20]
        assert backend.read("data", 0, 1) == data[:1]
        assert backend.read("data", 99) == data[99:]
        assert backend.read("data", 90, 200) == data[90:]

    def test_read_empty_range(self, backend: Backend) -> None:
        backend.put_if_absent("data", bytes(range(100)))
        assert backend.read("data", 0, 0) == b""
        assert backend.read("data", 10, 10) == b""

    def test_read_into_several_buffers(self, backend: Backend) -> None:
        data = bytes(range(200))
        backend.put_if_absent("data", data)
        a, b, c = bytearray(10), bytearray(0), bytearray(25)
        floats = array.array("f", [0.0, 0.0])  # 8 bytes, a non-byte format like a tensor's
        backend.read_into("data", [memoryview(a), memoryview(b), memoryview(c), memoryview(floats)], start=7)
        assert bytes(a) == data[7:17]
        assert bytes(c) == data[17:42]
        assert floats.tobytes() == data[42:50]

    def test_read_into_from_start_to_exact_end(self, backend: Backend) -> None:
        data = b"0123456789"
        backend.put_if_absent("data", data)
        out = [bytearray(4), bytearray(6)]
        backend.read_into("data", [memoryview(x) for x in out])
        assert b"".join(out) == data

    def test_read_into_past_the_end_reads_what_there_is(self, backend: Backend) -> None:
        backend.put_if_absent("data", b"short")
        a, b = bytearray(4), bytearray(b"????")
        assert backend.read_into("data", [memoryview(a), memoryview(b)]) == 5
        assert bytes(a) == b"shor" and bytes(b) == b"t???"
        assert backend.read_into("data", [memoryview(bytearray(5))]) == 5

    def test_read_never_returns_more_than_the_object_holds(self, backend: Backend) -> None:
        backend.put_if_absent("data", b"0123456789")
        assert backend.read("data", 0, 3 << 30) == b"0123456789"
        assert backend.read("data", 4, 1 << 62) == b"456789"

    def test_a_range_past_the_end_reads_nothing(self, backend: Backend) -> None:
        backend.put_if_absent("data", b"0123456789")
        backend.put_if_absent("empty", b"")
        assert backend.read("data", 10, 20) == b"" and backend.read("data", 50, 60) == b""
        assert backend.read("empty", 0, 17) == b""
        assert backend.read_into("empty", [memoryview(bytearray(17))]) == 0

    def test_missing_object_reads_raise_missing_object_error(self, backend: Backend) -> None:
        with pytest.raises(MissingObjectError):
            backend.read("nope")
        with pytest.raises(MissingObjectError):
            backend.read("no/such/object", 2, 4)
        with pytest.raises(MissingObjectError):
            backend.read_into("nope", [memoryview(bytearray(3))])

    # -- exists / list / delete ------------------------------------------------------------------------

    def test_exists(self, backend: Backend) -> None:
        assert not backend.exists("a/b")
        backend.put_if_absent("a/b", b"1")
        assert backend.exists("a/b")
        assert not backend.exists("a"), "a folder is not an object"
        assert not backend.exists("a/b/c")

    def test_list_with_prefixes(self, backend: Backend) -> None:
        objects = {"a/1": b"1", "a/b/2": b"22", "ab/3": b"333", "a-x": b"4444", "b/5": b"55555"}
        for path, data in objects.items():
            backend.put_if_absent(path, data)
        assert _paths(backend) == set(objects)
        assert _paths(backend, "a/") == {"a/1", "a/b/2"}, "a sibling prefix (ab/, a-x) leaked into the listing"
        assert _paths(backend, "a/b/") == {"a/b/2"}
        assert _paths(backend, "b/") == {"b/5"}
        assert _paths(backend, "nothing/") == set()
        sizes = {e.path: e.size for e in backend.list("")}
        assert sizes == {p: len(d) for p, d in objects.items()}

    def test_list_mtime_is_aware_and_recent(self, backend: Backend) -> None:
        backend.put_if_absent("t/obj", b"x")
        (entry,) = list(backend.list("t/"))
        if entry.mtime is not None:
            assert entry.mtime.tzinfo is not None
            assert abs(datetime.now(timezone.utc) - entry.mtime) < timedelta(minutes=5)

    def test_list_shows_only_objects_after_cas_and_replace(self, backend: Backend) -> None:
        backend.compare_and_swap("refs/heads/main", None, b"1")
        backend.compare_and_swap("refs/heads/main", b"1", b"2")
        backend.replace("cfg", b"c")
        backend.put_if_absent("chunks/aa/aa11", b"x")
        assert _paths(backend) == {"refs/heads/main", "cfg", "chunks/aa/aa11"}

    def test_list_does_not_see_a_sibling_root(self, make_backend: MakeBackend) -> None:
        mine, sibling = make_backend("root"), make_backend("root2")
        sibling.put_if_absent("x", b"theirs")
        sibling.put_if_absent("a/y", b"theirs")
        mine.put_if_absent("a/z", b"mine")
        assert _paths(mine) == {"a/z"}
        assert _paths(mine, "a/") == {"a/z"}
        assert not mine.exists("x")

    def test_delete(self, backend: Backend) -> None:
        for p in ("d/1", "d/2", "d/3"):
            backend.put_if_absent(p, b"x")
        backend.delete(["d/1", "d/3"])
        assert _paths(backend) == {"d/2"}
        with pytest.raises(MissingObjectError):
            backend.read("d/1")

    def test_delete_of_missing_paths_is_ignored(self, backend: Backend) -> None:
        backend.put_if_absent("keep", b"x")
        backend.delete(["never/was", "also/missing"])
        backend.delete([])
        backend.put_if_absent("gone", b"y")
        backend.delete(["gone", "gone"])
        assert _paths(backend) == {"keep"}

    def test_put_if_absent_after_delete_writes_again(self, backend: Backend) -> None:
        backend.put_if_absent("p", b"old")
        backend.delete(["p"])
        assert backend.put_if_absent("p", b"new") is True
        assert backend.read("p") == b"new"

    def test_a_deleted_folder_does_not_block_an_object_of_its_name(self, backend: Backend) -> None:
        """Objects form no folders a caller can see: after ``x/y`` is deleted, ``x`` is a free path."""
        backend.put_if_absent("x/y", b"1")
        backend.delete(["x/y"])
        assert backend.put_if_absent("x", b"2") is True
        assert backend.read("x") == b"2"
        backend.replace("r/s", b"1")
        assert backend.compare_and_swap("r/s", b"1", None).ok
        assert backend.compare_and_swap("r", None, b"3") == CasResult(True, None)
        backend.put_if_absent("q/w", b"1")
        backend.delete(["q/w"])
        backend.replace("q", b"4")
        assert _paths(backend) == {"x", "r", "q"}

    def test_flush_and_local_path(self, backend: Backend) -> None:
        backend.put_if_absent("f", b"x")
        backend.flush()
        local = backend.local_path("f")
        if local is not None:
            with open(local, "rb") as fh:
                assert fh.read() == b"x"

    # -- the root is a boundary ------------------------------------------------------------------------

    @pytest.mark.parametrize("path", _ESCAPES)
    def test_paths_cannot_leave_the_root(self, make_backend: MakeBackend, path: str) -> None:
        backend = make_backend("inner")
        outside = make_backend("outer")
        outside.put_if_absent("x", b"secret")
        with pytest.raises(BackendError):
            backend.put_if_absent(path, b"x")
        with pytest.raises(BackendError):
            backend.replace(path, b"x")
        with pytest.raises(BackendError):
            backend.compare_and_swap(path, None, b"x")
        with pytest.raises(BackendError):
            backend.read(path)
        with pytest.raises(BackendError):
            backend.read_into(path, [memoryview(bytearray(1))])
        with pytest.raises(BackendError):
            backend.exists(path)
        with pytest.raises(BackendError):
            backend.delete([path])
        with pytest.raises(BackendError):
            list(backend.list(path.rstrip("/") + "/"))
        assert outside.read("x") == b"secret"
        assert _paths(backend) == set()

    def test_sibling_root_is_not_reachable_with_dotdot(self, make_backend: MakeBackend) -> None:
        backend, sibling = make_backend("inner"), make_backend("outer")
        sibling.put_if_absent("x", b"secret")
        with pytest.raises(BackendError):
            backend.read("../outer/x")
        with pytest.raises(BackendError):
            backend.delete(["../outer/x"])
        assert sibling.read("x") == b"secret"

    # -- batched verbs ---------------------------------------------------------------------------------

    def test_put_many_writes_each_and_reports_which_it_wrote(self, backend: Backend) -> None:
        backend.put_if_absent("b/there", b"old")
        got = backend.put_many([("b/1", b"one"), ("b/there", b"new"), ("b/2", [b"t", b"wo"]), ("b/3", b"")])
        assert got == [True, False, True, True]
        assert backend.read_many(["b/1", "b/there", "b/2", "b/3"]) == [b"one", b"old", b"two", b""]
        assert backend.put_many([]) == []

    def test_put_many_accepts_every_buffer_kind_large_and_small(self, backend: Backend) -> None:
        big = bytes(range(256)) * (5 * 4096 + 3)  # 5 MiB and a bit: streamed from memory, not joined
        floats = array.array("f", [float(i) for i in range(300_000)])  # 1.2 MB, a non-byte format
        items = [
            ("k/bytes", b"abc"),
            ("k/bytearray", bytearray(b"abc")),
            ("k/view", memoryview(b"xabcx")[1:4]),
            ("k/big-view", memoryview(big)[7:]),
            ("k/floats", memoryview(floats)),
            ("k/parts", [b"head", memoryview(big)[: 2 << 20], bytearray(b"tail"), memoryview(floats)]),
        ]
        assert backend.put_many(items) == [True] * len(items)
        assert backend.read_many([p for p, _ in items]) == [
            b"abc",
            b"abc",
            b"abc",
            big[7:],
            floats.tobytes(),
            b"head" + big[: 2 << 20] + b"tail" + floats.tobytes(),
        ]

    def test_put_many_takes_items_lazily_with_a_bounded_count_in_flight(self, backend: Backend) -> None:
        """When the batch asks for item k, all but at most ``concurrency`` of the items before it are stored."""
        paths = [f"lazy/{i:02d}" for i in range(12)]
        lag: list[int] = []

        def items() -> Any:
            for k, path in enumerate(paths):
                stored = sum(backend.exists_many(paths[:k], concurrency=1))
                lag.append(k - stored)
                yield path, path.encode()

        assert backend.put_many(items(), concurrency=3) == [True] * 12
        assert len(lag) == 12 and max(lag) <= 3, lag

    def test_concurrency_comes_from_the_environment(self, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("CKPT_IO_CONCURRENCY", "2")
        paths = [f"env/{i}" for i in range(8)]
        lag: list[int] = []

        def items() -> Any:
            for k, path in enumerate(paths):
                lag.append(k - sum(backend.exists_many(paths[:k], concurrency=1)))
                yield path, b"x"

        assert backend.put_many(items()) == [True] * 8
        assert max(lag) <= 2, lag
        monkeypatch.setenv("CKPT_IO_CONCURRENCY", "zero")
        with pytest.raises(RecordError, match="CKPT_IO_CONCURRENCY"):
            backend.put_many([("env/never", b"x")])
        assert not backend.exists("env/never")

    def test_bad_arguments_are_refused_before_any_work(self, backend: Backend) -> None:
        with pytest.raises(RecordError):
            backend.put_many([("bad/a", b"x")], concurrency=0)
        with pytest.raises(ValueError, match="errors"):
            backend.put_many([("bad/b", b"x")], errors="ignore")  # type: ignore[call-overload]
        assert backend.exists_many(["bad/a", "bad/b"]) == [False, False]
        assert _paths(backend) == set()

    def test_read_many_keeps_each_result_when_one_fails(self, backend: Backend) -> None:
        backend.put_many([(f"r/{i}", str(i).encode() * (i + 1)) for i in range(6)])
        paths = ["r/0", "r/missing", "r/2", "../escape", "r/5"]
        got = backend.read_many(paths, errors="return")
        assert got[0] == b"0" and got[2] == b"222" and got[4] == b"555555"
        assert isinstance(got[1], MissingObjectError) and "r/missing" in str(got[1])
        assert isinstance(got[3], BackendError) and not isinstance(got[3], MissingObjectError)
        with pytest.raises(MissingObjectError, match="r/missing"):
            backend.read_many(paths)

    def test_read_ranges_fill_the_callers_buffers(self, backend: Backend) -> None:
        data = bytes(range(256)) * 1024  # 256 KiB
        backend.put_many([("rr/data", data), ("rr/short", b"short"), ("rr/empty", b"")])
        a, b, c = bytearray(100), bytearray(7), bytearray(b"????????")
        floats = array.array("f", [0.0] * 4)  # 16 bytes, a tensor-like format
        tail = bytearray(b"!" * 10)
        requests = [
            RangeRead("rr/data", 1000, [memoryview(a)]),
            RangeRead("rr/data", 5, [memoryview(b), memoryview(floats)]),
            RangeRead("rr/short", 2, [memoryview(c)]),  # the object ends first
            RangeRead("rr/short", 50, [memoryview(tail)]),  # starts past the end
            RangeRead("rr/empty", 0, [memoryview(bytearray(3))]),
            RangeRead("rr/data", len(data) - 4, [memoryview(bytearray(0)), memoryview(bytearray(4))]),
        ]
        assert backend.read_ranges(requests) == [100, 23, 3, 0, 0, 4]
        assert bytes(a) == data[1000:1100]
        assert bytes(b) == data[5:12] and floats.tobytes() == data[12:28]
        assert bytes(c) == b"ort?????"
        assert bytes(tail) == b"!" * 10

    def test_read_ranges_report_missing_objects_per_item(self, backend: Backend) -> None:
        backend.put_if_absent("rr/x", b"0123456789")
        ok, lost = bytearray(4), bytearray(4)
        got = backend.read_ranges(
            [RangeRead("rr/x", 3, [memoryview(ok)]), RangeRead("rr/gone", 0, [memoryview(lost)])], errors="return"
        )
        assert got[0] == 4 and bytes(ok) == b"3456"
        assert isinstance(got[1], MissingObjectError)
        with pytest.raises(MissingObjectError):
            backend.read_ranges([RangeRead("rr/gone", 0, [memoryview(bytearray(0))])])

    def test_exists_many(self, backend: Backend) -> None:
        backend.put_many([("e/a", b"1"), ("e/b/c", b"2")])
        assert backend.exists_many(["e/a", "e/b", "e/b/c", "e/nope", "e"]) == [True, False, True, False, False]
        got = backend.exists_many(["e/a", "../x"], errors="return")
        assert got[0] is True and isinstance(got[1], BackendError)

    def test_put_many_keeps_the_others_when_one_item_fails(self, backend: Backend) -> None:
        items = [("p/0", b"a"), ("../escape", b"b"), ("p/2", b"c"), ("/abs", b"d"), ("p/4", b"e")]
        got = backend.put_many(items, errors="return")
        assert got[0] is True and got[2] is True and got[4] is True
        assert isinstance(got[1], BackendError) and isinstance(got[3], BackendError)
        assert _paths(backend) == {"p/0", "p/2", "p/4"}

    def test_put_many_raise_stops_taking_items_after_a_failure(self, backend: Backend) -> None:
        taken: list[str] = []

        def items() -> Any:
            for path in ["../first-fails", "s/1", "s/2", "s/3", "s/4"]:
                taken.append(path)
                yield path, b"x"

        with pytest.raises(BackendError, match="leaves the store root"):
            backend.put_many(items(), concurrency=1)
        assert taken[:1] == ["../first-fails"] and len(taken) <= 2, taken
        assert _paths(backend) == set()

    @pytest.mark.parametrize("path", _ESCAPES)
    def test_batched_paths_cannot_leave_the_root(self, make_backend: MakeBackend, path: str) -> None:
        backend, outside = make_backend("inner"), make_backend("outer")
        outside.put_if_absent("x", b"secret")
        for results in (
            backend.put_many([(path, b"x")], errors="return"),
            backend.read_many([path], errors="return"),
            backend.read_ranges([RangeRead(path, 0, [memoryview(bytearray(1))])], errors="return"),
            backend.exists_many([path], errors="return"),
        ):
            assert len(results) == 1 and isinstance(results[0], BackendError)
        assert outside.read("x") == b"secret"
        assert _paths(backend) == set()

    def test_put_many_race_has_exactly_one_winner_per_object(self, make_backend: MakeBackend) -> None:
        writers, paths = 4, [f"race/{i}" for i in range(10)]
        backends = [make_backend() for _ in range(writers)]

        def put(i: int) -> list[bool]:
            return backends[i].put_many([(p, f"writer {i}".encode()) for p in paths], concurrency=4)

        won = _run_threads(writers, put)
        for k, path in enumerate(paths):
            winners = [i for i in range(writers) if won[i][k]]
            assert len(winners) == 1, (path, [w[k] for w in won])
            assert backends[0].read(path) == f"writer {winners[0]}".encode()

    def test_put_many_of_one_path_twice_in_one_batch_writes_it_once(self, backend: Backend) -> None:
        got = backend.put_many([("twice", b"first"), ("twice", b"second")], concurrency=2)
        assert sorted(got) == [False, True]
        assert backend.read("twice") == (b"first" if got[0] else b"second")

    # -- batched writes through FaultyBackend: partial failures ---------------------------------------

    def test_faulty_put_many_fails_only_the_items_from_the_fault_on(self, backend: Backend) -> None:
        faulty = FaultyBackend(backend, fail_after=3)
        assert isinstance(faulty, Backend)
        items = [(f"f/{i}", str(i).encode()) for i in range(6)]
        got = faulty.put_many(items, errors="return")
        assert got[:3] == [True, True, True]
        assert all(isinstance(g, InjectedFault) for g in got[3:]), got
        assert _paths(backend) == {"f/0", "f/1", "f/2"}
        assert (faulty.writes, faulty.failures) == (6, 3)

    def test_faulty_put_many_raise_keeps_what_was_written(self, backend: Backend) -> None:
        faulty = FaultyBackend(backend, fail_after=2)
        taken: list[int] = []

        def items() -> Any:
            for i in range(6):
                taken.append(i)
                yield f"g/{i}", b"x"

        with pytest.raises(InjectedFault, match="write 3"):
            faulty.put_many(items(), concurrency=2)
        assert _paths(backend) == {"g/0", "g/1"}
        assert taken == [0, 1, 2], "items after the fault were taken"
        assert faulty.put_many([("g/0", b"x")], errors="return")[0].__class__ is InjectedFault

    def test_faulty_put_many_applied_fault_reaches_the_store(self, backend: Backend) -> None:
        faulty = FaultyBackend(backend, fail_after=1, applied=True)
        got = faulty.put_many([("h/0", b"a"), ("h/1", b"b"), ("h/2", b"c")], errors="return")
        assert got[0] is True and isinstance(got[1], InjectedFault) and isinstance(got[2], InjectedFault)
        assert _paths(backend) == {"h/0", "h/1"}, "the applied write landed although its caller saw a fault"

    def test_faulty_put_many_interrupt_is_not_an_item_failure(self, backend: Backend) -> None:
        faulty = FaultyBackend(backend, fail_after=1, exc=KeyboardInterrupt)
        with pytest.raises(KeyboardInterrupt):
            faulty.put_many([("i/0", b"a"), ("i/1", b"b"), ("i/2", b"c")], errors="return")
        # the write in flight may have been cancelled (an event loop cancels it, a thread lets it finish)
        assert _paths(backend) <= {"i/0"}

    def test_faulty_batched_reads_are_delegated(self, backend: Backend) -> None:
        faulty = FaultyBackend(backend, fail_after=0)
        backend.put_if_absent("j", b"0123")
        out = bytearray(2)
        assert faulty.read_many(["j"]) == [b"0123"]
        assert faulty.read_ranges([RangeRead("j", 1, [memoryview(out)])]) == [2] and bytes(out) == b"12"
        assert faulty.exists_many(["j", "k"]) == [True, False]
        assert faulty.writes == 0
