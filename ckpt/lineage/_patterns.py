"""``alpha_pattern``/``rank_pattern`` keys of PEFT configs, compiled and matched as PEFT matches them.

PEFT's ``get_pattern_key`` matches a key as ``re.match(rf"(.*\\.)?({key})$", module)``: the key, a regular
expression, must match the whole module name or a tail of it that starts after a ``.``; the first key that
matches wins. Keys come from files, so they must stay inside a subset of regular expressions that cannot
backtrack catastrophically; see ``compile_pattern``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ckpt.errors import RecordError

__all__ = ["MAX_MODULE_NAME", "MAX_PATTERN_LENGTH", "PeftPattern", "compile_pattern"]

#: Longest ``alpha_pattern``/``rank_pattern`` key accepted, in characters.
MAX_PATTERN_LENGTH = 256
#: Longest module name matched against patterns, in characters (real ones are far shorter).
MAX_MODULE_NAME = 1024
_MAX_UNBOUNDED = 2
_MAX_ALTERNATIVES = 8
_MAX_BOUNDED_REPEAT = 16
_REPEAT = re.compile(r"\{(\d{1,3})(,(\d{0,3}))?\}")
_CLASS_ESCAPES = frozenset("dDwWsS")


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
