"""The backend contract on every backend: local folder, fsspec memory, S3 (moto)."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from ckpt import settings
from ckpt.errors import MissingObjectError, RecordError
from ckpt.storage import Backend, BatchedVerbs, LocalBackend, is_local_url, open_backend
from ckpt.storage._batch import finish
from ckpt.storage.fsspec import FsspecBackend

from .contract import BackendContract, MakeBackend


class TestLocalBackend(BackendContract):
    @pytest.fixture
    def make_backend(self, tmp_path: Path) -> MakeBackend:
        return lambda name="root": LocalBackend(str(tmp_path / name))

    def test_local_path_is_inside_the_root(self, backend: Backend, tmp_path: Path) -> None:
        backend.put_if_absent("a/b", b"x")
        assert backend.local_path("a/b") == str(tmp_path / "root" / "a" / "b")

    def test_no_temporary_files_left_after_writes(self, backend: Backend, tmp_path: Path) -> None:
        backend.put_if_absent("a", b"1")
        backend.put_if_absent("a", b"2")
        backend.replace("b", b"3")
        backend.compare_and_swap("c", None, b"4")
        tmp = tmp_path / "root" / "tmp"
        assert not tmp.exists() or not any(tmp.iterdir())


class TestLocalBackendNotDurable(BackendContract):
    @pytest.fixture
    def make_backend(self, tmp_path: Path) -> MakeBackend:
        return lambda name="root": LocalBackend(str(tmp_path / name), durable=False)


class TestMemoryBackend(BackendContract):
    @pytest.fixture
    def make_backend(self, memory_url: str) -> MakeBackend:
        return lambda name="root": FsspecBackend(f"{memory_url}/{name}")

    def test_conditional_writes(self, backend: Backend) -> None:
        assert backend.conditional_writes is True


@pytest.mark.s3
class TestS3Backend(BackendContract):
    cas_increments_per_thread = 3

    @pytest.fixture
    def make_backend(self, s3_server: dict[str, Any]) -> MakeBackend:
        parent = f"s3://ckpt-test/contract-{uuid.uuid4().hex[:10]}"
        return lambda name="root": FsspecBackend(f"{parent}/{name}", **s3_server)

    def test_conditional_writes(self, backend: Backend) -> None:
        assert backend.conditional_writes is True


# -- choosing a backend for a URL ------------------------------------------------------------------------


def test_open_backend_picks_local_for_paths(tmp_path: Path) -> None:
    for url in (str(tmp_path / "s"), f"file://{tmp_path / 's'}"):
        assert is_local_url(url)
        backend = open_backend(url)
        assert isinstance(backend, LocalBackend)
        backend.put_if_absent("x", b"1")
    assert (tmp_path / "s" / "x").read_bytes() == b"1"


def test_open_backend_picks_fsspec_for_urls(memory_url: str) -> None:
    assert not is_local_url(memory_url)
    backend = open_backend(memory_url)
    assert isinstance(backend, FsspecBackend)
    assert isinstance(backend, Backend)
    assert backend.url.startswith("memory://")


@pytest.mark.parametrize(
    ("url", "install"),
    [("hdfs://host/store", "fsspec implementation for hdfs://"), ("nosuchfs://x/y", "for nosuchfs://")],
)
def test_a_missing_filesystem_says_what_to_install(url: str, install: str) -> None:
    from ckpt.errors import BackendError

    with pytest.raises(BackendError) as info:
        open_backend(url)
    assert install in (info.value.hint or "")
    assert "ckpt[s3]" not in (info.value.hint or "")


def test_the_install_hint_names_the_extra() -> None:
    from ckpt.storage.fsspec import _install_hint

    assert "pip install 'ckpt-store[gcs]'" in _install_hint("gs")
    assert "pip install 'ckpt-store[azure]'" in _install_hint("abfs")
    assert "pip install 'ckpt-store[s3]'" in _install_hint("s3")


class _Wrapper(BatchedVerbs):
    """A backend written with only the one-object verbs: BatchedVerbs gives it the batched ones."""

    def __init__(self, real: Backend) -> None:
        self.real = real
        self.url = real.url
        self.conditional_writes = real.conditional_writes
        self.puts = 0
        self._lock = threading.Lock()

    def put_if_absent(self, path: str, data: Any) -> bool:
        with self._lock:
            self.puts += 1
        return self.real.put_if_absent(path, data)

    def __getattr__(self, name: str) -> Any:  # replace, compare_and_swap, read, read_into, exists, list …
        return getattr(self.real, name)


class TestBatchedVerbsOnOneObjectVerbs(BackendContract):
    @pytest.fixture
    def make_backend(self, tmp_path: Path) -> MakeBackend:
        return lambda name="root": _Wrapper(LocalBackend(str(tmp_path / name), durable=False))

    def test_every_item_goes_through_the_wrappers_own_verb(self, backend: Backend) -> None:
        assert isinstance(backend, _Wrapper)
        backend.put_many([(f"w/{i}", b"x") for i in range(10)], concurrency=4)
        assert backend.puts == 10


# -- the concurrency setting -------------------------------------------------------------------------------


def test_io_concurrency_argument_beats_environment_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings.io_concurrency() == settings.DEFAULT_IO_CONCURRENCY == 16
    monkeypatch.setenv("CKPT_IO_CONCURRENCY", " 48 ")
    assert settings.io_concurrency() == 48
    assert settings.io_concurrency(3) == 3
    for bad in ("0", "-2", "many", "1.5"):
        monkeypatch.setenv("CKPT_IO_CONCURRENCY", bad)
        with pytest.raises(RecordError, match="CKPT_IO_CONCURRENCY") as info:
            settings.io_concurrency()
        assert info.value.hint
    monkeypatch.setenv("CKPT_IO_CONCURRENCY", "")
    assert settings.io_concurrency() == 16
    for bad_arg in (0, -1, True, 2.0):
        with pytest.raises(RecordError):
            settings.io_concurrency(bad_arg)  # type: ignore[arg-type]


def test_a_failed_batch_says_how_many_items_failed(tmp_path: Path) -> None:
    backend = LocalBackend(str(tmp_path / "s"))
    with pytest.raises(MissingObjectError) as info:
        backend.read_many(["a", "b", "c"], errors="raise", concurrency=1)
    assert "a" in str(info.value)
    backend.put_if_absent("b", b"1")
    got = backend.read_many(["a", "b", "c"], errors="return")
    assert got[1] == b"1" and all(isinstance(got[i], MissingObjectError) for i in (0, 2))
    notes = getattr(info.value, "__notes__", None)
    assert notes is None or notes == []  # concurrency=1 stops at the first failure: nothing else was tried
    first, second = MissingObjectError("object a is missing"), MissingObjectError("object c is missing")
    with pytest.raises(MissingObjectError) as again:
        finish([first, b"1", second], "raise")
    assert again.value is first
    if hasattr(first, "add_note"):  # Python >= 3.11
        assert first.__notes__ == ["1 more of the 3 items of this batch failed too"]
