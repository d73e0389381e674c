"""Memory the codecs reuse, and the probe that spares coding an incompressible plane.

Fresh memory costs a page fault per 4 KiB on first touch, which on a 1 MiB block is more than the work done in
it: each thread keeps its work arrays (``scratch``), and the private copies of blocks being hashed while they are
encoded are recycled (``BLOCKS``).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
import numpy.typing as npt
import zstandard

from ckpt.store._codecs._framing import DEFAULT_BLOCK_LOG

__all__ = ["BLOCKS", "IN_FLIGHT", "incompressible", "scratch"]

_U8 = np.uint8
Bytes = npt.NDArray[np.uint8]


# Each thread's reusable work arrays: a fresh 1 MiB array per block costs its page faults on first touch,
# which made cutting a bf16 block into planes 9× slower than the cut itself (benchmarks/cpu_cost.py).
_SCRATCH = threading.local()
_SCRATCH_MAX = 1 << 23  # bytes: larger requests (blocks above 4 MiB) get fresh arrays


def scratch(slot: str, count: int, dtype: Any = _U8) -> npt.NDArray[Any]:
    """This thread's reusable array of ``count`` elements for ``slot``; its contents are garbage, and it is
    valid until this thread asks for ``slot`` again."""
    dt = np.dtype(dtype)
    nbytes = count * dt.itemsize
    if nbytes > _SCRATCH_MAX:
        return np.empty(count, dtype=dt)
    buffers: dict[str, Bytes] | None = getattr(_SCRATCH, "buffers", None)
    if buffers is None:
        buffers = _SCRATCH.buffers = {}
    buf = buffers.get(slot)
    if buf is None or buf.size < nbytes:
        buf = buffers[slot] = np.empty(nbytes, dtype=_U8)
    return buf[:nbytes].view(dt)


class _BlockCopies:
    """Private copies of blocks being encoded and hashed (``encode_body(hasher=)``), recycled: fresh memory per
    block would cost its page faults."""

    def __init__(self, size: int, keep: int) -> None:
        self._size = size
        self._keep = keep
        self._free: list[Bytes] = []
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> Bytes:
        if nbytes <= self._size:
            with self._lock:
                buf = self._free.pop() if self._free else None
            return (buf if buf is not None else np.empty(self._size, dtype=_U8))[:nbytes]
        return np.empty(nbytes, dtype=_U8)

    def give(self, copy: Bytes) -> None:
        base = copy.base if copy.base is not None else copy
        if isinstance(base, np.ndarray) and base.size == self._size and base.base is None:
            with self._lock:
                if len(self._free) < self._keep:
                    self._free.append(base)


# blocks in flight per chunk with a hasher: enough to keep every core busy while the caller hashes in order
IN_FLIGHT = 2 * (os.cpu_count() or 1) + 2
BLOCKS = _BlockCopies(1 << DEFAULT_BLOCK_LOG, 4 * IN_FLIGHT)


# A plane of 256 KiB or more is first probed: 4 windows of 16 KiB spread over it, coded as one frame. When that
# saves under 0.3%, the plane is stored as it is, untried (the low mantissa planes of weights, near-uniform
# bits, where zstd finds nothing at 1/8 of the plane's cost; benchmarks/storage.py stores no more bytes).
_PROBE = 1 << 14
_PROBES = 4
_PROBE_SAVING = 0.003


def incompressible(plane: Bytes, compressor: zstandard.ZstdCompressor) -> bool:
    m = plane.size
    if m < 4 * _PROBES * _PROBE:
        return False
    step = m // _PROBES
    probe = np.concatenate([plane[i * step : i * step + _PROBE] for i in range(_PROBES)])
    return len(compressor.compress(probe.data)) >= (1.0 - _PROBE_SAVING) * probe.size
