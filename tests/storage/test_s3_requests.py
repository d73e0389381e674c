"""What ``FsspecBackend`` sends to S3, request by request (moto on 127.0.0.1, counted by a botocore hook).

Each verb is one request per object: no ``HEAD`` before a conditional ``PUT`` (``If-None-Match: *`` answers
it) or before a ``GET`` (``NoSuchKey`` / ``InvalidRange`` answer it); the batched verbs send one request per
item, concurrently, never more at once than asked; a lazy read of part of an object fetches only that range.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest

from ckpt.errors import BackendError, MissingObjectError
from ckpt.storage import CasResult, RangeRead
from ckpt.storage.fsspec import FsspecBackend

pytestmark = pytest.mark.s3


class Request(NamedTuple):
    method: str
    key: str
    query: str
    headers: dict[str, str]


class Recorder:
    """Every request the backend's own s3fs client sends (the client is this test's alone)."""

    def __init__(self, backend: FsspecBackend) -> None:
        self.root = backend.root.split("/", 1)[1]
        self.seen: list[Request] = []
        self._lock = threading.Lock()
        backend.fs.s3.meta.events.register("before-send.s3", self._hook)

    def _hook(self, request: Any, **_: Any) -> None:
        path, _, query = str(request.url).partition("?")
        key = path.split(self.root, 1)[1].lstrip("/") if self.root in path else ""
        headers = {str(k).lower(): (v.decode() if isinstance(v, bytes) else str(v)) for k, v in request.headers.items()}
        with self._lock:
            self.seen.append(Request(request.method, key, query, headers))

    def take(self) -> list[Request]:
        with self._lock:
            seen, self.seen = self.seen, []
        return seen

    def methods(self) -> list[str]:
        return sorted(r.method for r in self.take())


@pytest.fixture
def backend(s3_server: dict[str, Any]) -> FsspecBackend:
    """A backend on its own s3fs instance (hooks on a shared instance would count other tests' requests)."""
    url = f"s3://ckpt-test/requests-{uuid.uuid4().hex[:10]}"
    return FsspecBackend(url, skip_instance_cache=True, **s3_server)


@pytest.fixture
def requests(backend: FsspecBackend) -> Recorder:
    return Recorder(backend)


def test_put_if_absent_is_one_conditional_put_and_no_head(backend: FsspecBackend, requests: Recorder) -> None:
    assert backend.put_if_absent("chunks/ab/abc", b"data") is True
    (put,) = requests.take()
    assert (put.method, put.key, put.headers.get("if-none-match")) == ("PUT", "chunks/ab/abc", "*")
    assert backend.put_if_absent("chunks/ab/abc", b"other") is False
    (again,) = requests.take()
    assert (again.method, again.headers.get("if-none-match")) == ("PUT", "*")
    assert backend.read("chunks/ab/abc") == b"data"


def test_a_large_body_is_streamed_from_the_callers_memory(backend: FsspecBackend, requests: Recorder) -> None:
    tensor = memoryview(bytearray(range(256)) * 8192)  # 2 MiB: sent from a reader over the buffers, not joined
    assert backend.put_if_absent("big", [b"header", tensor]) is True
    (put,) = requests.take()
    assert put.method == "PUT" and put.headers["content-length"] == str(6 + tensor.nbytes)
    assert backend.read("big") == b"header" + tensor.tobytes()


def test_replace_is_one_unconditional_put(backend: FsspecBackend, requests: Recorder) -> None:
    backend.replace("ckpt.json", b"{}")
    (put,) = requests.take()
    assert put.method == "PUT" and "if-none-match" not in put.headers and "if-match" not in put.headers


def test_read_is_one_get_and_no_head(backend: FsspecBackend, requests: Recorder) -> None:
    data = bytes(range(100))
    backend.put_if_absent("obj", data)
    requests.take()
    assert backend.read("obj") == data
    (whole,) = requests.take()
    assert whole.method == "GET" and "range" not in whole.headers
    assert backend.read("obj", 10, 20) == data[10:20]
    (ranged,) = requests.take()
    assert ranged.method == "GET" and ranged.headers["range"] == "bytes=10-19"
    assert backend.read("obj", 100, 200) == b""  # past the end: the GET's InvalidRange says so
    assert requests.methods() == ["GET"]
    with pytest.raises(MissingObjectError):
        backend.read("nope")
    assert requests.methods() == ["GET"]


def test_read_into_fetches_exactly_the_buffers_range(backend: FsspecBackend, requests: Recorder) -> None:
    data = bytes(range(256)) * 64
    backend.put_if_absent("obj", data)
    requests.take()
    a, b = bytearray(100), bytearray(28)
    assert backend.read_into("obj", [memoryview(a), memoryview(b)], start=1000) == 128
    (get,) = requests.take()
    assert get.method == "GET" and get.headers["range"] == "bytes=1000-1127"
    assert bytes(a) + bytes(b) == data[1000:1128]


def test_exists_is_one_head(backend: FsspecBackend, requests: Recorder) -> None:
    assert backend.exists("nope") is False
    assert requests.methods() == ["HEAD"]


def test_compare_and_swap_reads_body_and_etag_in_one_get(backend: FsspecBackend, requests: Recorder) -> None:
    assert backend.compare_and_swap("refs/heads/main", None, b"1") == CasResult(True, None)
    create = requests.take()
    assert [r.method for r in create] == ["GET", "PUT"] and create[1].headers.get("if-none-match") == "*"
    assert backend.compare_and_swap("refs/heads/main", b"1", b"2") == CasResult(True, None)
    swap = requests.take()
    assert [r.method for r in swap] == ["GET", "PUT"] and swap[1].headers.get("if-match")
    assert backend.compare_and_swap("refs/heads/main", b"2", None) == CasResult(True, None)
    delete = requests.take()
    assert [r.method for r in delete] == ["GET", "DELETE"] and delete[1].headers.get("if-match")


def test_delete_is_one_request_per_thousand_and_no_head(backend: FsspecBackend, requests: Recorder) -> None:
    backend.put_many([(f"d/{i}", b"x") for i in range(5)])
    requests.take()
    backend.delete([f"d/{i}" for i in range(5)] + ["d/never-was"])
    (post,) = requests.take()
    assert post.method == "POST" and "delete" in post.query
    assert list(backend.list("d/")) == []


def test_list_is_one_request(backend: FsspecBackend, requests: Recorder) -> None:
    backend.put_many([(f"l/{i}", b"x" * i) for i in range(3)])
    requests.take()
    assert {(e.path, e.size) for e in backend.list("l/")} == {("l/0", 0), ("l/1", 1), ("l/2", 2)}
    assert list(backend.list("nothing/")) == []
    assert requests.methods() == ["GET", "GET"]


def test_batched_verbs_send_one_request_per_item(backend: FsspecBackend, requests: Recorder) -> None:
    paths = [f"chunks/{i:02x}/{i:064x}" for i in range(20)]
    assert backend.put_many([(p, p.encode()) for p in paths]) == [True] * 20
    puts = requests.take()
    assert [r.method for r in puts] == ["PUT"] * 20
    assert all(r.headers.get("if-none-match") == "*" for r in puts)
    assert backend.read_many(paths) == [p.encode() for p in paths]
    assert requests.methods() == ["GET"] * 20
    assert backend.exists_many([*paths, "chunks/no/such"]) == [True] * 20 + [False]
    assert requests.methods() == ["HEAD"] * 21


def test_a_lazy_read_fetches_only_the_ranges_it_needs(backend: FsspecBackend, requests: Recorder) -> None:
    """One layer of a big object: three ranged GETs of exactly those bytes, streamed into the buffers."""
    blob = bytes(range(256)) * 4096  # 1 MiB "shard"
    backend.put_if_absent("shard", blob)
    requests.take()
    wanted = [(4096, 512), (300_000, 1000), (len(blob) - 10, 10)]
    outs = [bytearray(n) for _, n in wanted]
    got = backend.read_ranges([RangeRead("shard", s, [memoryview(o)]) for (s, _), o in zip(wanted, outs, strict=True)])
    assert got == [n for _, n in wanted]
    assert [bytes(o) for o in outs] == [blob[s : s + n] for s, n in wanted]
    ranges = sorted(r.headers["range"] for r in requests.take())
    assert ranges == sorted(f"bytes={s}-{s + n - 1}" for s, n in wanted)


class _Gate:
    """Hold S3 requests for keys under ``gate/`` in the moto server until ``parties`` of them are there at once.

    A client that never has ``parties`` requests in flight together times the barrier out and fails; the peak
    of requests seen together shows the bound.
    """

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=30)
        self.active = 0
        self.peak = 0
        self.lock = threading.Lock()


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Gate]:
    from moto.s3.responses import S3Response

    held = _Gate(parties=4)
    original = S3Response.key_response

    def key_response(self: Any, request: Any, full_url: str, headers: Any) -> Any:
        if "/gate/" not in full_url:
            return original(self, request, full_url, headers)
        with held.lock:
            held.active += 1
            held.peak = max(held.peak, held.active)
        try:
            held.barrier.wait()
            return original(self, request, full_url, headers)
        finally:
            with held.lock:
                held.active -= 1

    monkeypatch.setattr(S3Response, "key_response", key_response)
    yield held


