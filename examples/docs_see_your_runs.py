"""See your runs: a training history, its curves as an image, and what the web app serves.

    python examples/docs_see_your_runs.py [STORE]      # default: ./runs

Builds a store with numpy only (no torch): twelve epochs on ``main`` with a training and a validation loss (the
validation loss bottoms out at epoch 8), a learning-rate experiment branched from epoch 6, older saves pruned
by retention, the best save frozen. Then it reads the validation curve back (``ckpt.plot.metric_series``), draws
both losses of both runs into ``loss.png`` (``ckpt.plot.save_plot``; needs matplotlib), and serves the store
with ``ckpt.ui.serving`` for as long as it takes to read the family tree's JSON (needs the ``ui`` extra).
"""

from __future__ import annotations

import json
import sys
import urllib.request

import numpy as np

import ckpt
import ckpt.plot
import ckpt.ui
from ckpt import AnyOf, KeepBest, KeepLast

where = sys.argv[1] if len(sys.argv) > 1 else "runs"
store = ckpt.init(where)
rng = np.random.default_rng(0)
weights = {f"layers.{i}.weight": rng.standard_normal((16, 16)).astype(np.float32) for i in range(4)}


def epoch(scale: float) -> dict[str, np.ndarray]:
    """Stands in for one epoch of training: every weight moves a little."""
    for name in weights:
        weights[name] = weights[name] + scale * rng.standard_normal((16, 16)).astype(np.float32)
    return dict(weights)


val = [1.10, 0.84, 0.70, 0.62, 0.57, 0.54, 0.52, 0.51, 0.515, 0.52, 0.53, 0.545]
for e, v in enumerate(val, start=1):
    store.save({"model": epoch(0.02)}, step=e * 1000, epoch=e, model="tiny-lm",
               metrics={"train_loss": round(1.2 / e**0.5, 3), "val_loss": v}, message=f"epoch {e}")  # fmt: skip

store.branch("exp/lr-3e-4", at="main~6")  # back to epoch 6, try a smaller learning rate
weights = {k: np.asarray(v) for k, v in store.load("exp/lr-3e-4")["model"].items()}
for e, v in enumerate([0.515, 0.49, 0.48, 0.485], start=7):
    store.save({"model": epoch(0.01)}, branch="exp/lr-3e-4", step=e * 1000, epoch=e,
               metrics={"train_loss": round(1.25 / e**0.5, 3), "val_loss": v}, message="lr 3e-4")  # fmt: skip

pruned = store.retain("main", AnyOf(KeepLast(3), KeepBest("val_loss", 1)))
series = ckpt.plot.metric_series(store, "val_loss", "main")
best = series.best_point
assert best is not None
release = store.freeze(best.snapshot, model="tiny-lm", name="tiny-lm-v1")
print(f"main: {len(series.points)} saves, {len(pruned)} pruned, best val_loss {best.value} at step {best.step}")
print(f"no improvement for the last {series.since_best} saves; best frozen as {release}")

try:
    ckpt.plot.save_plot(store, "loss", "loss.png")  # train and validation loss of every branch
    print("wrote loss.png")
except ckpt.CkptError as e:  # matplotlib not installed
    print(f"{e} ({e.hint})")

try:
    # what `ckpt ui` serves, on a free loopback port, for as long as the `with` block runs
    with ckpt.ui.serving(store) as url, urllib.request.urlopen(url + "api/graph") as response:
        graph = json.load(response)
    print(f"the family tree: {len(graph['nodes'])} snapshots, {len(graph['edges'])} edges")
except ckpt.CkptError as e:  # the ui extra is not installed
    print(f"{e} ({e.hint})")
