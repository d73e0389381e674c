"""Robustness figures: the long fuzz run over every parser, and SIGKILL trials on a local store and on S3.

Fuzz (the targets of tests/fuzz/targets.py, each in its own process so that its peak RSS is its own): for each
target, random hostile inputs are fed through every surface that reads them. Printed per target: inputs tried,
clean errors (``CkptError``), other exceptions (bugs; the first few are listed with where they were raised),
hangs (an input that took longer than ``--hang`` seconds), and the worker's peak RSS.

Kill trials: a child process saves a few MiB into a store and is killed with SIGKILL after a random delay
drawn over [0, 1.5 × a save's duration]. Each child reports every step of the commit protocol as it starts it
(chunks, table, record, ref, reflog), so each kill is attributed to the step it interrupted. After every kill
the store must verify clean, every branch and tag must point at a snapshot whose data is all there, and the
branch must be at the old head or at the new, complete snapshot.

    python benchmarks/robustness.py                       # everything, the long version (~10 min)
    python benchmarks/robustness.py --examples 200 --kills 20 --s3-kills 5   # a quick look

Timing is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


# -- fuzz -------------------------------------------------------------------------------------------------


class _Hang(Exception):
    pass


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Hang()


def _where(exc: BaseException) -> str:
    """The innermost frame of ckpt's own code (else the innermost frame) that an exception passed through."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/ckpt/" in f.filename.replace("\\", "/")]
    f = (ours or frames)[-1] if (ours or frames) else None
    return f"{Path(f.filename).name}:{f.lineno} {f.name}" if f else "?"


def fuzz_worker(name: str, examples: int, seed: int, hang: float) -> dict[str, Any]:
    """Run one target (in this process) and return its figures."""
    sys.path.insert(0, str(ROOT))
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    from ckpt.errors import CkptError
    from tests.fuzz.targets import STATS, TARGETS

    target = next(t for t in TARGETS if t.name == name)
    counts: Counter[str] = Counter()
    bugs: Counter[str] = Counter()
    signal.signal(signal.SIGALRM, _on_alarm)
    random.seed(seed)
    target.warm_up()
    STATS.clear()

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def run(data: st.DataObject) -> None:
        value = data.draw(target.strategy)
        counts["tried"] += 1
        signal.setitimer(signal.ITIMER_REAL, hang)
        try:
            target.run(value)
            counts["accepted"] += 1
        except CkptError:
            counts["clean"] += 1
        except _Hang:
            counts["hangs"] += 1
            bugs[f"hang: {value!r}"[:160]] += 1
        except Exception as e:
            counts["other"] += 1
            bugs[f"{type(e).__name__} at {_where(e)}: {str(e)[:100]}"] += 1
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    start = time.perf_counter()
    try:
        run()
    except Exception as e:  # hypothesis itself gave up: report what ran until then
        bugs[f"the run stopped early: {type(e).__name__}: {str(e)[:100]}"] += 1
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {
        "target": name,
        "tried": counts["tried"],
        "accepted": counts["accepted"],
        "clean": counts["clean"],
        "other": counts["other"],
        "hangs": counts["hangs"],
        "reads": STATS["ok"] + STATS["refused"],
        "refused": STATS["refused"],
        "peak_rss": rss,
        "seconds": seconds,
        "bugs": bugs.most_common(8),
    }


