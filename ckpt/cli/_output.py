"""Rendering for the command line: rich text, tables and progress bars for people, JSON for scripts.

Nothing here talks to a store; commands fetch records through the Python API and hand them over.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import click
from rich import box
from rich.console import Console
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:  # pydantic records: only the commands that read a store import them
    from ckpt.model import Snapshot, TagRecord

__all__ = [
    "ProgressBar",
    "RefIndex",
    "SafeConsole",
    "age",
    "console",
    "count",
    "echo",
    "emit_json",
    "human_bytes",
    "keep_column",
    "metrics_text",
    "progress_bar",
    "print_table",
    "progress_enabled",
    "ref_text",
    "shown",
    "snapshot_json",
    "snapshot_line",
    "table",
]

#: Width used when stdout is not a terminal, so that piped lines and tables are not wrapped at 80 columns.
_PIPE_WIDTH = 240

#: Characters a terminal may act on instead of showing: C0 controls (ESC starts colour, cursor and title
#: sequences), DEL, C1 controls (U+009B is a one-character CSI) and the bidirectional overrides and isolates
#: that reorder what is shown ("Trojan Source"). Text read from a store never reaches the terminal with them.
_OTHER_CONTROLS = "\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[\x00-\x1f{_OTHER_CONTROLS}]")
_UNSAFE_KEEP_NEWLINES = re.compile(f"[\x00-\x09\x0b-\x1f{_OTHER_CONTROLS}]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    c = match.group()
    if c in _NAMED:
        return _NAMED[c]
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def shown(text: object, *, newlines: bool = False) -> str:
    """Text read from a store (a message, a name, a path) made safe to print: control characters escaped.

    ESC, the other C0 and C1 controls, DEL and the bidirectional overrides appear as ``\\x1b``, ``\\u202e`` …,
    so a stored message can neither drive the terminal (colours, cursor moves, window titles, hyperlinks) nor
    hide or reorder what is shown. With ``newlines``, line breaks are kept (a multi-line message); otherwise
    they are escaped too (a table cell, one log line). Rich markup needs no escaping here: ckpt's consoles
    never interpret markup (``console``).

    Example:
        >>> shown("fine\\x1b[2Jtune"), shown("a\\nb"), shown("a\\nb", newlines=True)
        ('fine\\\\x1b[2Jtune', 'a\\\\nb', 'a\\nb')
    """
    s = str(text)
    pattern = _UNSAFE_KEEP_NEWLINES if newlines else _UNSAFE
    return pattern.sub(_escape, s) if pattern.search(s) else s


def echo(message: object = "", *, err: bool = False) -> None:
    """``click.echo`` for every line of plain text the CLI prints: control characters escaped (``shown``)."""
    click.echo(shown(message, newlines=True), err=err)


class SafeConsole(Console):
    """A rich ``Console`` that never interprets text as markup or emoji codes and never emits a control character
    from the text it prints (only the styles ckpt itself applies).

    Store text printed through it can contain ``[bold]``, ``[/]`` or ``:smile:`` and is shown as it is; every
    rendered segment that is text (not a rich control sequence) goes through ``shown``, a net under the
    callers that escape store text themselves (so that table widths are measured on what is shown).
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("markup", False)
        kwargs.setdefault("emoji", False)
        kwargs.setdefault("highlight", False)
        super().__init__(**kwargs)

    def render(self, renderable: Any, options: Any = None) -> Iterator[Segment]:
        """Rich's rendering, with control characters in text segments escaped (line breaks kept)."""
        for seg in super().render(renderable, options):
            if seg.control is None and _UNSAFE_KEEP_NEWLINES.search(seg.text):
                yield Segment(shown(seg.text, newlines=True), seg.style)
            else:
                yield seg


def console(*, stderr: bool = False) -> Console:
    """A ``SafeConsole`` on the current stdout (or stderr); colours only on a terminal, ``NO_COLOR`` honoured."""
    file = sys.stderr if stderr else sys.stdout
    width = None
    if not file.isatty() and not os.environ.get("COLUMNS"):
        width = _PIPE_WIDTH
    return SafeConsole(file=file, soft_wrap=True, width=width)


def table(title: str | None = None) -> Table:
    """A plain table: a title on the left, a rule under the header, no outer frame."""
    return Table(
        title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False
    )


def keep_column(t: Table, header: str, cells: Sequence[str | Text], **kwargs: Any) -> None:
    """Add a column whose cells are never cut or wrapped (ids, ref names): narrow terminals squeeze the others.

    Git never truncates a ref name or an id; neither does ckpt. The column is as wide as its widest cell.
    """
    widest = max((len(c) if isinstance(c, str) else c.cell_len for c in (header, *cells)), default=0)
    t.add_column(header, no_wrap=True, min_width=widest, **kwargs)


_TRAILING_SPACE = re.compile(r"[ ]+((?:\x1b\[[0-9;]*m)*)$", re.MULTILINE)


