"""diffusers LoRA state dicts as PEFT reads them: components, names, configs, and the merge plan.

``save_lora_weights`` writes one safetensors file whose tensors are named ``<component>.<module>.lora_A.weight``
(``unet.``, ``text_encoder.``, ``text_encoder_2.``, ``transformer.`` …), with each component's PEFT
``LoraConfig`` in the file's metadata under ``lora_adapter_metadata`` (JSON, keys ``<component>.<field>``) when
the training script passes ``unet_lora_adapter_metadata``. This module reads such a state dict the way
``load_lora_weights`` does before it hands each component to PEFT, without reading any tensor byte:

- ``split_lora`` cuts it into components; Kohya/A1111 files (``lora_unet_…``) are refused by name;
- ``peft_names`` renames the older diffusers layouts to PEFT's with diffusers' own tables
  (``convert_unet_state_dict_to_peft``, ``convert_state_dict_to_diffusers`` then ``convert_state_dict_to_peft``)
  and adapts a text encoder's ``text_model.`` prefix to its base;
- ``lora_configs`` gives each component's config: given, from the file's metadata, or inferred as diffusers'
  ``get_peft_kwargs`` infers it (rank from ``lora_B``, ``lora_alpha`` equal to the rank: scale 1);
- ``plan_lora`` checks it against the base pipeline's tensor table (``ckpt.lora.plan`` per component), and
  ``merge_lora`` merges it as PEFT's merge does, which diffusers' ``fuse_lora()`` runs.

``ckpt.diffusion`` stores such LoRAs as adapter snapshots over a pipeline snapshot.
"""

from __future__ import annotations

import collections
import json
import math
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import JsonValue

from ckpt import lora
from ckpt.errors import RecordError, StateMismatchError, UnsupportedStateError
from ckpt.model import TensorTable
from ckpt.state import TensorSource, is_array

__all__ = [
    "LORA_METADATA_KEY",
    "LORA_WEIGHTS_FILE",
    "LoraPlan",
    "component_paths",
    "lora_configs",
    "lora_file_metadata",
    "merge_lora",
    "peft_names",
    "plan_lora",
    "split_lora",
]

#: The file ``save_lora_weights`` writes (and ``load_lora_weights`` looks for first).
LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
#: The safetensors metadata key under which diffusers writes each component's ``LoraConfig``.
LORA_METADATA_KEY = "lora_adapter_metadata"

_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_")
_TEXT_MODEL = "text_model."

