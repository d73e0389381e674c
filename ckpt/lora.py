"""LoRA as PEFT defines it: the adapter config, what each adapter tensor is, and the merge math.

``ckpt.adapters`` stores and loads adapter snapshots; this module says what their tensors mean, without
reading any byte (everything here works on names, shapes and the config, until ``merge_into`` computes):

- **LoRA pairs**: ``<module>.lora_A.weight`` / ``<module>.lora_B.weight`` (linear and conv layers) and
  ``<module>.lora_embedding_A`` / ``<module>.lora_embedding_B`` (embeddings), in the form PEFT writes to
  ``adapter_model.safetensors`` (``get_peft_model_state_dict``). Merged as ``W + scale · B @ A`` (for a conv
  layer, ``B`` and ``A`` flattened to matrices and the product reshaped to the kernel's shape).
- **their companions**: a DoRA magnitude ``<module>.lora_magnitude_vector`` (``use_dora``: the merged weight is
  ``m / ‖W + ΔW‖ · (W + ΔW)``, the norm taken per output row of the weight as the layer computes it) and a LoRA
  bias ``<module>.lora_B.bias`` (``lora_bias``: added to the base's bias, scaled).
- **whole tensors**: every other tensor whose name, once PEFT's ``base_model.model.`` prefix and a
  ``.base_layer`` segment are taken out, is a tensor of the base: a ``modules_to_save`` module (PEFT 0.21 writes
  a classifier head as ``base_model.model.score.weight``, with no ``modules_to_save`` marker), or an embedding
  saved with ``save_embedding_layers`` (after ``resize_token_embeddings`` it has more rows than the base's). PEFT
  loads them into the model in place of the base's tensor before it merges, and so does ``merge_into``.
- **other PEFT tensors** (trainable tokens, LoRA on grouped convolutions …): stored like the rest, but merging
  them is refused (``UnsupportedStateError``, naming the tensor), never skipped.

No tensor is ever dropped by its name: a tensor that is none of these is refused, named.

``alpha_pattern`` and ``rank_pattern`` keys are matched the way PEFT's ``get_pattern_key`` matches them,
``re.match(rf"(.*\\.)?({key})$", module)``: the key, a regular expression, must match the whole module name or
a tail of it that starts after a ``.``; the first key that matches wins. Keys come from files, so they must stay
inside a subset of regular expressions that cannot backtrack catastrophically; see ``compile_pattern``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import JsonValue

from ckpt.errors import Hint, RecordError, StateMismatchError, UnsupportedStateError

__all__ = [
    "MAX_MODULE_NAME",
    "MAX_PATTERN_LENGTH",
    "PEFT_HINT",
    "PEFT_PREFIX",
    "LoraSettings",
    "Pair",
    "PeftPattern",
    "Plan",
    "apply_whole",
    "as_torch",
    "assign",
    "base_name",
    "check_mergeable",
    "compile_pattern",
    "is_lora",
    "lora_settings",
    "merge_into",
    "plan",
]

#: The prefix PEFT gives every tensor of a ``PeftModel`` (``base_model.model.<name in the base>``).
PEFT_PREFIX = "base_model.model."
#: What to do with an adapter ckpt stores but does not merge.
PEFT_HINT = Hint(
    "store and export it as it is (export_peft_folder), then merge it with peft: "
    "PeftModel.from_pretrained(base_model, folder).merge_and_unload()",
    cli="write it as a PEFT folder (`ckpt restore REV --to DIR`), then merge it with peft: "
    "PeftModel.from_pretrained(base_model, folder).merge_and_unload()",
)
#: Longest ``alpha_pattern``/``rank_pattern`` key accepted, in characters.
MAX_PATTERN_LENGTH = 256
#: Longest module name matched against patterns, in characters (real ones are far shorter).
MAX_MODULE_NAME = 1024

_LINEAR_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")
_EMBEDDING_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_embedding_[AB])(?:\.(?P<adapter>[^.]+))?$")
#: DoRA's learnt magnitude of a LoRA layer (PEFT writes it without ``.weight``; older versions with it).
_MAGNITUDE_KEY = re.compile(r"^(?P<module>.+)\.lora_magnitude_vector(?:\.(?P<adapter>(?!weight$)[^.]+))?(?:\.weight)?$")
#: The bias of ``lora_B`` (``lora_bias=True``).
_BIAS_KEY = re.compile(r"^(?P<module>.+)\.lora_B(?:\.(?P<adapter>[^.]+))?\.bias$")
#: Name segments of PEFT's own tensors (not the base's): such a tensor is stored, but not merged.
_PEFT_SEGMENTS = frozenset(
    {"modules_to_save", "original_module", "token_adapter", "trainable_tokens_delta", "trainable_tokens_original"}
)
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
_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
_MAX_UNBOUNDED = 2
_MAX_ALTERNATIVES = 8
_MAX_BOUNDED_REPEAT = 16
_REPEAT = re.compile(r"\{(\d{1,3})(,(\d{0,3}))?\}")
_CLASS_ESCAPES = frozenset("dDwWsS")


# -- patterns ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeftPattern:
    """One ``alpha_pattern``/``rank_pattern`` key, compiled.

    Attributes:
        key: the key as the config holds it.
        regex: the compiled key.
    """

    key: str
    regex: re.Pattern[str]

    def matches(self, module: str) -> bool:
        """Whether PEFT's ``re.match(rf"(.*\\.)?({key})$", module)`` matches: the key matches all of
        ``module`` or a tail of it that starts right after a ``.`` (``.*`` never crosses a newline).

        Raises:
            RecordError: the module name is longer than ``MAX_MODULE_NAME``.
        """
        if len(module) > MAX_MODULE_NAME:
            raise RecordError(f"module name of {len(module)} characters is too long to match against patterns")
        end = module.find("\n")
        head = module if end < 0 else module[:end]
        starts = [0, *(i + 1 for i, c in enumerate(head) if c == ".")]
        return any(self.regex.fullmatch(module, start) is not None for start in starts)


def compile_pattern(key: str, where: str) -> PeftPattern:
    """Compile an ``alpha_pattern``/``rank_pattern`` key, if it is in the subset that cannot blow up.

    PEFT compiles keys as Python regular expressions. Backtracking makes some of those take exponential (or
    high polynomial) time, and the keys come from files. ckpt accepts the subset every real config uses, in
    which matching a module name takes at most polynomial time of low degree:

    - literal characters, ``.``, character classes ``[...]`` and escapes of punctuation or ``\\d \\w \\s``
      (and their capitals);
    - groups ``(...)`` and ``(?:...)``, at most 8 ``|`` in all;
    - ``?``, ``*``, ``+``, ``{m}``, ``{m,n}`` on a single character or class only, never on a group nor
      after another quantifier (so no nested, lazy or possessive quantifiers); at most 2 unbounded ones
      (``*``, ``+``, ``{m,}`` or ``{m,n}`` with n > 16);
    - ``^`` only first and ``$`` only last; at most 256 characters.

    Anything else (backreferences, lookarounds, flags, ``\\b``, nested quantifiers such as ``([\\w.]+)+``) is
    refused.

    Args:
        key: the key.
        where: the config field, for messages (``alpha_pattern``).

    Returns:
        The compiled key.

    Raises:
        RecordError: the key is not a string, is outside the subset, or is not a valid regular expression.

    Example:
        >>> compile_pattern("layers.1.self_attn.q_proj", "alpha_pattern").matches("model.layers.1.self_attn.q_proj")
        True
        >>> compile_pattern(r"([\\w.]+)+#", "alpha_pattern")
        Traceback (most recent call last):
        ...
        ckpt.errors.RecordError: adapter config alpha_pattern key '([\\\\w.]+)+#': a quantifier ...
    """
    if not isinstance(key, str):
        raise RecordError(f"adapter config {where} keys must be strings, got {key!r}")
    problem = _unsafe(key)
    if problem is None:
        try:
            return PeftPattern(key, re.compile(key))
        except (re.error, RecursionError, OverflowError) as e:
            problem = f"not a valid regular expression ({e})"
    raise RecordError(
        f"adapter config {where} key {key!r}: {problem}",
        hint=f"{where} keys are module names or simple regular expressions, e.g. 'layers.1.self_attn.q_proj' or "
        r"'layers\.[0-3]\.mlp\..*'; see the adapters guide for the accepted subset",
    )


def _unsafe(key: str) -> str | None:
    """Why ``key`` is outside the accepted subset, or ``None``."""
    if not key:
        return "an empty key matches nothing PEFT would match"
    if len(key) > MAX_PATTERN_LENGTH:
        return f"longer than {MAX_PATTERN_LENGTH} characters"
    n = len(key)
    i = depth = unbounded = alternatives = 0
    prev: str | None = None  # "atom" when a quantifier may follow
    while i < n:
        c = key[i]
        if c == "\\":
            if i + 1 >= n:
                return "it ends with a backslash"
            if not _plain_escape(key[i + 1]):
                return f"the escape \\{key[i + 1]} is not accepted (backreferences, anchors, \\x …)"
            i, prev = i + 2, "atom"
        elif c == "[":
            j = i + 1
            if j < n and key[j] == "^":
                j += 1
            if j < n and key[j] == "]":
                j += 1
            while j < n and key[j] != "]":
                if key[j] == "\\":
                    if j + 1 >= n or not _plain_escape(key[j + 1]):
                        return "a character class holds an escape that is not accepted"
                    j += 2
                elif key[j] == "[":
                    return "a character class holds '['"
                else:
                    j += 1
            if j >= n:
                return "a character class is not closed"
            i, prev = j + 1, "atom"
        elif c == "(":
            if key.startswith("(?:", i):
                i += 3
            elif key.startswith("(?", i):
                return "only (...) and (?:...) groups are accepted (no lookarounds, flags or named groups)"
            else:
                i += 1
            depth, prev = depth + 1, None
        elif c == ")":
            depth -= 1
            if depth < 0:
                return "a ')' closes no group"
            i, prev = i + 1, "group"
        elif c == "|":
            alternatives += 1
            i, prev = i + 1, None
        elif c == "{" and not _REPEAT.match(key, i):
            return "a '{' that is not a repeat {m}, {m,} or {m,n} with up to 3 digits (write \\{ for the character)"
        elif c in "*+?{":
            if prev != "atom":
                return (
                    "a quantifier on a group, on nothing or after another quantifier (nested, lazy or possessive "
                    "quantifiers can take exponential time) is not accepted"
                )
            if c == "{":
                m = _REPEAT.match(key, i)
                assert m is not None
                high = m.group(3)
                if m.group(2) and (not high or int(high) > _MAX_BOUNDED_REPEAT):
                    unbounded += 1
                i = m.end()
            else:
                unbounded += c != "?"
                i += 1
            prev = "quantified"
        elif c == "^":
            if i != 0:
                return "'^' is accepted only at the start"
            i, prev = i + 1, None
        elif c == "$":
            if i != n - 1:
                return "'$' is accepted only at the end"
            i, prev = i + 1, None
        else:
            i, prev = i + 1, "atom"
    if depth:
        return "a '(' is not closed"
    if unbounded > _MAX_UNBOUNDED:
        return f"more than {_MAX_UNBOUNDED} unbounded repetitions (*, +, {{m,}})"
    if alternatives > _MAX_ALTERNATIVES:
        return f"more than {_MAX_ALTERNATIVES} alternatives ('|')"
    return None


def _plain_escape(c: str) -> bool:
    return c in _CLASS_ESCAPES or (not c.isalnum() and c != "_" and c.isascii() and c.isprintable())


# -- config ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraSettings:
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

    def rank(self, module: str) -> int:
        """The rank PEFT gives ``module``: the first ``rank_pattern`` key that matches, else ``r``."""
        return next((v for p, v in self.rank_pattern if p.matches(module)), self.r)

    def scale(self, module: str, rank: int) -> float:
        """``alpha / rank``, or ``alpha / √rank`` with rsLoRA, with ``alpha`` from ``alpha_pattern`` or the default."""
        alpha = next((v for p, v in self.alpha_pattern if p.matches(module)), self.alpha)
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank


def is_lora(cfg: Mapping[str, JsonValue]) -> bool:
    """Whether a PEFT config is a LoRA config (``peft_type`` ``LORA``, the default)."""
    return str(cfg.get("peft_type", "LORA")).upper() == "LORA"


def lora_settings(cfg: Mapping[str, JsonValue]) -> LoraSettings:
    """Check a LoRA config (the JSON of ``adapter_config.json``) and return what merging needs.

    Raises:
        RecordError: a field has the wrong type or an impossible value (``r`` not a positive integer, an
            ``lora_alpha`` that is not a finite positive number, a pattern key outside the accepted subset …),
            or fields PEFT refuses together (``use_dora`` with ``lora_bias``); the message names the field.
    """
    r = _positive_int(cfg.get("r"), "r")
    alpha = _positive_number(cfg.get("lora_alpha"), "lora_alpha")
    flags = {name: _flag(cfg.get(name), name) for name in ("use_rslora", "fan_in_fan_out", "use_dora", "lora_bias")}
    rank_pattern = tuple(
        (compile_pattern(k, "rank_pattern"), _positive_int(v, f"rank_pattern[{k!r}]"))
        for k, v in _mapping(cfg.get("rank_pattern"), "rank_pattern").items()
    )
    alpha_pattern = tuple(
        (compile_pattern(k, "alpha_pattern"), _positive_number(v, f"alpha_pattern[{k!r}]"))
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
    )


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise RecordError(
            f"a LoRA config needs a positive integer {name!r}, got {value!r}",
            hint="r is the LoRA rank (8, 16 …): the first dimension of lora_A; a rank-0 LoRA changes nothing",
        )
    return value


def _positive_number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(f"a LoRA config needs a positive {name!r}, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or number <= 0:
        raise RecordError(f"a LoRA config needs a positive, finite {name!r}, got {value!r}")
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


# -- what each tensor is -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One adapted module: its LoRA A and B tensors, their companions, and the base weight they change.

    Attributes:
        module: the module's name in the base model, e.g. ``model.layers.0.self_attn.q_proj``.
        a: the adapter's ``lora_A`` tensor name.
        b: the adapter's ``lora_B`` tensor name.
        embedding: an embedding (``lora_embedding_A/B``: the delta is transposed).
        conv: a convolution (A and B are kernels: the delta is the product of their flattened forms).
        magnitude: DoRA's magnitude tensor (``lora_magnitude_vector``), if the adapter uses DoRA.
        bias: ``lora_B``'s bias (``lora_B.bias``), if the adapter sets ``lora_bias``.
    """

    module: str
    a: str
    b: str
    embedding: bool
    conv: bool = False
    magnitude: str | None = None
    bias: str | None = None

    @property
    def target(self) -> str:
        """The base tensor the delta is added to."""
        return f"{self.module}.weight"

    @property
    def bias_target(self) -> str:
        """The base layer's bias, which a ``lora_bias`` changes."""
        return f"{self.module}.bias"


