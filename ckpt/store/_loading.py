"""Loading where it is used: a subset of a snapshot by tensor-path prefix, placed straight on a device.

``Store.load(rev, prefix=..., device=...)`` (this module's ``load``) reads with two more choices:

- ``prefix``: only the tensors whose path starts with it are read (``"unet/"``: a pipeline's UNet;
  ``"model/layers.0."``: one layer); the state tree comes back pruned to them, in the saved structure. Paths are
  the table's (``store.table(rev).tensors``): a mapping's key joined by ``/`` below its parent's, so a prefix that
  names a component ends with ``/`` (``"text_encoder"`` alone would match ``text_encoder_2/`` too).
- ``device``: where the tensors are placed. ``"cpu"`` (or ``None``): host memory, as a plain load. ``"meta"``
  gives tensors with dtype and shape only and reads no byte (to build a model's skeleton). Any other torch device
  (``"cuda:0"``) gets each tensor allocated there and filled from host memory in batches of at most
  ``staging_bytes`` (256 MiB by default): chunks are read and verified into one reused host buffer (pinned when
  the device is CUDA), copied to the device asynchronously, and the buffer reused once the copies are done. So
  the host never holds more than one batch (or one tensor bigger than a batch), never the whole model; the
  device holds exactly the selected tensors. Nothing reads from storage to the device without the host
  (GPUDirect Storage is not used), since every chunk is verified against its digest first.

Memory, for a selection of ``S`` bytes: ``device=None``/``"cpu"``: ``S`` bytes of host memory (zero-copy where
``mmap`` maps chunks); another device: ``S`` bytes on the device and ``min(S, staging_bytes)`` (or the largest
selected tensor) on the host; ``"meta"``: nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ckpt.errors import StateError, StateMismatchError
from ckpt.model import MAX_JSON_DEPTH, RECORD_HINT, TensorEntry, TensorTable
from ckpt.state import unflatten
from ckpt.store._reading import fill_tied_into, open_snapshot, read_once
from ckpt.store._transfer import read_tensors

if TYPE_CHECKING:
    from ckpt.store._parts import StoreParts
    from ckpt.store._types import Framework

__all__ = ["DEFAULT_STAGING_BYTES", "cut_state", "load", "prune_tree", "select_paths", "take"]

#: Host memory used to stage tensors on their way to a device, at most (one tensor bigger than it: that tensor).
DEFAULT_STAGING_BYTES = 256 << 20

_SEP = "/"


def select_paths(table: TensorTable, prefix: str | Sequence[str]) -> list[str]:
    """The table's tensor paths that start with ``prefix`` (or with one of several), in table order.

    Raises:
        StateMismatchError: no tensor path starts with it (the message lists the snapshot's top-level names).
    """
    prefixes = (prefix,) if isinstance(prefix, str) else tuple(prefix)
    if not prefixes or not all(isinstance(p, str) and p for p in prefixes):
        raise StateMismatchError(f"prefix must be a non-empty string or strings, got {prefix!r}")
    selected = [p for p in table.tensors if p.startswith(prefixes)]
    if not selected:
        tops = sorted({p.split(_SEP, 1)[0] for p in table.tensors})
        shown = ", ".join(f"{t}/" for t in tops[:10]) + (" …" if len(tops) > 10 else "")
        raise StateMismatchError(
            f"no tensor path starts with {' or '.join(repr(p) for p in prefixes)} (the snapshot has {shown or 'none'})",
            hint="paths are the table's: store.table(rev).tensors; a component's prefix ends with '/'",
        )
    return selected


def prune_tree(tree: Any, keep: set[str], prefixes: Sequence[str] = ()) -> Any:
    """A typed-JSON state tree cut down to the tensors in ``keep`` (and the plain leaves under ``prefixes``).

    Mappings keep only the entries that hold something kept; lists and tuples keep their length, with ``None``
    in the places of what is left out (so that indices still mean what they meant).
    """
    empty = object()

    def walk(node: Any, path: str, depth: int) -> Any:
        if depth > MAX_JSON_DEPTH:
            raise StateMismatchError(f"the state tree nests deeper than {MAX_JSON_DEPTH} levels", hint=RECORD_HINT)
        if isinstance(node, dict) and len(node) == 1:
            ((tag, body),) = node.items()
            if tag == "$tensor":
                return node if body in keep else empty
            if tag == "$dict" and isinstance(body, list):
                pairs = []
                for pair in body:
                    if isinstance(pair, list) and len(pair) == 2:
                        kept = walk(pair[1], f"{path}{_SEP}{pair[0]}" if path else str(pair[0]), depth + 3)
                        if kept is not empty:
                            pairs.append([pair[0], kept])
                return {"$dict": pairs} if pairs else empty
            if tag == "$tuple" and isinstance(body, list):
                items = [walk(v, f"{path}{_SEP}{i}" if path else str(i), depth + 2) for i, v in enumerate(body)]
                return (
                    {"$tuple": [None if v is empty else v for v in items]}
                    if any(v is not empty for v in items)
                    else empty
                )
            if tag == "$float":
                return node if path.startswith(tuple(prefixes)) and prefixes else empty
        if isinstance(node, list):
            items = [walk(v, f"{path}{_SEP}{i}" if path else str(i), depth + 1) for i, v in enumerate(node)]
            return [None if v is empty else v for v in items] if any(v is not empty for v in items) else empty
        return node if prefixes and path.startswith(tuple(prefixes)) else empty

    out = walk(tree, "", 0)
    return None if out is empty else out


def load(
    parts: StoreParts,
    rev: str,
    *,
    prefix: str | Sequence[str] | None,
    device: Any,
    verify: bool,
    framework: Framework | None,
    into: Mapping[str, Any] | None,
    progress: Callable[[int], None] | None,
    mmap: bool,
    staging_bytes: int = DEFAULT_STAGING_BYTES,
) -> Any:
    """A snapshot's state tree, or the part of it under ``prefix``, on ``device``; see ``Store.load``.

    Raises:
        StateMismatchError: no tensor path starts with ``prefix``; ``device`` is not the CPU and the framework is
            numpy, or ``into``/``mmap`` are given with it.
        MissingObjectError, CorruptChunkError: as ``Store.load``.
    """
    kind = _device_kind(device)
    if kind != "cpu" and (framework == "numpy" or into or mmap):
        raise StateMismatchError(
            f"device={device!r} places torch tensors: it goes without framework='numpy', into= and mmap=",
            hint="load on the CPU for numpy arrays or in-place reads",
        )
    if kind == "device":
        _usable_device(device)  # before anything is read
    snap, table = open_snapshot(parts, rev)  # refuses a pruned snapshot
    prefixes = () if prefix is None else ((prefix,) if isinstance(prefix, str) else tuple(prefix))
    selected = list(table.tensors) if prefix is None else select_paths(table, prefix)
    keep = set(selected)
    tree = table.tree if prefix is None else prune_tree(table.tree, keep, prefixes)
    first = read_once(table, selected, into, snap.short_id)  # tied groups and shared into= memory read once
    entries = {p: table.tensors[p] for p in selected if first.get(p, p) == p}
    if kind == "meta":
        tensors = _meta(entries)
    elif kind == "cpu":
        tensors = read_tensors(
            parts.objects,
            entries,
            table.chunk_size,
            snapshot=snap.id,
            verify=verify,
            framework=framework,
            into=into,
            progress=progress,
            mmap=mmap,
        )
    else:
        tensors = to_device(
            parts, snap.id, table, entries, device, verify=verify, progress=progress, staging_bytes=staging_bytes
        )
    if kind == "cpu" and into:
        tensors = {**tensors, **fill_tied_into(table, tensors, first, into)}
    return unflatten(tree, lambda name: tensors[name] if name in tensors else tensors[first.get(name, name)])


def _device_kind(device: Any) -> str:
    if device is None:
        return "cpu"
    text = str(device)
    if text == "meta":
        return "meta"
    if text == "cpu":
        return "cpu"
    return "device"


def _usable_device(device: Any) -> Any:
    """``torch.device(device)``, once torch can allocate on it.

    Raises:
        StateError: a name torch does not know (``"gpu"``), or a device this process cannot use (CUDA without a
            CUDA build or GPU, an index past the last device).
    """
    import torch

    try:
        target = torch.device(device)
        torch.empty(0, device=target)
    except (RuntimeError, ValueError, TypeError, AssertionError) as e:  # torch's lazy CUDA init asserts
        raise StateError(
            f"cannot place tensors on device={device!r}: {str(e)[:300]}",
            hint="name a device this process can use: 'cpu', 'meta', 'cuda:0' (torch.cuda.device_count())",
        ) from None
    return target


def _meta(entries: Mapping[str, TensorEntry]) -> dict[str, Any]:
    import torch

    from ckpt.state import torch_dtype

    return {n: torch.empty(e.shape, dtype=torch_dtype(e.dtype), device="meta") for n, e in entries.items()}


def to_device(
    parts: StoreParts,
    snapshot: str,
    table: TensorTable,
    entries: Mapping[str, TensorEntry],
    device: Any,
    *,
    verify: bool,
    progress: Callable[[int], None] | None,
    staging_bytes: int,
) -> dict[str, Any]:
    """Read tensors into device memory through a reused host buffer of ``staging_bytes``, a batch at a time.

    Each batch is read in parallel (every chunk verified) into views of the staging buffer, then copied to the
    device with ``non_blocking=True``; the buffer is reused once the device has finished copying
    (``torch.cuda.Stream.synchronize``). A tensor bigger than the buffer is read alone into its own host memory.
    Works for any torch device, the CPU included (then the copies are plain copies).

    Raises:
        StateError: a device torch cannot allocate on (the message names it).
    """
    import torch

    from ckpt.state import torch_dtype

    target = _usable_device(device)
    pinned = target.type == "cuda" and torch.cuda.is_available()
    budget = max(int(staging_bytes), 1)
    batched = sum(e.nbytes + (-e.nbytes % 64) for e in entries.values() if e.nbytes <= budget)
    size = min(budget, batched)  # never more host memory than the batched tensors need
    arena = torch.empty(size, dtype=torch.uint8, pin_memory=pinned) if size else None
    out: dict[str, Any] = {}
    names = list(entries)
    i = 0
    while i < len(names):
        entry = entries[names[i]]
        if entry.nbytes > budget or arena is None:  # alone, in its own host memory
            batch = {names[i]: entry}
            host = read_tensors(
                parts.objects,
                batch,
                table.chunk_size,
                snapshot=snapshot,
                verify=verify,
                framework="torch",
                progress=progress,
            )
            out[names[i]] = _place(host[names[i]], target, names[i], non_blocking=False)
            i += 1
            continue
        views: dict[str, Any] = {}
        offset = 0
        while i < len(names) and entries[names[i]].nbytes <= size - offset:
            e = entries[names[i]]
            views[names[i]] = (
                arena[offset : offset + e.nbytes].view(torch_dtype(e.dtype)).reshape(e.shape)
                if e.nbytes
                else torch.empty(e.shape, dtype=torch_dtype(e.dtype))
            )
            offset += e.nbytes
            offset += -offset % 64  # each view aligned as an allocation would be
            i += 1
        batch = {n: entries[n] for n in views}
        read_tensors(
            parts.objects,
            batch,
            table.chunk_size,
            snapshot=snapshot,
            verify=verify,
            framework="torch",
            into=views,
            progress=progress,
        )
        for n, view in views.items():
            out[n] = _place(view, target, n, non_blocking=pinned)
        if pinned:
            torch.cuda.current_stream(target).synchronize()  # the buffer is read by the copies: wait before reuse
    return out


def _place(tensor: Any, target: Any, name: str, *, non_blocking: bool) -> Any:
    try:
        placed = tensor.to(target, non_blocking=non_blocking, copy=True)
    except (RuntimeError, ValueError) as e:
        raise StateError(
            f"cannot place tensor {name!r} ({tensor.nbytes} bytes) on {target}: {e}",
            hint="check the device name and its free memory (torch.cuda.mem_get_info())",
        ) from e
    return placed


def take(pruned: Any, value: Any) -> Any:
    """The parts of a loaded ``value`` that a pruned typed-JSON tree keeps (both have the same structure).

    Used to cut a state computed whole (an adapter merged into its base) down to a prefix.
    """
    if isinstance(pruned, dict) and len(pruned) == 1:
        ((tag, body),) = pruned.items()
        if tag == "$dict":
            return {k: take(v, value[k]) for k, v in body}
        if tag == "$tuple":
            return tuple(None if v is None else take(v, value[i]) for i, v in enumerate(body))
        return value
    if isinstance(pruned, list):
        return [None if v is None else take(v, value[i]) for i, v in enumerate(pruned)]
    return value


def cut_state(table: TensorTable, state: Any, prefix: str | Sequence[str]) -> Any:
    """A state loaded whole (``table`` its snapshot's table) cut down to the tensors under ``prefix``.

    What ``load(prefix=...)`` gives, for a state computed whole (an adapter merged into its base).

    Raises:
        StateMismatchError: no tensor path starts with ``prefix``.
    """
    prefixes = (prefix,) if isinstance(prefix, str) else tuple(prefix)
    pruned = prune_tree(table.tree, set(select_paths(table, prefix)), prefixes)
    return take(pruned, state)