# diffusers.utils.state_dict_utils, 0.42: the renames diffusers applies before handing a LoRA to PEFT.
_ALWAYS_REPLACE = {".processor.": "."}
_UNET_TO_PEFT = {
    ".to_out_lora.up": ".to_out.0.lora_B",
    ".to_out_lora.down": ".to_out.0.lora_A",
    ".to_q_lora.down": ".to_q.lora_A",
    ".to_q_lora.up": ".to_q.lora_B",
    ".to_k_lora.down": ".to_k.lora_A",
    ".to_k_lora.up": ".to_k.lora_B",
    ".to_v_lora.down": ".to_v.lora_A",
    ".to_v_lora.up": ".to_v.lora_B",
    ".lora.up": ".lora_B",
    ".lora.down": ".lora_A",
    ".to_out.lora_magnitude_vector": ".to_out.0.lora_magnitude_vector",
}
_DIFFUSERS_OLD_TO_DIFFUSERS = {
    ".to_q_lora.up": ".q_proj.lora_linear_layer.up",
    ".to_q_lora.down": ".q_proj.lora_linear_layer.down",
    ".to_k_lora.up": ".k_proj.lora_linear_layer.up",
    ".to_k_lora.down": ".k_proj.lora_linear_layer.down",
    ".to_v_lora.up": ".v_proj.lora_linear_layer.up",
    ".to_v_lora.down": ".v_proj.lora_linear_layer.down",
    ".to_out_lora.up": ".out_proj.lora_linear_layer.up",
    ".to_out_lora.down": ".out_proj.lora_linear_layer.down",
    ".to_k.lora_magnitude_vector": ".k_proj.lora_magnitude_vector",
    ".to_v.lora_magnitude_vector": ".v_proj.lora_magnitude_vector",
    ".to_q.lora_magnitude_vector": ".q_proj.lora_magnitude_vector",
    ".to_out.lora_magnitude_vector": ".out_proj.lora_magnitude_vector",
}
_PEFT_TO_DIFFUSERS = {
    ".q_proj.lora_B": ".q_proj.lora_linear_layer.up",
    ".q_proj.lora_A": ".q_proj.lora_linear_layer.down",
    ".k_proj.lora_B": ".k_proj.lora_linear_layer.up",
    ".k_proj.lora_A": ".k_proj.lora_linear_layer.down",
    ".v_proj.lora_B": ".v_proj.lora_linear_layer.up",
    ".v_proj.lora_A": ".v_proj.lora_linear_layer.down",
    ".out_proj.lora_B": ".out_proj.lora_linear_layer.up",
    ".out_proj.lora_A": ".out_proj.lora_linear_layer.down",
    "to_k.lora_A": "to_k.lora.down",
    "to_k.lora_B": "to_k.lora.up",
    "to_q.lora_A": "to_q.lora.down",
    "to_q.lora_B": "to_q.lora.up",
    "to_v.lora_A": "to_v.lora.down",
    "to_v.lora_B": "to_v.lora.up",
    "to_out.0.lora_A": "to_out.0.lora.down",
    "to_out.0.lora_B": "to_out.0.lora.up",
}
_DIFFUSERS_OLD_TO_PEFT = {
    ".to_q_lora.up": ".q_proj.lora_B",
    ".to_q_lora.down": ".q_proj.lora_A",
    ".to_k_lora.up": ".k_proj.lora_B",
    ".to_k_lora.down": ".k_proj.lora_A",
    ".to_v_lora.up": ".v_proj.lora_B",
    ".to_v_lora.down": ".v_proj.lora_A",
    ".to_out_lora.up": ".out_proj.lora_B",
    ".to_out_lora.down": ".out_proj.lora_A",
    ".lora_linear_layer.up": ".lora_B",
    ".lora_linear_layer.down": ".lora_A",
}
_DIFFUSERS_TO_PEFT = {
    ".q_proj.lora_linear_layer.up": ".q_proj.lora_B",
    ".q_proj.lora_linear_layer.down": ".q_proj.lora_A",
    ".k_proj.lora_linear_layer.up": ".k_proj.lora_B",
    ".k_proj.lora_linear_layer.down": ".k_proj.lora_A",
    ".v_proj.lora_linear_layer.up": ".v_proj.lora_B",
    ".v_proj.lora_linear_layer.down": ".v_proj.lora_A",
    ".out_proj.lora_linear_layer.up": ".out_proj.lora_B",
    ".out_proj.lora_linear_layer.down": ".out_proj.lora_A",
    ".lora_linear_layer.up": ".lora_B",
    ".lora_linear_layer.down": ".lora_A",
    "text_projection.lora.down.weight": "text_projection.lora_A.weight",
    "text_projection.lora.up.weight": "text_projection.lora_B.weight",
}


def component_paths(table: TensorTable) -> dict[str, dict[str, str]]:
    """Component → {tensor name → table path} for a state made of mappings of tensors under its root.

    ``{"unet": {"conv_in.weight": "unet/conv_in.weight", …}, …}``; entries that are not such mappings are left
    out. Reads no tensor byte.
    """
    out: dict[str, dict[str, str]] = {}
    tree = table.tree
    pairs = tree.get("$dict") if isinstance(tree, dict) else None
    if not isinstance(pairs, list):
        return out
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
            continue
        key, value = pair
        inner = value.get("$dict") if isinstance(value, dict) else None
        if not isinstance(inner, list):
            continue
        names: dict[str, str] = {}
        for item in inner:
            if (
                isinstance(item, list)
                and len(item) == 2
                and isinstance(item[1], dict)
                and set(item[1]) == {"$tensor"}
                and str(item[1]["$tensor"]) in table.tensors
            ):
                names[str(item[0])] = str(item[1]["$tensor"])
        if names:
            out[key] = names
    return out


# -- LoRA state dicts --------------------------------------------------------------------------------


