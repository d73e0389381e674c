"""PEFT's names for adapter tensors: what a name says about the tensor, and the names the file uses.

PEFT names every tensor of a ``PeftModel`` ``base_model.model.<name in the base>``; the adapter's own tensors
add a part (``lora_A``, ``lora_embedding_B``, ``lora_magnitude_vector``, ``ia3_l``, ``hada_w1_a``, ``lokr_w2`` …)
and, in ``peft_model.state_dict()``, the adapter's name (``….lora_A.default.weight``), which
``get_peft_model_state_dict`` and ``adapter_model.safetensors`` leave out (``….lora_A.weight``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ckpt.errors import StateMismatchError, UnsupportedStateError
from ckpt.state import is_array

__all__ = ["PEFT_PREFIX", "adapter_tensors", "base_name"]

#: The prefix PEFT gives every tensor of a ``PeftModel`` (``base_model.model.<name in the base>``).
PEFT_PREFIX = "base_model.model."

#: A tensor of ``peft_model.state_dict()`` that carries its adapter's name: ``….lora_A.default.weight`` …
_NAMED_KEY = re.compile(
    r"\.(?P<part>lora_[A-Za-z0-9_]+|modules_to_save|ia3_l|hada_\w+|lokr_\w+)\.(?P<adapter>[^.]+)"
    r"(?P<tail>\.(?:weight|bias))?$"
)
#: An adapter's own tensor, named with its adapter (group ``adapter``) or as the file names it.
_ADAPTER_TENSOR = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_[ABE]|lora_embedding_[AB]|lora_magnitude_vector|ia3_l|hada_(?:w[12]_[ab]|t[12])"
    r"|lokr_(?:w[12](?:_[ab])?|t2))(?:\.(?P<adapter>(?!weight$|bias$)[^.]+))?(?P<tail>\.(?:weight|bias))?$"
)
#: The tensors that make an adapter of each type (the others are companions or whole modules).
_CORE_TENSOR = {
    "LORA": re.compile(r"\.lora_(?:[AB]\.weight|embedding_[AB])$"),
    "IA3": re.compile(r"\.ia3_l$"),
    "LOHA": re.compile(r"\.hada_w[12]_[ab]$"),
    "LOKR": re.compile(r"\.lokr_w[12](?:_[ab])?$"),
    "ADALORA": re.compile(r"\.lora_[ABE]$"),
}
_EXAMPLE_TENSOR = {"LORA": "lora_A.weight", "IA3": "ia3_l", "LOHA": "hada_w1_a", "LOKR": "lokr_w1", "ADALORA": "lora_E"}


def base_name(key: str) -> str:
    """The base tensor a whole adapter tensor stands for: PEFT's prefix and a ``.base_layer`` segment taken out.

    Example:
        >>> base_name("base_model.model.lm_head.base_layer.weight")
        'lm_head.weight'
    """
    name = key.removeprefix(PEFT_PREFIX)
    parts = name.split(".")
    if "base_layer" in parts[:-1]:
        parts.remove("base_layer")
    return ".".join(parts)


def _adapter_name(key: str) -> str | None:
    """The adapter name a tensor of ``peft_model.state_dict()`` carries (``lora_A.default.weight``), if any."""
    m = _NAMED_KEY.search(key)
    if m is None or (m["adapter"] in ("weight", "bias") and m["tail"] is None):
        return None
    return m["adapter"]


def _file_name(key: str) -> str | None:
    """The name PEFT writes to ``adapter_model.safetensors`` for an adapter tensor of ``peft_model.state_dict()``
    (``….lora_A.default.weight`` → ``….lora_A.weight``, ``….lora_magnitude_vector.default.weight`` →
    ``….lora_magnitude_vector``, ``….ia3_l.default`` → ``….ia3_l``); ``None`` for a tensor that is not an
    adapter's own (a base weight)."""
    m = _ADAPTER_TENSOR.match(key)
    if m is None:
        return None
    part, tail = m["part"], m["tail"] or ""
    if part == "lora_magnitude_vector":
        tail = ""
    return f"{m['module']}.{part}{tail}"  # AdaLoRA's lora_A/B/E are parameters: no ".weight"


def adapter_tensors(adapter_state: Mapping[str, Any], kind: str = "LORA") -> dict[str, Any]:
    """Every tensor of an adapter state dict, by the name PEFT writes to ``adapter_model.safetensors``.

    ``get_peft_model_state_dict(peft_model)`` is taken as it is: every tensor in it is the adapter's (LoRA
    pairs, DoRA magnitudes, IA³ vectors, LoHa, LoKr and AdaLoRA factors, ``modules_to_save`` heads, embeddings
    saved with ``save_embedding_layers`` …), so every one is stored. A dict whose tensors carry an adapter name
    (``….lora_A.default.weight``, as ``peft_model.state_dict()`` has them) is accepted when it holds the
    adapter's own tensors only (the name is taken out); next to base weights or modules it is refused, since
    which of its tensors are the adapter's cannot be told by names.

    Raises:
        StateMismatchError: not a mapping of tensors; no tensor of the adapter's type; several adapters; two
            tensors with one name.
        UnsupportedStateError: a state dict with adapter names and other tensors (names one).
    """
    if not isinstance(adapter_state, Mapping):
        raise StateMismatchError(f"adapter_state must be a mapping of tensors, got {type(adapter_state).__name__}")
    inner = adapter_state.get("model")
    if len(adapter_state) == 1 and isinstance(inner, Mapping):
        adapter_state = inner
    for key, value in adapter_state.items():
        if not isinstance(key, str) or not is_array(value):
            raise StateMismatchError(f"adapter_state must map names to tensors; {key!r} holds {type(value).__name__}")
    names = {key: _adapter_name(key) for key in adapter_state}
    adapter_names = {n for n in names.values() if n is not None}
    if len(adapter_names) > 1:
        raise StateMismatchError(
            f"adapter_state holds several adapters ({', '.join(sorted(adapter_names))})",
            hint="pass get_peft_model_state_dict(peft_model, adapter_name=...) for one of them",
        )
    out: dict[str, Any] = {}
    for key, value in adapter_state.items():
        name = key
        if adapter_names:
            renamed = _file_name(key)
            if renamed is None:
                raise UnsupportedStateError(
                    f"adapter_state mixes {key!r} with tensors named after adapter "
                    f"{next(iter(adapter_names))!r} (as peft_model.state_dict() has them): ckpt stores every tensor "
                    "it is given, and cannot tell by names which of these are the adapter's",
                    hint="pass get_peft_model_state_dict(peft_model) (with save_embedding_layers=True if the "
                    "embeddings were resized); or save the folder with peft_model.save_pretrained(folder) and use "
                    "import_peft_folder",
                )
            name = renamed
        if name in out:
            raise StateMismatchError(f"two adapter tensors would both be saved as {name!r}")
        out[name] = value
    core = _CORE_TENSOR[kind]
    if not any(core.search(k) for k in out):
        example = _EXAMPLE_TENSOR[kind]
        raise StateMismatchError(
            f"adapter_state holds no {'LoRA' if kind == 'LORA' else kind} tensor (names like '….{example}')",
            hint="pass get_peft_model_state_dict(peft_model)",
        )
    return out
