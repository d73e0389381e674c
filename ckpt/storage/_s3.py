"""S3 requests for ``FsspecBackend``, as coroutines on s3fs's event loop, one request per object operation.

Every request goes through ``S3FileSystem._call_s3``, so the user's storage options (credentials, endpoint,
``s3_additional_kwargs`` such as server-side encryption, retries) apply unchanged. What this adds over s3fs's
own ``_pipe_file`` / ``_cat_file``:

- no existence check before a write: ``If-None-Match: *`` answers it (``PreconditionFailed``: it was there);
- no ``HEAD`` before a read: a whole-object ``_cat_file`` asks for the size first, these do not; a missing
  object is the GET's own ``NoSuchKey``, a range past the end its ``InvalidRange``;
- no copies of the body: a ``memoryview`` or a sequence of buffers is sent through a seekable reader over the
  caller's memory (botocore rejects a ``memoryview`` body), and a ranged GET streams into the caller's buffers
  with ``readinto`` instead of collecting the body and joining it;
- one request for an object up to S3's 5 GiB PUT limit (s3fs switches to a multipart upload from 100 MiB).

The module is handed the filesystem by ``ckpt.storage.fsspec``; it imports from s3fs only its list of transient
errors, to resume a GET whose body broke off (s3fs retries the request, not the reading of its body).
"""

from __future__ import annotations

import asyncio
import importlib
import io
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from ckpt.errors import BackendError, CkptError, MissingObjectError
from ckpt.storage.base import Buffer, Entry

__all__ = ["S3Objects", "is_precondition_failure", "s3_error_code"]

#: Below this size a memoryview or a sequence of buffers is joined into one ``bytes`` body: the copy is cheaper
#: than the ``Expect: 100-continue`` round trip botocore adds to every streamed (file-like) body.
JOIN_BELOW = 1 << 20

#: S3's limit for one PUT; larger objects go through s3fs's multipart upload.
_MAX_PUT = 5 * 1024**3


def _retryable_errors() -> tuple[type[BaseException], ...]:
    """The errors s3fs retries (socket timeouts, bodies that broke off: botocore's ``HTTPClientError`` and its
    ``ResponseStreamingError``, aiohttp's ``ClientPayloadError`` …), connection errors, and a body whose CRC
    does not match the one S3 sent (botocore's ``FlexibleChecksumError``: damaged on the way; asked for again)."""
    errors: tuple[type[BaseException], ...] = (asyncio.TimeoutError, ConnectionError)
    try:
        from s3fs.core import S3_RETRYABLE_ERRORS
    except ImportError:  # pragma: no cover - s3fs is what brings this module into use
        return errors
    checksum = getattr(importlib.import_module("botocore.exceptions"), "FlexibleChecksumError", None)
    return errors + tuple(S3_RETRYABLE_ERRORS) + ((checksum,) if isinstance(checksum, type) else ())


def s3_error_code(e: BaseException) -> str | None:
    """The S3 error code (``NoSuchKey``, ``InvalidRange``, ``PreconditionFailed`` …) behind an s3fs exception."""
    seen: BaseException | None = e
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            if code:
                return str(code)
        seen = seen.__cause__ or seen.__context__
    return None


