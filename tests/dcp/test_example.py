"""``examples/distributed.py`` runs under torchrun on two CPU processes, as the guide says."""

from __future__ import annotations

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
