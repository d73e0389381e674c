"""``examples/distributed.py`` runs under torchrun on two CPU processes, as the guide says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import ckpt

from .conftest import rank_env

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.torch


def test_the_distributed_example_runs_under_torchrun(tmp_path: Path) -> None:
    script = ROOT / "examples" / "distributed.py"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    env = {**rank_env(), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [*argv, str(tmp_path / "store")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verify: ok" in result.stdout
    store = ckpt.open(str(tmp_path / "store"))
    assert [s.step for s in store.log("main")] == [6, 3]
    assert store.resolve("main").model == "tiny-mlp"


def test_the_benchmarks_page_quotes_the_distributed_figures() -> None:
    """The page's table of distributed saves agrees with the JSON line it shows (the script's output)."""
    text = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    section = text[text.index("## Distributed saves") :]
    assert "python benchmarks/distributed.py --size-gb 1 --repeat 3" in section
    line = next(x for x in section.splitlines() if x.startswith('{"size_gb"'))
    result = json.loads(line)
    assert f"**{result['save_ratio']:.2f}**" in section
    assert f"| {result['dcp_save_s']:.3f} s | {result['ckpt_save_s']:.3f} s |" in section
    assert f"**{result['second_bytes_fraction']['ckpt']:.2f}**" in section