def test_batched_writes_and_reads_overlap_up_to_the_concurrency(backend: FsspecBackend, gate: _Gate) -> None:
    paths = [f"gate/{i}" for i in range(12)]
    assert backend.put_many([(p, p.encode()) for p in paths], concurrency=4) == [True] * 12
    assert gate.peak == 4
    outs = [bytearray(len(p)) for p in paths]
    got = backend.read_ranges(
        [RangeRead(p, 0, [memoryview(o)]) for p, o in zip(paths, outs, strict=True)], concurrency=4
    )
    assert got == [len(p) for p in paths] and [bytes(o) for o in outs] == [p.encode() for p in paths]
    assert gate.peak == 4


@pytest.fixture
def broken_once(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The moto server breaks off the first GET of each key under ``flaky/`` half-way (and closes the
    connection), as a reset network would; later GETs are whole. Under ``broken/``, every GET breaks off."""
    from moto.s3.responses import S3Response

    broken: list[str] = []
    original = S3Response.key_response

    def key_response(self: Any, request: Any, full_url: str, headers: Any) -> Any:
        status, response_headers, content = original(self, request, full_url, headers)
        once = "/flaky/" in full_url and full_url not in broken
        if not (once or "/broken/" in full_url) or request.method != "GET" or status >= 300:
            return status, response_headers, content
        broken.append(full_url)
        response_headers = {**response_headers, "connection": "close", "content-length": str(len(content))}
        return status, response_headers, content[: len(content) // 2]

    monkeypatch.setattr(S3Response, "key_response", key_response)
    return broken


def test_a_body_that_breaks_off_is_resumed(backend: FsspecBackend, requests: Recorder, broken_once: list[str]) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    backend.put_many([("flaky/a", data), ("flaky/b", data)])
    requests.take()
    out = bytearray(len(data) - 100)
    assert backend.read_into("flaky/a", [memoryview(out)], start=100) == len(data) - 100
    assert bytes(out) == data[100:]
    first, resumed = requests.take()
    assert first.headers["range"] == f"bytes=100-{len(data) - 1}"
    assert resumed.headers["range"].startswith("bytes=") and resumed.headers["range"] != first.headers["range"]
    assert backend.read("flaky/b") == data
    assert len(broken_once) == 2


def test_a_body_that_always_breaks_off_is_an_error_not_a_short_read(
    backend: FsspecBackend, broken_once: list[str]
) -> None:
    data = bytes(range(256)) * 1024
    backend.put_if_absent("broken/a", data)
    assert backend._s3 is not None
    backend._s3.retries = 2  # s3fs's default is 5, each after a longer pause
    with pytest.raises(BackendError, match="broken/a"):
        backend.read_into("broken/a", [memoryview(bytearray(len(data)))])
    with pytest.raises(BackendError, match="broken/a"):
        backend.read("broken/a")
    got = backend.read_many(["broken/a"], errors="return")
    assert isinstance(got[0], BackendError) and not isinstance(got[0], MissingObjectError)
