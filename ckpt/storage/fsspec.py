"""A backend on any fsspec filesystem (memory, S3, GCS, Azure …): the only module that imports fsspec.

Object stores promise that one PUT is atomic. Conditional writes make ``put_if_absent`` and
``compare_and_swap`` race-free: on S3 with ``If-None-Match: *`` and ``If-Match: <etag>``; on fsspec's
in-process memory filesystem with a lock. On other filesystems both are best-effort (read, compare, write),
which is harmless for content-addressed objects; concurrent writers to one branch there should be avoided.

On S3 every verb is one request per object (``ckpt.storage._s3``): no existence check before a conditional
PUT, no ``HEAD`` before a GET, bodies sent from and read into the caller's buffers; the batched verbs run their
requests concurrently on s3fs's event loop. Other filesystems get the batched verbs from their one-object verbs
(threads; one after the other in memory).
"""

from __future__ import annotations

import asyncio
import builtins
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

import fsspec
import fsspec.asyn

from ckpt._extras import install_hint
from ckpt.errors import BackendError, MissingObjectError
from ckpt.storage._batch import BatchedVerbs, run_bounded
from ckpt.storage._s3 import S3Objects, storage_failure
from ckpt.storage.base import Buffer, CasResult, Entry, RangeRead

__all__ = ["FsspecBackend"]

_MEMORY_LOCK = threading.RLock()
_S3 = ("s3", "s3a")

#: Connections s3fs's client may open (botocore's default is 10, fewer than ckpt's default concurrency of 16);
#: a storage option ``config_kwargs={"max_pool_connections": n}`` wins.
_S3_POOL = 64

_I = TypeVar("_I")
_T = TypeVar("_T")


#: The extra of ckpt's distribution that brings the filesystem for a protocol.
_EXTRAS = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "az": "azure",
    "abfs": "azure",
    "abfss": "azure",
    "adl": "azure",
}


def _install_hint(protocol: str) -> str:
    """What to install for ``protocol://``: ckpt's extra when there is one, else fsspec's list of implementations."""
    extra = _EXTRAS.get(protocol)
    if extra:
        return f"install the filesystem for {protocol}:// with {install_hint(extra)}"
    return (
        f"install the fsspec implementation for {protocol}:// "
        "(see https://filesystem-spec.readthedocs.io/en/latest/api.html#other-known-implementations)"
    )


def _join(data: Buffer) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    return b"".join(bytes(p) if not isinstance(p, bytes) else p for p in data)


def _mtime(info: dict[str, Any]) -> datetime | None:
    for key in ("LastModified", "mtime", "created", "last_modified", "updated"):
        v = info.get(key)
        if v is None:
            continue
        if isinstance(v, datetime):
            return v if v.tzinfo else v.replace(tzinfo=timezone.utc)
        if isinstance(v, (int, float)):
            return datetime.fromtimestamp(float(v), timezone.utc)
        if isinstance(v, str):
            try:
                return datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                continue
    return None


