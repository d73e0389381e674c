"""Model cards and the Hub's model tree: lineage read from a ``README.md`` on import, written into it on export.

Run it with ``python examples/docs_model_card.py [FOLDER]`` (default: a new temporary folder). No torch needed.
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
from safetensors.numpy import save_file

import ckpt
from ckpt.interop import card_with_lineage, import_folder, read_card


def main(folder: str) -> None:
    store = ckpt.init(os.path.join(folder, ".ckpt"))
    rng = np.random.default_rng(0)
    weights = {"layers.0.weight": rng.standard_normal((8, 8), np.float32)}
    store.save({"model": weights}, model="tiny-sd")
    store.freeze("main", name="tiny-sd-v1")

    # import: a folder whose card names a base that is in the store becomes a child of it
    tuned = os.path.join(folder, "tiny-sd-anime")
    os.makedirs(tuned)
    save_file({k: v * 1.01 for k, v in weights.items()}, os.path.join(tuned, "model.safetensors"))
    with open(os.path.join(tuned, "README.md"), "w") as f:
        f.write("---\nlicense: mit\nbase_model: my-org/tiny-sd\nbase_model_relation: finetune\n---\n# Anime\n")
    snap = import_folder(store, tuned, branch="anime", model="tiny-sd-anime")
    assert (snap.relation, snap.parents) == ("finetune", (store.resolve("tiny-sd-v1").id,))

    # export: a snapshot that starts a line gets its bases into its card, every other line of the card kept
    card = b"---\nlicense: mit\n# the author's note\ntags:\n- art\n---\n# Quantized\n"
    store.derive("tiny-sd-v1", {"model": weights}, branch="q", relation="quantized", files={"README.md": card})
    out = ckpt.export(store, "q", os.path.join(folder, "out"))
    written = (out.path / "README.md").read_bytes()
    print(written.decode())
    lineage = read_card(written)
    assert (lineage.base_models, lineage.relation) == (("tiny-sd",), "quantized")
    assert b"# the author's note\n" in written and written.endswith(b"---\n# Quantized\n")  # the rest, byte for byte

    # the same edit by hand, with the base's Hub id instead of its model name
    by_hand = card_with_lineage(card, base_models=["my-org/tiny-sd"], relation="quantized", tags=["ckpt"])
    assert read_card(by_hand).tags == ("art", "ckpt")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(tmp)