@dataclass(frozen=True)
class Plan:
    """What an adapter's tensors do to its base.

    Attributes:
        pairs: LoRA pairs merged as ``W + scale · B @ A`` (DoRA: rescaled), in the adapter's order.
        whole: base tensor name → adapter tensor that replaces it (``modules_to_save``, saved embeddings).
        unmerged: adapter tensors ckpt stores but does not merge (trainable tokens, grouped conv LoRA …).
    """

    pairs: tuple[Pair, ...]
    whole: dict[str, str]
    unmerged: tuple[str, ...]

    @property
    def targets(self) -> list[str]:
        """Every base tensor the merge changes."""
        return [
            *(p.target for p in self.pairs),
            *(p.bias_target for p in self.pairs if p.bias is not None),
            *self.whole,
        ]


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


def _peft_owned(name: str) -> bool:
    return any(p.startswith("lora_") or p in _PEFT_SEGMENTS for p in name.split("."))


def plan(
    shapes: Mapping[str, tuple[int, ...]],
    settings: LoraSettings,
    entries: Mapping[str, tuple[str, tuple[int, ...]]],
    ties: Sequence[Sequence[str]] = (),
    *,
    adapter: str,
    base: str,
) -> Plan:
    """What each adapter tensor does, once everything that names and shapes can tell has been checked.

    Args:
        shapes: adapter tensor name (PEFT's file form) → shape.
        settings: the checked LoRA config.
        entries: the base's model tensors, name → (dtype, shape).
        ties: groups of base tensor names that are one tensor (tied weights).
        adapter: the adapter, for messages.
        base: the base, for messages.

    Raises:
        StateMismatchError: a ``lora_A`` without its ``lora_B`` (or the reverse); A and B of different ranks,
            a rank 0, or a rank other than the config's (``r``/``rank_pattern``); a target the base lacks, or
            whose shape is not that of the delta; a whole tensor the base does not have; a DoRA magnitude or a
            LoRA bias that the config does not announce, that is missing where it does, that has no LoRA pair
            or the wrong shape, or a LoRA bias on a base layer without a bias.
        UnsupportedStateError: a LoRA pair on a base tensor that is not floating point.
    """
    halves: dict[tuple[str, bool], dict[str, str]] = {}
    companions: dict[str, dict[str, str]] = {"magnitude": {}, "bias": {}}
    unmerged: list[str] = []
    whole: dict[str, str] = {}
    for key in shapes:
        m = _LINEAR_KEY.match(key) or _EMBEDDING_KEY.match(key)
        if m is not None and m["adapter"] is None:
            part = str(m["part"])
            halves.setdefault((str(m["module"]), "embedding" in part), {})[part[-1]] = key
            continue
        extra = next(
            ((kind, c) for kind, rx in (("magnitude", _MAGNITUDE_KEY), ("bias", _BIAS_KEY)) if (c := rx.match(key))),
            None,
        )
        if extra is not None and extra[1]["adapter"] is None:
            companions[extra[0]][str(extra[1]["module"])] = key
            continue
        target = base_name(key)
        if m is None and target in entries and not _peft_owned(target):
            if target in whole:
                raise StateMismatchError(f"{adapter}: {whole[target]!r} and {key!r} both replace {target!r}")
            whole[target] = key
        elif _peft_owned(key):
            unmerged.append(key)
        else:
            raise StateMismatchError(
                f"{adapter} holds {key!r}, a whole tensor for {target!r}, which base {base} does not have",
                hint="is this the adapter's base? (PEFT saves modules_to_save and resized embeddings whole)",
            )
    effective = dict(entries)
    tied = {name: group for group in ties for name in group}
    for target, key in whole.items():
        for name in tied.get(target, (target,)):
            effective[name] = (entries[name][0], shapes[key])

    pairs: list[Pair] = []
    missing: list[str] = []
    for (module, embedding), ab in halves.items():
        if set(ab) != {"A", "B"}:
            have = next(iter(ab.values()))
            raise StateMismatchError(f"{adapter} has {have!r} but not its {'B' if 'A' in ab else 'A'} half")
        a, b = shapes[ab["A"]], shapes[ab["B"]]
        name = module.removeprefix(PEFT_PREFIX)
        magnitude = companions["magnitude"].pop(module, None)
        bias = companions["bias"].pop(module, None)
        conv = not embedding and len(a) == len(b) and len(a) > 2
        if not conv and (len(a) != 2 or len(b) != 2):
            raise StateMismatchError(f"{adapter}: LoRA of {name!r} has A {list(a)} and B {list(b)}, not matrices")
        if conv and b[1] != a[0] and b[1] and a[0] % b[1] == 0:
            unmerged.extend(k for k in (ab["A"], ab["B"], magnitude, bias) if k is not None)
            continue  # a grouped convolution: PEFT itself does not merge it
        if a[0] != b[1] or (conv and any(d != 1 for d in b[2:])):
            raise StateMismatchError(f"{adapter}: LoRA of {name!r} has A {list(a)} and B {list(b)}; their ranks differ")
        if a[0] == 0:
            raise StateMismatchError(f"{adapter}: LoRA of {name!r} has rank 0 (A is {list(a)})")
        want = settings.rank(name)
        if a[0] != want:
            raise StateMismatchError(
                f"{adapter}: LoRA of {name!r} has rank {a[0]}, but its config gives that module r={want}",
                hint="the adapter config does not describe these tensors (check r and rank_pattern)",
            )
        pair = Pair(module=name, a=ab["A"], b=ab["B"], embedding=embedding, conv=conv, magnitude=magnitude, bias=bias)
        if pair.target not in effective:
            missing.append(pair.target)
            continue
        dtype, shape = effective[pair.target]
        if dtype not in _FLOAT_DTYPES:
            raise UnsupportedStateError(
                f"cannot merge into {pair.target!r} of base {base}: its dtype {dtype} is not a float type"
            )
        if conv:
            delta: tuple[int, ...] = (b[0], *a[1:])
        else:
            delta = (a[1], b[0]) if embedding or settings.fan_in_fan_out else (b[0], a[1])
        if tuple(shape) != delta:
            raise StateMismatchError(
                f"{adapter}: the LoRA delta of {name!r} is {list(delta)}, but the base weight {pair.target!r} of "
                f"{base} is {list(shape)}",
                hint="is this the adapter's base? (or check fan_in_fan_out in the adapter config)",
            )
        _check_companions(pair, shapes, settings, effective, tuple(shape), adapter=adapter, base=base)
        pairs.append(pair)
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise StateMismatchError(
            f"{adapter} targets {shown}, which base {base} does not have",
            hint="is this the adapter's base? LoRA names map 'base_model.model.<name>.lora_A…' to '<name>.weight'; "
            "a model saved with tied embeddings may store only the input embedding",
        )
    for kind, left in companions.items():
        if left:
            key = next(iter(left.values()))
            what = "DoRA magnitude" if kind == "magnitude" else "LoRA bias"
            raise StateMismatchError(f"{adapter} holds the {what} {key!r}, but no LoRA pair of that module")
    return Plan(pairs=tuple(pairs), whole=whole, unmerged=tuple(unmerged))


