"""The digest cache: a tensor's chunk digests are reused only when its bytes are proven equal to hashed bytes.

torch's version counter cannot prove a tensor unchanged: writes through ``.data`` (``p.data[i] = …``), numpy
views, ``torch.from_numpy`` aliases, fused kernels and raw pointers change the bytes without bumping
``_version``, and a sampled check misses the rows outside its sample. So nothing here trusts either. What is
trusted is a byte-for-byte comparison: an async save copies each tensor into a staging buffer that is kept
from save to save (``_staging.Slot``); once that save is committed, the buffer's bytes are known to have the
digests the store recorded for them. At the next save that reuses the slot, a live CPU tensor equal to its
buffer, compared byte by byte (``equal_bytes``: every byte, not a sample, and by bits, so ``-0.0`` differs
from ``0.0``), is the very bytes those digests name: it is neither copied nor hashed, and the buffer (owned by
the save, never by the loop) stands for it in the snapshot. Anything else is copied and hashed.

What cannot be compared this way is always hashed: synchronous saves (no buffer to compare with), CUDA
tensors (the comparison would need the device bytes on the host, i.e. the copy it would save), non-contiguous
or conjugate views and dtypes the store cannot name.

Entries are per slot and per tensor key; a key whose buffer is refilled, or that leaves the state, is
forgotten, so that digests whose chunks only pruned snapshots may still reference (and ``gc`` may delete) are
never offered to a later save.
"""

from __future__ import annotations

import sys
import threading
import weakref
from typing import Any

__all__ = ["DigestCache", "cacheable", "equal_bytes"]

#: bytes compared first, alone (a changed tensor usually differs early)
_FIRST_PIECE = 1 << 16


class DigestCache:
    """What each staging buffer of each slot is known to hold: the chunk digests of its committed bytes.

    Thread-safe: the loop looks up and forgets, the background thread records after a commit.
    """

    def __init__(self) -> None:
        self._known: weakref.WeakKeyDictionary[Any, dict[str, tuple[str, ...]]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._known.values())

    def digests(self, slot: Any, key: str) -> tuple[str, ...] | None:
        """The digests of the bytes in ``slot``'s buffer for ``key``, if a committed save recorded them."""
        with self._lock:
            return self._known.get(slot, {}).get(key)

    def lookup(self, slot: Any, key: str, t: Any) -> tuple[str, ...] | None:
        """The digests of ``t`` if it equals, byte for byte, the slot's buffer whose digests are known."""
        known = self.digests(slot, key)
        if known is None or not cacheable(t):
            return None
        buf = slot.buffers.get(key)
        if buf is None or not equal_bytes(t, buf):
            return None
        return known

    def forget(self, slot: Any, key: str) -> None:
        """The slot's buffer for ``key`` is being refilled (or freed): its digests are no longer known."""
        with self._lock:
            known = self._known.get(slot)
            if known is not None:
                known.pop(key, None)

    def remember(self, slot: Any, key: str, digests: tuple[str, ...]) -> None:
        """A committed save stored the bytes of the slot's buffer for ``key`` under ``digests``."""
        with self._lock:
            self._known.setdefault(slot, {})[key] = digests

    def clear(self) -> None:
        """Forget everything (e.g. a known chunk vanished from the store)."""
        with self._lock:
            self._known.clear()


def cacheable(t: Any) -> bool:
    """Whether a live tensor can be compared, byte for byte and cheaply, with a host staging buffer."""
    torch = sys.modules["torch"]
    from ckpt.state import dtype_name

    return bool(
        t.layout == torch.strided
        and t.device.type == "cpu"
        and t.is_contiguous()
        and not t.is_conj()
        and not t.is_neg()
        and t.numel() > 0
        and dtype_name(t.dtype) is not None
    )


def equal_bytes(a: Any, b: Any) -> bool:
    """Whether two contiguous CPU tensors of one dtype and shape hold the same bytes (every byte, compared as
    bits: ``-0.0`` and ``0.0`` differ, a NaN equals itself).

    The bytes are compared as the widest integers that fit (8 bytes at a time where possible: several times
    faster than bytes); a small first piece is compared alone, since a changed tensor usually differs early.
    """
    import torch

    if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape) or not b.is_contiguous() or b.device.type != "cpu":
        return False
    nbytes = int(a.numel()) * a.element_size()
    as_int = next(
        (
            d
            for d, size in ((torch.int64, 8), (torch.int32, 4), (torch.int16, 2))
            if nbytes % size == 0 and a.data_ptr() % size == 0 and b.data_ptr() % size == 0
        ),
        torch.uint8,
    )
    try:
        x = a.detach().reshape(-1).view(torch.uint8).view(as_int)
        y = b.detach().reshape(-1).view(torch.uint8).view(as_int)
    except RuntimeError:  # a dtype torch cannot reinterpret: not provable here
        return False
    if x.numel() != y.numel():
        return False
    first = _FIRST_PIECE // x.element_size()
    return bool(torch.equal(x[:first], y[:first]) and torch.equal(x[first:], y[first:]))
