"""The raw bytes of chunks this process has just stored, kept for the next save's deltas (``CKPT_REFERENCE_CACHE``).

A save that stores a chunk as a delta (codec 2) needs the raw bytes of its reference, the parent's chunk at the
same place. Read from the store, a reference at chain depth ``d`` costs ``d`` decodes; a training loop that saves
the same branch again and again from one process wrote those bytes itself at its previous save. This cache keeps
them, so that a delta save decodes nothing.

Only proven bytes are kept: ``Objects.put_chunk`` copies a chunk into an immutable ``bytes`` first, hashes that
copy, and hands the copy here under the digest it hashes to; nothing a caller still holds (a reused staging
buffer) is ever kept. The cache is keyed by digest alone, and so shared by every store of the process: raw bytes
are the same in every store, whereas a chunk's chain depth is not, so the depth is always read from the store
(``Objects._reference``). Kept bytes are used only when the stored chain provably decodes to them: the cache also
remembers, per store and chunk, the BLAKE3 of each object this process wrote (``wrote``), and every link of the
chain, read back whole, must hash to it (``Objects._proven_depth``); else the save decodes the chain as without
the cache (a damaged link then makes the new chunk a keyframe, never a delta on damage).

The budget (``settings.reference_cache()``, read on each call) bounds the bytes kept. A chunk once used as a
reference goes first (its successor at the same place is the next save's reference), so that a budget that
holds a whole state keeps exactly the state of the latest save. Then the least recently used, but only once
stale (not stored again nor used while ``STALE × budget`` bytes of other chunks were offered): a state larger
than the budget keeps the chunks it saved first, and those hit at every save, where plain LRU would evict each
chunk just before the next save needs it (no hit at all, and a copy per chunk for nothing). A chunk that does not
fit is not copied (``admits``).
"""

from __future__ import annotations

import mmap
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import blake3

from ckpt import settings
from ckpt.errors import CkptError
from ckpt.store._chunk_format import CHUNK_HEADER_SIZE
from ckpt.store._encoded import DEFAULT_MAX_DEPTH_READ, MIN_ENCODE, delta_depth

__all__ = ["REFERENCES", "ReadLink", "ReferenceCache", "hash_link", "proven_depth", "record_written"]


#: An entry not stored again nor used while this many budgets of bytes were offered is stale (evictable).
STALE = 16


#: The most stored-object digests ``ReferenceCache.wrote`` remembers (about 150 bytes each): the chunks of
#: sixteen saves of a 1 TB state in 64 MiB chunks.
MAX_WRITTEN = 1 << 18


#: Spare buffers kept for the next copies (``take``), beyond the budget: at most this many bytes, each at least
#: ``MIN_SPARE`` (a smaller copy costs no page fault worth saving).
MAX_SPARE = 1 << 28
MIN_SPARE = 1 << 12


@dataclass
class _Entry:
    raw: bytes | bytearray
    used: bool  # handed out as a reference: first to go
    stamp: int  # the cache's clock when last stored
    pins: int = 0  # references handed out by ``get`` and not yet released
    dropped: bool = False  # out of the cache: its buffer is recycled once unpinned


