"""torch glue: tensors ↔ raw bytes, and ``restore`` into live modules. Imported only when torch is used."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ckpt.errors import StateError
from ckpt.state._source import TensorSource, alias_key, unsupported

__all__ = [
    "TORCH_DTYPES",
    "check_tied_values",
    "dtype_name",
    "empty_torch",
    "restore_into",
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


def restore_into(
    module: Any,
    store: Any,
    rev: str,
    *,
    optimizer: Any,
    strict: bool,
    key: str | None,
    optimizer_key: str,
    verify: bool,
    in_place: bool = False,
) -> Any:
    """Implementation of ``ckpt.restore``: load a snapshot and apply it to a module and optimizer."""
    snap = store.resolve(rev)
    if snap.base is not None or snap.relation == "adapter":  # an adapter (new or continued) restores merged
        state = store.load(snap.id, verify=verify, framework="torch", merge=True)
    else:
        into = None
        if in_place:
            into = {(f"{key}/{k}" if key is not None else k): v for k, v in module.state_dict().items()}
        state = store.load(snap.id, verify=verify, framework="torch", into=into)
    return apply_state(module, state, rev, optimizer=optimizer, strict=strict, key=key, optimizer_key=optimizer_key)


def apply_state(
    module: Any,
    state: Any,
    rev: str,
    *,
    optimizer: Any,
    strict: bool,
    key: str | None,
    optimizer_key: str,
) -> Any:
    """Load a state tree into a module (``state[key]``) and optimizer (``state[optimizer_key]``)."""
    from ckpt.errors import StateMismatchError

    if key is not None:
        if not isinstance(state, dict) or key not in state:
            keys = list(state) if isinstance(state, dict) else type(state).__name__
            raise StateMismatchError(
                f"snapshot {rev!r} has no {key!r} entry (its top level: {keys})",
                hint="pass key=None if the snapshot is the state dict itself, or the right key",
            )
        weights = state[key]
    else:
        weights = state
    if isinstance(weights, Mapping):
        check_tied_values(module, weights, rev)
    try:
        result = module.load_state_dict(weights, strict=strict)
    except RuntimeError as e:
        raise StateMismatchError(f"snapshot {rev!r} does not fit {type(module).__name__}: {e}") from e
    if strict and (result.missing_keys or result.unexpected_keys):  # pragma: no cover - torch raises first
        raise StateMismatchError(f"missing {result.missing_keys}, unexpected {result.unexpected_keys}")
    if optimizer is not None:
        if not isinstance(state, dict) or optimizer_key not in state:
            raise StateMismatchError(f"snapshot {rev!r} has no {optimizer_key!r} entry to restore the optimizer from")
        try:
            optimizer.load_state_dict(state[optimizer_key])
        except (ValueError, RuntimeError, KeyError) as e:
            raise StateMismatchError(f"optimizer state of {rev!r} does not fit: {e}") from e
    return state


def check_tied_values(module: Any, weights: Mapping[str, Any], rev: str) -> None:
    """Refuse a state that would put two different values into one parameter of ``module``.

    A module with tied weights (``lm_head.weight`` and ``model.embed_tokens.weight`` one ``Parameter``) lists
    the parameter under each of its names in ``state_dict()``; ``load_state_dict`` copies every key in turn,
    so the last one silently wins. Tied keys must hold equal values (bit for bit, dtype and shape included);
    then loading keeps the tie as the module has it.

    Raises:
        StateMismatchError: two keys of one parameter hold different values; names both.
    """
    from ckpt.errors import StateMismatchError

    groups: dict[Any, list[str]] = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        key = alias_key(tensor)
        if key is not None and name in weights:
            groups.setdefault(key, []).append(name)
    for names in groups.values():
        first = names[0]
        for other in names[1:]:
            if not _same_value(weights[first], weights[other]):
                raise StateMismatchError(
                    f"snapshot {rev!r} holds different values for {first!r} and {other!r}, which are one tied "
                    f"parameter of {type(module).__name__}: loading would keep only one of them",
                    hint="untie the weights in the model (e.g. tie_word_embeddings=False) to load both, or fix the "
                    "snapshot so that tied tensors are equal",
                )


def _same_value(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        a, b = as_torch(a), as_torch(b)
    except TypeError:
        return False
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.numel() == 0:
        return True
    flat_a = a.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
    flat_b = b.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
    return bool(torch.equal(flat_a, flat_b))