def run_fuzz(examples: int, seed: int, hang: float, only: list[str] | None) -> list[dict[str, Any]]:
    sys.path.insert(0, str(ROOT))
    from tests.fuzz.targets import TARGETS

    results = []
    for i, target in enumerate(TARGETS):
        if only and target.name not in only:
            continue
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            target.name,
            "--examples",
            str(examples),
            "--seed",
            str(seed + i),
            "--hang",
            str(hang),
        ]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            results.append(
                {
                    "target": target.name,
                    "tried": 0,
                    "accepted": 0,
                    "clean": 0,
                    "other": 0,
                    "hangs": 0,
                    "peak_rss": 0,
                    "seconds": 0.0,
                    "bugs": [(f"worker died (exit status {proc.returncode}): {proc.stderr[-300:]}", 1)],
                }
            )
        else:
            results.append(json.loads(lines[-1]))
        r = results[-1]
        print(
            f"  {r['target']:<20} {r['tried']:>6} {r.get('reads', 0):>8} {r.get('refused', 0):>8} {r['other']:>6} "
            f"{r['hangs']:>6} {r['peak_rss'] / 2**20:>9.0f} {r['seconds']:>8.1f}",
            flush=True,
        )
    return results


# -- SIGKILL trials -----------------------------------------------------------------------------------------

_CHILD = r"""
import sys, json
import numpy as np
import ckpt
from ckpt.store import _layout as layout

url, seed, opts, pause_at = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
store = ckpt.open(url, **opts)
state = {"name": "before", "writes": 0}

def report(name):
    if state["name"] != name:
        state["name"] = name
        sys.stdout.write("step " + name + "\n")
        sys.stdout.flush()

class Watch:
    # says which step of the commit protocol each write belongs to, and can stop before the N-th write
    def __init__(self, real):
        self.real = real
    def __getattr__(self, name):
        return getattr(self.real, name)
    def _step(self, path):
        for prefix, name in ((layout.CHUNKS, "chunks"), (layout.TABLES, "table"), (layout.SNAPSHOTS, "record"),
                             (layout.REFS_HEADS, "ref"), (layout.LOGS, "reflog")):
            if path.startswith(prefix):
                break
        else:
            name = "other"
        report(name)
        state.setdefault("steps", []).append(name)
        if state["writes"] == pause_at:
            sys.stdout.write("paused\n")
            sys.stdout.flush()
            sys.stdin.readline()  # killed here
        state["writes"] += 1
    def put_if_absent(self, path, data, *a, **k):
        self._step(path)
        return self.real.put_if_absent(path, data, *a, **k)
    def replace(self, path, data, *a, **k):
        self._step(path)
        return self.real.replace(path, data, *a, **k)
    def compare_and_swap(self, path, *a, **k):
        self._step(path)
        return self.real.compare_and_swap(path, *a, **k)

store = ckpt.Store(Watch(store.backend), store.config)
rng = np.random.default_rng(seed)
tensors = {f"layers.{i}.weight": rng.standard_normal(64 * 1024, dtype=np.float32) for i in range(8)}
print("ready", flush=True)
if sys.stdin.readline().strip() != "go":
    sys.exit(1)
report("start")
snap = store.save({"model": tensors, "step": seed}, step=seed)
report("returned")
print("done", snap.id, state["writes"], ",".join(state.get("steps", [])), flush=True)
sys.stdin.readline()
"""


def _check_store(url: str, opts: dict[str, Any], old_head: str) -> tuple[bool, str, str]:
    """Verify the store after a kill; returns (sound?, where main is, what was wrong or what was repaired).

    A kill between a ref's compare-and-swap and its reflog append leaves the ref at the new, complete snapshot
    without the reflog entry of that move: ``verify`` reports it (``missing`` reflog), gc refuses until it is
    written back, and ``repair`` (no source needed) writes it back. That is loud and repairable, no data is
    lost: it is counted apart ("reflog repaired"), after ``repair`` and a clean ``verify``, not as broken.
    """
    import ckpt
    from ckpt.store import store_parts

    store = ckpt.open(url, **opts)
    report = store.verify()
    note = ""
    if not report.ok and all(d.kind == "missing" and d.object == "reflog" for d in report.damage):
        store.repair()
        report = store.verify()
        note = "reflog repaired"
    if not report.ok:
        return False, "", f"verify: {report.damage[:2]}"
    refs = dict(store.branches())
    refs.update({f"tag {n}": t.id for n, t in store.tags().items()})
    for name, sid in refs.items():
        snap = store.get(sid)
        table = store.table(sid)
        missing = [d for d in table.chunk_digests() if not store_parts(store).objects.has_chunk(d)]
        if missing and not snap.pruned:
            return False, "", f"{name} points at {sid[:12]} whose chunks are missing"
    head = refs["main"]
    if head != old_head and store.get(head).parents != (old_head,):
        return False, head, f"main moved to {head[:12]}, not a child of {old_head[:12]}"
    store.load("main", framework="numpy")
    return True, head, note


