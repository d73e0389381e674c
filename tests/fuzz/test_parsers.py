"""Every parser that reads a store, an imported folder or what a user types, fed hostile input.

Each target (tests/fuzz/targets.py) reads one input through every public surface; the only exceptions allowed
are ``CkptError``s, and no input may make a reader allocate much more than the input itself. The run is
bounded and derandomized (the same inputs every time), so it stays fast and never flakes; the long, random
run is ``python benchmarks/robustness.py``.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .targets import TARGETS, Target

#: Inputs per target in the test suite (the benchmark runs thousands).
EXAMPLES = 25
#: No input of a few KiB may make its readers use more memory than this (resident, or allocated by Python).
MEMORY_LIMIT = 128 << 20

pytestmark = pytest.mark.timeout(300)  # a hang fails the run instead of stalling it

_PROC = Path("/proc/self")


def _status(key: str) -> int:
    for line in (_PROC / "status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _peak_growth(run: Callable[[], None]) -> int:
    """Bytes of memory ``run`` added at its peak: the kernel's resident high-water mark (reset first) where
    Linux offers it, which also sees torch's and mmap's memory; else Python's own allocations."""
    try:
        (_PROC / "clear_refs").write_text("5")  # resets VmHWM to the current resident size
        before = _status("VmRSS")
    except OSError:
        tracemalloc.start()
        try:
            run()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    run()
    return _status("VmHWM") - before


@pytest.mark.parametrize("target", TARGETS, ids=[t.name.replace(" ", "-") for t in TARGETS])
def test_only_clean_errors(target: Target) -> None:
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def check(data: st.DataObject) -> None:
        value: Any = data.draw(target.strategy)
        peak = _peak_growth(lambda: target.run(value))
        assert peak < MEMORY_LIMIT, f"{target.name}: one input made its readers use {peak >> 20} MiB more"

    target.warm_up()
    check()
