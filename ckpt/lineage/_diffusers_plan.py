"""diffusers LoRA configs and the merge plan: each component checked against its base pipeline, then merged.

diffusers writes each component's PEFT ``LoraConfig`` into the LoRA file's metadata under
``lora_adapter_metadata`` (JSON, keys ``<component>.<field>``) when the training script passes
``unet_lora_adapter_metadata``. ``lora_configs`` gives each component's config (given, from that metadata, or
inferred as diffusers' ``get_peft_kwargs`` infers it: rank from ``lora_B``, ``lora_alpha`` equal to the rank);
``plan_lora`` checks the LoRA against the base pipeline's tensor table (``_lora.plan`` per component) and
``merge_lora`` merges it as PEFT's merge does, which diffusers' ``fuse_lora()`` runs.
"""

from __future__ import annotations

import collections
import json
import math
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import JsonValue

from ckpt.errors import RecordError, StateMismatchError, UnsupportedStateError
from ckpt.lineage import _lora
from ckpt.lineage._config import LoraSettings, lora_settings, peft_type
from ckpt.lineage._diffusers_names import component_paths, is_text_encoder, peft_names
from ckpt.model import TensorTable

__all__ = [
    "LORA_METADATA_KEY",
    "LORA_WEIGHTS_FILE",
    "LoraPlan",
    "lora_configs",
    "lora_file_metadata",
    "merge_lora",
    "plan_lora",
]

#: The file ``save_lora_weights`` writes (and ``load_lora_weights`` looks for first).
LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
#: The safetensors metadata key under which diffusers writes each component's ``LoraConfig``.
LORA_METADATA_KEY = "lora_adapter_metadata"


# -- configs -----------------------------------------------------------------------------------------


def lora_file_metadata(header: Mapping[str, Any]) -> dict[str, JsonValue] | None:
    """diffusers' LoRA metadata of a safetensors header: the JSON under ``__metadata__["lora_adapter_metadata"]``.

    Returns:
        ``{"unet.r": 4, "unet.lora_alpha": 8, …}``, or ``None`` when the file has none.

    Raises:
        RecordError: the entry is not a JSON object.
    """
    meta = header.get("__metadata__")
    raw = meta.get(LORA_METADATA_KEY) if isinstance(meta, dict) else None
    if raw is None:
        return None
    try:
        doc = json.loads(raw) if isinstance(raw, str) else None
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        raise RecordError(
            f"the LoRA file's {LORA_METADATA_KEY!r} metadata is not a JSON object",
            hint="save the LoRA again with save_lora_weights",
        )
    return doc


def lora_configs(
    parts: Mapping[str, Mapping[str, tuple[int, ...]]],
    file_metadata: Mapping[str, JsonValue] | None = None,
    given: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, JsonValue]]:
    """The LoRA config of each component: given, from the file's metadata, or inferred as diffusers infers it.

    Args:
        parts: component → {PEFT name → shape} (``peft_names`` applied).
        file_metadata: ``lora_file_metadata`` of the file (keys ``<component>.<field>``), if any.
        given: component → ``LoraConfig`` (or its dict), overriding the rest for those components.

    Returns:
        Component → config JSON (``peft_type``, ``r``, ``lora_alpha``, ``rank_pattern``, ``alpha_pattern``,
        ``target_modules``, ``use_dora``, ``lora_bias`` …). Without metadata: ``r`` the most common rank (the
        first met among equals), ``rank_pattern`` the modules of other ranks, and ``lora_alpha``/``alpha_pattern``
        equal to them (scale 1), exactly what ``diffusers.utils.peft_utils.get_peft_kwargs`` builds.

    Raises:
        RecordError: the file has metadata but none for a component it holds tensors of (diffusers would
            load that component with ``LoraConfig()``'s defaults); a config that is not JSON.
    """
    out: dict[str, dict[str, JsonValue]] = {}
    for component, shapes in parts.items():
        if given is not None and component in given:
            out[component] = _config_json(given[component], component)
            continue
        if file_metadata is not None:
            mine = {
                k.removeprefix(f"{component}."): v for k, v in file_metadata.items() if k.startswith(f"{component}.")
            }
            if not mine:
                raise RecordError(
                    f"the LoRA file's {LORA_METADATA_KEY} has no config for {component!r}, which it holds tensors "
                    "of: diffusers would load them with LoraConfig()'s defaults (r=8)",
                    hint=f"save the LoRA again with {component}_lora_adapter_metadata, or pass its config",
                )
            out[component] = _config_json(mine, component)
            continue
        out[component] = _inferred(component, shapes)
    return out


def _inferred(component: str, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, JsonValue]:
    """``get_peft_kwargs`` without network alphas: ranks from ``lora_B``, alpha = rank."""
    ranks: dict[str, int] = {}
    for name, shape in shapes.items():
        if "lora_B" in name and len(shape) > 1:
            ranks[name] = int(shape[1])
    if not ranks:
        raise StateMismatchError(f"the LoRA of {component!r} has no lora_B matrix to read its rank from")
    counts = collections.Counter(ranks.values())
    r = counts.most_common()[0][0]
    anchor = "" if is_text_encoder(component) else "^"
    pattern: dict[str, JsonValue] = {
        anchor + name.split(".lora_B.")[0]: rank for name, rank in ranks.items() if rank != r
    }
    targets = sorted({name.split(".lora")[0] for name in shapes})
    return {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": r,
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "target_modules": list(targets),
        "use_dora": any("lora_magnitude_vector" in k for k in shapes),
        "lora_bias": any("lora_B" in k and k.endswith(".bias") for k in shapes),
    }


