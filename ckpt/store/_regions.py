"""Placed memory maps (Linux, ``ctypes``): one contiguous region of address space into which several files are
mapped side by side, so that a tensor stored in many chunk files can be one zero-copy view.

Python's ``mmap`` cannot choose where a mapping lands; libc's ``mmap`` with ``MAP_FIXED`` can. A ``Region`` is
a private anonymous reservation; ``map_file`` replaces part of it with a private (copy-on-write) mapping of a
file, ``write`` fills part of it with copied bytes. The region is unmapped when the last object viewing it goes
(``buffer`` returns a ctypes array that keeps the region alive; torch's ``frombuffer`` and numpy's
``frombuffer`` keep that array alive), or at once by ``close`` (only before anything views it).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
import weakref
from typing import Any

__all__ = ["PAGE_SIZE", "Region", "available"]

#: The page size: placed mappings start at its multiples.
PAGE_SIZE = mmap.PAGESIZE

_MAP_FIXED = 0x10  # the same value on every Linux architecture
_MAP_FAILED = ctypes.c_void_p(-1).value


def _load() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        libc.munmap.restype = ctypes.c_int
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load()


def available() -> bool:
    """Whether placed mappings can be made here (Linux, with libc's ``mmap``)."""
    return _LIBC is not None


def _unmap(address: int, size: int) -> None:
    _LIBC.munmap(address, size)


def _oserror() -> OSError:
    err = ctypes.get_errno()
    return OSError(err, os.strerror(err))


class Region:
    """``size`` bytes of private anonymous memory (readable, writable, zero-filled), unmapped when collected.

    Args:
        size: bytes, a multiple of ``PAGE_SIZE``.

    Raises:
        OSError: the address space cannot be reserved (``ENOMEM``), or placed maps are not available here.
    """

    def __init__(self, size: int) -> None:
        if _LIBC is None:
            raise OSError("placed memory maps need Linux")
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        address = _LIBC.mmap(None, size, prot, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        if address is None or address == _MAP_FAILED:
            raise _oserror()
        self.address: int = address
        self.size = size
        self._finalizer = weakref.finalize(self, _unmap, address, size)

    def map_file(self, at: int, fd: int, offset: int, length: int) -> None:
        """Map ``length`` bytes of the file ``fd`` from ``offset`` at ``at`` bytes into the region, replacing
        what was there: private and copy-on-write (a write to the region never reaches the file).

        ``at``, ``offset`` are multiples of ``PAGE_SIZE``; pages are faulted in as they are read (no
        ``MAP_POPULATE``: on a writable private mapping the kernel would copy every page ahead, measured 2× slower
        than the copying load). Raises ``OSError`` as ``mmap(2)``.
        """
        if at < 0 or at + length > self.size or at % PAGE_SIZE or offset % PAGE_SIZE or length <= 0:
            raise ValueError(f"a mapping of {length} bytes at {at} does not fit a region of {self.size} bytes")
        flags = mmap.MAP_PRIVATE | _MAP_FIXED
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        address = _LIBC.mmap(self.address + at, length, prot, flags, fd, offset)
        if address is None or address == _MAP_FAILED:
            raise _oserror()
        if address != self.address + at:  # MAP_FIXED places it exactly or fails; never trust it blindly
            _unmap(address, length)
            raise OSError(f"mmap placed a mapping at {address:#x}, not {self.address + at:#x}")

    def write(self, at: int, data: bytes) -> None:
        """Copy ``data`` into the region at ``at`` bytes (into a part that is not mapped from a file)."""
        if at < 0 or at + len(data) > self.size:
            raise ValueError(f"{len(data)} bytes at {at} do not fit a region of {self.size} bytes")
        ctypes.memmove(self.address + at, data, len(data))

    def buffer(self) -> Any:
        """A writable buffer (a ctypes ``c_ubyte`` array) over the whole region; it keeps the region mapped."""
        array = (ctypes.c_ubyte * self.size).from_address(self.address)
        setattr(array, "_ckpt_region", self)  # noqa: B010 (the array owns the region: unmapped when the last view goes)
        return array

    def close(self) -> None:
        """Unmap the region now. Only before anything views it (a view of unmapped memory crashes)."""
        self._finalizer()
