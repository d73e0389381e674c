"""Small tensors packed into shared chunks (format 3.0): which tensors share a pack, and reading packs once.

A store with a ``pack_size`` writes every tensor of fewer than ``PACK_MAX_TENSOR`` bytes into a *pack*: one
chunk holding the bytes of several tensors of one dtype and one top-level key, one after the other, in table
order (each tensor's entry names the pack and its ``(offset, length)``, docs/format.md). One object, one write
and one fsync per pack instead of per tensor. Packs are cut the same way from the same tensors, so an unchanged
state deduplicates whole, and one dtype per pack keeps byte-grouped compression's planes aligned.

Readers read (and verify) a pack once for all its tensors: ``read_pack`` names every tensor of a damaged pack,
and ``PackCache`` keeps the last packs read for readers that ask one tensor at a time (``LazyTensors``,
export, the DCP reader, diff).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from ckpt.model import TensorEntry
from ckpt.store._objects import Objects

__all__ = [
    "PACK_MAX_TENSOR",
    "PackCache",
    "names_text",
    "packable",
    "packed_entry",
    "plan_packs",
    "read_pack",
    "slice_of",
]

#: Tensors of fewer bytes than this are packed (when the store packs): 64 KiB, where a chunk object's own cost
#: (an object, a write, an fsync, a request on an object store) stops mattering against its bytes
#: (benchmarks/many_tensors.py).
PACK_MAX_TENSOR = 64 * 1024

#: The most bytes of packs a ``PackCache`` holds (the last pack read is held whatever its size).
CACHE_BYTES = 64 << 20


def packable(nbytes: int, pack_size: int) -> bool:
    """Whether a tensor of ``nbytes`` bytes goes into a pack of a store whose pack size is ``pack_size``."""
    return 0 < nbytes < PACK_MAX_TENSOR and nbytes <= pack_size


def plan_packs(tensors: Iterable[tuple[str, str, int]], pack_size: int) -> list[tuple[str, list[tuple[str, int]]]]:
    """The packs a store with ``pack_size`` cuts ``(name, dtype, nbytes)`` tensors into, deterministically.

    Packable tensors (``packable``) are grouped by the first component of their path (``model``,
    ``optimizer``, ``unet``, ``text_encoder`` …: parts of a state that change apart, such as a frozen text encoder
    beside a fine-tuned UNet, never share a pack; the tensors of a flat state dict, whose paths have no ``/``,
    are one group) and by dtype, groups in order of their first tensor, each group
    in the given order, and cut greedily: a pack takes the next tensor while its bytes stay within ``pack_size``.
    Offsets are then multiples of the element size.

    Returns:
        ``(dtype, [(name, offset), …])`` per pack, in order.
    """
    groups: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for name, dtype, nbytes in tensors:
        if packable(nbytes, pack_size):
            top, slash, _ = name.partition("/")
            groups.setdefault((top if slash else "", dtype), []).append((name, nbytes))  # a flat state: one group
    out: list[tuple[str, list[tuple[str, int]]]] = []
    for (_, dtype), members in groups.items():
        current: list[tuple[str, int]] = []
        used = 0
        for name, nbytes in members:
            if current and used + nbytes > pack_size:
                out.append((dtype, current))
                current, used = [], 0
            current.append((name, used))
            used += nbytes
        if current:
            out.append((dtype, current))
    return out


def slice_of(pack: bytes | bytearray | memoryview, entry: TensorEntry) -> memoryview:
    """The bytes of a packed tensor inside its pack's raw bytes."""
    assert entry.pack is not None
    offset = entry.pack[0]
    return memoryview(pack)[offset : offset + entry.nbytes]


def read_pack(
    objects: Objects,
    entry: TensorEntry,
    names: Sequence[str],
    *,
    verify: bool = True,
    snapshot: str | None = None,
) -> bytearray:
    """The raw bytes of a packed entry's pack (exactly its table length: any other length is refused), verified.

    Raises:
        CorruptChunkError, MissingObjectError: the pack is damaged or missing; the message names its tensors
            (the first few and a count).
    """
    assert entry.pack is not None
    buffer = bytearray(entry.pack[1])
    objects.read_chunk_into(
        entry.chunks[0], memoryview(buffer), verify=verify, tensor=names_text(names), snapshot=snapshot
    )
    return buffer


def names_text(names: Sequence[str]) -> str:
    """How messages name the tensors of one pack: the first few, and how many more."""
    if len(names) <= 1:
        return names[0] if names else ""
    rest = len(names) - 3
    return ", ".join(names[:3]) + (f" and {rest} more tensors of its pack" if rest > 0 else " (one pack)")


class PackCache:
    """The last packs read, for readers that ask for one packed tensor at a time (thread-safe).

    A pack is read once however many threads ask for it at the same time; the packs held take at most
    ``limit_bytes`` (at least the last one read; the least recently used is dropped first). Packs are held as
    they were read: verified when ``verify``.
    """

    def __init__(self, objects: Objects, *, verify: bool, snapshot: str | None, limit_bytes: int = CACHE_BYTES) -> None:
        self._objects = objects
        self._verify = verify
        self._snapshot = snapshot
        self._limit = limit_bytes
        self._held = 0
        self._lock = threading.Lock()
        self._packs: OrderedDict[tuple[str, int], bytearray] = OrderedDict()
        self._reading: dict[tuple[str, int], threading.Lock] = {}

    def tensor_bytes(self, name: str, entry: TensorEntry) -> memoryview:
        """The bytes of the packed tensor ``name``, read with its pack (once for all the pack's tensors).

        Raises:
            CorruptChunkError, MissingObjectError: the pack is damaged or missing.
        """
        assert entry.pack is not None
        key = (entry.chunks[0], entry.pack[1])
        with self._lock:
            found = self._packs.get(key)
            if found is not None:
                self._packs.move_to_end(key)
                return slice_of(found, entry)
            gate = self._reading.setdefault(key, threading.Lock())
        with gate:  # one reader per pack; the others wait for it and take its bytes
            with self._lock:
                found = self._packs.get(key)
            if found is None:
                try:
                    found = read_pack(self._objects, entry, [name], verify=self._verify, snapshot=self._snapshot)
                finally:
                    if found is None:
                        with self._lock:
                            self._reading.pop(key, None)
                with self._lock:
                    self._packs[key] = found
                    self._held += len(found)
                    while self._held > self._limit and len(self._packs) > 1:
                        _, dropped = self._packs.popitem(last=False)
                        self._held -= len(dropped)
                    self._reading.pop(key, None)
        return slice_of(found, entry)


def packed_entry(dtype: str, shape: tuple[int, ...], kind: str, digest: str, offset: int, length: int) -> TensorEntry:
    """The table entry of a tensor at ``offset`` of the pack ``digest`` of ``length`` raw bytes."""
    return TensorEntry(dtype=dtype, shape=shape, chunks=(digest,), kind=kind, pack=(offset, length))  # type: ignore[arg-type]
