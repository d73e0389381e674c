"""Shared fixtures: a store on every backend (local folder, fsspec memory, S3 on a moto server)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import ckpt

BACKENDS = ["file", "memory", "s3"]


@pytest.fixture(scope="session")
def _record_caches(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return tmp_path_factory.mktemp("record-caches")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory, _record_caches: Any) -> None:
    """No CKPT_* variable of the developer's shell leaks into a test; each test has its own record cache; no
    ``.ckpt`` store above the test's folders (``/tmp/.ckpt`` left by someone else) is found: the search for
    ``./.ckpt`` stops at pytest's base temporary folder."""
    for name in list(os.environ):
        if name.startswith("CKPT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CKPT_RECORD_CACHE", str(_record_caches / uuid.uuid4().hex[:12]))
    monkeypatch.setenv("CKPT_CEILING_DIRECTORIES", str(tmp_path_factory.getbasetemp()))


@pytest.fixture
def empty_reference_cache() -> Iterator[None]:
    """The process's reference cache (``CKPT_REFERENCE_CACHE``) empty before and after the test, spare buffers
    included: what one test kept never serves another test's delta."""
    from ckpt.store._reference_cache import REFERENCES

    REFERENCES.clear()
    yield
    REFERENCES.clear()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, Any]]:
    """A moto S3 server on 127.0.0.1 for the whole session; yields the storage options to reach it."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="ckpt-test")
    try:
        yield {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def memory_url() -> Iterator[str]:
    """A fresh root on fsspec's (process-global) memory filesystem, removed afterwards."""
    import fsspec

    root = f"memory://ckpt-test-{uuid.uuid4().hex[:8]}"
    yield root
    fs = fsspec.filesystem("memory")
    prefix = fs._strip_protocol(root)
    for key in [k for k in fs.store if k.startswith(prefix)]:
        fs.store.pop(key, None)


def store_location(kind: str, request: pytest.FixtureRequest, tmp_path: Any) -> tuple[str, dict[str, Any]]:
    """A fresh (url, storage options) for one backend kind."""
    if kind == "file":
        return str(tmp_path / "store"), {}
    if kind == "memory":
        return request.getfixturevalue("memory_url"), {}
    opts = request.getfixturevalue("s3_server")
    return f"s3://ckpt-test/{uuid.uuid4().hex[:10]}", dict(opts)


@pytest.fixture(params=BACKENDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    """Each backend kind in turn; S3 tests carry the ``s3`` marker."""
    if request.param == "s3":
        request.applymarker(pytest.mark.s3)
    return str(request.param)


@pytest.fixture
def location(backend_kind: str, request: pytest.FixtureRequest, tmp_path: Any) -> tuple[str, dict[str, Any]]:
    """(url, storage options) of a fresh, not yet created store on each backend."""
    return store_location(backend_kind, request, tmp_path)


@pytest.fixture
def store(location: tuple[str, dict[str, Any]]) -> ckpt.Store:
    """A new empty store with a small chunk size (4 KiB) on each backend."""
    url, opts = location
    return ckpt.init(url, chunk_size=4096, **opts)


@pytest.fixture
def local_store(tmp_path: Any) -> ckpt.Store:
    """A new empty store in a local folder, 4 KiB chunks."""
    return ckpt.init(str(tmp_path / "store"), chunk_size=4096)