class ReferenceCache:
    """A thread-safe, byte-bounded map ``digest → raw bytes`` (each proven to hash to its digest by the caller).

    Args:
        budget: the most bytes kept; ``None``: ``settings.reference_cache()`` at each call (0: off).
    """

    def __init__(self, budget: int | None = None) -> None:
        self._budget = budget
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # first out first: used, then fresh by stamp
        self._size = 0
        self._used = 0  # bytes of used entries
        self._clock = 0  # bytes offered (``admits``)
        self._lock = threading.Lock()
        self._written: OrderedDict[str, bytes] = OrderedDict()  # store + chunk digest → BLAKE3 of its object
        self._pinned: dict[int, _Entry] = {}  # id of a buffer handed out by ``get`` → its entry
        self._spare: dict[int, list[bytearray]] = {}  # length → buffers no entry holds any more
        self._spare_bytes = 0

    def budget(self) -> int:
        """The most bytes kept now (0: the cache is off)."""
        return settings.reference_cache() if self._budget is None else self._budget

    @property
    def size(self) -> int:
        """The bytes kept now."""
        return self._size

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: str, length: int) -> bytes | bytearray | None:
        """The raw bytes of chunk ``digest`` if kept and ``length`` long, marked as used as a reference: they are
        the first evicted from now on (the chunk that takes their place is kept after them). The buffer is
        pinned: never recycled (``take``) before ``release``, even once evicted; the cache never writes it."""
        if self.budget() == 0:  # off: not even what was kept before it was turned off
            return None
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None or len(entry.raw) != length:
                return None
            if not entry.used:
                entry.used = True
                self._used += length
            self._entries.move_to_end(digest, last=False)
            entry.pins += 1
            self._pinned[id(entry.raw)] = entry
            return entry.raw

    def release(self, raw: bytes | bytearray | memoryview) -> None:
        """Unpin a buffer ``get`` handed out (its caller is done with it): recycled if its entry was dropped."""
        with self._lock:
            entry = self._pinned.get(id(raw))
            if entry is None or entry.raw is not raw:
                return
            entry.pins -= 1
            if entry.pins == 0:
                del self._pinned[id(raw)]
                if entry.dropped:
                    self._recycle(entry.raw)

    def take(self, length: int) -> bytearray:
        """A buffer of ``length`` bytes for the next copy of a chunk: a spare one (an entry dropped since, whose
        memory is already the process's: no page faults) or a new one. Its contents are stale."""
        with self._lock:
            spares = self._spare.get(length)
            if spares:
                self._spare_bytes -= length
                return spares.pop()
        return bytearray(length)

    def give_back(self, buffer: bytearray) -> None:
        """A buffer from ``take`` that was not kept (``put`` did not keep it, or it was never offered)."""
        with self._lock:
            self._recycle(buffer)

    def differs(self, digest: str, data: memoryview) -> bool:
        """Whether ``data`` is certainly not chunk ``digest``: it is kept, and its first bytes differ (a changed
        chunk is then not hashed twice; without that, an unchanged one is found by its hash alone)."""
        n = min(data.nbytes, 4096)
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return False
            if len(entry.raw) != data.nbytes:
                return True
            return bytes(entry.raw[:n]) != bytes(data[:n])

    def admits(self, length: int) -> bool:
        """Whether a chunk of ``length`` bytes about to be stored would be kept (else no copy is worth making);
        counts it as offered (the clock that makes entries stale)."""
        budget = self.budget()
        with self._lock:
            self._clock += length
            if not MIN_ENCODE <= length <= budget:  # a smaller chunk is stored raw, never a delta: no reference
                return False
            return self._size - self._used + length <= budget or self._evictable(budget)

    def put(self, digest: str, raw: bytes | bytearray) -> bool:
        """Keep ``raw``, the raw bytes of chunk ``digest``: a copy the caller has hashed to ``digest`` and will
        never write again (the cache owns it from now on). Evicts used, then stale entries to make room (their
        buffers then serve later copies, ``take``); when that is not enough (or the budget is smaller than the
        chunk), ``raw`` is not kept. Returns whether it was kept.

        A used entry stays until room is needed: another store or branch saving from the same parent in this
        process may still use it."""
        budget = self.budget()
        with self._lock:
            self._drop(digest)
            while self._size + len(raw) > budget and self._entries and self._evictable(budget):
                self._drop(next(iter(self._entries)))
            if self._size + len(raw) <= budget:
                self._entries[digest] = _Entry(raw, False, self._clock)
                self._size += len(raw)
                return True
            return False

    def touch(self, digest: str) -> None:
        """Mark a kept chunk as just stored again (the latest at its place: fresh, most recently used)."""
        with self._lock:
            entry = self._entries.get(digest)
            if entry is not None:
                if entry.used:
                    entry.used = False
                    self._used -= len(entry.raw)
                entry.stamp = self._clock
                self._entries.move_to_end(digest)

    def wrote(self, key: str, stored: bytes) -> None:
        """Remember the BLAKE3 digest of an object this process wrote (``key``: the store and the chunk digest),
        so that a later save can prove a kept reference's chain by its stored bytes without decoding it. At most
        ``MAX_WRITTEN`` are remembered (the oldest go first)."""
        with self._lock:
            self._written[key] = stored
            self._written.move_to_end(key)
            while len(self._written) > MAX_WRITTEN:
                self._written.popitem(last=False)

    def written(self, key: str) -> bytes | None:
        """The digest ``wrote`` remembered for ``key``, or ``None``."""
        with self._lock:
            return self._written.get(key)

    def clear(self) -> None:
        """Forget every entry and spare buffer (the memory is freed once no save holds them)."""
        with self._lock:
            for entry in self._entries.values():
                entry.dropped = False  # never recycled: ``clear`` frees
            self._entries.clear()
            self._written.clear()
            self._pinned.clear()
            self._spare.clear()
            self._size = self._used = self._spare_bytes = 0

    def _evictable(self, budget: int) -> bool:
        """Whether the first entry out may go now: used, or stale (under the lock)."""
        first = next(iter(self._entries.values()), None)
        return first is not None and (first.used or self._clock - first.stamp > STALE * budget)

    def _drop(self, digest: str) -> None:
        entry = self._entries.pop(digest, None)
        if entry is not None:
            self._size -= len(entry.raw)
            self._used -= len(entry.raw) if entry.used else 0
            if entry.pins:
                entry.dropped = True  # recycled by the last ``release``
            else:
                self._recycle(entry.raw)

    def _recycle(self, raw: bytes | bytearray) -> None:
        """Keep a buffer no entry holds as a spare for ``take`` (under the lock; bounded by ``MAX_SPARE``), the
        cache on or off: every chunk a save writes is copied first."""
        if isinstance(raw, bytearray) and len(raw) >= MIN_SPARE and self._spare_bytes + len(raw) <= MAX_SPARE:
            self._spare.setdefault(len(raw), []).append(raw)
            self._spare_bytes += len(raw)