class FsspecBackend(BatchedVerbs):
    """Objects under a root of an fsspec filesystem.

    Args:
        url: the root, e.g. ``memory://exp`` or ``s3://bucket/models``.
        storage_options: passed to ``fsspec.filesystem`` (credentials, ``endpoint_url`` …). On S3, unless given,
            ``use_listings_cache=False`` and ``config_kwargs={"max_pool_connections": 64}``.

    Example:
        >>> b = FsspecBackend("memory://demo")
        >>> b.put_if_absent("x", b"1"), b.put_if_absent("x", b"2"), b.read("x")
        (True, False, b'1')
    """

    def __init__(self, url: str, **storage_options: Any) -> None:
        protocol, _, rest = url.partition("://")
        if not rest:
            raise BackendError(f"not a URL: {url!r}", hint="give a local path or an fsspec URL such as s3://bucket/x")
        if "::" in url:
            raise BackendError(
                f"chained URLs such as {url!r} are not supported for a store",
                hint="a caching layer (simplecache::, filecache:: …) would answer reads of refs from a stale copy "
                "and let two writers overwrite each other; open the store with its plain URL (s3://…)",
            )
        self.protocol = protocol
        options = dict(storage_options)
        if protocol in _S3:
            # listings are read after other processes write; never answer from a stale listing cache
            options.setdefault("use_listings_cache", False)
            config = dict(options.get("config_kwargs") or {})
            config.setdefault("max_pool_connections", _S3_POOL)
            options["config_kwargs"] = config
            self._s3_options = options
        try:
            self.fs = fsspec.filesystem(protocol, **options)
        except (ImportError, ValueError, TypeError, OSError) as e:  # unknown protocol, bad options, missing file
            raise BackendError(
                f"cannot open {url!r}: {e}",
                hint=_install_hint(protocol),
            ) from e
        self.root = self.fs._strip_protocol(url).rstrip("/")
        self.url = f"{protocol}://{self.root}"
        self.conditional_writes = protocol in _S3 or protocol == "memory"
        self._s3 = S3Objects(self.fs, self.url, self.root) if protocol in _S3 else None
        self._batch_threads = protocol != "memory"  # in-process memory gains nothing from threads

    def __repr__(self) -> str:
        return f"FsspecBackend({self.url!r})"

    # -- helpers ---------------------------------------------------------------------------------------

    def _abs(self, path: str) -> str:
        if path.startswith("/") or ".." in path.split("/"):
            raise BackendError(f"path {path!r} leaves the store root")
        return f"{self.root}/{path}" if path else self.root

    def _fail(self, what: str, path: str, e: BaseException) -> BackendError:
        return storage_failure(f"cannot {what} {self.url}/{path}: {type(e).__name__}: {e}", self.url, e)

    def _run(self, coroutine: Callable[..., Awaitable[_T]], *args: Any, **kwargs: Any) -> _T:
        """Run one of ``S3Objects``' coroutines on s3fs's event loop and wait for it."""
        result: _T = fsspec.asyn.sync(self.fs.loop, coroutine, *args, **kwargs)
        return result

    def _on_loop(
        self, coroutine: Callable[[_I], Awaitable[_T]], items: Iterable[_I], concurrency: int, fail_fast: bool
    ) -> builtins.list[_T | Exception]:
        """Run ``coroutine`` for each item on s3fs's event loop, at most ``concurrency`` at once."""
        loop = self.fs.loop

        def submit(item: _I) -> Any:
            return asyncio.run_coroutine_threadsafe(_as_coroutine(coroutine, item), loop)

        return run_bounded(submit, items, concurrency=concurrency, fail_fast=fail_fast)

    # -- verbs -----------------------------------------------------------------------------------------

    def put_if_absent(self, path: str, data: Buffer) -> bool:
        """Write unless present: one ``PUT`` with ``If-None-Match: *`` on S3, a lock on memory, check-then-put
        elsewhere."""
        full = self._abs(path)
        if self._s3 is not None:
            return self._run(self._s3.put, full, path, data, create=True)
        try:
            if self.protocol == "memory":
                with _MEMORY_LOCK:
                    existing = self.fs.store.get(full)
                    if existing is not None:
                        existing.created = datetime.now(timezone.utc)  # refreshed, so a running gc spares it
                        return False
                    self.fs.pipe_file(full, _join(data))
                    return True
            if self.fs.exists(full):
                return False
            self.fs.pipe_file(full, _join(data))
            return True
        except BackendError:
            raise
        except Exception as e:
            raise self._fail("write", path, e) from e

    def replace(self, path: str, data: Buffer) -> None:
        """Overwrite with one PUT."""
        full = self._abs(path)
        if self._s3 is not None:
            self._run(self._s3.put, full, path, data, create=False)
            return
        try:
            if self.protocol == "memory":
                with _MEMORY_LOCK:
                    self.fs.pipe_file(full, _join(data))
            else:
                self.fs.pipe_file(full, _join(data))
        except Exception as e:
            raise self._fail("write", path, e) from e

    def _read_or_none(self, full: str) -> bytes | None:
        try:
            return bytes(self.fs.cat_file(full))
        except FileNotFoundError:
            return None

    def compare_and_swap(self, path: str, expected: bytes | None, new: bytes | None) -> CasResult:
        """Conditional PUT (``If-Match`` on the ETag) on S3; a lock on memory; best-effort elsewhere."""
        full = self._abs(path)
        try:
            if self.protocol == "memory":
                with _MEMORY_LOCK:
                    return self._plain_cas(full, expected, new)
            if self._s3 is not None:
                return self._s3_cas(full, path, expected, new)
            return self._plain_cas(full, expected, new)
        except BackendError:
            raise
        except Exception as e:
            raise self._fail("update", path, e) from e

    def _plain_cas(self, full: str, expected: bytes | None, new: bytes | None) -> CasResult:
        """Read, compare, write: atomic only under a lock the caller holds (memory), best-effort elsewhere."""
        current = self._read_or_none(full)
        if current != expected:
            return CasResult(False, current)
        if new is None:
            self.fs.rm_file(full)
        else:
            self.fs.pipe_file(full, new)
        return CasResult(True, None)

    def _s3_cas(self, full: str, path: str, expected: bytes | None, new: bytes | None, attempts: int = 3) -> CasResult:
        """CAS with conditional requests: ``If-None-Match: *`` to create, ``If-Match: <etag>`` to replace or delete.

        The body and its ETag come from one GET. If the object changes between that GET and the conditional
        write, the write fails although the body matched, and the swap is tried again.
        """
        assert self._s3 is not None
        s3 = self._s3
        for _ in range(attempts):
            found = self._run(s3.read_with_etag, full, path)
            current, etag = found if found is not None else (None, None)
            if current != expected:
                return CasResult(False, current)
            if new is None:
                assert etag is not None  # expected is not None here, so the object exists
                done = self._run(s3.delete_if_match, full, path, etag)
            elif etag is None:
                done = self._run(s3.put, full, path, new, create=True)
            else:
                done = self._run(s3.put, full, path, new, create=False, if_match=etag)
            if done:
                return CasResult(True, None)
        found = self._run(s3.read_with_etag, full, path)
        return CasResult(False, found[0] if found is not None else None)

    def read(self, path: str, start: int = 0, end: int | None = None) -> bytes:
        """Read bytes ``[start, end)``: one GET on S3 (ranged unless the whole object is asked for)."""
        full = self._abs(path)
        if self._s3 is not None:
            return self._run(self._s3.read, full, path, start, end)
        if end is not None and end <= start:
            if not self.exists(path):
                raise MissingObjectError(f"object {path} is missing from {self.url}")
            return b""
        try:
            if start == 0 and end is None:
                return bytes(self.fs.cat_file(full))
            return bytes(self.fs.cat_file(full, start=start, end=end))
        except FileNotFoundError as e:
            raise MissingObjectError(f"object {path} is missing from {self.url}") from e
        except Exception as e:
            # a range that starts at or past the end: nothing to read
            try:
                size = self.fs.info(full).get("size")
            except FileNotFoundError:
                raise MissingObjectError(f"object {path} is missing from {self.url}") from e
            except Exception:
                size = None
            if size is not None and start >= int(size):
                return b""
            raise self._fail("read", path, e) from e

    def read_into(self, path: str, out: Sequence[memoryview], start: int = 0) -> int:
        """Fill the buffers ``out`` from offset ``start``; returns the bytes read.

        On S3, one ranged GET streamed straight into the buffers. Fewer bytes than the buffers hold are read
        when the object ends first.
        """
        full = self._abs(path)
        if self._s3 is not None:
            return self._run(self._s3.read_into, full, path, out, start)
        views = [v.cast("B") if v.format != "B" else v for v in out]
        total = sum(v.nbytes for v in views)
        data = self.read(path, start, start + total)
        pos = 0
        for v in views:
            n = min(v.nbytes, len(data) - pos)
            if n > 0:
                v[:n] = data[pos : pos + n]
                pos += n
        return len(data)

    def exists(self, path: str) -> bool:
        """Whether the object exists (one ``HEAD`` on S3)."""
        full = self._abs(path)
        if self._s3 is not None:
            return self._run(self._s3.exists, full, path)
        try:
            if self.protocol == "memory":
                return full in self.fs.store
            return bool(self.fs.isfile(full))
        except Exception as e:
            raise self._fail("check", path, e) from e

    def list(self, prefix: str) -> Iterator[Entry]:
        """Every object under ``prefix`` (on S3, one request per 1,000 objects)."""
        full = self._abs(prefix.rstrip("/")) if prefix else self.root
        if self._s3 is not None:
            yield from self._run(self._s3.list, full, prefix)
            return
        try:
            if self.protocol == "memory":
                with _MEMORY_LOCK:
                    items = [(k, v) for k, v in self.fs.store.items() if k.startswith(full + "/") or k == full]
                found = {k: {"size": v.size, "created": getattr(v, "created", None)} for k, v in items}
            else:
                found = self.fs.find(full, detail=True, withdirs=False) if self.fs.exists(full) else {}
        except FileNotFoundError:
            return
        except Exception as e:
            raise self._fail("list", prefix, e) from e
        strip = len(self.root) + 1
        for name, info in sorted(found.items()):
            name = name.lstrip("/") if self.protocol == "memory" and not self.root.startswith("/") else name
            rel = name[strip:] if name.startswith(self.root + "/") else name
            yield Entry(rel, int(info.get("size") or 0), _mtime(info))

    def delete(self, paths: Sequence[str]) -> None:
        """Delete objects; missing ones are ignored (on S3, ``DeleteObjects`` per 1,000, no check first)."""
        fulls = [self._abs(p) for p in paths]
        if not fulls:
            return
        if self._s3 is not None:
            self._run(self._s3.delete, fulls, paths[0])
            return
        try:
            if self.protocol == "memory":
                with _MEMORY_LOCK:
                    for f in fulls:
                        self.fs.store.pop(f, None)
                return
            for i in range(0, len(fulls), 1000):
                batch = [f for f in fulls[i : i + 1000] if self.fs.exists(f)]
                if batch:
                    self.fs.rm(batch)
        except Exception as e:
            raise self._fail("delete", fulls[0], e) from e

    def flush(self) -> None:
        """Nothing to do: a PUT is durable when it returns."""

    def local_path(self, path: str) -> str | None:
        """Not local."""
        return None

    # -- batched verbs on S3: every request on s3fs's event loop ------------------------------------------

    def _put_batch(
        self, items: Iterable[tuple[str, Buffer]], concurrency: int, fail_fast: bool
    ) -> builtins.list[bool | Exception]:
        s3 = self._s3
        if s3 is None:
            return super()._put_batch(items, concurrency, fail_fast)

        async def put(item: tuple[str, Buffer]) -> bool:
            path, data = item
            return await s3.put(self._abs(path), path, data, create=True)

        return self._on_loop(put, items, concurrency, fail_fast)

    def _read_batch(self, paths: Iterable[str], concurrency: int, fail_fast: bool) -> builtins.list[bytes | Exception]:
        s3 = self._s3
        if s3 is None:
            return super()._read_batch(paths, concurrency, fail_fast)

        async def read(path: str) -> bytes:
            return await s3.read(self._abs(path), path)

        return self._on_loop(read, paths, concurrency, fail_fast)

    def _range_batch(
        self, requests: Iterable[RangeRead], concurrency: int, fail_fast: bool
    ) -> builtins.list[int | Exception]:
        s3 = self._s3
        if s3 is None:
            return super()._range_batch(requests, concurrency, fail_fast)

        async def read_into(request: RangeRead) -> int:
            return await s3.read_into(self._abs(request.path), request.path, request.out, request.start)

        return self._on_loop(read_into, requests, concurrency, fail_fast)

    def _exists_batch(self, paths: Iterable[str], concurrency: int, fail_fast: bool) -> builtins.list[bool | Exception]:
        s3 = self._s3
        if s3 is None:
            return super()._exists_batch(paths, concurrency, fail_fast)

        async def exists(path: str) -> bool:
            return await s3.exists(self._abs(path), path)

        return self._on_loop(exists, paths, concurrency, fail_fast)


async def _as_coroutine(coroutine: Callable[[_I], Awaitable[_T]], item: _I) -> _T:
    return await coroutine(item)
