"""PEFT adapter configs: reading ``adapter_config.json`` into JSON and checking what a merge needs from it.

A config is what ``peft_model.peft_config["default"].to_dict()`` gives, or the JSON of ``adapter_config.json``
(``peft_type``, ``r``, ``lora_alpha``, ``target_modules``, ``use_rslora``, ``use_dora``, ``fan_in_fan_out`` …).
``_config_json.config_dict`` turns either into JSON (sets become sorted lists, enums their values); ``merge_settings``
checks the config of a type ckpt merges (``MERGED_TYPES``) and returns what the merge math needs: a
``LoraSettings`` for LoRA, a ``TypeSettings`` for IA³, LoHa, LoKr and AdaLoRA, each with the per-module facts
recorded at save time (``LayerFacts``, see ``_layers``). Every check names the field.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import JsonValue

from ckpt.errors import Hint, RecordError, UnsupportedStateError
from ckpt.lineage._patterns import PeftPattern, compile_pattern

__all__ = [
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_WEIGHTS_FILE",
    "CONFIG_KEY",
    "LAYERS_KEY",
    "MERGED_TYPES",
    "PEFT_HINT",
    "PEFT_TYPES",
    "LayerFacts",
    "LoraSettings",
    "TypeSettings",
    "check_type",
    "lora_settings",
    "merge_settings",
    "peft_type",
    "type_settings",
]

#: The attached file that holds an adapter's PEFT config (as PEFT names it).
ADAPTER_CONFIG_FILE = "adapter_config.json"
#: The weights file of a PEFT adapter folder.
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
#: Snapshot metadata key of the adapter's PEFT config (the same JSON as ``adapter_config.json``).
CONFIG_KEY = "adapter_config"
#: Snapshot metadata key of the per-module facts recorded when the adapter was saved (``_layers``).
LAYERS_KEY = "adapter_layers"
#: What to do with an adapter ckpt stores but does not merge.
PEFT_HINT = Hint(
    "store and export it as it is (export_peft_folder), then merge it with peft: "
    "PeftModel.from_pretrained(base_model, folder).merge_and_unload()",
    cli="write it as a PEFT folder (`ckpt restore REV --to DIR`), then merge it with peft: "
    "PeftModel.from_pretrained(base_model, folder).merge_and_unload()",
)
#: The adapter types beyond LoRA whose merge is defined (``peft_type`` as PEFT writes it; see ``_types``).
PEFT_TYPES = ("IA3", "LOHA", "LOKR", "ADALORA")
#: Every adapter type ckpt merges: LoRA (see ``_lora``) and the others.
MERGED_TYPES = ("LORA", *PEFT_TYPES)
#: Config options that change what a merge computes, beyond plain LoRA: an adapter that sets one is not merged.
_UNMERGED_OPTIONS = (
    "layer_replication",
    "target_parameters",
    "trainable_token_indices",
    "alora_invocation_tokens",
    "use_qalora",
    "use_bdlora",
    "arrow_config",
    "kasa_config",
    "monteclora_config",
    "velora_config",
)
#: ``init_lora_weights`` values whose adapter only fits a base that PEFT changed while initialising it.
_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")
#: The same, for the types beyond LoRA.
_TYPE_UNMERGED_OPTIONS = ("layer_replication", "trainable_token_indices", "target_parameters")


def peft_type(cfg: Mapping[str, JsonValue]) -> str:
    """The adapter's type, as PEFT names it in ``adapter_config.json`` (``LORA`` when the config does not say).

    Raises:
        RecordError: ``peft_type`` is not a string.
    """
    kind = cfg.get("peft_type")
    if kind is None:
        return "LORA"
    if not isinstance(kind, str):
        raise RecordError(f"adapter config field 'peft_type' must be a string, got {kind!r}")
    return kind.upper()


def check_type(cfg: Mapping[str, JsonValue], adapter: str, tensors: Iterable[str] = ()) -> None:
    """Refuse to merge an adapter of a type ckpt does not merge, naming the type and one of its tensors.

    Raises:
        UnsupportedStateError: the type is not one of ``MERGED_TYPES``.
    """
    kind = peft_type(cfg)
    if kind in MERGED_TYPES:
        return
    example = next(iter(sorted(tensors)), None)
    held = f" (its tensors, e.g. {example!r}, are stored as they are)" if example else ""
    raise UnsupportedStateError(
        f"{adapter} is a {kind} adapter{held}; ckpt merges LoRA (with rsLoRA, DoRA, lora_bias), IA3, LoHa, "
        "LoKr and AdaLoRA adapters, not this type",
        hint=PEFT_HINT,
    )


# -- per-module facts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerFacts:
    """What one adapted module needs beyond the config, recorded at save time (see ``_layers``).

    Attributes:
        fan_in_fan_out: the base layer holds its weight transposed (``[in, out]``, transformers' ``Conv1D``), as
            PEFT decided for that layer; ``None``: not a linear layer, or not known.
        r: the module's rank, ``rank_pattern`` matched in the config's order; ``None``: not recorded.
        alpha: the module's alpha, ``alpha_pattern`` matched in the config's order; ``None``: not recorded.
    """

    fan_in_fan_out: bool | None = None
    r: int | None = None
    alpha: float | None = None


class _ModuleValues:
    """What LoRA and the other types' settings answer alike, per module: recorded facts first (``_layers``),
    then the config's patterns in order (PEFT takes the first that matches), then the defaults."""

    r: int
    alpha: float
    rank_pattern: tuple[tuple[PeftPattern, int], ...]
    alpha_pattern: tuple[tuple[PeftPattern, float], ...]
    modules_to_save: tuple[str, ...]
    layers: Mapping[str, LayerFacts]

    def rank(self, module: str) -> int:
        """The rank PEFT gives ``module``: recorded, else the first ``rank_pattern`` key that matches, else ``r``."""
        known = self.layers.get(module)
        if known is not None and known.r is not None:
            return known.r
        return next((v for p, v in self.rank_pattern if p.matches(module)), self.r)

    def alpha_of(self, module: str) -> float:
        """The alpha PEFT gives ``module``: recorded, else the first matching ``alpha_pattern`` key, else ``alpha``."""
        known = self.layers.get(module)
        if known is not None and known.alpha is not None:
            return known.alpha
        return next((v for p, v in self.alpha_pattern if p.matches(module)), self.alpha)

    def replaces_module(self, tensor: str) -> bool:
        """Whether the base tensor ``tensor`` belongs to a ``modules_to_save`` module (PEFT's ``_set_trainable``:
        the module's name ends with one of the config's names); such a module is replaced by the adapter's copy,
        untied from any tensor the base shares with it."""
        return replaces_module(tensor, self.modules_to_save)

    def transposed(self, module: str) -> bool | None:
        """Whether ``module``'s weight is held transposed (``fan_in_fan_out``), if recorded or read from the model."""
        known = self.layers.get(module)
        return None if known is None else known.fan_in_fan_out


# -- LoRA --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraSettings(_ModuleValues):
    """What a LoRA config says about merging, checked.

    Attributes:
        r: the default rank.
        alpha: the default ``lora_alpha``.
        use_rslora: scale by ``alpha / √r`` instead of ``alpha / r``.
        fan_in_fan_out: the base stores linear weights transposed (GPT-2's ``Conv1D``).
        use_dora: DoRA: every LoRA layer has a learnt magnitude that rescales its merged weight.
        lora_bias: ``lora_B`` has a bias, added to the base layer's bias.
        rank_pattern: module pattern → rank, in config order.
        alpha_pattern: module pattern → alpha, in config order.
        unmerged: the config options set that ckpt's merge does not compute (it refuses to merge them).
        modules_to_save: modules PEFT trains as a copy and puts in place of the base's (``replaces_module``).
        layers: each module's recorded facts (see ``_layers``), used before the patterns and the flag.
    """

    r: int
    alpha: float
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    use_dora: bool = False
    lora_bias: bool = False
    rank_pattern: tuple[tuple[PeftPattern, int], ...] = ()
    alpha_pattern: tuple[tuple[PeftPattern, float], ...] = ()
    unmerged: tuple[str, ...] = field(default=())
    modules_to_save: tuple[str, ...] = ()
    layers: Mapping[str, LayerFacts] = field(default_factory=dict)

    def scale(self, module: str, rank: int) -> float:
        """``alpha / rank``, or ``alpha / √rank`` with rsLoRA, with ``alpha`` from ``alpha_of``."""
        alpha = self.alpha_of(module)
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank


def lora_settings(cfg: Mapping[str, JsonValue]) -> LoraSettings:
    """Check a LoRA config (the JSON of ``adapter_config.json``) and return what merging needs.

    Raises:
        RecordError: a field has the wrong type or an impossible value (``r`` not a positive integer, an
            ``lora_alpha`` that is not a finite positive number, a pattern key outside the accepted subset …),
            or fields PEFT refuses together (``use_dora`` with ``lora_bias``); the message names the field.
    """
    r = _positive_int(cfg.get("r"), "r", "LoRA")
    alpha = _positive_number(cfg.get("lora_alpha"), "lora_alpha", "LoRA")
    flags = {name: _flag(cfg.get(name), name) for name in ("use_rslora", "fan_in_fan_out", "use_dora", "lora_bias")}
    rank_pattern = tuple(
        (compile_pattern(k, "rank_pattern"), _positive_int(v, f"rank_pattern[{k!r}]", "LoRA"))
        for k, v in _mapping(cfg.get("rank_pattern"), "rank_pattern").items()
    )
    alpha_pattern = tuple(
        (compile_pattern(k, "alpha_pattern"), _positive_number(v, f"alpha_pattern[{k!r}]", "LoRA"))
        for k, v in _mapping(cfg.get("alpha_pattern"), "alpha_pattern").items()
    )
    modules = cfg.get("modules_to_save")
    if modules is not None and not (isinstance(modules, list) and all(isinstance(m, str) for m in modules)):
        raise RecordError(f"adapter config field 'modules_to_save' must be a list of module names, got {modules!r}")
    if flags["use_dora"] and flags["lora_bias"]:
        raise RecordError(
            "a LoRA config sets both use_dora and lora_bias, which PEFT refuses",
            hint="PEFT trains DoRA without a LoRA bias: set one of them to false",
        )
    unmerged = [name for name in _UNMERGED_OPTIONS if cfg.get(name) not in (None, False, [], {}, "")]
    init = cfg.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_CHANGING_INITS):
        unmerged.append(f"init_lora_weights={init!r}")
    return LoraSettings(
        r=r,
        alpha=alpha,
        use_rslora=flags["use_rslora"],
        fan_in_fan_out=flags["fan_in_fan_out"],
        use_dora=flags["use_dora"],
        lora_bias=flags["lora_bias"],
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        unmerged=tuple(unmerged),
        modules_to_save=tuple(m for m in modules if isinstance(m, str)) if isinstance(modules, list) else (),
    )