def run_kills(trials: int, url: str, opts: dict[str, Any], seed: int) -> dict[str, Any]:
    """SIGKILL ``trials`` saving children: half at a random moment (over 1.5 × a save's duration), half right
    before a randomly chosen write of the commit protocol (so that the rare steps, ref and reflog, are hit too)."""
    import ckpt

    store = ckpt.init(url, chunk_size=64 * 1024, **opts)
    store.save({"step": 0}, step=0)
    rng = random.Random(seed)

    def child(n: int, pause_at: int = -1) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", _CHILD, url, str(n), json.dumps(opts), str(pause_at)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )

    def close(p: subprocess.Popen[str]) -> str:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait()
        out = p.stdout.read() if p.stdout else ""
        for stream in (p.stdin, p.stdout, p.stderr):
            if stream:
                stream.close()
        return out

    # how long a save takes seen from here, and how many writes it makes
    durations: list[float] = []
    protocol: list[str] = []  # the step of each write of one save
    for n in (1, 2):
        p = child(n)
        assert p.stdout is not None and p.stdin is not None
        assert p.stdout.readline().strip() == "ready", p.stderr.read() if p.stderr else ""
        t = time.perf_counter()
        p.stdin.write("go\n")
        p.stdin.flush()
        while not (line := p.stdout.readline()).startswith("done"):
            assert line, p.stderr.read() if p.stderr else ""
        durations.append(time.perf_counter() - t)
        protocol = line.split()[3].split(",")
        close(p)
    save_time = max(durations)
    landed: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    head = ckpt.open(url, **opts).branches()["main"]
    # a targeted kill picks a step of the protocol first, then one of its writes, so that every step is hit
    by_step: dict[str, list[int]] = {}
    for index, name in enumerate(protocol):
        by_step.setdefault(name, []).append(index)
    plans = [
        ("timed", -1) if i % 2 == 0 else ("write", rng.choice(by_step[rng.choice(sorted(by_step))]))
        for i in range(trials)
    ]
    pending = child(100, plans[0][1])
    for trial, (how, _) in enumerate(plans):
        p = pending
        assert p.stdout is not None and p.stdin is not None
        line = p.stdout.readline().strip()
        assert line == "ready", (line, p.stderr.read() if p.stderr else "")
        if trial + 1 < trials:  # the next one starts while this one runs (an interpreter starts slowly)
            pending = child(101 + trial, plans[trial + 1][1])
        start = time.perf_counter()
        p.stdin.write("go\n")
        p.stdin.flush()
        seen = []
        if how == "timed":
            time.sleep(max(0.0, 1.5 * save_time * rng.random() - (time.perf_counter() - start)))
        else:
            while (line := p.stdout.readline()) and not line.startswith(("paused", "done")):
                seen.append(line)
        out = "".join(seen) + close(p)
        steps = [ln.split()[1] for ln in out.splitlines() if ln.startswith("step ")]
        where = steps[-1] if steps else "before"
        if any(ln.startswith("done") for ln in out.splitlines()):
            where = "after"
        landed[where] += 1
        sound, now, problem = _check_store(url, opts, head)
        if not sound:
            failures.append(f"trial {trial} (killed during {where}): {problem}")
            outcomes["broken"] += 1
        elif problem:
            outcomes[f"committed, {problem}"] += 1
            head = now
        elif now != head:
            outcomes["committed"] += 1
            head = now
        else:
            outcomes["untouched"] += 1
    if trials == 0:
        close(pending)
    from datetime import timedelta

    store = ckpt.open(url, **opts)
    collected = store.gc(grace=timedelta(0))
    final = store.verify()
    return {
        "trials": trials,
        "save_seconds": save_time,
        "writes_per_save": len(protocol),
        "landed": dict(landed),
        "outcomes": dict(outcomes),
        "failures": failures,
        "gc_removed": collected.snapshots + collected.tables + collected.chunks + collected.other,
        "verify_after_gc": final.ok,
    }


