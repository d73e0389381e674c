"""``ckpt.plot`` and ``ckpt plot``: series read from records, the best save, and the images drawn."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import ckpt
from ckpt.cli import cli
from ckpt.errors import RecordError
from ckpt.plot import (
    metric_group,
    metric_mode,
    metric_series,
    monitored_metric,
    plot_metric,
    run_history,
    save_plot,
    x_axis,
)

from .family import VAL

Family = tuple[ckpt.Store, dict[str, ckpt.Snapshot]]


def test_metric_series_reads_the_records(family: Family) -> None:
    store, snaps = family
    s = metric_series(store, "val_loss", "main")
    assert [p.snapshot for p in s.points] == [snaps[f"m{i}"].id for i in range(1, 9)]
    assert [p.value for p in s.points] == VAL
    assert [p.x for p in s.points] == [500.0 * i for i in range(1, 9)] and s.x_label == "step"
    assert [p.pruned for p in s.points] == [False, True, True, False, False, False, False, False]
    assert (s.mode, s.best, s.since_best) == ("min", snaps["m5"].id, 3)
    assert s.best_point is not None and s.best_point.value == min(VAL)
    up = metric_series(store, "val_loss", "main", mode="max")
    assert up.best == snaps["m1"].id  # the highest that was not pruned
    assert metric_series(store, "nothing", "main").points == ()


def test_best_skips_pruned_and_non_finite_saves(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "s"), chunk_size=4096)
    for step, loss in ((1, 0.9), (2, 0.1), (3, float("nan")), (4, 0.5), (5, 0.5)):
        store.save({"w": np.full(4, step, np.float32)}, step=step, metrics={"loss": loss})
    store.prune("main~3")  # the 0.1
    s = metric_series(store, "loss", "main")
    assert math.isnan(s.points[2].value)
    assert s.best == store.resolve("main").id  # a tie goes to the newer save, as Checkpointer.best()
    assert s.since_best == 0


def test_run_history_scopes(family: Family) -> None:
    store, snaps = family
    assert [s.id for s in run_history(store, "instruct")] == [snaps["i1"].id, snaps["i2"].id]
    whole = run_history(store, "instruct", scope="lineage")
    assert [s.id for s in whole] == [snaps[k].id for k in ("m1", "m2", "m3", "m4", "m5", "i1", "i2")]
    assert x_axis(whole) == ("save", [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    assert len(run_history(store, "exp/lr-3e-4")) == 7
    assert [s.id for s in run_history(store, "main~5")] == [snaps[k].id for k in ("m1", "m2", "m3")]


def test_names_decide_mode_group_and_monitor() -> None:
    assert [metric_mode(m) for m in ("val_loss", "eval/accuracy", "ppl", "f1", "wer", "reward_mean")] == [
        "min", "max", "min", "max", "min", "max",
    ]  # fmt: skip
    assert [metric_group(m) for m in ("val_loss", "train_loss", "loss", "eval/acc", "acc_test", "lr")] == [
        "loss", "loss", "loss", "acc", "acc", "lr",
    ]  # fmt: skip

    def snaps(*names: str) -> list[ckpt.Snapshot]:
        base = ckpt.Snapshot(created_at="2026-01-01T00:00:00.000000Z", ckpt_version="0", table="0" * 64)
        return [base.model_copy(update={"metrics": dict.fromkeys(names, 1.0)})]

    assert monitored_metric(snaps("train_loss", "val_loss", "val_acc")) == "val_loss"
    assert monitored_metric(snaps("train_loss", "eval_accuracy")) == "eval_accuracy"
    assert monitored_metric(snaps("lr", "loss")) == "loss"
    assert monitored_metric(snaps("lr", "train/loss")) == "train/loss"
    assert monitored_metric(snaps()) is None


def test_plot_metric_draws_each_run(family: Family) -> None:
    pytest.importorskip("matplotlib")
    store, _ = family
    fig = plot_metric(store, "val_loss", ["main", "exp/lr-3e-4"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["main", "exp/lr-3e-4"]
    stars = [line for line in ax.lines if line.get_marker() == "*"]
    assert [(list(s.get_xdata()), list(s.get_ydata())) for s in stars] == [([2500.0], [0.58]), ([3000.0], [0.55])]
    hollow = [line for line in ax.lines if line.get_marker() == "o" and line.get_markerfacecolor() == "white"]
    assert [list(h.get_xdata()) for h in hollow] == [[1000.0, 1500.0]] * 2  # exp/lr-3e-4 carries on main's run
    assert ax.get_xlabel() == "step" and ax.get_title() == "val_loss"

    group = plot_metric(store, "loss", ["main"])  # train and validation on one chart
    assert [t.get_text() for t in group.axes[0].get_legend().get_texts()] == ["train_loss", "val_loss"]

    from matplotlib.figure import Figure

    mine = Figure()
    ax = mine.add_subplot()
    assert plot_metric(store, "val_loss", ["instruct"], ax=ax) is mine and ax.lines


def test_save_plot_files(family: Family, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    store, _ = family
    png = save_plot(store, "val_loss", tmp_path / "v.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread

    assert imread(png).shape[:2] == (540, 960)  # 8 × 4.5 inches at 120 dpi
    svg = save_plot(store, "loss", tmp_path / "l.svg", ["main", "exp/lr-3e-4"]).read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    for text in ("main: train_loss", "main: val_loss", "exp/lr-3e-4: val_loss"):
        assert text in svg
    with pytest.raises(RecordError, match="image format"):
        save_plot(store, "val_loss", tmp_path / "v.jpg")
    with pytest.raises(RecordError, match="no save of the plotted runs has a metric 'acc'") as e:
        save_plot(store, "acc", tmp_path / "a.png")
    assert e.value.hint and "val_loss" in e.value.hint and "train_loss" in e.value.hint
    assert not (tmp_path / "a.png").exists()


def test_plot_command(family: Family, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    store, _ = family
    runner = CliRunner()
    out = tmp_path / "curves.svg"
    result = runner.invoke(cli, ["--store", store.url, "plot", "val_loss", "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == 0 and result.stdout.strip() == f"wrote {out}"
    svg = out.read_text()
    for branch in ("main", "exp/lr-3e-4", "instruct"):  # every branch with the metric, by default
        assert f">{branch}<" in svg or branch in svg
    bad = runner.invoke(cli, ["--store", store.url, "plot", "nope", "-o", str(tmp_path / "n.png")])
    assert bad.exit_code == 1 and "hint: metrics there: " in bad.stderr
    lineage = runner.invoke(
        cli, ["--store", store.url, "plot", "val_loss", "instruct", "--lineage", "-o", str(tmp_path / "i.png")]
    )
    assert lineage.exit_code == 0 and (tmp_path / "i.png").stat().st_size > 1000
    missing = runner.invoke(cli, ["--store", store.url, "plot", "val_loss", "-o", str(tmp_path / "x.png"), "nobranch"])
    assert missing.exit_code == 1 and "nobranch" in missing.stderr


def test_public_surface_is_documented() -> None:
    import inspect

    import ckpt.plot
    import ckpt.ui

    for module in (ckpt.plot, ckpt.ui):
        assert module.__all__ == sorted(module.__all__), module.__name__
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                assert inspect.getdoc(obj), f"{module.__name__}.{name}"


def test_names_are_drawn_as_they_are(tmp_path: Path) -> None:
    """matplotlib reads ``$…$`` as mathtext and hides legend labels starting with ``_``; names stay literal."""
    pytest.importorskip("matplotlib")
    store = ckpt.init(str(tmp_path / "s"), chunk_size=4096)
    metric = "cost_$x^{2"  # unbalanced mathtext: would raise a parse error if interpreted
    for step in (1, 2):
        store.save({"w": np.full(2, step, np.float32)}, step=step, metrics={metric: 1.0 / step})
    store.branch("_hidden", at="main")
    store.save({"w": np.zeros(2, np.float32)}, branch="_hidden", step=3, metrics={metric: 0.1})
    fig = plot_metric(store, metric)
    ax = fig.axes[0]
    assert [t.get_text().lstrip("\u200b") for t in ax.get_legend().get_texts()] == ["main", "_hidden"]
    svg = save_plot(store, metric, tmp_path / "c.svg").read_text()
    assert "_hidden" in svg
    assert ax.get_title().replace("\\$", "$") == metric
