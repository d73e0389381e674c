"""The raw bytes of chunks this process has just stored, kept for the next save's deltas (``CKPT_REFERENCE_CACHE``).

A save that stores a chunk as a delta (codec 2) needs the raw bytes of its reference, the parent's chunk at the
same place. Read from the store, a reference at chain depth ``d`` costs ``d`` decodes; a training loop that saves
the same branch again and again from one process wrote those bytes itself at its previous save. This cache keeps
them, so that a delta save decodes nothing.

Only proven bytes are kept: ``Objects.put_chunk`` copies a chunk into an immutable ``bytes`` first, hashes that
copy, and hands the copy here under the digest it hashes to; nothing a caller still holds (a reused staging
buffer) is ever kept. The cache is keyed by digest alone, and so shared by every store of the process: raw bytes
are the same in every store, whereas a chunk's chain depth is not, so the depth is always read from the store
(``Objects._reference``).

The budget (``settings.reference_cache()``, read on each ``put``) bounds the bytes kept; the least recently used
are evicted first, and a chunk once used as a reference goes first (its successor at the same place is the next
save's reference), so that a cache that holds a whole state keeps exactly the state of the latest save.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from ckpt import settings

__all__ = ["REFERENCES", "ReferenceCache"]


class ReferenceCache:
    """A thread-safe, byte-bounded LRU map ``digest → raw bytes`` (each proven to hash to its digest by the caller).

    Args:
        budget: the most bytes kept; ``None``: ``settings.reference_cache()`` at each ``put`` (0: off).
    """

    def __init__(self, budget: int | None = None) -> None:
        self._budget = budget
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def budget(self) -> int:
        """The most bytes kept now (0: the cache is off)."""
        return settings.reference_cache() if self._budget is None else self._budget

    @property
    def size(self) -> int:
        """The bytes kept now."""
        return self._size

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: str, length: int) -> bytes | None:
        """The raw bytes of chunk ``digest`` if kept and ``length`` long, marked as used as a reference: they are
        the first evicted from now on (the chunk that takes their place is kept after them)."""
        if self.budget() == 0:  # off: not even what was kept before it was turned off
            return None
        with self._lock:
            raw = self._entries.get(digest)
            if raw is None or len(raw) != length:
                return None
            self._entries.move_to_end(digest, last=False)
            return raw

    def put(self, digest: str, raw: bytes) -> None:
        """Keep ``raw``, the raw bytes of chunk ``digest``: an immutable copy the caller has hashed to ``digest``.
        Evicts the least recently used entries to stay within the budget; a chunk larger than it is not kept."""
        budget = self.budget()
        with self._lock:
            old = self._entries.pop(digest, None)
            if old is not None:
                self._size -= len(old)
            if len(raw) <= budget:
                self._entries[digest] = raw
                self._size += len(raw)
            while self._size > budget:
                _, dropped = self._entries.popitem(last=False)
                self._size -= len(dropped)

    def touch(self, digest: str) -> None:
        """Mark a kept chunk as just stored again (most recently used), if kept."""
        with self._lock:
            if digest in self._entries:
                self._entries.move_to_end(digest)

    def admits(self, length: int) -> bool:
        """Whether a chunk of ``length`` bytes would be kept (the budget holds it): else no copy is worth making."""
        return 0 < length <= self.budget()

    def clear(self) -> None:
        """Forget every entry (the memory is freed once no save holds them)."""
        with self._lock:
            self._entries.clear()
            self._size = 0


#: The process's cache, shared by every store it opens.
REFERENCES = ReferenceCache()