#: The process's cache, shared by every store it opens.
REFERENCES = ReferenceCache()


def record_written(store: str, digest: str, parts: list[bytes | bytearray | memoryview]) -> None:
    """Remember the BLAKE3 of the object (``parts``, header first) this process just wrote under ``digest`` in
    the store at URL ``store`` (``ReferenceCache.wrote``)."""
    # one thread: the object comes in pieces of a block's planes, which a multi-threaded hasher (spawning its
    # work per piece, beside the save's own workers) hashed at half the speed and twice the CPU
    h = blake3.blake3()
    for p in parts:
        h.update(p)
    REFERENCES.wrote(f"{store}\0{digest}", h.digest())


#: One link of a chain, read whole and hashed: ``(the BLAKE3 of the stored object, (its reference, its depth))``,
#: ``(None, 0)`` for a keyframe; ``None`` when it cannot be read.
ReadLink = Callable[[str, int], "tuple[bytes, tuple[str | None, int]] | None"]


def proven_depth(read_link: ReadLink, store: str, digest: str, n: int) -> int | None:
    """The chain depth of a chunk whose every link is, byte for byte, an object this process wrote to the store
    at URL ``store`` (``record_written``): then the chain decodes to the raw bytes this process kept for it.
    ``None`` when a link was not written by this process, is not whole, or differs from what was written
    (damage since, or another writer's object): the caller decodes the chain instead. ``read_link``
    (``Objects._read_link``) reads and hashes each link once, whole, at every call (a local one from a map of its
    file, no copy); nothing is decoded."""
    top: int | None = None
    for _ in range(DEFAULT_MAX_DEPTH_READ + 1):
        expected = REFERENCES.written(f"{store}\0{digest}")
        if expected is None:
            return None
        read = read_link(digest, n)
        if read is None or read[0] != expected:
            return None
        ref, depth = read[1]
        if ref is None:
            return 0 if top is None else top
        top = depth if top is None else top
        digest = ref
    return None


def hash_link(
    codec: int, obj: bytes | memoryview | mmap.mmap, digest: str
) -> tuple[bytes, tuple[str | None, int]] | None:
    """``ReadLink``'s work on a stored object already read or mapped whole (header first): its BLAKE3 (one
    thread: several saves' workers prove chains at once) and what its delta prefix says."""
    h = blake3.blake3()
    h.update(obj)
    try:
        return h.digest(), delta_depth(codec, memoryview(obj)[CHUNK_HEADER_SIZE:], digest)  # (None, 0): keyframe
    except CkptError:
        return None
