"""How many chunk transfers run at once: threads on this machine, requests in flight on an object store.

On a local folder a chunk transfer is CPU and disk work, so ``ckpt.settings.threads()`` workers run them. On a
store on another machine each chunk is a request that mostly waits for the network: save, load, sync and repair
keep ``ckpt.settings.io_concurrency()`` of them in flight (``$CKPT_IO_CONCURRENCY``, 16 by default), every
request on the filesystem's one event loop (s3fs's). Where a transfer holds a chunk's bytes in memory of its own
(sync and repair copy chunks between stores; save and load move bytes straight between tensors and requests),
``ckpt.settings.io_memory()`` bounds it too: never more than that many bytes of chunks at once.
"""

from __future__ import annotations

from ckpt import settings
from ckpt.storage import Backend

__all__ = ["io_workers", "is_remote"]

#: Filesystems whose objects are already on this machine (or in this process).
_LOCAL_PROTOCOLS = frozenset({"file", "local", "memory"})


def is_remote(backend: Backend) -> bool:
    """Whether a store's objects are on another machine (each request a round trip): not a folder, not memory."""
    protocol = getattr(backend, "protocol", None)
    return protocol is not None and protocol not in _LOCAL_PROTOCOLS and backend.local_path("ckpt.json") is None


def io_workers(backend: Backend, chunk_bytes: int | None = None) -> int:
    """Workers for a chunk transfer on ``backend``.

    Args:
        backend: the store (for a copy, the remote one of the two, if any).
        chunk_bytes: the bytes each worker holds in memory of its own (a copied chunk), or ``None`` when the
            transfer holds none (bytes move between tensors and requests).

    Returns:
        ``threads()`` on this machine; on an object store ``max(threads(), io_concurrency())``, lowered so that
        ``workers × chunk_bytes`` stays within ``io_memory()`` (at least one worker).
    """
    workers = settings.threads()
    if is_remote(backend):
        workers = max(workers, settings.io_concurrency())
    if chunk_bytes:
        workers = min(workers, max(1, settings.io_memory() // chunk_bytes))
    return workers