def _s3(seed: int, trials: int) -> dict[str, Any]:
    import logging
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(
        {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    )
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        import boto3

        endpoint = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="kills")
        opts = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
        return run_kills(trials, "s3://kills/store", opts, seed)
    finally:
        server.stop()


def _print_kills(kind: str, r: dict[str, Any]) -> None:
    print(
        f"  {kind}: {r['trials']} kills (a save takes {r['save_seconds'] * 1000:.0f} ms and "
        f"{r['writes_per_save']} writes; half killed at a random moment, half before a random write)"
    )
    order = ["before", "start", "chunks", "table", "record", "ref", "reflog", "returned", "after", "other"]
    print("    landed during: " + ", ".join(f"{k} {r['landed'][k]}" for k in order if k in r["landed"]))
    print("    outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items())))
    print(
        f"    broken stores: {len(r['failures'])}; gc then removed {r['gc_removed']} leftover objects; "
        f"verify after gc: {'ok' if r['verify_after_gc'] else 'FAILED'}"
    )
    for f in r["failures"][:5]:
        print(f"    ! {f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=1000, help="inputs per fuzz target")
    parser.add_argument("--kills", type=int, default=100, help="SIGKILL trials on a local store")
    parser.add_argument("--s3-kills", type=int, default=30, help="SIGKILL trials on S3 (moto)")
    parser.add_argument("--seed", type=int, default=20261128)
    parser.add_argument("--hang", type=float, default=20.0, help="seconds after which one input counts as a hang")
    parser.add_argument("--target", action="append", help="only this fuzz target (repeatable)")
    parser.add_argument("--no-fuzz", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(fuzz_worker(args.worker, args.examples, args.seed, args.hang)))
        return

    print(f"ckpt robustness (python {sys.version.split()[0]}, seed {args.seed})")
    if not args.no_fuzz:
        print(
            f"fuzz: {args.examples} inputs per target; each input goes through every reader of it (API, CLI, "
            f"export); a hang is > {args.hang:.0f} s"
        )
        print(
            f"  {'target':<20} {'inputs':>6} {'reads':>8} {'clean':>8} {'other':>6} {'hangs':>6} {'peak MiB':>9} "
            f"{'seconds':>8}"
        )
        results = run_fuzz(args.examples, args.seed, args.hang, args.target)
        total = {k: sum(r.get(k, 0) for r in results) for k in ("tried", "reads", "refused", "other", "hangs")}
        peak = max((r["peak_rss"] for r in results), default=0)
        print(
            f"  {'total':<20} {total['tried']:>6} {total['reads']:>8} {total['refused']:>8} {total['other']:>6} "
            f"{total['hangs']:>6} {peak / 2**20:>9.0f}"
        )
        print(
            "  inputs: hostile inputs tried; reads: reader calls made with them; clean: reads refused with a "
            "CkptError;\n  other: inputs that raised anything else (bugs, listed below); hangs: inputs that ran "
            "past the limit"
        )
        for r in results:
            for bug, n in r["bugs"]:
                print(f"    ! {r['target']}: {n} × {bug}")
    if args.kills:
        with tempfile.TemporaryDirectory(prefix="ckpt-kills-") as tmp:
            _print_kills("local", run_kills(args.kills, str(Path(tmp) / "store"), {}, args.seed))
    if args.s3_kills:
        _print_kills("s3 (moto)", _s3(args.seed + 1, args.s3_kills))


if __name__ == "__main__":
    main()
