"""The sparkline under ``ckpt log``: the monitored metric of each run, on a terminal only."""

from __future__ import annotations

import math
import re

from click.testing import CliRunner

import ckpt
from ckpt.cli import cli
from ckpt.cli._sparkline import BLOCKS, NONFINITE, sparkline

from .family import VAL

Family = tuple[ckpt.Store, dict[str, ckpt.Snapshot]]


def test_sparkline_characters() -> None:
    assert sparkline([3.0, 2.0, 1.0, 1.5, math.nan]) == "█▅▁▃×"
    assert sparkline([1.0, 2.0]) == "▁█"
    assert sparkline([0.5, 0.5, 0.5]) == "▅▅▅"
    assert sparkline([math.inf]) == NONFINITE
    assert sparkline([]) == ""
    folded = sparkline([float(i) for i in range(1000)], width=20)
    assert len(folded) == 20 and folded[0] == BLOCKS[0] and folded[-1] == BLOCKS[-1]
    assert list(folded) == sorted(folded)  # a rising curve stays rising once folded


def run_log(store: ckpt.Store, *args: str, terminal: bool) -> list[str]:
    env = {"TTY_COMPATIBLE": "1" if terminal else "0", "NO_COLOR": "1"}
    result = CliRunner().invoke(cli, ["--store", store.url, "log", *args], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return re.sub(r"\x1b\[[0-9;]*m", "", result.stdout).splitlines()


def test_log_shows_the_monitored_metric_of_each_run(family: Family) -> None:
    store, _ = family
    lines = run_log(store, terminal=True)
    assert len(lines) == 8 + 1
    main = f"val_loss on main  {sparkline(VAL)}  0.64 (best 0.58 at step 2500, 3 saves since)"
    assert lines[-1] == main
    lines = run_log(store, "--all", terminal=True)
    assert (
        lines[-3:]
        == [  # the sparklines start in one column
            f"val_loss on exp/lr-3e-4  {sparkline([*VAL[:4], 0.57, 0.55, 0.56])}  0.56 "
            "(best 0.55 at step 3000, 1 save since)",
            "val_loss on instruct     █▁  0.45 (best 0.45 at step 200)",
            main.replace("on main  ", "on main         "),
        ]
    )
    graph = run_log(store, "instruct", "--graph", terminal=True)
    assert graph[-1] == "val_loss on instruct  █▁  0.45 (best 0.45 at step 200)"
    assert not any(" on lora " in line for line in run_log(store, "lora", terminal=True))  # its run has no metric


def test_log_n_draws_the_whole_run_and_its_real_best(family: Family) -> None:
    """-n cuts the list, not the run: the sparkline and its best are the run's, and --graph --all -n keeps
    every branch's line."""
    store, _ = family
    main = f"val_loss on main  {sparkline(VAL)}  0.64 (best 0.58 at step 2500, 3 saves since)"
    lines = run_log(store, "-n", "2", terminal=True)
    assert len(lines) == 2 + 1 and lines[-1] == main
    full = run_log(store, "--graph", "--all", terminal=True)
    cut = run_log(store, "--graph", "--all", "-n", "3", terminal=True)
    sparks = [line for line in full if " on " in line and "(best" in line]
    assert main.replace("on main  ", "on main         ") in sparks
    assert [line for line in cut if " on " in line and "(best" in line] == sparks


def test_piped_log_keeps_one_line_per_snapshot(family: Family) -> None:
    store, _ = family
    assert len(run_log(store, terminal=False)) == 8
    assert len(run_log(store, "--all", terminal=False)) == 15