def is_precondition_failure(e: BaseException) -> bool:
    """Whether a write failed because its condition (If-Match / If-None-Match) did not hold."""
    if s3_error_code(e) in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
        return True
    seen: BaseException | None = e
    while seen is not None:
        text = f"{type(seen).__name__} {seen}"
        if (
            isinstance(seen, FileExistsError)
            or "PreconditionFailed" in text
            or "pre-conditions you specified did not hold" in text
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _views(data: Buffer) -> list[memoryview]:
    parts = [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)
    views = [memoryview(p) for p in parts]
    return [v if v.format == "B" and v.ndim == 1 else v.cast("B") for v in views]


def storage_failure(message: str, url: str, e: BaseException) -> BackendError:
    """A ``BackendError`` for a failed request, with what to do when the bucket itself does not exist (ckpt
    creates the store's prefix, never the bucket: its region and policy are the owner's choice)."""
    text = str(e).lower()
    if "bucket does not exist" in text or "nosuchbucket" in text:
        bucket = url.split("://", 1)[-1].split("/", 1)[0]
        return BackendError(
            message,
            hint=f"the bucket {bucket!r} does not exist: create it first (`aws s3 mb s3://{bucket}`, or your "
            "provider's console), or check the name and the endpoint (endpoint_url, $AWS_ENDPOINT_URL)",
        )
    return BackendError(message)


class BuffersReader(io.RawIOBase):
    """A seekable, read-only file over a sequence of buffers, without copying them.

    botocore reads it twice (once for the CRC32 checksum, once to send it, 256 KiB at a time through aiohttp)
    and seeks back to 0 before a retry. ``read`` returns a ``memoryview`` slice of the caller's buffer when the
    piece lies in one buffer (the consumers only hash it, measure it and write it to a socket), ``bytes``
    when it spans two.
    """

    def __init__(self, views: Sequence[memoryview]) -> None:
        super().__init__()
        self._views = [v for v in views if v.nbytes]
        self._size = sum(v.nbytes for v in self._views)
        self._pos = 0

    def __len__(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _locate(self, pos: int) -> tuple[int, int]:
        for i, v in enumerate(self._views):
            if pos < v.nbytes:
                return i, pos
            pos -= v.nbytes
        return len(self._views), 0

    def read(self, size: int | None = -1) -> Any:  # bytes or memoryview (see the class docstring)
        want = self._size - self._pos if size is None or size < 0 else min(size, self._size - self._pos)
        if want <= 0:
            return b""
        i, offset = self._locate(self._pos)
        view = self._views[i]
        if offset + want <= view.nbytes:
            self._pos += want
            return view[offset : offset + want]
        out = bytearray(want)
        n = self.readinto(out)
        return bytes(out[:n])

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        i, offset = self._locate(self._pos)
        done = 0
        while done < target.nbytes and i < len(self._views):
            view = self._views[i]
            n = min(view.nbytes - offset, target.nbytes - done)
            target[done : done + n] = view[offset : offset + n]
            done += n
            i, offset = i + 1, 0
        self._pos += done
        return done


def body_of(data: Buffer) -> tuple[bytes | bytearray | BuffersReader, int]:
    """A PUT body for ``data`` and its length: ``bytes``/``bytearray`` as they are, small sequences joined,
    large ``memoryview``\\ s and sequences streamed from the caller's memory."""
    if isinstance(data, (bytes, bytearray)):
        return data, len(data)
    views = _views(data)
    size = sum(v.nbytes for v in views)
    if size < JOIN_BELOW:
        return b"".join(views), size
    return BuffersReader(views), size


class S3Objects:
    """Object operations of one ``FsspecBackend`` on S3, as coroutines for s3fs's event loop.

    Each one raises ckpt's errors: ``MissingObjectError`` for a missing object, ``BackendError`` (with the
    s3fs/botocore error as cause) for anything else.

    Args:
        fs: the s3fs filesystem (not modified).
        url: the backend's URL, for messages.
        root: the backend's root, ``bucket/prefix``, for listings.
    """

    def __init__(self, fs: Any, url: str, root: str) -> None:
        self.fs = fs
        self.url = url
        self.root = root
        self.retries = int(getattr(fs, "retries", 5) or 1)
        self.retryable = _retryable_errors()

    def _split(self, full: str) -> tuple[str, str]:
        bucket, key, _ = self.fs.split_path(full)
        return str(bucket), str(key)

    def _missing(self, path: str) -> MissingObjectError:
        return MissingObjectError(f"object {path} is missing from {self.url}")

    def _fail(self, what: str, path: str, e: BaseException) -> BackendError:
        return storage_failure(f"cannot {what} {self.url}/{path}: {type(e).__name__}: {e}", self.url, e)

    # -- writes ------------------------------------------------------------------------------------------

    async def put(self, full: str, path: str, data: Buffer, *, create: bool, if_match: str | None = None) -> bool:
        """One PUT; with ``create``, ``If-None-Match: *``: returns whether this call wrote the object.

        A retry of a PUT whose first attempt landed but whose answer was lost reports ``False`` (the object is
        there, written by "someone"): harmless for content-addressed objects.
        """
        bucket, key = self._split(full)
        condition: dict[str, str] = {"IfNoneMatch": "*"} if create else {}
        if if_match is not None:
            condition = {"IfMatch": if_match}
        try:
            body, size = body_of(data)
            if size >= _MAX_PUT:  # beyond one PUT: s3fs's multipart upload (the condition goes on its completion)
                joined = body if isinstance(body, (bytes, bytearray)) else b"".join(_views(data))
                mode = "create" if create else "overwrite"
                await self.fs._pipe_file(full, joined, mode=mode, **({"IfMatch": if_match} if if_match else {}))
            else:
                await self.fs._call_s3("put_object", Bucket=bucket, Key=key, Body=body, **condition)
        except Exception as e:
            if (create or if_match is not None) and is_precondition_failure(e):
                return False
            if if_match is not None and isinstance(e, FileNotFoundError):  # If-Match on a deleted object
                return False
            raise self._fail("write", path, e) from e
        return True

    async def delete_if_match(self, full: str, path: str, etag: str) -> bool:
        """Delete only if the object's ETag is still ``etag``; returns whether it was deleted."""
        bucket, key = self._split(full)
        try:
            await self.fs._call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=etag)
        except Exception as e:
            if is_precondition_failure(e) or isinstance(e, FileNotFoundError):
                return False
            raise self._fail("delete", path, e) from e
        return True

    async def delete(self, fulls: Sequence[str], shown: str) -> None:
        """``DeleteObjects`` in batches of 1,000 (missing keys are not an error); any key it could not delete is."""
        by_bucket: dict[str, list[str]] = {}
        for full in fulls:
            bucket, key = self._split(full)
            by_bucket.setdefault(bucket, []).append(key)
        for bucket, keys in by_bucket.items():
            for i in range(0, len(keys), 1000):
                objects = [{"Key": k} for k in keys[i : i + 1000]]
                try:
                    out = await self.fs._call_s3(
                        "delete_objects", Bucket=bucket, Delete={"Objects": objects, "Quiet": True}
                    )
                except Exception as e:
                    raise self._fail("delete", shown, e) from e
                errors = out.get("Errors") or []
                if errors:  # s3fs's own bulk delete ignores these: a store of record may not
                    first = errors[0]
                    raise BackendError(
                        f"cannot delete {len(errors)} object(s) from {self.url}, e.g. {first.get('Key')}: "
                        f"{first.get('Code')}: {first.get('Message')}"
                    )

    # -- reads -------------------------------------------------------------------------------------------

    async def head(self, full: str, path: str) -> dict[str, Any] | None:
        """The object's metadata from one ``HEAD``, or ``None`` if there is no object (a "folder" is none)."""
        bucket, key = self._split(full)
        if not key:
            return None
        try:
            response: dict[str, Any] = await self.fs._call_s3("head_object", Bucket=bucket, Key=key)
        except FileNotFoundError:
            return None
        except Exception as e:
            if s3_error_code(e) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._fail("check", path, e) from e
        return response

    async def exists(self, full: str, path: str) -> bool:
        """Whether an object exists: one ``HEAD``."""
        return await self.head(full, path) is not None

    async def _get(self, full: str, path: str, start: int, end: int | None) -> dict[str, Any] | None:
        """A GET of ``[start, end)`` (no ``Range`` for a whole object); ``None`` when the range starts past the end."""
        bucket, key = self._split(full)
        ranged = start > 0 or end is not None
        extra = {"Range": f"bytes={start}-{'' if end is None else end - 1}"} if ranged else {}
        try:
            response: dict[str, Any] = await self.fs._call_s3("get_object", Bucket=bucket, Key=key, **extra)
        except FileNotFoundError as e:
            raise self._missing(path) from e
        except Exception as e:
            code = s3_error_code(e)
            if code in ("NoSuchKey", "404"):
                raise self._missing(path) from e
            if code == "InvalidRange":  # the object exists and ends at or before ``start``
                return None
            raise self._fail("read", path, e) from e
        if start > 0 and not response.get("ContentRange"):
            response["Body"].close()
            raise BackendError(
                f"cannot read {self.url}/{path}: the server ignored the Range header and sent the whole object",
                hint="use an S3-compatible server that supports ranged GETs",
            )
        return response

    async def _retry_pause(self, attempt: int, path: str, e: BaseException) -> None:
        """Wait before re-asking for a body that broke off (s3fs's back-off), or give up after its retries."""
        if attempt >= self.retries:
            raise self._fail("read", path, e) from e
        await asyncio.sleep(min(1.7**attempt * 0.1, 15))

    async def _read_body(self, full: str, path: str, start: int, end: int | None) -> tuple[bytes, str] | None:
        """The bytes of one GET and the object's ETag; ``None`` when ``start`` is at or past the end.

        A body that breaks off (connection reset, timeout) is asked for again, as s3fs does.
        """
        attempt = 0
        while True:
            response = await self._get(full, path, start, end)
            if response is None:
                return None
            body = response["Body"]
            try:
                data = await body.read()
                _check_complete(response, len(data))
            except self.retryable as e:
                attempt += 1
                await self._retry_pause(attempt, path, e)
                continue
            except Exception as e:
                raise self._fail("read", path, e) from e
            finally:
                body.close()
            if end is not None and len(data) > end - start:  # never more than asked for
                data = data[: end - start]
            return bytes(data), str(response.get("ETag", ""))

    async def read(self, full: str, path: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` with one GET (fewer when the object ends first)."""
        if end is not None and end <= start:
            if not await self.exists(full, path):
                raise self._missing(path)
            return b""
        found = await self._read_body(full, path, start, end)
        return b"" if found is None else found[0]

    async def read_with_etag(self, full: str, path: str) -> tuple[bytes, str] | None:
        """The whole object and its ETag from one GET (they cannot disagree); ``None`` if it does not exist."""
        try:
            found = await self._read_body(full, path, 0, None)
        except MissingObjectError:
            return None
        return found if found is not None else (b"", "")

    async def read_into(self, full: str, path: str, out: Sequence[memoryview], start: int = 0) -> int:
        """Stream bytes from ``start`` into ``out`` with one ranged GET; returns how many were read.

        A body that breaks off is resumed with a GET of the bytes still missing (s3fs's retries and back-off).
        """
        views = [v if v.format == "B" and v.ndim == 1 else v.cast("B") for v in out]
        views = [v for v in views if v.nbytes]
        total = sum(v.nbytes for v in views)
        if total == 0:
            if not await self.exists(full, path):
                raise self._missing(path)
            return 0
        done, attempt = 0, 0
        while True:
            response = await self._get(full, path, start + done, start + total)
            if response is None:
                return done
            body = response["Body"]
            got = 0
            try:
                while done < total:
                    i, offset = _locate(views, done)
                    n = await body.readinto(views[i][offset:])
                    if not n:
                        break
                    done += n
                    got += n
                _check_complete(response, got)
                return done  # everything asked for, or the object ends here
            except self.retryable as e:
                attempt += 1
                await self._retry_pause(attempt, path, e)
            except CkptError:
                raise
            except Exception as e:
                raise self._fail("read", path, e) from e
            finally:
                body.close()

    async def list(self, prefix_full: str, shown: str) -> list[Entry]:
        """Every object under ``prefix_full`` (a folder: ``/`` is added), one request per 1,000 objects.

        A prefix that is not a folder but names an object (``ckpt.json``) lists that object, as on a local disk.
        """
        bucket, key = self._split(prefix_full)
        key_prefix = f"{key.rstrip('/')}/" if key else ""
        strip = len(self.root) + 1
        token: str | None = None
        found: list[Entry] = []
        while True:
            extra = {"ContinuationToken": token} if token else {}
            try:
                page = await self.fs._call_s3("list_objects_v2", Bucket=bucket, Prefix=key_prefix, **extra)
            except FileNotFoundError:
                return found
            except Exception as e:
                raise self._fail("list", shown, e) from e
            for item in page.get("Contents") or []:
                name = f"{bucket}/{item['Key']}"
                if name.endswith("/") or not name.startswith(self.root + "/"):
                    continue  # a "folder" marker made by another tool
                found.append(Entry(name[strip:], int(item.get("Size") or 0), _when(item.get("LastModified"))))
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
            if not token:
                raise BackendError(f"cannot list {self.url}/{shown}: a truncated listing without a continuation token")
        if not found and key and shown and not shown.endswith("/"):
            info = await self.head(prefix_full, shown)
            if info is not None:
                found.append(Entry(shown, int(info.get("ContentLength") or 0), _when(info.get("LastModified"))))
        return found


class IncompleteBody(ConnectionError):
    """A GET's body ended before the bytes its ``Content-Range`` (or ``Content-Length``) announced."""


def _check_complete(response: dict[str, Any], got: int) -> None:
    """Refuse a body shorter than announced: a connection that broke off must not pass for an object's end."""
    announced: int | None = None
    content_range = str(response.get("ContentRange") or "")
    if content_range.startswith("bytes ") and "-" in content_range:
        first, _, rest = content_range[6:].partition("-")
        last = rest.partition("/")[0]
        if first.isdigit() and last.isdigit():
            announced = int(last) - int(first) + 1
    elif isinstance(response.get("ContentLength"), int):
        announced = int(response["ContentLength"])
    if announced is not None and got < announced:
        raise IncompleteBody(f"the body ended after {got} of the {announced} bytes announced")


def _locate(views: Sequence[memoryview], pos: int) -> tuple[int, int]:
    """Which buffer holds byte ``pos`` of the concatenated ``views``, and where in it."""
    for i, v in enumerate(views):
        if pos < v.nbytes:
            return i, pos
        pos -= v.nbytes
    raise IndexError(pos)


def _when(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
