"""Start the ranks of a gloo process group on CPU as subprocesses (``ranks.py``) and collect their results."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

RANKS = Path(__file__).with_name("ranks.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank_env() -> dict[str, str]:
    """The test's environment (PYTHONPATH, AWS settings of the S3 server) with one thread per rank."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "CKPT_THREADS": "4"}


def start_ranks(scenario: str, args: dict[str, Any], world: int = 2) -> list[subprocess.Popen[str]]:
    """Start ``world`` ranks of ``scenario``; their stdout is a pipe (``STARTED``, ``RESULT`` lines)."""
    port = free_port()
    return [
        subprocess.Popen(
            [sys.executable, str(RANKS), scenario, str(rank), str(world), str(port), json.dumps(args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=rank_env(),
        )
        for rank in range(world)
    ]


def result_of(proc: subprocess.Popen[str], timeout: float = 240) -> dict[str, Any]:
    """Wait for a rank to end and return its ``RESULT``; a failed rank fails the test with its stderr."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"rank exited with {proc.returncode}:\n{err[-4000:]}"
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no RESULT line:\n{out[-2000:]}\n{err[-4000:]}"
    return dict(json.loads(lines[-1][len("RESULT ") :]))


@pytest.fixture
def run_ranks() -> Callable[..., list[dict[str, Any]]]:
    """``run_ranks(scenario, args, world=2)``: run a scenario on every rank, return each rank's result."""
    started: list[subprocess.Popen[str]] = []

    def run(scenario: str, args: dict[str, Any], world: int = 2) -> list[dict[str, Any]]:
        procs = start_ranks(scenario, args, world)
        started.extend(procs)
        return [result_of(p) for p in procs]

    yield run  # type: ignore[misc]
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()
