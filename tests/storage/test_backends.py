"""The backend contract on every backend: local folder, fsspec memory, S3 (moto)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from ckpt.storage import Backend, LocalBackend, is_local_url, open_backend
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