def split_lora(state_dict: Mapping[str, Any], components: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Cut a diffusers LoRA state dict into components: ``"unet.x.lora_A.weight"`` → ``{"unet": {"x.lora_A.weight"}}``.

    Also accepts the components already apart: ``{"unet": {...}, "text_encoder": {...}}`` (as the
    ``unet_lora_layers`` and ``text_encoder_lora_layers`` of ``save_lora_weights``).

    Args:
        state_dict: tensor name → tensor (torch, numpy or ``TensorSource``), as ``save_lora_weights`` writes it.
        components: the base pipeline's components, when known: a prefix that is none of them is refused.

    Returns:
        Component → {name without the prefix → tensor}, in the order met.

    Raises:
        UnsupportedStateError: a Kohya/A1111 LoRA (``lora_unet_…``, ``lora_te_…``).
        StateMismatchError: a name without a component prefix, a name without ``lora`` (diffusers refuses such a
            file: "Invalid LoRA checkpoint"), a component the base lacks, a value that is not a tensor, no tensor.
    """
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise StateMismatchError("a LoRA state dict must be a non-empty mapping of tensor names to tensors")
    flat: dict[str, Any] = {}
    for key, value in state_dict.items():
        if isinstance(value, Mapping) and isinstance(key, str):
            for inner, tensor in value.items():
                flat[f"{key}.{inner}"] = tensor
        else:
            flat[key] = value
    kohya = [k for k in flat if isinstance(k, str) and k.startswith(_KOHYA_PREFIXES)]
    if kohya:
        raise UnsupportedStateError(
            f"{kohya[0]!r} is a Kohya/A1111 LoRA tensor; ckpt reads LoRA files in diffusers' layout "
            "(unet.<module>.lora_A.weight …)",
            hint="convert it with diffusers: pipe.load_lora_weights(path), then save it with "
            "save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(pipe.unet), "
            "unet_lora_adapter_metadata=pipe.unet.peft_config[name].to_dict(), …)",
        )
    out: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        if not isinstance(key, str) or not (is_array(value) or isinstance(value, TensorSource)):
            raise StateMismatchError(f"a LoRA state dict maps names to tensors; {key!r} holds {type(value).__name__}")
        component, dot, name = key.partition(".")
        if not dot or not component or not name:
            raise StateMismatchError(
                f"LoRA tensor {key!r} names no component (diffusers writes unet.<module>…, text_encoder.<module>…)",
                hint="pass the state dict as save_lora_weights writes it, or {'unet': unet_lora_layers, …}",
            )
        if "lora" not in key:
            raise StateMismatchError(
                f"LoRA tensor {key!r} is not a LoRA tensor: diffusers' load_lora_weights refuses a file whose "
                "names do not all contain 'lora'",
                hint="save only the LoRA layers (get_peft_model_state_dict(pipe.unet))",
            )
        if components is not None and component not in components:
            raise StateMismatchError(
                f"LoRA tensor {key!r} is for component {component!r}, which the base pipeline does not have "
                f"(it has {', '.join(components) or 'no component'})",
                hint="diffusers names LoRA tensors <component>.<module>… (unet.down_blocks.0…): pass "
                "{'unet': get_peft_model_state_dict(pipe.unet)}; or is this not the LoRA's base pipeline?",
            )
        out.setdefault(component, {})[name] = value
    return out


def _rename(key: str, mapping: Mapping[str, str]) -> str:
    """diffusers' ``convert_state_dict`` for one key: the always-replaced patterns, then the first that matches."""
    for pattern, new in _ALWAYS_REPLACE.items():
        if pattern in key:
            key = key.replace(pattern, new)
    for pattern, new in mapping.items():
        if pattern in key:
            return key.replace(pattern, new)
    return key


def _is_text_encoder(component: str) -> bool:
    return component.startswith("text_encoder")


def peft_names(component: str, names: Sequence[str], base_names: Sequence[str] = ()) -> dict[str, str]:
    """The PEFT name of each LoRA tensor of one component, as diffusers renames it before loading it with PEFT.

    A UNet or transformer whose names hold no ``lora_A`` is in an older diffusers layout and is renamed as
    ``convert_unet_state_dict_to_peft`` renames it; a text encoder goes through ``convert_state_dict_to_diffusers``
    then ``convert_state_dict_to_peft``. A ``text_model.`` prefix is taken out when the base's text encoder has
    no tensor under it (and put in when the base has all under it and the LoRA none).

    Args:
        component: ``unet``, ``text_encoder`` …
        names: the component's LoRA tensor names, without the component prefix.
        base_names: the base component's tensor names (for the ``text_model.`` prefix).

    Returns:
        Name in the file → PEFT name (``<module>.lora_A.weight`` …).

    Raises:
        StateMismatchError: two names that become one.
    """
    keys = list(names)
    if _is_text_encoder(component):
        if any("to_out_lora" in k for k in keys):
            first: Mapping[str, str] | None = _DIFFUSERS_OLD_TO_DIFFUSERS
        elif any(".lora_A.weight" in k for k in keys):
            first = _PEFT_TO_DIFFUSERS
        else:
            first = None
        step1 = {k: _rename(k, first) if first is not None else k for k in keys}
        second = (
            _DIFFUSERS_OLD_TO_PEFT
            if any("to_out_lora" in k for k in step1.values())
            else _DIFFUSERS_TO_PEFT
            if any("lora_linear_layer" in k for k in step1.values())
            else None
        )
        renamed = {k: _rename(v, second) if second is not None else v for k, v in step1.items()}
        base = list(base_names)
        if base and not any(b.startswith(_TEXT_MODEL) for b in base):
            renamed = {k: v.removeprefix(_TEXT_MODEL) for k, v in renamed.items()}
        elif (
            base
            and all(b.startswith(_TEXT_MODEL) for b in base)
            and not any(v.startswith(_TEXT_MODEL) for v in renamed.values())
        ):
            renamed = {k: _TEXT_MODEL + v for k, v in renamed.items()}
    elif not any("lora_A" in k for k in keys):
        renamed = {k: _rename(k, _UNET_TO_PEFT) for k in keys}
    else:
        renamed = {k: k for k in keys}
    seen: dict[str, str] = {}
    for k, v in renamed.items():
        if v in seen:
            raise StateMismatchError(f"LoRA tensors {component}.{seen[v]!r} and {component}.{k!r} are one tensor {v!r}")
        seen[v] = k
    return renamed


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
    anchor = "" if _is_text_encoder(component) else "^"
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
        plans: component → ``ckpt.lora.Plan`` (pairs and whole tensors by PEFT name).
        settings: component → checked ``ckpt.lora.LoraSettings``.
    """

    names: dict[str, dict[str, str]]
    plans: dict[str, lora.Plan]
    settings: dict[str, lora.LoraSettings]


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
    plans: dict[str, lora.Plan] = {}
    settings: dict[str, lora.LoraSettings] = {}
    for component, part in peft_shapes.items():
        cfg = cfgs[component]
        what = f"{adapter} ({component})"
        if not lora.is_lora(cfg):
            raise UnsupportedStateError(
                f"{what} is a {cfg.get('peft_type')} adapter; ckpt merges diffusers LoRA adapters",
                hint="load it with diffusers (pipe.load_lora_weights) instead",
            )
        try:
            checked = lora.lora_settings(cfg)
        except RecordError as e:
            raise RecordError(f"{what}: {e}", hint=e.hint) from e
        paths = components[component]
        entries = {n: (base.tensors[p].dtype, tuple(base.tensors[p].shape)) for n, p in paths.items()}
        by_path = {p: n for n, p in paths.items()}
        ties = [[by_path[p] for p in group if p in by_path] for group in base.tied]
        found = lora.plan(
            part, checked, entries, [t for t in ties if len(t) > 1], adapter=what, base=f"{base_label} {component}"
        )
        lora.check_mergeable(found, checked, what)
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
            plan_ = lora.Plan(
                pairs=tuple(
                    p for p in plan_.pairs if p.target in weights and (p.bias is None or p.bias_target in weights)
                ),
                whole={t: k for t, k in plan_.whole.items() if t in weights},
                unmerged=plan_.unmerged,
            )
        lora.merge_into(weights, tensors, plan_, found.settings[component], in_place=in_place)
