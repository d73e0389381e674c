"""Where a store is: paths as ``str`` or ``os.PathLike``, URLs, and the errors for what cannot be a store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ckpt
from ckpt.errors import BackendError, RecordError, StoreError


def test_init_and_open_take_a_pathlib_path(tmp_path: Path) -> None:
    store = ckpt.init(tmp_path / "store", chunk_size="4KiB")
    store.save({"w": np.arange(4.0)})
    again = ckpt.open(tmp_path / "store")
    assert again.url == store.url == str(tmp_path / "store")
    assert again.load("main")["w"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_sync_and_repair_take_a_path_too(tmp_path: Path) -> None:
    store = ckpt.init(tmp_path / "store", chunk_size=4096)
    store.save({"w": np.arange(4.0)})
    ckpt.init(tmp_path / "replica", chunk_size=4096)
    report = store.sync_to(tmp_path / "replica")
    assert report.snapshots == 1
    assert store.repair(tmp_path / "replica").ok


def test_a_location_that_is_not_a_path_is_a_clear_error() -> None:
    with pytest.raises(StoreError, match="path or a URL") as err:
        ckpt.open(42)  # type: ignore[arg-type]
    assert err.value.hint


@pytest.mark.parametrize("url", ["simplecache::s3://bucket/models", "filecache::memory://x", "simplecache::/tmp/x"])
def test_chained_urls_are_refused_with_the_reason(url: str) -> None:
    with pytest.raises(BackendError, match="chained URLs") as err:
        ckpt.init(url)
    assert "stale" in (err.value.hint or "")


@pytest.mark.parametrize("size", ["64 bananas", "MiB", "-1", "1.5.2GB", ""])
def test_a_chunk_size_that_is_not_a_size(tmp_path: Path, size: str) -> None:
    with pytest.raises(RecordError) as err:
        ckpt.init(tmp_path / "store", chunk_size=size)
    assert isinstance(err.value, ValueError) and err.value.hint and "MiB" in err.value.hint
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("size", [0, "0B"])
def test_a_chunk_size_that_is_not_positive(tmp_path: Path, size: int | str) -> None:
    with pytest.raises(RecordError, match="positive"):
        ckpt.init(tmp_path / "store", chunk_size=size)


def test_the_chunk_size_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKPT_CHUNK_SIZE", "lots")
    with pytest.raises(RecordError, match="CKPT_CHUNK_SIZE") as err:
        ckpt.init(tmp_path / "store")
    assert err.value.hint
    monkeypatch.setenv("CKPT_CHUNK_SIZE", "1MiB")
    assert ckpt.init(tmp_path / "store").chunk_size == 1 << 20