def replaces_module(tensor: str, modules_to_save: Iterable[str]) -> bool:
    """Whether a base tensor belongs to a ``modules_to_save`` module: PEFT matches a module whose full name
    (``base_model.model.<name>``) ends with one of the names."""
    module = "base_model.model." + tensor.rpartition(".")[0]
    return any(module.endswith(name) for name in modules_to_save)


# -- IA³, LoHa, LoKr, AdaLoRA -----------------------------------------------------------------------


@dataclass(frozen=True)
class TypeSettings(_ModuleValues):
    """What an IA³, LoHa, LoKr or AdaLoRA config says about merging, checked.

    Attributes:
        peft_type: ``IA3``, ``LOHA`` or ``LOKR``.
        r: the default rank (LoHa, LoKr); AdaLoRA: ``init_r``, every module's rank before allocation.
        alpha: the default ``alpha`` (LoHa, LoKr); AdaLoRA: ``lora_alpha``.
        rank_pattern: module pattern → rank, in config order.
        alpha_pattern: module pattern → alpha, in config order.
        fan_in_fan_out: IA³, AdaLoRA: the base stores linear weights transposed (GPT-2's ``Conv1D``).
        feedforward: IA³: ``feedforward_modules`` as a list of name endings …
        feedforward_regex: … or as one regular expression that must match the whole module name.
        unmerged: the config options set that ckpt's merge does not compute (it refuses to merge them).
    """

    peft_type: str
    r: int = 0
    alpha: float = 0.0
    rank_pattern: tuple[tuple[PeftPattern, int], ...] = ()
    alpha_pattern: tuple[tuple[PeftPattern, float], ...] = ()
    fan_in_fan_out: bool = False
    feedforward: tuple[str, ...] = ()
    feedforward_regex: PeftPattern | None = None
    unmerged: tuple[str, ...] = field(default=())
    modules_to_save: tuple[str, ...] = ()
    layers: Mapping[str, LayerFacts] = field(default_factory=dict)

    def scale(self, module: str) -> float:
        """``alpha / r`` of ``module`` (LoHa and LoKr), both from ``alpha_of`` and ``rank``."""
        return self.alpha_of(module) / self.rank(module)

    def is_feedforward(self, module: str) -> bool:
        """IA³: whether PEFT treats ``module`` as feed-forward (``IA3Model._check_target_module_feedforward``)."""
        if self.feedforward_regex is not None:
            return self.feedforward_regex.regex.fullmatch(module) is not None
        return any(module.endswith(key) for key in self.feedforward)


