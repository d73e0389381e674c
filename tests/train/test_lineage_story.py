"""``examples/lineage_story.py`` runs end to end (reduced) and leaves the family it tells of in the store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import ckpt

pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parents[2]


def test_lineage_story_quick(tmp_path: Path) -> None:
    url = str(tmp_path / "story")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CKPT_")}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "lineage_story.py"), url, "--quick"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    steps = ("1. pre-training", "2. froze", "3. back to main~2", "4a.", "4b.", "5. training a LoRA", "6. the adapter")
    for marker in steps:
        assert marker in out, marker
    assert "(chat-ahoy) adapter tiny-lm-chat-ahoy" in out  # the graph
    assert "MB as 4 full files" in out

    store = ckpt.open(url)
    release = next(name for name, tag in store.tags().items() if tag.frozen)
    assert release.startswith("tiny-lm-")
    chat_lora, chat, instruct = store.resolve("chat-ahoy"), store.resolve("chat"), store.resolve("instruct")
    assert chat_lora.relation == "adapter" and chat_lora.base == chat.id
    names = [f"blocks.{i}.attn.{p}.lora_{ab}.weight" for i in (0, 1) for p in ("q_proj", "v_proj") for ab in "AB"]
    assert set(store.table(chat_lora.id).tensors) == {f"model/base_model.model.{n}" for n in names}
    assert chat.relation == "finetune" and chat.parents == (instruct.id,)
    assert instruct.relation == "finetune" and instruct.parents == (store.resolve(release).id,)
    slow = store.log("main-slow")
    assert [s.relation for s in slow[:2]] == ["continue", "continue"] and slow[2].id == store.resolve("main~2").id

    # frozen parts of the fine-tunes are the release's own bytes (small ones may share a pack with trained ones)
    def raw(rev: str, name: str) -> bytes:
        return b"".join(store.tensor_bytes(rev, name))

    assert raw(release, "model/embed.weight") == raw(chat.id, "model/embed.weight")
    assert raw(release, "model/lm_head.weight") != raw(chat.id, "model/lm_head.weight")
    assert store.verify().ok
