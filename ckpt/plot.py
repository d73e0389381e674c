"""Metrics over steps: a run's saves as series, the monitored metric, the best save, and plots.

Everything here reads snapshot *records* (``step``, ``epoch``, ``metrics``, ``pruned``), never tensors, so a
curve over thousands of saves costs one small read per save. ``ckpt plot``, the run view of ``ckpt ui`` and the
sparklines of ``ckpt log`` are built on it; in a notebook::

    import ckpt, ckpt.plot
    store = ckpt.open()
    ckpt.plot.plot_metric(store, "val_loss", ["main", "exp/lr-3e-4"])   # a matplotlib Figure: shown inline
    ckpt.plot.metric_series(store, "val_loss", "main").best             # the best save's id

A *run* is what a training run saved on a branch: its chain of ``continue`` saves back to the snapshot that
started it (a root, or a fine-tune's first snapshot), as ``ckpt.Checkpointer`` reads it. ``scope="lineage"``
follows first parents to the root instead (the base model's training, then the fine-tune's …).

Plots need matplotlib (``pip install 'ckpt-store[plot]'``), imported only when a plot is drawn.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from ckpt._extras import install_hint
from ckpt.errors import CkptError, RecordError
from ckpt.model import Snapshot

if TYPE_CHECKING:
    from ckpt.store import Store

__all__ = [
    "MetricPoint",
    "MetricSeries",
    "Mode",
    "Scope",
    "metric_group",
    "metric_mode",
    "metric_names",
    "metric_series",
    "monitored_metric",
    "plot_metric",
    "run_history",
    "save_plot",
    "series_of",
    "x_axis",
]

#: Which way a metric improves: ``min`` (a loss) or ``max`` (an accuracy).
Mode = Literal["min", "max"]
#: ``run``: the branch's chain of ``continue`` saves back to where the run started; ``lineage``: first
#: parents back to the root.
Scope = Literal["run", "lineage"]

_TOKEN = re.compile(r"[^a-z0-9]+")
#: Words that make a metric one to maximise; everything else (loss, perplexity, error, wer …) is minimised.
_MAX_WORDS = frozenset(
    {"acc", "accuracy", "f1", "bleu", "rouge", "rouge1", "rouge2", "rougel", "auc", "auroc", "precision", "recall",
     "score", "map", "iou", "miou", "dice", "r2", "reward", "em", "exact", "match", "top1", "top5", "win", "pass"}
)  # fmt: skip
_SPLIT_PREFIXES = ("train", "training", "val", "valid", "validation", "eval", "evaluation", "dev", "test")
_VALIDATION = ("val", "valid", "validation", "eval", "evaluation", "dev")
#: Saves read first when looking for where a run starts (most runs are shorter; longer ones cost one more read).
_FIRST_READ = 256


def _tokens(metric: str) -> list[str]:
    return [t for t in _TOKEN.split(metric.lower()) if t]


def metric_mode(metric: str) -> Mode:
    """Whether a metric is better low (``min``: losses, perplexity, error rates) or high (``max``).

    Judged by the words of its name: ``acc``, ``accuracy``, ``f1``, ``bleu``, ``rouge``, ``auc``, ``score``,
    ``reward``, ``exact_match`` … make it ``max``; anything else is ``min``. Pass ``mode=`` where a name misleads.

    Example:
        >>> metric_mode("val_loss"), metric_mode("eval/accuracy"), metric_mode("train_ppl")
        ('min', 'max', 'min')
    """
    return "max" if any(t in _MAX_WORDS for t in _tokens(metric)) else "min"


def metric_group(metric: str) -> str:
    """The quantity a metric measures, without its split: ``train_loss`` and ``val_loss`` are both ``loss``.

    Splits (``train``, ``val``, ``validation``, ``eval``, ``dev``, ``test``) are removed as a prefix or a suffix
    joined by ``_``, ``/``, ``.`` or ``-``; the run view draws a group on one chart.

    Example:
        >>> metric_group("val_loss"), metric_group("train/loss"), metric_group("accuracy_test"), metric_group("lr")
        ('loss', 'loss', 'accuracy', 'lr')
    """
    lowered = metric.lower()
    for split in _SPLIT_PREFIXES:
        for sep in ("_", "/", ".", "-"):
            if lowered.startswith(split + sep) and len(metric) > len(split) + 1:
                return metric[len(split) + 1 :]
            if lowered.endswith(sep + split) and len(metric) > len(split) + 1:
                return metric[: -len(split) - 1]
    return metric


def metric_names(snapshots: Iterable[Snapshot]) -> list[str]:
    """Every metric name the snapshots carry, most common first (then by name)."""
    counts = Counter(name for s in snapshots for name in s.metrics)
    return [name for name, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def monitored_metric(snapshots: Iterable[Snapshot]) -> str | None:
    """The metric a run is most likely judged by: a validation loss if there is one.

    Records do not say which metric a ``Checkpointer`` monitored, so the choice is by name, first match wins:
    a validation loss (``val_loss``, ``eval_loss``, ``validation/loss`` …), another validation metric, a
    metric called ``loss``, any loss, then the metric most saves carry.

    Returns:
        The metric's name, or ``None`` when no snapshot has a metric.

    Example:
        >>> monitored_metric(store.log("main"))  # saves with train_loss, val_loss and val_acc  # doctest: +SKIP
        'val_loss'
    """
    names = metric_names(snapshots)
    if not names:
        return None

    def validation(name: str) -> bool:
        tokens = _tokens(name)
        return bool(tokens) and (tokens[0] in _VALIDATION or tokens[-1] in _VALIDATION)

    def rank(name: str) -> int:
        loss = "loss" in _tokens(name)
        if validation(name) and loss:
            return 0
        if validation(name):
            return 1
        if name.lower() == "loss":
            return 2
        if loss:
            return 3
        return 4

    return min(names, key=lambda n: (rank(n), names.index(n)))


class MetricPoint(BaseModel):
    """One save's value of a metric.

    Attributes:
        snapshot: the snapshot's id.
        x: where it sits on the x axis: its ``step``, or its save number (1 for the run's first save) when
            the run's saves do not all carry non-decreasing steps.
        value: the metric's value (nan and inf kept as they were saved).
        step: the snapshot's training step, if any.
        epoch: the snapshot's epoch, if any.
        pruned: whether retention released the save's tensors (its record, and this value, stay).
    """

    model_config = ConfigDict(frozen=True)

    snapshot: str
    x: float
    value: float
    step: int | None = None
    epoch: int | float | None = None
    pruned: bool = False


class MetricSeries(BaseModel):
    """A metric over the saves of a run, oldest first, with the best save.

    Attributes:
        rev: the revision the run was read from.
        metric: the metric's name.
        mode: ``min`` or ``max``: which way is better.
        x_label: ``step`` or ``save`` (see ``MetricPoint.x``).
        points: the saves that carry the metric, oldest first.
        best: the id of the best save that can still be loaded (finite value, not pruned; the newer one on a
            tie), as ``Checkpointer.best()`` picks it; ``None`` if there is none.
        since_best: saves carrying the metric after the best one, none of them better: how long the metric
            has not improved. Records do not say whether early stopping fired; a run that ended with
            ``since_best == patience`` is what ``should_stop(patience)`` stops.
    """

    model_config = ConfigDict(frozen=True)

    rev: str
    metric: str
    mode: Mode
    x_label: Literal["step", "save"]
    points: tuple[MetricPoint, ...]
    best: str | None = None
    since_best: int = 0

    @property
    def best_point(self) -> MetricPoint | None:
        """The best save's point, if any."""
        return next((p for p in self.points if p.snapshot == self.best), None)


def _run_cut(chain: Sequence[Snapshot], scope: Scope) -> list[Snapshot] | None:
    """``chain`` (newest first) cut after the snapshot that started the run; ``None`` if it does not start in it."""
    if scope == "lineage":
        return None if chain and chain[-1].parents else list(chain)
    for i, s in enumerate(chain):
        if s.relation != "continue" or not s.parents:
            return list(chain[: i + 1])
    return None


def run_history(store: Store, rev: str = "main", *, scope: Scope = "run") -> list[Snapshot]:
    """The saves of the run that ``rev`` belongs to, up to ``rev``, oldest first (records only).

    Args:
        store: the store.
        rev: a branch, tag, id or any revision.
        scope: ``run`` (back to the save that started the run) or ``lineage`` (back to the root).

    Raises:
        RevisionNotFoundError: ``rev`` names nothing.

    Example:
        >>> [s.step for s in run_history(store, "main")]  # doctest: +SKIP
        [100, 200, 300]
    """
    chain = store.log(rev, limit=_FIRST_READ) if scope == "run" else store.log(rev)
    cut = _run_cut(chain, scope)
    if cut is None and len(chain) == _FIRST_READ:  # a long run: read the whole first-parent history once
        chain = store.log(rev)
        cut = _run_cut(chain, scope)
    return list(reversed(cut if cut is not None else chain))


def x_axis(history: Sequence[Snapshot]) -> tuple[Literal["step", "save"], list[float]]:
    """The x value of each save of a history (oldest first): its step, or its save number.

    Steps are used when every save has one and they never decrease; otherwise saves are numbered 1, 2, 3 …
    (a fine-tune that restarts its steps at 0 is drawn after its base, not on top of it).
    """
    steps = [s.step for s in history]
    if steps and all(st is not None for st in steps):
        known = [st for st in steps if st is not None]
        if all(a <= b for a, b in itertools.pairwise(known)):
            return "step", [float(st) for st in known]
    return "save", [float(i + 1) for i in range(len(history))]


def _better(a: float, b: float, mode: Mode) -> bool:
    return a < b if mode == "min" else a > b


def series_of(history: Sequence[Snapshot], metric: str, *, rev: str = "", mode: Mode | None = None) -> MetricSeries:
    """A metric's series over an already-read history (oldest first); see ``metric_series``."""
    mode = mode or metric_mode(metric)
    x_label, xs = x_axis(history)
    points = tuple(
        MetricPoint(snapshot=s.id, x=x, value=s.metrics[metric], step=s.step, epoch=s.epoch, pruned=s.pruned)
        for s, x in zip(history, xs, strict=True)
        if metric in s.metrics
    )
    best: MetricPoint | None = None
    for p in reversed(points):  # newest first: a tie goes to the newer save
        if not p.pruned and math.isfinite(p.value) and (best is None or _better(p.value, best.value, mode)):
            best = p
    since = 0
    if best is not None:
        since = len(points) - 1 - points.index(best)
    return MetricSeries(
        rev=rev,
        metric=metric,
        mode=mode,
        x_label=x_label,
        points=points,
        best=best.snapshot if best else None,
        since_best=since,
    )


def metric_series(
    store: Store, metric: str, rev: str = "main", *, mode: Mode | None = None, scope: Scope = "run"
) -> MetricSeries:
    """One metric over the saves of ``rev``'s run, oldest first, with the best save.

    Args:
        store: the store.
        metric: the metric's name, e.g. ``val_loss``.
        rev: the revision whose run to read (a branch: its whole run up to its head).
        mode: ``min`` or ``max``; default: from the name (``metric_mode``).
        scope: ``run`` or ``lineage`` (see ``run_history``).

    Returns:
        The series; ``points`` is empty if no save of the run carries the metric.

    Raises:
        RevisionNotFoundError: ``rev`` names nothing.

    Example:
        >>> s = metric_series(store, "val_loss", "main")  # doctest: +SKIP
        >>> [(p.x, p.value) for p in s.points], s.best  # doctest: +SKIP
    """
    return series_of(run_history(store, rev, scope=scope), metric, rev=rev, mode=mode)


def _metrics_to_draw(metric: str | Sequence[str], histories: Sequence[Sequence[Snapshot]]) -> list[str]:
    """An exact metric name, else every metric of that group (``loss`` → ``train_loss``, ``val_loss``)."""
    if not isinstance(metric, str):
        return list(metric)
    names = metric_names(s for h in histories for s in h)
    if metric in names:
        return [metric]
    group = sorted(n for n in names if metric_group(n) == metric)
    if group:
        return group
    raise RecordError(
        f"no save of the plotted runs has a metric {metric!r}",
        hint=f"metrics there: {', '.join(names[:20])}" if names else "their saves carry no metrics",
    )


def _literal(name: str) -> str:
    """A name from the store as matplotlib text shown as is: ``$`` would start mathtext, and a legend label
    starting with ``_`` would be hidden."""
    text = name.replace("$", r"\$")
    return "\u200b" + text if text.startswith("_") else text


def _matplotlib() -> Any:
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError as e:
        raise CkptError("plots need matplotlib, which is not installed", hint=install_hint("plot")) from e
    del matplotlib
    return Figure


def plot_metric(
    store: Store,
    metric: str | Sequence[str],
    revs: Sequence[str] | None = None,
    *,
    ax: Any = None,
    mode: Mode | None = None,
    scope: Scope = "run",
    title: str | None = None,
) -> Any:
    """Draw a metric over the saves of one or more runs with matplotlib (records only, no tensors read).

    Each revision's run is one line; kept saves are filled dots, saves whose tensors retention released are
    hollow, the best save is a star, and a non-finite value (a diverged step) is an ``x`` at the top edge.

    Args:
        store: the store.
        metric: a metric name (``val_loss``), a group (``loss``: every ``*_loss`` metric, train and validation
            on one chart), or a list of names.
        revs: the runs to draw; default: every branch (``main`` first).
        ax: a matplotlib ``Axes`` to draw into; default: a new ``Figure`` (not registered with pyplot).
        mode: ``min`` or ``max`` for the best save; default: from each metric's name.
        scope: ``run`` or ``lineage`` (see ``run_history``).
        title: the chart's title; default: the metric.

    Returns:
        The ``matplotlib.figure.Figure`` drawn into (a notebook shows it inline).

    Raises:
        CkptError: matplotlib is not installed (the hint says how to install it).
        RecordError: none of the runs has the metric (the hint lists the ones they have).
        RevisionNotFoundError: a revision names nothing.

    Example:
        >>> fig = plot_metric(store, "val_loss", ["main", "exp"])  # doctest: +SKIP
        >>> fig.savefig("val_loss.png")  # doctest: +SKIP
    """
    figure_class = _matplotlib()
    if revs is None:
        branches = sorted(store.branches(), key=lambda b: (b != "main", b))
        revs = branches
    if not revs:
        raise RecordError("nothing to plot: the store has no branch", hint="name revisions to plot")
    histories = [run_history(store, rev, scope=scope) for rev in revs]
    metrics = _metrics_to_draw(metric, histories)
    if ax is None:
        fig = figure_class(figsize=(8, 4.5), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    x_labels = set()
    colors = iter(f"C{i}" for i in range(10_000))
    for rev, history in zip(revs, histories, strict=True):
        for name in metrics:
            s = series_of(history, name, rev=rev, mode=mode)
            if not s.points:
                continue
            color = next(colors)
            x_labels.add(s.x_label)
            label = _literal(name if len(revs) == 1 else f"{rev}: {name}" if len(metrics) > 1 else rev)
            finite = [p for p in s.points if math.isfinite(p.value)]
            ax.plot([p.x for p in finite], [p.value for p in finite], "-", color=color, label=label, linewidth=1.5)
            kept = [p for p in finite if not p.pruned]
            gone = [p for p in finite if p.pruned]
            ax.plot([p.x for p in kept], [p.value for p in kept], "o", color=color, markersize=4)
            if gone:
                ax.plot([p.x for p in gone], [p.value for p in gone], "o", markersize=4, markerfacecolor="white",
                        markeredgecolor=color)  # fmt: skip
            best = s.best_point
            if best is not None:
                ax.plot([best.x], [best.value], "*", color=color, markersize=14, markeredgecolor="black",
                        markeredgewidth=0.6)  # fmt: skip
            bad = [p for p in s.points if not math.isfinite(p.value)]
            if bad:
                ax.plot([p.x for p in bad], [1.0] * len(bad), "x", color=color, clip_on=False,
                        transform=ax.get_xaxis_transform())  # fmt: skip
    if not ax.lines:
        raise RecordError(f"no save of {', '.join(revs)} has {' or '.join(metrics)}")
    ax.set_xlabel("step" if x_labels == {"step"} else "save number")
    ax.set_ylabel(_literal(metrics[0] if len(metrics) == 1 else metric_group(metrics[0])))
    ax.set_title(title if title is not None else _literal(metric if isinstance(metric, str) else ", ".join(metrics)))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return fig


def save_plot(
    store: Store,
    metric: str | Sequence[str],
    path: str | Path,
    revs: Sequence[str] | None = None,
    *,
    mode: Mode | None = None,
    scope: Scope = "run",
    dpi: int = 120,
) -> Path:
    """Draw ``plot_metric`` and write it to a file; the format follows the suffix (``.png``, ``.svg``, ``.pdf``).

    Returns:
        The path written.

    Raises:
        RecordError: an unsupported suffix, or no run has the metric.

    Example:
        >>> save_plot(store, "loss", "loss.svg", ["main"])  # doctest: +SKIP
        PosixPath('loss.svg')
    """
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in ("png", "svg", "pdf"):
        raise RecordError(f"cannot tell the image format of {str(path)!r}", hint="name the file *.png, *.svg or *.pdf")
    fig = plot_metric(store, metric, revs, mode=mode, scope=scope)
    fig.savefig(path, format=suffix, dpi=dpi)
    return path
