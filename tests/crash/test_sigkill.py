"""The acceptance test for crash safety: SIGKILL a process that is saving, at every stage of the save.

A child process opens a local store, builds a state of several MiB (numpy, so it starts fast), says
``ready``, waits for ``go`` on stdin and saves. Half the trials kill it right after its k-th write to the
store (the child says ``paused`` there and waits to be killed; k spread over every write a save makes, from
the first chunk to the ref move), so every stage is covered whatever the machine's speed; the other half kill
it after a random delay across ``[0, 1.5 × the time a save takes]``, so kills also land inside a write. After
every kill the store must verify, the branch must point at the old head or at the new snapshot (which fully
loads), and the next save must go through (no stale lock). At the end the killed saves' leftovers are
collected by gc, which must leave the store verified and smaller.
"""

from __future__ import annotations

import fcntl
import os
import random
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import ckpt

TRIALS = 24
BATCH = 8  # children started at once
SEED = 20261128
CHUNK = 256 * 1024
TENSORS = 8
TENSOR_FLOATS = 256 * 1024  # 1 MiB of float32 each: 4 chunks

_STATE_CODE = f"""
import numpy as np

def make_state(seed):
    rng = np.random.default_rng(seed)
    model = {{f"layers.{{i}}.weight": rng.standard_normal({TENSOR_FLOATS}, dtype=np.float32) for i in range({TENSORS})}}
    model["embed"] = np.arange({CHUNK // 4 * 2}, dtype=np.float32)  # the same in every save: deduplicated
    return {{"model": model, "step": seed, "rng": {{"seed": seed, "note": "trial"}}}}
"""

_CHILD = (
    _STATE_CODE
    + """
import sys, threading, time
import ckpt

store = ckpt.open(sys.argv[1])
seed, pause_at = int(sys.argv[2]), int(sys.argv[3])
state = make_state(seed)
writes, lock = [0], threading.Lock()

def counted(write):
    def run(*args, **kwargs):
        out = write(*args, **kwargs)
        with lock:
            writes[0] += 1
            n = writes[0]
        if n == pause_at:  # this write is done: wait here to be killed (other writer threads go on)
            print("paused", n, flush=True)
            threading.Event().wait()
        return out
    return run

for verb in ("put_if_absent", "replace", "compare_and_swap", "delete"):
    setattr(store.backend, verb, counted(getattr(store.backend, verb)))
print("ready", flush=True)
if sys.stdin.readline().strip() != "go":
    sys.exit(1)  # the test went away
t = time.perf_counter()
snap = store.save(state, step=seed, message=f"save {seed}")
print("done", snap.id, time.perf_counter() - t, writes[0], flush=True)
sys.stdin.readline()  # stay alive until killed
"""
)

_ns: dict[str, Any] = {}
exec(_STATE_CODE, _ns)
make_state = _ns["make_state"]


def _assert_state(got: Any, want: Any) -> None:
    assert list(got) == list(want)
    for key, value in want.items():
        if key != "model":
            assert got[key] == value, key
    for name, array in want.get("model", {}).items():
        assert got["model"][name].dtype == array.dtype and got["model"][name].shape == array.shape
        assert got["model"][name].tobytes() == array.tobytes(), name


def _size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


