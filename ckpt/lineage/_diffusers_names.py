"""diffusers LoRA state dicts cut into components and renamed as PEFT names them (no tensor byte is read).

``save_lora_weights`` writes one safetensors file whose tensors are named ``<component>.<module>.lora_A.weight``
(``unet.``, ``text_encoder.``, ``text_encoder_2.``, ``transformer.`` …). ``split_lora`` cuts such a state dict
into components (Kohya/A1111 files, ``lora_unet_…``, are refused by name); ``peft_names`` renames the older
diffusers layouts to PEFT's with diffusers' own tables (``convert_unet_state_dict_to_peft``,
``convert_state_dict_to_diffusers`` then ``convert_state_dict_to_peft``) and adapts a text encoder's
``text_model.`` prefix to its base; ``component_paths`` lists a pipeline snapshot's components from its table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ckpt.errors import StateMismatchError, UnsupportedStateError
from ckpt.model import TensorTable
from ckpt.state import TensorSource, is_array

__all__ = ["component_paths", "is_text_encoder", "peft_names", "split_lora"]

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


def is_text_encoder(component: str) -> bool:
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
    if is_text_encoder(component):
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