def _config_json(config: Any, component: str) -> dict[str, JsonValue]:
    raw = config.to_dict() if callable(getattr(config, "to_dict", None)) else config
    if not isinstance(raw, Mapping):
        raise RecordError(f"the LoRA config of {component!r} is a {type(raw).__name__}, not a LoraConfig or mapping")

    def plain(value: Any) -> Any:
        if hasattr(value, "value") and type(value).__module__ != "builtins":  # an enum (PeftType, TaskType)
            return plain(value.value)
        if isinstance(value, (set, frozenset)):
            return sorted((plain(v) for v in value), key=str)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, float) and not math.isfinite(value):
            raise RecordError(f"the LoRA config of {component!r} holds {value}, which JSON cannot")
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise RecordError(f"the LoRA config of {component!r} holds a {type(value).__name__}, which is not JSON")

    try:
        out: dict[str, JsonValue] = plain(dict(raw))
    except RecursionError:
        raise RecordError(f"the LoRA config of {component!r} is nested too deeply") from None
    out.setdefault("peft_type", "LORA")
    return out


# -- planning and merging ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraPlan:
    """What a diffusers LoRA does to each component of its base pipeline, checked without reading a tensor.

    Attributes:
        names: component → {name in the snapshot → PEFT name}.
        plans: component → ``ckpt._lora.Plan`` (pairs and whole tensors by PEFT name).
        settings: component → checked ``ckpt.LoraSettings``.
    """

    names: dict[str, dict[str, str]]
    plans: dict[str, _lora.Plan]
    settings: dict[str, LoraSettings]


def plan_lora(
    shapes: Mapping[str, Mapping[str, tuple[int, ...]]],
    configs: Mapping[str, Mapping[str, JsonValue]] | None,
    base: TensorTable,
    *,
    adapter: str,
    base_label: str,
    file_metadata: Mapping[str, JsonValue] | None = None,
) -> tuple[LoraPlan, dict[str, dict[str, JsonValue]]]:
    """Check a diffusers LoRA against its base pipeline's table: components, targets, ranks, shapes.

    Args:
        shapes: component → {tensor name (as the file has it, without prefix) → shape}.
        configs: component → config; ``None``: from ``file_metadata`` or inferred (see ``lora_configs``).
        base: the base pipeline's tensor table.
        adapter: the LoRA, for messages.
        base_label: the base, for messages.
        file_metadata: the file's ``lora_adapter_metadata``.

    Returns:
        The plan, and the config of each component.

    Raises:
        StateMismatchError: a component the base lacks, a target it lacks, a shape or rank that does not fit.
        UnsupportedStateError: a LoRA type or option ckpt does not merge (names it).
        RecordError: a malformed config.
    """
    components = component_paths(base)
    names: dict[str, dict[str, str]] = {}
    peft_shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    for component, part in shapes.items():
        if component not in components:
            raise StateMismatchError(
                f"{adapter} has LoRA tensors for {component!r}, which base {base_label} does not have "
                f"(it has {', '.join(components) or 'no component'})",
                hint="is this the LoRA's base pipeline?",
            )
        renamed = peft_names(component, list(part), list(components[component]))
        names[component] = renamed
        peft_shapes[component] = {renamed[k]: tuple(s) for k, s in part.items()}
    cfgs = lora_configs(peft_shapes, file_metadata, configs)
    plans: dict[str, _lora.Plan] = {}
    settings: dict[str, LoraSettings] = {}
    for component, part in peft_shapes.items():
        cfg = cfgs[component]
        what = f"{adapter} ({component})"
        if peft_type(cfg) != "LORA":
            raise UnsupportedStateError(
                f"{what} is a {cfg.get('peft_type')} adapter; ckpt merges diffusers LoRA adapters",
                hint="load it with diffusers (pipe.load_lora_weights) instead",
            )
        try:
            checked = lora_settings(cfg)
        except RecordError as e:
            raise RecordError(f"{what}: {e.message}", hint=e.hint or "", cli_hint=e.cli_hint or "") from e
        paths = components[component]
        entries = {n: (base.tensors[p].dtype, tuple(base.tensors[p].shape)) for n, p in paths.items()}
        by_path = {p: n for n, p in paths.items()}
        ties = [[by_path[p] for p in group if p in by_path] for group in base.tied]
        found = _lora.plan(
            part, checked, entries, [t for t in ties if len(t) > 1], adapter=what, base=f"{base_label} {component}"
        )
        _lora.check_mergeable(found, checked, what)
        plans[component], settings[component] = found, checked
    return LoraPlan(names, plans, settings), cfgs


def merge_lora(
    state: MutableMapping[str, Any],
    adapter: Mapping[str, Mapping[str, Any]],
    found: LoraPlan,
    *,
    in_place: Sequence[int] = (),
    partial: bool = False,
) -> None:
    """Merge a diffusers LoRA into a loaded pipeline state, component by component, as PEFT merges (in place).

    Args:
        state: the base's loaded state (component → {name → tensor}); changed in place.
        adapter: component → {name as stored → torch tensor}.
        found: ``plan_lora(...)``.
        in_place: ``id()`` of tensors to overwrite in place.
        partial: ``state`` holds a part of the base (a prefix of it): merge what falls in it, skip the rest.
    """
    for component, plan_ in found.plans.items():
        names = found.names[component]
        tensors = {names[k]: v for k, v in adapter[component].items()}
        weights = state.get(component) if partial else state[component]
        if weights is None:
            continue
        if partial:
            plan_ = _lora.Plan(
                pairs=tuple(
                    p for p in plan_.pairs if p.target in weights and (p.bias is None or p.bias_target in weights)
                ),
                whole={t: k for t, k in plan_.whole.items() if t in weights},
                unmerged=plan_.unmerged,
            )
        _lora.merge_into(weights, tensors, plan_, found.settings[component], in_place=in_place)
