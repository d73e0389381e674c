"""numpy glue: arrays ↔ raw bytes."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from ckpt.errors import StateError
from ckpt.state._source import TensorSource, unsupported

__all__ = ["NUMPY_DTYPES", "array_from_buffer", "empty_numpy", "numpy_source"]

#: safetensors dtype name → numpy dtype (bf16 and fp8 have no numpy dtype).
NUMPY_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "U8": np.uint8,
    "I8": np.int8,
    "I16": np.int16,
    "U16": np.uint16,
    "F16": np.float16,
    "I32": np.int32,
    "U32": np.uint32,
    "F32": np.float32,
    "I64": np.int64,
    "U64": np.uint64,
    "F64": np.float64,
    "C64": np.complex64,
    "C128": np.complex128,
}
_NAMES = {np.dtype(v): k for k, v in NUMPY_DTYPES.items()}


def numpy_source(array: np.ndarray[Any, Any], path: str) -> TensorSource:
    """Raw bytes of a numpy array (a copy only if it is not C-contiguous little-endian)."""
    dt = array.dtype.newbyteorder("=") if array.dtype.byteorder not in ("=", "|") else array.dtype
    name = _NAMES.get(np.dtype(dt))
    if name is None:
        raise unsupported(path, f"a numpy array of dtype {array.dtype}")
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and sys.byteorder == "big"):
        array = array.astype(array.dtype.newbyteorder("<"))
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)  # note: this would turn a 0-dim array into shape (1,)
    flat = array.reshape(-1).view(np.uint8)
    return TensorSource(name, tuple(int(d) for d in array.shape), "numpy", memoryview(flat), array)  # type: ignore[arg-type]


def array_from_buffer(buffer: Any, offset: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    """An array viewing bytes of a buffer (e.g. a copy-on-write mmap), without copying."""
    if dtype not in NUMPY_DTYPES:
        raise StateError(
            f"dtype {dtype} has no numpy equivalent",
            hint="load it as torch tensors (install torch) instead of numpy arrays",
        )
    dt = np.dtype(NUMPY_DTYPES[dtype])
    count = 1
    for d in shape:
        count *= d
    return np.frombuffer(buffer, dtype=dt, count=count, offset=offset).reshape(shape)


def empty_numpy(dtype: str, shape: tuple[int, ...]) -> tuple[np.ndarray[Any, Any], memoryview]:
    """A new array and a writable flat byte view of it."""
    if dtype not in NUMPY_DTYPES:
        raise StateError(
            f"dtype {dtype} has no numpy equivalent",
            hint="load it as torch tensors (install torch) instead of numpy arrays",
        )
    array = np.empty(shape, dtype=NUMPY_DTYPES[dtype])
    return array, memoryview(array.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
