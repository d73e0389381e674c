"""``ckpt.restore``: a snapshot loaded into live torch objects, a module and its optimizer.

A feature on top of the store: it reads a snapshot (an adapter merged into its base, through ``ckpt.lineage``)
and applies it with ``load_state_dict``, refusing what does not fit. torch is imported by the functions that use
it, so importing this module does not import torch. (Writing a snapshot as files is ``ckpt.export``.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ckpt.errors import StateMismatchError
from ckpt.state import alias_key

if TYPE_CHECKING:
    from ckpt.store import Store

__all__ = ["apply_state", "check_tied_values", "restore"]


def restore(
    module: Any,
    store: Store,
    rev: str = "main",
    *,
    optimizer: Any = None,
    strict: bool = True,
    key: str | None = "model",
    optimizer_key: str = "optimizer",
    verify: bool = True,
    in_place: bool = False,
) -> Any:
    """Load a snapshot's weights (and optimizer state) into live torch objects.

    An adapter snapshot is restored merged into its base (``ckpt.load_merged``). To write a snapshot as files
    instead, use ``ckpt.export`` (``ckpt restore REV --to DIR`` on the command line).

    Args:
        module: a ``torch.nn.Module``.
        store: the store.
        rev: the revision to restore.
        optimizer: a ``torch.optim.Optimizer`` to restore from ``state[optimizer_key]``, if given.
        strict: refuse missing or unexpected keys (as ``load_state_dict`` does).
        key: where the module's state dict sits in the saved tree; ``None``: the tree is the state dict.
        optimizer_key: where the optimizer's state dict sits.
        verify: check every chunk against its digest.
        in_place: read the weights straight into the module's own memory (no new allocation, no page
            faults: faster for big models). The default loads into new memory first, so that a failure
            (a corrupt chunk, a shape mismatch) leaves the module untouched; with ``in_place=True`` a failure
            part-way can leave it partly updated.

    Returns:
        The whole loaded state tree (so that step, scheduler and RNG state can be restored too).

    Raises:
        StateMismatchError: keys, shapes or dtypes do not fit the module (the message lists them); the snapshot
            holds two different values for one tied parameter (refused before anything is written, ``in_place``
            too; an adapter whose ``modules_to_save`` unties ``lm_head`` from the embedding, as PEFT's merge does,
            needs a model built with ``tie_word_embeddings=False``).
        CorruptChunkError: a chunk does not match its digest.
        MissingObjectError: the snapshot was pruned, or a chunk is missing.

    Example:
        >>> state = ckpt.restore(model, store, "main", optimizer=opt)  # doctest: +SKIP
    """
    from ckpt.lineage import is_adapter, load_merged

    snap = store.resolve(rev)
    if is_adapter(snap):  # an adapter (new or continued) restores merged
        state = load_merged(store, snap.id, verify=verify, framework="torch")
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
    import torch

    from ckpt.state import as_torch

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