def type_settings(cfg: Mapping[str, JsonValue]) -> TypeSettings:
    """Check an IA³, LoHa, LoKr or AdaLoRA config (the JSON of ``adapter_config.json``) and return what merging needs.

    Raises:
        RecordError: a field has the wrong type or an impossible value; the message names the field.
        UnsupportedStateError: the config is of another type (see ``check_type``).
    """
    kind = peft_type(cfg)
    if kind not in PEFT_TYPES:
        check_type(cfg, "the adapter")  # raises for the types ckpt does not merge
        raise RecordError(f"a {kind} config is read by lora_settings")
    unmerged = tuple(name for name in _TYPE_UNMERGED_OPTIONS if cfg.get(name) not in (None, False, [], {}, ""))
    modules = cfg.get("modules_to_save")
    if modules is not None and not (isinstance(modules, list) and all(isinstance(m, str) for m in modules)):
        raise RecordError(f"adapter config field 'modules_to_save' must be a list of module names, got {modules!r}")
    saved = tuple(str(m) for m in modules or ())
    if kind == "IA3":
        ff = cfg.get("feedforward_modules")
        regex = None
        names: tuple[str, ...] = ()
        if isinstance(ff, str):
            regex = compile_pattern(ff, "feedforward_modules")
        elif isinstance(ff, list) and all(isinstance(k, str) for k in ff):
            names = tuple(str(k) for k in ff)
        elif ff is not None:
            raise RecordError(
                f"IA3 config field 'feedforward_modules' must be a list of names or a pattern, got {ff!r}"
            )
        return TypeSettings(
            kind,
            fan_in_fan_out=_flag(cfg.get("fan_in_fan_out"), "fan_in_fan_out"),
            feedforward=names,
            feedforward_regex=regex,
            unmerged=unmerged,
            modules_to_save=saved,
        )
    if kind == "ADALORA":
        alpha = cfg.get("lora_alpha")
        number = _as_float(alpha)
        if number is None or not 0 <= number < math.inf:
            raise RecordError(f"an ADALORA config needs a finite, non-negative 'lora_alpha', got {alpha!r}")
        pattern = cfg.get("rank_pattern")
        if pattern is not None and not (
            isinstance(pattern, Mapping)
            and all(isinstance(v, list) and all(isinstance(b, bool) for b in v) for v in pattern.values())
        ):
            raise RecordError("ADALORA config field 'rank_pattern' must map module names to lists of true/false")
        return TypeSettings(
            kind,
            r=_positive_int(cfg.get("init_r"), "init_r", kind),
            alpha=number,
            fan_in_fan_out=_flag(cfg.get("fan_in_fan_out"), "fan_in_fan_out"),
            unmerged=unmerged,
            modules_to_save=saved,
        )
    return TypeSettings(
        kind,
        r=_positive_int(cfg.get("r"), "r", kind),
        alpha=_positive_number(cfg.get("alpha"), "alpha", kind),
        rank_pattern=tuple(
            (compile_pattern(k, "rank_pattern"), _positive_int(v, f"rank_pattern[{k!r}]", kind))
            for k, v in _mapping(cfg.get("rank_pattern"), "rank_pattern").items()
        ),
        alpha_pattern=tuple(
            (compile_pattern(k, "alpha_pattern"), _positive_number(v, f"alpha_pattern[{k!r}]", kind))
            for k, v in _mapping(cfg.get("alpha_pattern"), "alpha_pattern").items()
        ),
        unmerged=unmerged,
        modules_to_save=saved,
    )