def _check_companions(
    pair: Pair,
    shapes: Mapping[str, tuple[int, ...]],
    settings: LoraSettings,
    effective: Mapping[str, tuple[str, tuple[int, ...]]],
    weight: tuple[int, ...],
    *,
    adapter: str,
    base: str,
) -> None:
    """A pair's DoRA magnitude and LoRA bias: there exactly when the config says so, with the layer's shapes."""
    name = pair.module
    if settings.use_dora != (pair.magnitude is not None):
        raise StateMismatchError(
            f"{adapter}: its config {'sets' if settings.use_dora else 'does not set'} use_dora, but the LoRA of "
            f"{name!r} {'has no' if settings.use_dora else 'has a'} DoRA magnitude (lora_magnitude_vector)",
            hint="the adapter config does not describe these tensors",
        )
    if settings.lora_bias != (pair.bias is not None) and not (pair.embedding and settings.lora_bias):
        raise StateMismatchError(
            f"{adapter}: its config {'sets' if settings.lora_bias else 'does not set'} lora_bias, but the LoRA of "
            f"{name!r} {'has no' if settings.lora_bias else 'has a'} bias (lora_B.bias)",
            hint="the adapter config does not describe these tensors",
        )
    # the weight's output rows, as the layer holds them: rows of W, columns for fan_in_fan_out and embeddings
    rows = weight[1] if pair.embedding or (settings.fan_in_fan_out and not pair.conv) else weight[0]
    if pair.magnitude is not None:
        want: tuple[int, ...] = (1, rows, *([1] * (len(weight) - 2))) if pair.conv else (rows,)
        if tuple(shapes[pair.magnitude]) != want:
            raise StateMismatchError(
                f"{adapter}: the DoRA magnitude {pair.magnitude!r} is {list(shapes[pair.magnitude])}, but the "
                f"layer {name!r} of base {base} needs {list(want)}",
                hint="is this the adapter's base?",
            )
    if pair.bias is not None:
        if tuple(shapes[pair.bias]) != (rows,):
            raise StateMismatchError(
                f"{adapter}: the LoRA bias {pair.bias!r} is {list(shapes[pair.bias])}, but the layer {name!r} of "
                f"base {base} has {rows} outputs"
            )
        have = effective.get(pair.bias_target)
        if have is None or tuple(have[1]) != (rows,):
            raise StateMismatchError(
                f"{adapter} sets lora_bias on {name!r}, but {pair.bias_target!r} of base {base} is "
                f"{'missing' if have is None else list(have[1])}: PEFT merges the LoRA bias into the layer's bias",
                hint="is this the adapter's base?",
            )
        if have[0] not in _FLOAT_DTYPES:
            raise UnsupportedStateError(f"cannot merge into {pair.bias_target!r} of base {base}: dtype {have[0]}")


