"""The JSON of a PEFT adapter config: from a ``peft`` config object or ``adapter_config.json``, and back to bytes.

Split from ``_config``, which checks what a merge needs from it.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from typing import Any

from pydantic import JsonValue

from ckpt.errors import RecordError
from ckpt.lineage._config import CONFIG_KEY, LAYERS_KEY, MERGED_TYPES, merge_settings, peft_type

__all__ = ["config_bytes", "config_dict", "parse_json", "with_config"]


def config_dict(config: Any, *, checked: bool = True) -> dict[str, JsonValue]:
    """The JSON of a PEFT config, as ``adapter_config.json`` holds it (sets become sorted lists).

    A config of a type ckpt merges is checked as ``lora_settings`` or ``type_settings`` checks it (unless
    ``checked=False``: a stored config is checked where it is used).

    Raises:
        RecordError: not a mapping, a value JSON cannot hold, or a malformed LoRA config.
    """
    raw = config.to_dict() if callable(getattr(config, "to_dict", None)) else config
    if not isinstance(raw, Mapping):
        raise RecordError(
            f"an adapter config must be a PEFT config or a mapping, got {type(config).__name__}",
            hint="pass peft_model.peft_config['default'] or the dict of adapter_config.json",
        )
    try:
        out = {str(k): _json_value(v, str(k)) for k, v in raw.items()}
    except RecursionError:
        raise RecordError("the adapter config is nested too deeply") from None
    out.setdefault("peft_type", "LORA")
    if not isinstance(out["peft_type"], str):
        raise RecordError(f"adapter config field 'peft_type' must be a string, got {out['peft_type']!r}")
    if checked and peft_type(out) in MERGED_TYPES:
        merge_settings(out, "the adapter config")
    return out


def _json_value(value: Any, where: str) -> JsonValue:
    if isinstance(value, enum.Enum):
        return _json_value(value.value, where)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RecordError(f"adapter config field {where!r} is {value}; JSON has no such number")
        return value
    if isinstance(value, (set, frozenset)):
        return [_json_value(v, where) for v in sorted(value, key=str)]
    if isinstance(value, (list, tuple)):
        return [_json_value(v, where) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_value(v, f"{where}.{k}") for k, v in value.items()}
    raise RecordError(f"adapter config field {where!r} holds a {type(value).__name__}, which is not JSON")


def config_bytes(cfg: Mapping[str, JsonValue]) -> bytes:
    """``adapter_config.json`` as PEFT writes it, but with its keys in the config's order, not sorted.

    ``alpha_pattern`` and ``rank_pattern`` keys are matched in order, the first match winning (PEFT's
    ``get_pattern_key``); PEFT's own ``save_pretrained`` sorts them, which can change the adapter it reloads.
    """
    return json.dumps(cfg, indent=2).encode("utf-8")


def parse_json(data: bytes, what: str) -> Any:
    """The JSON in ``data`` (an ``adapter_config.json``).

    Raises:
        RecordError: not JSON, or nested too deeply (``what`` names the file).
    """
    try:
        return json.loads(data)
    except ValueError as e:
        raise RecordError(f"{what} is not valid JSON: {e}") from e
    except RecursionError:
        raise RecordError(f"{what} is nested too deeply") from None


def with_config(metadata: Mapping[str, JsonValue] | None, cfg: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """The user's metadata with the adapter's config under ``CONFIG_KEY``.

    Raises:
        RecordError: the user's metadata uses ``CONFIG_KEY``.
    """
    meta = dict(metadata or {})
    for key in (CONFIG_KEY, LAYERS_KEY):
        if key in meta:
            raise RecordError(f"metadata key {key!r} is reserved for the adapter's PEFT config and layers")
    meta[CONFIG_KEY] = cfg
    return meta
