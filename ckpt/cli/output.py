"""Rendering for the command line: rich text, tables and progress bars for people, JSON for scripts.

Nothing here talks to a store; commands fetch records through the Python API and hand them over.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from ckpt.model import Snapshot, TagRecord, parse_time

__all__ = [
    "RefIndex",
    "age",
    "console",
    "emit_json",
    "human_bytes",
    "metrics_text",
    "progress_bar",
    "progress_enabled",
    "ref_text",
    "snapshot_json",
    "snapshot_line",
    "table",
]

#: Width used when stdout is not a terminal, so that piped lines and tables are not wrapped at 80 columns.
_PIPE_WIDTH = 240


def console(*, stderr: bool = False) -> Console:
    """A rich console on the current stdout (or stderr); colours only on a terminal, ``NO_COLOR`` honoured."""
    file = sys.stderr if stderr else sys.stdout
    width = None
    if not file.isatty() and not os.environ.get("COLUMNS"):
        width = _PIPE_WIDTH
    return Console(file=file, highlight=False, soft_wrap=True, width=width)


def table(title: str | None = None) -> Table:
    """A plain table: a title on the left, a rule under the header, no outer frame."""
    return Table(
        title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False
    )


def emit_json(data: Any) -> None:
    """Print a JSON document (indented, UTF-8, strict: no NaN or Infinity literals)."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False))


def human_bytes(n: int | float) -> str:
    """A byte count for people, in binary units: ``512 B``, ``1.5 KiB``, ``3.2 GiB`` (``settings.format_size``).

    Example:
        >>> human_bytes(1536), human_bytes(5)
        ('1.5 KiB', '5 B')
    """
    from ckpt.settings import format_size

    return format_size(n)


def age(created_at: str, *, now: datetime | None = None) -> str:
    """How long ago a stored time was: ``just now``, ``5 minutes ago``, ``3 days ago``, or the date.

    Example:
        >>> age("2026-11-28T10:00:00.000000Z", now=datetime(2026, 11, 28, 12, 30, tzinfo=timezone.utc))
        '2 hours ago'
    """
    then = parse_time(created_at)
    seconds = ((now or datetime.now(timezone.utc)) - then).total_seconds()
    if seconds < 45:
        return "just now"
    for size, unit in ((86400 * 60, None), (86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            if unit is None:
                return then.strftime("%Y-%m-%d")
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return "1 minute ago"


class RefIndex:
    """Which branches and tags point at each snapshot.

    Args:
        branches: branch name → snapshot id.
        tags: tag name → tag record.
    """

    def __init__(self, branches: Mapping[str, str], tags: Mapping[str, TagRecord]) -> None:
        self.branches = dict(branches)
        self.tags = dict(tags)
        self._by_id: dict[str, list[dict[str, Any]]] = {}
        for name, sid in self.branches.items():
            self._by_id.setdefault(sid, []).append({"kind": "branch", "name": name})
        for name, tag in self.tags.items():
            self._by_id.setdefault(tag.id, []).append({"kind": "tag", "name": name, "frozen": tag.frozen})

    def refs(self, snapshot_id: str) -> list[dict[str, Any]]:
        """The refs at a snapshot: ``{"kind": "branch", "name"}`` and ``{"kind": "tag", "name", "frozen"}``."""
        return list(self._by_id.get(snapshot_id, []))

    def ids(self) -> list[str]:
        """Every snapshot id a ref points at."""
        return list(self._by_id)


def snapshot_json(snap: Snapshot, refs: RefIndex | None = None) -> dict[str, Any]:
    """A snapshot as a JSON object: every record field, plus ``id``, ``short_id``, ``pruned`` and ``refs``."""
    out: dict[str, Any] = {"id": snap.id, "short_id": snap.short_id, "pruned": snap.pruned}
    out.update(snap.model_dump(mode="json"))
    out["refs"] = refs.refs(snap.id) if refs is not None else []
    return out


def ref_text(refs: Sequence[Mapping[str, Any]]) -> Text:
    """``(main, tag: v1, frozen: tiny-llama-2026-11-28)``, coloured; empty when no ref points there."""
    if not refs:
        return Text()
    out = Text()
    out.append("(", style="yellow")
    for i, r in enumerate(refs):
        if i:
            out.append(", ", style="yellow")
        if r["kind"] == "branch":
            out.append(r["name"], style="bold green")
        elif r.get("frozen"):
            out.append(f"frozen: {r['name']}", style="bold cyan")
        else:
            out.append(f"tag: {r['name']}", style="bold yellow")
    out.append(")", style="yellow")
    return out


def _number(v: float) -> str:
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.4g}"


def metrics_text(metrics: Mapping[str, float], *, limit: int | None = 3) -> str:
    """``val_loss=0.41 acc=0.9``; past ``limit`` metrics, ``+N more``."""
    items = list(metrics.items())
    shown = items if limit is None else items[:limit]
    text = " ".join(f"{k}={_number(v)}" for k, v in shown)
    if len(items) > len(shown):
        text += f" +{len(items) - len(shown)} more"
    return text


def snapshot_line(snap: Snapshot, refs: RefIndex, *, now: datetime | None = None) -> Text:
    """One line for a snapshot: id, refs, relation, model, step/epoch, metrics, message, age, pruned."""
    line = Text()
    line.append(snap.short_id, style="yellow")
    r = ref_text(refs.refs(snap.id))
    if r:
        line.append(" ")
        line.append_text(r)
    line.append(" ")
    line.append(snap.relation, style="dim" if snap.relation == "continue" else "bold magenta")
    if snap.model:
        line.append(f" {snap.model}", style="blue")
    if snap.step is not None:
        line.append(f" step {snap.step}")
    if snap.epoch is not None:
        line.append(f" epoch {snap.epoch}")
    if snap.metrics:
        line.append(f" {metrics_text(snap.metrics)}", style="green")
    if snap.message:
        line.append(f' "{snap.message.splitlines()[0]}"')
    line.append(f" ({age(snap.created_at, now=now)})", style="dim")
    if snap.pruned:
        line.append(" [pruned]", style="bold red")
    return line


def progress_enabled() -> bool:
    """Whether progress bars may be drawn: stderr is a terminal; ``TTY_COMPATIBLE=1``/``0`` forces on/off."""
    forced = os.environ.get("TTY_COMPATIBLE", "")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        return sys.stderr.isatty()
    except ValueError:  # closed stream
        return False


@contextmanager
def progress_bar(description: str, *, total: int | None = None, quiet: bool = False) -> Iterator[Any]:
    """A rich progress bar on stderr with bytes and rate; yields a callback taking byte counts.

    The bar is off (the callback is ``None``) with ``quiet`` or when stderr is not a terminal, so logs and
    pipes stay clean (see ``progress_enabled``).

    Args:
        description: what is being done (``restore``, ``sync`` …).
        total: bytes expected, if known (otherwise the bar shows bytes done and the rate only).
        quiet: no bar.
    """
    if quiet or not progress_enabled():
        yield None
        return
    err = Console(file=sys.stderr, force_terminal=True)
    columns: list[Any] = [TextColumn("[bold]{task.description}")]
    if total is not None:
        columns += [BarColumn(), TaskProgressColumn()]
    columns += [DownloadColumn(binary_units=True), TransferSpeedColumn()]
    if total is not None:
        columns.append(TimeRemainingColumn())
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int) -> None:
            bar.advance(task, n)

        yield advance