def check_mergeable(found: Plan, settings: LoraSettings, adapter: str) -> None:
    """Refuse what ckpt stores but does not merge.

    Raises:
        UnsupportedStateError: config options or tensors beyond plain LoRA (names them).
    """
    if settings.unmerged:
        raise UnsupportedStateError(
            f"{adapter} is a LoRA adapter that sets {', '.join(settings.unmerged)}; ckpt merges LoRA with rsLoRA, "
            "DoRA, lora_bias, rank and alpha patterns, not these",
            hint=PEFT_HINT,
        )
    if found.unmerged:
        shown = ", ".join(repr(k) for k in found.unmerged[:3])
        more = f" and {len(found.unmerged) - 3} more" if len(found.unmerged) > 3 else ""
        raise UnsupportedStateError(
            f"{adapter} is a LoRA adapter holding {shown}{more}, which ckpt does not merge (it merges LoRA on "
            "linear, embedding and ungrouped conv layers, and whole modules)",
            hint=PEFT_HINT,
        )


# -- merging -----------------------------------------------------------------------------------------


def merge_into(
    weights: MutableMapping[str, Any],
    adapter: Mapping[str, Any],
    found: Plan,
    settings: LoraSettings,
    *,
    in_place: Iterable[int] = (),
) -> None:
    """Apply an adapter to a base's weights as PEFT's ``set_peft_model_state_dict`` + ``merge_and_unload()`` do.

    Whole tensors first (PEFT loads them into the model, cast to the model's dtype), then every LoRA delta
    ``ΔW = scale · B @ A`` (transposed for embeddings and ``fan_in_fan_out``; for a conv layer
    ``B.view(out, r) @ A.view(r, -1)`` reshaped to the kernel's shape), computed in float32 (float64 for float64
    weights) and added once, cast back to the weight's dtype. With DoRA the sum is rescaled as PEFT's
    ``DoraLinearVariant.merge`` does: ``m / ‖W + ΔW‖ · (W + ΔW)``, the norm taken per output row of the layer
    (over the input dimension; for ``fan_in_fan_out`` weights and embeddings over their first dimension, for
    convolutions over everything but the output channel), ``m`` the stored magnitude. A ``lora_bias`` adds
    ``scale · lora_B.bias`` to the layer's bias. Weights that are one tensor (tied, as ``Store.load`` gives them)
    change together, as PEFT's in-place merge changes a tied parameter: a LoRA on ``lm_head`` of a model with
    tied embeddings changes the input embedding too.

    Args:
        weights: base tensor name → tensor (torch or numpy); changed in place.
        adapter: adapter tensor name → torch tensor.
        found: ``plan(...)`` of the adapter.
        settings: the checked LoRA config.
        in_place: ``id()`` of tensors to overwrite in place (``into=`` buffers) when the shape allows.

    Raises:
        StateMismatchError: two whole tensors of the adapter put different values into one tied tensor.
    """
    import torch

    writable = set(in_place)
    apply_whole(weights, adapter, found.whole, writable)
    for pair in found.pairs:
        weight = weights[pair.target]
        w = as_torch(weight)
        compute = torch.promote_types(w.dtype, torch.float32)
        a, b = adapter[pair.a].to(compute), adapter[pair.b].to(compute)
        rank = int(a.shape[0])
        scale = settings.scale(pair.module, rank)
        if pair.conv:
            delta = (b.reshape(b.shape[0], rank) @ a.reshape(rank, -1)).reshape(w.shape)
        else:
            delta = b @ a
            if pair.embedding or settings.fan_in_fan_out:
                delta = delta.T
        merged = w.to(compute) + delta * scale
        if pair.magnitude is not None:
            merged = _dora(merged, adapter[pair.magnitude].to(compute), pair, settings)
        assign(weights, weight, merged.to(w.dtype), writable)
        if pair.bias is not None:
            old = weights[pair.bias_target]
            bias = as_torch(old)
            new = bias.to(compute) + adapter[pair.bias].to(compute) * scale
            assign(weights, old, new.to(bias.dtype), writable)


