"""``ckpt.restore``: a snapshot loaded into live torch objects, a module and its optimizer, or a diffusers pipeline.

A feature on top of the store: it reads a snapshot (an adapter merged into its base, through ``ckpt.lineage``)
and applies it with ``load_state_dict``, refusing what does not fit. torch is imported by the functions that use
it, so importing this module does not import torch. (Writing a snapshot as files is ``ckpt.export``.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ckpt.errors import StateMismatchError
from ckpt.state import alias_key, is_array

if TYPE_CHECKING:
    from ckpt.store import Store

__all__ = ["apply_state", "check_tied_values", "is_pipeline", "pipeline_modules", "restore", "restore_pipeline"]


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

    A diffusers pipeline (not a module: a set of them) is filled component by component, ``state["unet"]`` into
    ``pipeline.unet`` and so on, every name, key and shape checked before anything is loaded (see
    ``restore_pipeline``); a diffusers LoRA snapshot is loaded merged into its pipeline's weights.

    Args:
        module: a ``torch.nn.Module``, or a diffusers ``DiffusionPipeline`` (then ``key`` is not used).
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
    if is_pipeline(module):
        return restore_pipeline(
            module,
            store,
            rev,
            strict=strict,
            verify=verify,
            in_place=in_place,
            optimizer=optimizer,
            optimizer_key=optimizer_key,
        )
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


def is_pipeline(obj: Any) -> bool:
    """Whether ``obj`` is a diffusers pipeline (a ``components`` mapping, and no ``state_dict`` of its own).

    Decided without importing diffusers or torch.
    """
    return not callable(getattr(obj, "state_dict", None)) and isinstance(getattr(obj, "components", None), Mapping)


def pipeline_modules(pipeline: Any) -> dict[str, Any]:
    """The components of a pipeline that hold weights (``torch.nn.Module``s: UNet, VAE, text encoders …), by name.

    Tokenizers, schedulers, feature extractors and absent components (``None``) are left out.
    """
    return {
        name: component
        for name, component in pipeline.components.items()
        if callable(getattr(component, "state_dict", None)) and callable(getattr(component, "load_state_dict", None))
    }


def restore_pipeline(
    pipeline: Any,
    store: Store,
    rev: str = "main",
    *,
    strict: bool = True,
    verify: bool = True,
    in_place: bool = False,
    optimizer: Any = None,
    optimizer_key: str = "optimizer",
) -> Any:
    """Load a snapshot into a live diffusers pipeline: ``state["unet"]`` into ``pipeline.unet``, and so on.

    Each top-level mapping of the snapshot's state names a component (the folder it came from in a pipeline
    folder); every one is checked against the pipeline before anything is loaded: its name, its keys (with
    ``strict``) and every shape, so that a mismatch leaves the pipeline as it was. An adapter snapshot saved
    with ``save_diffusers_lora`` is loaded merged (``load_merged``). Top-level entries that are not mappings (``step``)
    and the optimizer's entry are not components.

    Args:
        pipeline: a ``DiffusionPipeline`` (any object with a ``components`` mapping of modules).
        store: the store.
        rev: the revision.
        strict: the snapshot's components are exactly the pipeline's modules and each one's keys exactly the
            module's (``load_state_dict(strict=True)``); ``False``: load the components and keys both have
            (shapes are still checked).
        verify: check every chunk against its digest.
        in_place: read the weights straight into the modules' own memory (as ``ckpt.restore``; a failure
            part-way can leave them partly updated).
        optimizer: a ``torch.optim.Optimizer`` to restore from ``state[optimizer_key]``.
        optimizer_key: where the optimizer's state dict sits.

    Returns:
        The loaded state tree.

    Raises:
        StateMismatchError: a component the pipeline lacks or is not a module, a module the snapshot lacks
            (``strict``), missing or unexpected keys (``strict``), a shape that differs; each named.
        CorruptChunkError, MissingObjectError: as ``Store.load``.

    Example:
        >>> ckpt.restore(pipe, store, "tiny-sd-2026-11-28")  # doctest: +SKIP
    """
    from ckpt.lineage import is_adapter, load_merged

    snap = store.resolve(rev)
    modules = pipeline_modules(pipeline)
    into = None
    if in_place:
        into = {f"{name}/{k}": v for name, m in modules.items() for k, v in m.state_dict().items()}
    if is_adapter(snap):  # a diffusers LoRA (or another adapter) restores merged
        state = load_merged(store, snap.id, verify=verify, framework="torch", into=into)
    else:
        state = store.load(snap.id, verify=verify, framework="torch", into=into)
    if not isinstance(state, dict):
        raise StateMismatchError(
            f"snapshot {rev!r} holds a {type(state).__name__}, not a mapping of pipeline components",
            hint="restore it into a module with ckpt.restore(module, store, rev)",
        )
    components = {
        k: v for k, v in state.items() if isinstance(v, Mapping) and not (optimizer_key == k and k not in modules)
    }
    label = type(pipeline).__name__
    unknown = sorted(k for k in components if k not in modules)
    if unknown and (strict or any(k in pipeline.components for k in unknown)):
        what = [
            f"{k!r} (not a module: {type(pipeline.components[k]).__name__})" if k in pipeline.components else repr(k)
            for k in unknown
        ]
        not_modules = [k for k in unknown if k in pipeline.components]
        hint = (
            f"the pipeline holds {', '.join(repr(k) for k in not_modules)} as something other than a module "
            "(None: built without it), so even strict=False would drop those tensors: build the pipeline with "
            "that component, or load the rest with store.load(rev, prefix=...) and load_state_dict"
            if not_modules
            else "restore into the pipeline the snapshot was saved from, or pass strict=False to load the "
            "components both have"
        )
        raise StateMismatchError(
            f"snapshot {rev!r} holds component(s) {', '.join(what)}, which {label} has no module for "
            f"(its modules: {', '.join(sorted(modules)) or 'none'})",
            hint=hint,
        )
    missing = sorted(k for k in modules if k not in components and _has_tensors(modules[k]))
    if strict and missing:
        raise StateMismatchError(
            f"snapshot {rev!r} has no {', '.join(repr(m) for m in missing)} for {label} "
            f"(it holds {', '.join(sorted(components)) or 'no component'})",
            hint="pass strict=False to load only the components it holds",
        )
    loading = [k for k in components if k in modules]
    if not loading:
        raise StateMismatchError(f"snapshot {rev!r} holds no component of {label}")
    for name in loading:
        _check_component(name, modules[name], components[name], rev, strict=strict)
        check_tied_values(modules[name], components[name], rev)
    for name in loading:
        try:
            modules[name].load_state_dict(components[name], strict=strict)
        except RuntimeError as e:  # pragma: no cover - checked above
            raise StateMismatchError(f"snapshot {rev!r}: component {name!r} does not fit: {e}") from e
    if optimizer is not None:
        if optimizer_key not in state:
            raise StateMismatchError(f"snapshot {rev!r} has no {optimizer_key!r} entry to restore the optimizer from")
        try:
            optimizer.load_state_dict(state[optimizer_key])
        except (ValueError, RuntimeError, KeyError) as e:
            raise StateMismatchError(f"optimizer state of {rev!r} does not fit: {e}") from e
    return state


def _has_tensors(module: Any) -> bool:
    return len(module.state_dict()) > 0


def _check_component(name: str, module: Any, weights: Mapping[str, Any], rev: str, *, strict: bool) -> None:
    """Keys (with ``strict``) and shapes of one component, before anything is loaded."""
    expected = module.state_dict()
    not_tensors = [k for k, v in weights.items() if not is_array(v)]
    if not_tensors:
        raise StateMismatchError(
            f"snapshot {rev!r}: component {name!r} holds {not_tensors[0]!r}, which is not a tensor",
            hint="a component's entry is its module's state dict",
        )
    if strict:
        missing = sorted(set(expected) - set(weights))
        unexpected = sorted(set(weights) - set(expected))
        if missing or unexpected:
            peft = any(".lora_" in k or ".base_layer." in k for k in expected)
            raise StateMismatchError(
                f"snapshot {rev!r} does not fit component {name!r} ({type(module).__name__}): "
                f"{len(missing)} missing key(s) {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}",
                hint="the pipeline holds LoRA layers: unload them first (pipe.unload_lora_weights())"
                if peft
                else "restore into the pipeline the snapshot was saved from, or pass strict=False",
            )
    for key, value in weights.items():
        if key in expected and tuple(expected[key].shape) != tuple(value.shape):
            raise StateMismatchError(
                f"snapshot {rev!r}: {name}/{key} is {list(value.shape)}, but {name}.{key} of the pipeline is "
                f"{list(expected[key].shape)}",
                hint="restore into the pipeline the snapshot was saved from",
            )


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