def print_table(t: Table, out: Console | None = None) -> None:
    """Print a table: columns added with ``keep_column`` whole, others wrapped to fit the terminal.

    When even wrapped columns leave too little room for the kept ones, each row is printed on one line, wider
    than the terminal (which then wraps it, as it does Git's long lines) rather than lose a character of a
    name. No row has trailing spaces.
    """
    from rich.measure import Measurement

    out = out or console()
    size = Measurement.get(out, out.options.update(width=10**6), t)
    free = [c for c in t.columns if not c.no_wrap and c.max_width is None]
    if size.minimum > out.width and free:  # a long word (an id in a message) need not widen its column: fold it
        floor = 12
        for c in free:
            c.max_width = floor
        squeezed = Measurement.get(out, out.options.update(width=10**6), t).minimum
        room = out.width - (squeezed - floor * len(free))
        for c in free:
            c.max_width = max(floor, room // len(free)) if squeezed <= out.width else None
        size = Measurement.get(out, out.options.update(width=10**6), t)
    if size.minimum > out.width:  # rich would cut or drop columns to fit: draw every row on one line instead
        out = SafeConsole(
            file=out.file,
            width=size.maximum,
            soft_wrap=True,
            force_terminal=out.is_terminal,
            color_system=out.color_system or None,
            no_color=out.no_color,
        )
    with out.capture() as captured:
        out.print(t)
    out.file.write(_TRAILING_SPACE.sub(r"\1", captured.get()))
    out.file.flush()


_JSON_UNSAFE = re.compile(f"[{_OTHER_CONTROLS}]")


def emit_json(data: Any) -> None:
    """Print a JSON document (indented, UTF-8, strict: no NaN or Infinity literals).

    Every control character inside a string is written as a ``\\uXXXX`` escape (json escapes C0 itself; DEL,
    C1 and the bidirectional controls too here), so a document shown on a terminal cannot drive it either.
    """
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False)
    click.echo(_JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text))


def human_bytes(n: int | float) -> str:
    """A byte count for people, in binary units: ``512 B``, ``1.5 KiB``, ``3.2 GiB`` (``settings.format_size``).

    Example:
        >>> human_bytes(1536), human_bytes(5)
        ('1.5 KiB', '5 B')
    """
    from ckpt.settings import format_size

    return format_size(n)


def count(n: int, singular: str, plural: str | None = None) -> str:
    """``1 snapshot``, ``2 snapshots``, ``0 entries`` (``plural`` for words that do not just add an s).

    Example:
        >>> count(1, "chunk"), count(3, "chunk"), count(2, "entry", "entries")
        ('1 chunk', '3 chunks', '2 entries')
    """
    return f"{n} {singular if n == 1 else (plural or singular + 's')}"


def age(created_at: str, *, now: datetime | None = None, short: bool = False) -> str:
    """How long ago a stored time was: ``just now``, ``5 minutes ago``, ``3 days ago``, or the date.

    With ``short`` (an ``age`` column of a table, as ``kubectl get`` prints it): ``now``, ``5m``, ``3h``,
    ``2d``, or the date.

    Example:
        >>> t = datetime(2026, 11, 28, 12, 30, tzinfo=timezone.utc)
        >>> age("2026-11-28T10:00:00.000000Z", now=t), age("2026-11-28T10:00:00.000000Z", now=t, short=True)
        ('2 hours ago', '2h')
    """
    from ckpt.model import parse_time

    then = parse_time(created_at)
    seconds = ((now or datetime.now(timezone.utc)) - then).total_seconds()
    if seconds < 45:
        return "now" if short else "just now"
    for size, unit in ((86400 * 60, None), (86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            if unit is None:
                return then.strftime("%Y-%m-%d")
            n = int(seconds // size)
            return f"{n}{unit[0]}" if short else f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "1m" if short else "1 minute ago"


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
            out.append(shown(r["name"]), style="bold green")
        elif r.get("frozen"):
            out.append(f"frozen: {shown(r['name'])}", style="bold cyan")
        else:
            out.append(f"tag: {shown(r['name'])}", style="bold yellow")
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
    kept = items if limit is None else items[:limit]
    text = " ".join(f"{k}={_number(v)}" for k, v in kept)
    if len(items) > len(kept):
        text += f" +{len(items) - len(kept)} more"
    return shown(text)


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
        line.append(f" {shown(snap.model)}", style="blue")
    if snap.step is not None:
        line.append(f" step {snap.step}")
    if snap.epoch is not None:
        line.append(f" epoch {snap.epoch}")
    if snap.metrics:
        line.append(f" {metrics_text(snap.metrics)}", style="green")
    if snap.message:
        line.append(f' "{shown(snap.message.splitlines()[0])}"')
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


class ProgressBar:
    """A running progress bar: call it with byte counts; ``total()`` sets the bytes expected once known."""

    def __init__(self, progress: Any, task: Any) -> None:
        self._progress = progress
        self._task = task

    def __call__(self, n: int) -> None:
        """Count ``n`` more bytes done."""
        self._progress.advance(self._task, n)

    def total(self, n: int) -> None:
        """Set the bytes expected in all (the bar, percentage and time left appear)."""
        self._progress.update(self._task, total=n)


@contextmanager
def progress_bar(description: str, *, total: int | None = None, quiet: bool = False) -> Iterator[ProgressBar | None]:
    """A rich progress bar on stderr: bytes done of the total, rate and time left, in ``human_bytes`` units.

    The bar is off (``None`` is yielded) with ``quiet`` or when stderr is not a terminal, so logs and pipes
    stay clean (see ``progress_enabled``).

    Args:
        description: what is being done (``restore``, ``sync`` …).
        total: bytes expected, if known now; otherwise call ``bar.total(n)`` once it is.
        quiet: no bar.
    """
    if quiet or not progress_enabled():
        yield None
        return
    from rich.progress import (
        BarColumn,
        Progress,
        ProgressColumn,
        Task,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    class Bytes(ProgressColumn):
        def render(self, task: Task) -> Text:
            done = human_bytes(task.completed)
            return Text(done if task.total is None else f"{done} / {human_bytes(task.total)}", style="green")

    class Rate(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("?" if speed is None else f"{human_bytes(speed)}/s", style="red")

    err = Console(file=sys.stderr, force_terminal=True)
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        Bytes(),
        Rate(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=err, transient=False) as progress:
        yield ProgressBar(progress, progress.add_task(description, total=total))
