"""Sparklines: a run's monitored metric as one line of block characters, for ``ckpt log``.

``val_loss on main  █▆▅▄▃▂▂▁▁▂  0.412 (best 0.398 at step 1200, 1 save since)`` — the lowest value draws as
``▁``, the highest as ``█``, whatever the direction of improvement; ``×`` marks a non-finite value (a diverged
save). Long runs are folded into at most ``width`` characters, each the mean of its saves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from rich.console import Console
from rich.text import Text

from ckpt.cli._output import shown
from ckpt.model import Snapshot
from ckpt.plot import monitored_metric, series_of

__all__ = ["log_sparklines", "print_sparklines", "sparkline"]

BLOCKS = "▁▂▃▄▅▆▇█"
NONFINITE = "×"
WIDTH = 32


def sparkline(values: Sequence[float], width: int = WIDTH) -> str:
    """Values as block characters, oldest first, folded into at most ``width`` characters.

    Example:
        >>> sparkline([3.0, 2.0, 1.0, 1.5, float("nan")])
        '█▅▁▃×'
    """
    if not values:
        return ""
    n = len(values)
    folded: list[float] = []
    for i in range(min(n, width)):
        bucket = values[i * n // min(n, width) : (i + 1) * n // min(n, width)]
        finite = [v for v in bucket if math.isfinite(v)]
        folded.append(sum(finite) / len(finite) if len(finite) == len(bucket) else math.nan)
    real = [v for v in folded if math.isfinite(v)]
    lo, hi = (min(real), max(real)) if real else (0.0, 0.0)
    out = []
    for v in folded:
        if not math.isfinite(v):
            out.append(NONFINITE)
        elif hi == lo:
            out.append(BLOCKS[len(BLOCKS) // 2])
        else:
            out.append(BLOCKS[round((v - lo) / (hi - lo) * (len(BLOCKS) - 1))])
    return "".join(out)


def _number(v: float) -> str:
    return f"{v:.4g}" if math.isfinite(v) else str(v)


def _run(tip: Snapshot, by_id: Mapping[str, Snapshot]) -> list[Snapshot]:
    """The run ending at ``tip``, oldest first: ``continue`` saves back to the one that started it (within
    the snapshots at hand)."""
    chain = [tip]
    while chain[-1].relation == "continue" and chain[-1].parents and chain[-1].parents[0] in by_id:
        chain.append(by_id[chain[-1].parents[0]])
    return list(reversed(chain))


def _line(label: str, run: Sequence[Snapshot], width: int, pad: int = 0) -> Text | None:
    metric = monitored_metric(run)
    if metric is None:
        return None
    series = series_of(run, metric)
    if len(series.points) < 2:
        return None
    values = [p.value for p in series.points]
    text = Text()
    text.append(shown(metric), style="green")
    text.append(" on ")
    text.append(shown(label), style="bold")
    text.append(" " * max(0, pad - text.cell_len))  # the sparklines of several runs start in one column
    text.append("  ")
    text.append(sparkline(values, width), style="cyan")
    text.append(f"  {_number(values[-1])}")
    best = series.best_point
    if best is not None:
        where = f"step {best.step}" if best.step is not None else f"save {int(best.x)}"
        since = f", {series.since_best} save{'s' if series.since_best != 1 else ''} since" if series.since_best else ""
        text.append(f" (best {_number(best.value)} at {where}{since})", style="dim")
    return text


def log_sparklines(
    snapshots: Sequence[Snapshot],
    branches: Mapping[str, str],
    *,
    rev: str | None = None,
    width: int = WIDTH,
) -> list[Text]:
    """One sparkline per run among the snapshots ``ckpt log`` printed (records already read; nothing more).

    Args:
        snapshots: what ``log`` shows: a first-parent history, an ancestry, or every snapshot.
        branches: branch name → head id.
        rev: the revision ``log`` was given (one line, for the history that starts there); ``None`` with
            ``--all``: one line per branch whose head is among ``snapshots``.
        width: the most characters a sparkline takes.

    Returns:
        Lines such as ``val_loss on main ▇▅▄▃▂▁ 0.39 (best 0.38 at step 1200, 1 save since)``, for the runs
        that carry a metric in at least two saves.
    """
    by_id = {s.id: s for s in snapshots}
    if rev is not None:
        referenced = {p for s in snapshots for p in (*s.parents, *((s.base,) if s.base else ()))}
        tips = [(rev, s) for s in snapshots if s.id not in referenced][:1]
    else:
        tips = [(name, by_id[sid]) for name, sid in sorted(branches.items()) if sid in by_id]
    runs = [(label, _run(tip, by_id)) for label, tip in tips]
    prefixes = [Text(f"{shown(m)} on {shown(label)}").cell_len for label, run in runs if (m := monitored_metric(run))]
    pad = max(prefixes, default=0)  # the widest "metric on branch": every sparkline starts in one column
    return [line for line in (_line(label, run, width, pad) for label, run in runs) if line is not None]


def print_sparklines(
    out: Console, snapshots: Sequence[Snapshot], branches: Mapping[str, str], *, rev: str | None
) -> None:
    """Print ``log_sparklines`` under the log, on a terminal only: piped output keeps one line per snapshot."""
    if out.is_terminal:
        for line in log_sparklines(snapshots, branches, rev=rev):
            out.print(line)
