"""Options and helpers shared by the commands."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from ckpt.store import Store

__all__ = ["default_rev", "json_option", "key_password", "parse_duration", "parse_options", "parse_size_option"]

F = TypeVar("F", bound=Callable[..., object])


def json_option(f: F) -> F:
    """``--json``: print JSON instead of text (schemas in docs/guides/command-line.md)."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON (schema in the command-line guide).")(f)


def parse_duration(text: str, *, flag: str) -> timedelta:
    """``0``, ``90s``, ``30m``, ``1h``, ``7d`` (or ``1.5h``) as a ``timedelta``.

    Raises:
        click.BadParameter: not a duration (a usage error, exit code 2).

    Example:
        >>> parse_duration("1h", flag="--grace")
        datetime.timedelta(seconds=3600)
    """
    from ckpt.errors import RecordError
    from ckpt.settings import parse_duration as duration

    try:
        return duration(text)
    except RecordError:
        pass
    raise click.BadParameter(f"not a duration: {text!r} (examples: 0, 90s, 30m, 1h, 7d)", param_hint=flag)


def parse_size_option(text: str | None, *, flag: str, zero: bool = False) -> int | None:
    """A byte size such as ``64MiB`` or ``5GB``, or ``None``; ``zero``: 0 is allowed (it means "none").

    Raises:
        click.BadParameter: not a size, or not positive (a usage error, exit code 2).
    """
    if text is None:
        return None
    from ckpt.settings import parse_size

    try:
        size = parse_size(text)
    except ValueError as e:  # a RecordError: its message, with its examples, on the one error line
        message, examples = getattr(e, "message", str(e)), getattr(e, "cli_hint", None)
        raise click.BadParameter(f"{message} ({examples})" if examples else message, param_hint=flag) from None
    if size < 0 or (size == 0 and not zero):
        raise click.BadParameter(f"must be positive{' or 0' if zero else ''}, got {text!r}", param_hint=flag)
    return size


def _option_value(text: str) -> Any:
    if text in ("true", "false"):
        return text == "true"
    if text.startswith(("{", "[")):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text


def parse_options(pairs: Sequence[str], *, flag: str) -> dict[str, Any]:
    """Storage options from repeated ``KEY=VALUE`` flags.

    ``true``/``false`` become booleans and a JSON object or list is parsed; anything else stays a string.

    Raises:
        click.BadParameter: a pair has no ``=``.

    Example:
        >>> parse_options(["endpoint_url=http://127.0.0.1:9000", "anon=false"], flag="--store-option")
        {'endpoint_url': 'http://127.0.0.1:9000', 'anon': False}
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint=flag)
        out[key.strip()] = _option_value(value)
    return out


def key_password(path: str) -> str | None:
    """The passphrase of a private key file: asked for (without echo) only when the key is encrypted."""
    from ckpt.store import key_is_encrypted

    if not key_is_encrypted(path):
        return None
    return str(click.prompt(f"passphrase for {path}", hide_input=True, err=True))


def default_rev(store: Store) -> str:
    """The revision a command means when none is given: ``main``; in a store with no branch ``main``, its only
    branch (said on stderr, as ``ckpt log`` does).

    Raises:
        RevisionNotFoundError: no ``main`` and no single branch to fall back on; the hint lists the branches.
    """
    from ckpt.cli._output import echo
    from ckpt.errors import RevisionNotFoundError

    branches = sorted(store.branches())
    if "main" in branches:
        return "main"
    if len(branches) == 1:
        echo(f"no branch 'main': using {branches[0]}, the only branch", err=True)
        return branches[0]
    if not branches:
        raise RevisionNotFoundError(
            "no branch 'main': the store has no branch yet",
            cli_hint="save or `ckpt import` a snapshot first, or name a tag or an id (`ckpt ls`, `ckpt log --all`)",
        )
    raise RevisionNotFoundError(
        f"no branch 'main', and {len(branches)} others: {', '.join(branches[:8])}{' …' if len(branches) > 8 else ''}",
        cli_hint="name the revision, e.g. a branch above (`ckpt ls` lists every branch and tag)",
    )