def _dora(merged: Any, magnitude: Any, pair: Pair, settings: LoraSettings) -> Any:
    """``m / ‖W + ΔW‖ · (W + ΔW)`` with the norm of each output row of the layer (PEFT's ``get_weight_norm``)."""
    if pair.conv:
        norm = merged.flatten(1).norm(dim=1)
        return (magnitude.reshape(-1) / norm).reshape(-1, *([1] * (merged.dim() - 1))) * merged
    if pair.embedding or settings.fan_in_fan_out:  # the layer's rows are this weight's columns
        return merged * (magnitude / merged.norm(dim=0)).reshape(1, -1)
    return merged * (magnitude / merged.norm(dim=1)).reshape(-1, 1)


def apply_whole(
    weights: MutableMapping[str, Any], adapter: Mapping[str, Any], whole: Mapping[str, str], writable: set[int]
) -> None:
    """Put an adapter's whole tensors in place of the base's, cast to the base tensor's dtype (as PEFT loads them).

    Raises:
        StateMismatchError: two whole tensors put different values into one tied tensor.
    """
    import torch

    set_by: dict[int, str] = {}
    for target, key in whole.items():
        old = weights[target]
        value = adapter[key]
        if id(old) in set_by:
            if not torch.equal(as_torch(old).to(value.dtype), value):
                raise StateMismatchError(
                    f"the adapter's {set_by[id(old)]!r} and {key!r} replace one tied tensor with different values"
                )
            continue
        new = assign(weights, old, value.to(as_torch(old).dtype), writable)
        set_by[id(new)] = key


def assign(weights: MutableMapping[str, Any], old: Any, new: Any, writable: set[int]) -> Any:
    """Put ``new`` (torch) wherever ``old`` is (every name of a tied tensor), in place when ``old`` may be written.

    Returns:
        The tensor now in ``old``'s places (``old`` itself when written in place).
    """
    numpy = type(old).__module__ == "numpy"
    if id(old) in writable and tuple(old.shape) == tuple(new.shape):
        if numpy:
            old[...] = new.numpy()
        else:
            old.copy_(new)
        return old
    value = new.numpy() if numpy else new
    for name in [k for k, v in weights.items() if v is old]:
        weights[name] = value
    return value


def as_torch(value: Any) -> Any:
    """A torch view of a torch tensor or a numpy array (no copy)."""
    import torch

    return torch.from_numpy(value) if type(value).__module__ == "numpy" else value
