"""A model card that puts a snapshot in the Hub's model tree: front matter written from the snapshot's lineage.

Run it with ``python examples/docs_model_card.py [FOLDER]`` (default: a new temporary folder). No torch needed.
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np

import ckpt
from ckpt.interop import card_with_lineage, read_card

# ckpt's relations, as the Hub names them (a plain training save or an import has no base to show)
HUB_RELATION = {"finetune": "finetune", "adapter": "adapter", "merge": "merge", "quantized": "quantized"}


def main(folder: str) -> None:
    store = ckpt.init(os.path.join(folder, ".ckpt"))
    rng = np.random.default_rng(0)
    weights = {"layers.0.weight": rng.standard_normal((8, 8), np.float32)}
    store.save({"model": weights}, model="tiny-sd")
    store.freeze("main", name="tiny-sd-v1")
    weights = {k: v * 1.01 for k, v in weights.items()}
    tuned = store.derive("tiny-sd-v1", {"model": weights}, branch="anime", model="tiny-sd-anime")

    # the card the author wrote, with a base of its own that is not this model's
    readme = os.path.join(folder, "README.md")
    with open(readme, "wb") as f:
        f.write(b"---\nlicense: mit\n# the author's note\nbase_model: someone/else\ntags:\n- art\n---\n# Anime\n")

    parent = store.get(tuned.parents[0])
    with open(readme, "rb") as f:
        written = f.read()
    card = card_with_lineage(
        written,
        base_models=[f"my-org/{parent.model}"],  # the base's Hub id
        relation=HUB_RELATION[tuned.relation],  # type: ignore[arg-type]
        library_name="diffusers",
        tags=["text-to-image"],
    )
    print(card.decode())
    lineage = read_card(card)
    assert lineage.base_models == ("my-org/tiny-sd",) and lineage.relation == "finetune"
    assert lineage.tags == ("art", "text-to-image") and b"# the author's note\n" in card
    assert card.endswith(b"---\n# Anime\n")  # the body, byte for byte


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(tmp)
