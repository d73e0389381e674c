"""torch glue: tensors ↔ raw bytes. Imported only when torch is used."""

from __future__ import annotations

from typing import Any

import torch

from ckpt.errors import StateError
from ckpt.state._source import TensorSource, unsupported

__all__ = [
    "TORCH_DTYPES",
    "dtype_name",
    "empty_torch",
    "tensor_from_buffer",
    "torch_dtype",
    "torch_source",
]


def _build() -> dict[str, torch.dtype]:
    table: dict[str, torch.dtype] = {
        "BOOL": torch.bool,
        "U8": torch.uint8,
        "I8": torch.int8,
        "I16": torch.int16,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "I32": torch.int32,
        "F32": torch.float32,
        "I64": torch.int64,
        "F64": torch.float64,
        "C64": torch.complex64,
        "C128": torch.complex128,
    }
    optional = {
        "U16": "uint16",
        "U32": "uint32",
        "U64": "uint64",
        "F8_E4M3": "float8_e4m3fn",
        "F8_E4M3FNUZ": "float8_e4m3fnuz",
        "F8_E5M2": "float8_e5m2",
        "F8_E5M2FNUZ": "float8_e5m2fnuz",
        "F8_E8M0": "float8_e8m0fnu",
    }
    for name, attr in optional.items():
        if hasattr(torch, attr):
            table[name] = getattr(torch, attr)
    return table


#: safetensors dtype name → torch dtype, for the dtypes this torch has.
TORCH_DTYPES = _build()
_NAMES = {v: k for k, v in TORCH_DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str | None:
    """The stored name of a torch dtype, or ``None`` if ckpt cannot store it."""
    return _NAMES.get(dtype)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a stored name."""
    try:
        return TORCH_DTYPES[name]
    except KeyError:
        raise StateError(f"this torch ({torch.__version__}) has no dtype for {name}") from None


def torch_source(tensor: torch.Tensor, path: str) -> TensorSource:
    """Raw bytes of a tensor: zero-copy for a contiguous CPU tensor, one copy otherwise."""
    if tensor.layout != torch.strided:
        raise unsupported(path, f"a {tensor.layout} tensor (convert it with .to_dense())")
    if tensor.is_quantized:
        raise unsupported(path, "a quantized tensor (store its int_repr() and scales instead)")
    if getattr(tensor, "is_nested", False):
        raise unsupported(path, "a nested tensor")
    name = dtype_name(tensor.dtype)
    if name is None:
        raise unsupported(path, f"a tensor of dtype {tensor.dtype}")
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.to("cpu")
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    if not t.is_contiguous():
        t = t.contiguous()
    shape = tuple(int(d) for d in t.shape)
    if t.numel() == 0:
        return TensorSource(name, shape, "torch", memoryview(b""), t)
    flat = t.reshape(-1).view(torch.uint8).numpy()
    return TensorSource(name, shape, "torch", memoryview(flat), t)  # type: ignore[arg-type]


def empty_torch(dtype: str, shape: tuple[int, ...]) -> tuple[torch.Tensor, memoryview]:
    """A new CPU tensor and a writable flat byte view of its memory."""
    t = torch.empty(shape, dtype=torch_dtype(dtype))
    if t.numel() == 0:
        return t, memoryview(bytearray())
    return t, memoryview(t.reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]


def tensor_from_buffer(buffer: Any, offset: int, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A tensor viewing bytes of a writable buffer (e.g. a copy-on-write mmap), without copying."""
    t = torch_dtype(dtype)
    numel = 1
    for d in shape:
        numel *= d
    flat = torch.frombuffer(buffer, dtype=torch.uint8, count=numel * t.itemsize, offset=offset)
    return flat.view(t).reshape(shape)


def as_torch(value: Any) -> torch.Tensor:
    """A tensor from a numpy array (shares memory)."""
    return value if isinstance(value, torch.Tensor) else torch.from_numpy(value)