# -- fields ------------------------------------------------------------------------------------------


def _positive_int(value: Any, name: str, kind: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise RecordError(
            f"a {kind} config needs a positive integer {name!r}, got {value!r}",
            hint="r is the LoRA rank (8, 16 …): the first dimension of lora_A; a rank-0 LoRA changes nothing"
            if kind == "LoRA"
            else None,
        )
    return value


def _as_float(value: Any) -> float | None:
    """A JSON number as a float (``inf`` for an integer too big for one); ``None`` for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _positive_number(value: Any, name: str, kind: str) -> float:
    number = _as_float(value)
    if number is None:
        raise RecordError(f"a {kind} config needs a positive {name!r}, got {value!r}")
    if not math.isfinite(number) or number <= 0:
        raise RecordError(f"a {kind} config needs a positive, finite {name!r}, got {value!r}")
    return number


def _flag(value: Any, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RecordError(f"adapter config field {name!r} must be true or false, got {value!r}")
    return value


def _mapping(value: Any, name: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RecordError(f"adapter config field {name!r} must be an object (module pattern → number), got {value!r}")
    return value


def merge_settings(cfg: Mapping[str, JsonValue], what: str) -> LoraSettings | TypeSettings:
    """The checked config of an adapter ckpt merges.

    Raises:
        RecordError: a malformed config (the message starts with ``what``).
        UnsupportedStateError: a type ckpt does not merge.
    """
    try:
        if peft_type(cfg) == "LORA":
            return lora_settings(cfg)
        return type_settings(cfg)
    except RecordError as e:
        raise RecordError(f"{what}: {e.message}", hint=e.hint or "", cli_hint=e.cli_hint or "") from e