class _Child:
    """A child process that saves one state when told to."""

    def __init__(self, root: Path, seed: int, pause_at: int = 0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(root), str(seed), str(pause_at)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

        self.ready = False

    def wait_ready(self) -> None:
        """Wait until the child has started, opened the store and built its state."""
        assert self.proc.stdout is not None
        if not self.ready:
            line = self.proc.stdout.readline()
            assert line.strip() == "ready", (line, self._stderr())
            self.ready = True

    def go(self) -> float:
        """Tell the (ready) child to save; returns when that was."""
        self.wait_ready()
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return time.perf_counter()

    def wait_done(self) -> int:
        """Wait for the save to finish; returns how many writes it made."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("done "), (line, self._stderr())
        return int(line.split()[3])

    def wait_paused_or_done(self) -> None:
        """Wait until the child paused at its write (or finished the save before reaching it)."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith(("paused ", "done ")), (line, self._stderr())
        self._said = line

    def kill(self) -> str | None:
        """SIGKILL the child; returns the id it reported saving, if it got that far."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        assert self.proc.returncode == -signal.SIGKILL, (self.proc.returncode, self._stderr())
        assert self.proc.stdout is not None
        out = getattr(self, "_said", "") + self.proc.stdout.read()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        done = [line for line in out.splitlines() if line.startswith("done ")]
        return done[0].split()[1] if done else None

    def close(self) -> None:
        """Make sure the child is gone (when a check failed half-way)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def _stderr(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stderr is not None
        return self.proc.stderr.read()


def _lock_is_free(root: Path) -> bool:
    lock = root / "locks" / "refs.lock"
    if not lock.exists():
        return True
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _garbage(store: ckpt.Store) -> int:
    plan = store.gc(grace=timedelta(0), dry_run=True)
    return plan.snapshots + plan.tables + plan.chunks + plan.other


def _save_time(root: Path) -> tuple[float, int]:
    """How long a save takes seen from here, from "go" to "done" (the slower of two, both with a parent), and
    how many writes it makes (the fewer of the two)."""
    durations, writes = [], []
    for seed in (1, 2):
        child = _Child(root, seed)
        try:
            start = child.go()
            writes.append(child.wait_done())
            durations.append(time.perf_counter() - start)
        finally:
            child.close()
    return max(durations), min(writes)


def test_sigkill_while_saving_never_breaks_the_store(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = ckpt.init(str(root), chunk_size=CHUNK)
    store.save(make_state(0), step=0, model="m", message="first")
    save_time, writes = _save_time(root)  # also saves make_state(1) and make_state(2)
    head, head_state = store.branches()["main"], make_state(2)
    assert store.get(head).step == 2

    rng = random.Random(SEED)
    span = 1.5 * save_time
    timed = TRIALS // 2
    delays = [span * (i + rng.random()) / timed for i in range(timed)]  # stratified over [0, span)
    pauses = [1 + (writes - 1) * i // (TRIALS - timed - 1) for i in range(TRIALS - timed)]  # first to last write
    plan: list[tuple[str, float]] = [("delay", d) for d in delays] + [("write", float(k)) for k in pauses]
    rng.shuffle(plan)

    outcomes = {"untouched": 0, "garbage": 0, "committed": 0, "reflog": 0}
    garbage_before = _garbage(store)
    children: list[_Child] = []
    paused = {"untouched": 0, "garbage": 0, "committed": 0}
    try:
        for trial, (how, when) in enumerate(plan):
            seed = 100 + trial
            if trial % BATCH == 0:
                # start a batch of children together (an interpreter takes longer to start than a save), and
                # let them all get ready first so that none competes for the CPU with the save being killed
                batch = range(trial, min(trial + BATCH, TRIALS))
                children = [_Child(root, 100 + t, int(plan[t][1]) if plan[t][0] == "write" else 0) for t in batch]
                for c in children:
                    c.wait_ready()
            child = children[trial % BATCH]
            start = child.go()
            if how == "write":
                child.wait_paused_or_done()
            else:
                time.sleep(max(0.0, when - (time.perf_counter() - start)))  # a random moment, not an event
            reported = child.kill()

            assert _lock_is_free(root), f"trial {trial}: the killed saver left the refs lock held"
            store = ckpt.open(str(root))
            report = store.verify()
            now = store.branches()["main"]
            if not report.ok:  # killed between the branch move and its reflog entry: exactly that, and repairable
                assert [(d.kind, d.object, d.snapshots) for d in report.damage] == [("missing", "reflog", (now,))], (
                    trial,
                    report.damage,
                )
                assert store.repair().ok
                outcomes["reflog"] += 1
            if reported is not None:
                assert now == reported, f"trial {trial}: the save reported {reported} but main is at {now}"
            if now == head:
                _assert_state(store.load("main"), head_state)
            else:
                snap = store.get(now)
                assert snap.parents == (head,) and snap.step == seed, (trial, snap)
                _assert_state(store.load("main"), make_state(seed))
            garbage = _garbage(store)
            outcome = "committed" if now != head else "garbage" if garbage > garbage_before else "untouched"
            outcomes[outcome] += 1
            if how == "write":
                paused[outcome] += 1
            garbage_before = garbage
            moment = f"write {int(when)} of {writes}" if how == "write" else f"{when * 1000:.0f} ms"
            print(f"trial {trial}: kill after {moment}: {outcome}")

            # the next save goes through (a small one, so that the next trial starts from a new head)
            head_state = {"step": -trial}
            small = store.save(head_state, step=-trial, message=f"after trial {trial}")
            assert small.parents == (now,)
            head = small.id
    finally:
        for c in children:
            c.close()
    print(f"save takes {save_time * 1000:.0f} ms and {writes} writes; outcomes {outcomes}, at a write {paused}")
    # a kill after the first write leaves garbage, one after the last (the ref moved) a commit: both happen
    assert paused["garbage"] >= 1 and paused["committed"] >= 1, (paused, writes)

    store = ckpt.open(str(root))
    before = _size(root)
    collected = store.gc(grace=timedelta(0))
    assert collected.chunks + collected.other > 0, collected
    after = _size(root)
    assert after < before, (before, after, collected)
    verified = store.verify()
    assert verified.ok, verified.damage
    assert _garbage(store) == 0
    for snap in store.log("main"):
        _ = store.load(snap.id)

    final = store.save(make_state(999), step=999, message="final")
    assert final.parents == (head,)
    _assert_state(store.load("main"), make_state(999))
    assert store.verify().ok
