"""Merging an adapter into its base: loaded merged (``load_merged``) or saved as a new snapshot (``merge_adapter``).

The merge follows PEFT's ``set_peft_model_state_dict`` + ``merge_and_unload()``: whole tensors replace the
base's, then each adapted module changes as its type says (LoRA: ``_lora``; IA³, LoHa, LoKr, AdaLoRA: ``_types``).
torch is imported only by the functions that compute.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import JsonValue

from ckpt.errors import RefExistsError, StateMismatchError
from ckpt.lineage import _lora, _types
from ckpt.lineage._adapters import adapter_config, base_of, fit_to_base, is_adapter, model_entries, root_of
from ckpt.lineage._config import LoraSettings, TypeSettings, check_type, merge_settings
from ckpt.lineage._diffusers_lora import is_diffusers_lora, load_merged_lora
from ckpt.lineage._layers import read_layers
from ckpt.model import RESERVED_FILE_PREFIX, SAFETENSORS_INDEX_SUFFIX, Snapshot
from ckpt.store import cut_state

if TYPE_CHECKING:
    from ckpt.store import Framework, Progress, Store

__all__ = ["load_merged", "merge_adapter"]


def load_merged(
    store: Store,
    rev: str = "main",
    *,
    verify: bool = True,
    framework: Framework | None = None,
    into: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    prefix: str | Sequence[str] | None = None,
) -> Any:
    """Load an adapter snapshot merged into its base: the base's state tree with the adapter applied.

    LoRA (with rsLoRA, DoRA, ``lora_bias``, on linear, embedding and conv layers), IA³, LoHa, LoKr and AdaLoRA
    are merged. The result equals what PEFT's ``merge_and_unload()`` gives on the same weights, within the
    tolerance of the weights' dtype (the delta is computed in float32 and the sum cast back once, so dtypes are
    preserved).
    Whole tensors of the adapter (``modules_to_save``, saved embeddings) replace the base's first, with their
    own shapes (a resized vocabulary stays resized). Tied weights change together, as PEFT's in-place merge
    changes a tied parameter. An adapter over an adapter is merged recursively.

    Args:
        store: the store.
        rev: the adapter snapshot.
        verify: check every chunk against its digest.
        framework: ``torch`` or ``numpy`` for every tensor; default: what each was saved as.
        into: base tensor path → existing tensor to read into (as ``Store.load``); merged weights are written
            into those tensors in place.
        progress: called with byte counts as the base's chunks arrive.
        prefix: only the part of the merged state under this tensor-path prefix (or these), as
            ``Store.load(prefix=...)`` cuts it. A diffusers LoRA reads only the base's tensors under it.

    Returns:
        The base's state tree, its model weights merged. A diffusers LoRA (``save_diffusers_lora``): the
        pipeline's state, each component merged as diffusers' ``fuse_lora()`` merges it.

    Raises:
        RecordError: the snapshot is not an adapter, or its config is malformed.
        StateMismatchError: a target module is missing from the base, or shapes or ranks do not fit (names them).
        UnsupportedStateError: the adapter is of a type ckpt does not merge (VeRA, OFT, BOFT, prompt tuning …),
            or holds tensors or sets options that ckpt does not merge (trainable tokens, ``layer_replication`` …);
            the message names the type, the option or the tensor.
        MissingObjectError: the adapter or its base was pruned.
        CorruptChunkError: a chunk does not match its digest.

    Example:
        >>> state = load_merged(store, "chat-lora")  # doctest: +SKIP
        >>> model.load_state_dict(state["model"])  # doctest: +SKIP
    """
    snap = store.resolve(rev)
    if is_diffusers_lora(snap):
        return load_merged_lora(
            store, snap.id, verify=verify, framework=framework, into=into, progress=progress, prefix=prefix
        )
    if prefix is not None:  # the merge needs the whole model: computed whole, then cut down
        whole = load_merged(store, snap.id, verify=verify, framework=framework, into=into, progress=progress)
        return cut_state(store.table(root_of(store, snap).id), whole, prefix)
    base = store.get(base_of(snap))
    cfg = adapter_config(store, snap.id)
    what = f"adapter {snap.short_id}"
    shapes = {name: shape for name, (_, shape) in model_entries(store.table(snap.id))[0].items()}
    check_type(cfg, what, shapes)
    settings = merge_settings(cfg, what)
    found = fit_to_base(store, base, shapes, cfg, adapter=what, layers=read_layers(snap.metadata))  # no byte read
    if isinstance(found, _lora.Plan) and isinstance(settings, LoraSettings):
        _lora.check_mergeable(found, settings, what)
    elif isinstance(found, _types.TypePlan) and isinstance(settings, TypeSettings):
        _types.check_mergeable(found, settings, what)

    adapter = _model_mapping(store.load(snap.id, verify=verify, framework="torch"), what)
    if is_adapter(base):
        state = load_merged(store, base.id, verify=verify, framework=framework, into=into, progress=progress)
    else:
        state = store.load(base.id, verify=verify, framework=framework, into=into, progress=progress)
    weights = _model_mapping(state, f"base {base.short_id}")
    in_place = [id(t) for t in into.values()] if into else ()
    if isinstance(found, _lora.Plan) and isinstance(settings, LoraSettings):
        _lora.merge_into(weights, adapter, found, settings, in_place=in_place)
    elif isinstance(found, _types.TypePlan) and isinstance(settings, TypeSettings):
        _types.merge_into(weights, adapter, found, settings, in_place=in_place)
    return state


def merge_adapter(
    store: Store,
    adapter_rev: str,
    *,
    branch: str,
    model: str | None = None,
    message: str | None = None,
    metadata: Mapping[str, JsonValue] | None = None,
    files: Mapping[str, bytes] | None = None,
    progress: Progress | None = None,
) -> Snapshot:
    """Save an adapter merged into its base as a new snapshot: relation ``merge``, parents adapter then base.

    Only the merged tensors are new bytes: every tensor the adapter does not touch is the base's, shared by
    content. The base's attached files (``config.json``, tokenizer files …) come along, so the merged snapshot
    exports as a model folder that ``from_pretrained`` loads. Tied weights stay tied (recorded in the table)
    and change together, as PEFT's ``merge_and_unload()`` changes a tied parameter in place: a LoRA on
    ``lm_head`` of a model with ``tie_word_embeddings`` changes the input embedding too, and the config stays
    tied. (To keep the embedding, untie the model before training the adapter.)

    An adapter that changes a tensor's shape (embeddings saved after ``resize_token_embeddings``) makes the
    base's ``config.json`` wrong for the merged model: pass ``files`` with the resized model's files then.

    Args:
        store: the store.
        adapter_rev: the adapter snapshot.
        branch: a new branch for the merged model.
        model: the merged model's name; default: the adapter's.
        message: a note; default ``merge <adapter> into <base>``.
        metadata: your own JSON metadata.
        files: the merged model's attached files (``{"config.json": model.config.to_json_string().encode(),
            …}``); default: the base's.
        progress: called with byte counts as chunks are written.

    Returns:
        The merged snapshot.

    Raises:
        RefExistsError: the branch exists.
        StateMismatchError: the merge changes a tensor's shape and the base's ``config.json`` would come along
            (pass ``files``); as ``load_merged``.
        RecordError, UnsupportedStateError: as ``load_merged``.

    Example:
        >>> snap = merge_adapter(store, "chat-lora", branch="chat-merged")  # doctest: +SKIP
        >>> snap.relation, len(snap.parents)  # doctest: +SKIP
        ('merge', 2)
    """
    snap = store.resolve(adapter_rev)
    base = store.get(base_of(snap))
    _require_new_branch(store, branch, hint="merge onto a new branch")
    state = load_merged(store, snap.id)
    if files is None:
        files = {
            name: data
            for name, data in store.files(base.id).items()
            if not name.startswith(RESERVED_FILE_PREFIX) and not name.endswith(SAFETENSORS_INDEX_SUFFIX)
        }
        entries, _ = model_entries(store.table(root_of(store, base).id))
        weights = _model_mapping(state, "the merged state")
        reshaped = [
            f"{name} {list(entries[name][1])} → {list(t.shape)}"
            for name, t in weights.items()
            if name in entries and tuple(t.shape) != entries[name][1]
        ]
        if reshaped and "config.json" in files:
            raise StateMismatchError(
                f"merging adapter {snap.short_id} changes {', '.join(reshaped[:3])}: the base's config.json "
                "does not describe the merged model",
                hint="pass files={'config.json': resized_model.config.to_json_string().encode(), …} (with the "
                "tokenizer files that go with the new vocabulary)",
            )
    return store.save(
        state,
        branch,
        parents=[snap.id, base.id],
        relation="merge",
        model=model,
        message=message if message is not None else f"merge adapter {snap.short_id} into {base.short_id}",
        metadata=metadata,
        files=files,
        progress=progress,
    )


def _require_new_branch(store: Store, branch: str, *, hint: str) -> None:
    if branch in store.branches() or branch in store.tags():
        raise RefExistsError(f"a branch or tag named {branch!r} exists", hint=hint)


def _model_mapping(state: Any, what: str) -> MutableMapping[str, Any]:
    """The model's weights in a loaded state: ``state["model"]``, or the state itself."""
    if isinstance(state, dict):
        inner = state.get("model")
        return inner if isinstance(inner, dict) else state
    raise StateMismatchError(f"{what} is a {type(state).__name__}, not a mapping of weights")
