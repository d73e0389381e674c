"""A backend on any fsspec filesystem (memory, S3, GCS, Azure …): the only module that imports fsspec.

Object stores promise that one PUT is atomic. Conditional writes make ``put_if_absent`` and
``compare_and_swap`` race-free: on S3 with ``If-None-Match: *`` and ``If-Match: <etag>``; on fsspec's
in-process memory filesystem with a lock. On other filesystems both are best-effort (read, compare, write),
which is harmless for content-addressed objects; concurrent writers to one branch there should be avoided.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

import fsspec

from ckpt._extras import install_hint
from ckpt.errors import BackendError, MissingObjectError
from ckpt.storage.base import Buffer, CasResult, Entry

__all__ = ["FsspecBackend"]

_MEMORY_LOCK = threading.RLock()
_S3 = ("s3", "s3a")


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


def _is_precondition_failure(e: BaseException) -> bool:
    """Whether a write failed because its condition (If-Match / If-None-Match) did not hold."""
    seen: BaseException | None = e
    while seen is not None:
        text = f"{type(seen).__name__} {seen}"
        code = getattr(seen, "response", {}).get("Error", {}).get("Code") if hasattr(seen, "response") else None
        if (
            isinstance(seen, FileExistsError)
            or code in ("PreconditionFailed", "ConditionalRequestConflict", "412")
            or "PreconditionFailed" in text
            or "pre-conditions you specified did not hold" in text
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class FsspecBackend:
    """Objects under a root of an fsspec filesystem.

    Args:
        url: the root, e.g. ``memory://exp`` or ``s3://bucket/models``.
        storage_options: passed to ``fsspec.filesystem`` (credentials, ``endpoint_url`` …).

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

    # -- helpers ---------------------------------------------------------------------------------------

    def _abs(self, path: str) -> str:
        if path.startswith("/") or ".." in path.split("/"):
            raise BackendError(f"path {path!r} leaves the store root")
        return f"{self.root}/{path}" if path else self.root

    def _fail(self, what: str, path: str, e: BaseException) -> BackendError:
        message = f"cannot {what} {self.url}/{path}: {type(e).__name__}: {e}"
        if "bucket does not exist" in str(e).lower() or "nosuchbucket" in str(e).lower():
            bucket = self.root.split("/", 1)[0]
            return BackendError(  # ckpt creates the store's prefix, never the bucket (its region, its policy)
                message,
                hint=f"the bucket {bucket!r} does not exist: create it first (`aws s3 mb s3://{bucket}`, or your "
                "provider's console), or check the name and the endpoint (endpoint_url, $AWS_ENDPOINT_URL)",
            )
        return BackendError(message)

    # -- verbs -----------------------------------------------------------------------------------------

    def put_if_absent(self, path: str, data: Buffer) -> bool:
        """Write unless present: ``If-None-Match: *`` on S3, a lock on memory, check-then-put elsewhere."""
        full = self._abs(path)
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
            if self.protocol in _S3:
                try:
                    self.fs.pipe_file(full, _join(data), mode="create")
                except Exception as e:
                    if _is_precondition_failure(e):
                        return False
                    raise
                return True
            self.fs.pipe_file(full, _join(data))
            return True
        except BackendError:
            raise
        except Exception as e:
            raise self._fail("write", path, e) from e

    def replace(self, path: str, data: Buffer) -> None:
        """Overwrite with one PUT."""
        full = self._abs(path)
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
            if self.protocol in _S3:
                return self._s3_cas(full, expected, new)
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

    def _s3_cas(self, full: str, expected: bytes | None, new: bytes | None, attempts: int = 3) -> CasResult:
        """CAS with conditional requests: ``If-None-Match: *`` to create, ``If-Match: <etag>`` to replace or delete.

        The ETag and the body come from two requests; if the object changed between them, the conditional
        write fails although the body matched, and the swap is simply tried again.
        """
        for _ in range(attempts):
            etag: str | None = None
            try:
                etag = self.fs.info(full).get("ETag")
                current: bytes | None = bytes(self.fs.cat_file(full))
            except FileNotFoundError:
                current = None
            if current != expected:
                return CasResult(False, current)
            try:
                if new is None:
                    bucket, key, _ = self.fs.split_path(full)
                    self.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=etag)
                elif expected is None:
                    self.fs.pipe_file(full, new, mode="create")
                else:
                    self.fs.pipe_file(full, new, IfMatch=etag)
                return CasResult(True, None)
            except FileNotFoundError:  # If-Match on an object deleted meanwhile
                pass
            except Exception as e:
                if not _is_precondition_failure(e):
                    raise
            now = self._read_or_none(full)
            if now != expected:
                return CasResult(False, now)
        return CasResult(False, self._read_or_none(full))

    def read(self, path: str, start: int = 0, end: int | None = None) -> bytes:
        """Read bytes ``[start, end)``, with a ranged GET where the filesystem has one."""
        full = self._abs(path)
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
            # a range that starts at or past the end (S3 answers 416 InvalidRange): nothing to read
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
        """Fill the buffers ``out`` from offset ``start`` with one (ranged) GET; returns the bytes read.

        Fewer bytes than the buffers hold are read when the object ends first.
        """
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
        """Whether the object exists."""
        full = self._abs(path)
        try:
            if self.protocol == "memory":
                return full in self.fs.store
            return bool(self.fs.isfile(full))
        except Exception as e:
            raise self._fail("check", path, e) from e

    def list(self, prefix: str) -> Iterator[Entry]:
        """Every object under ``prefix``."""
        full = self._abs(prefix.rstrip("/")) if prefix else self.root
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
        """Delete objects; missing ones are ignored."""
        fulls = [self._abs(p) for p in paths]
        if not fulls:
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
