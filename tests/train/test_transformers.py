"""The Hugging Face Trainer callback, with a real tiny GPT-2 trained on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import ckpt

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from ckpt.integrations.transformers import CkptTrainerCallback  # noqa: E402

pytestmark = [
    pytest.mark.torch,
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning"),
]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16)
    return transformers.GPT2LMHeadModel(config)


def _data(n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    rows = []
    for _ in range(n):
        ids = torch.randint(0, 32, (16,), generator=g)
        rows.append({"input_ids": ids, "labels": ids})
    return rows


def _args(out: Path, epochs: int, lr: float) -> object:
    return transformers.TrainingArguments(
        str(out),
        eval_strategy="epoch",
        save_strategy="no",
        num_train_epochs=epochs,
        per_device_train_batch_size=8,
        learning_rate=lr,
        report_to=[],
        use_cpu=True,
        logging_strategy="no",
        disable_tqdm=True,
    )


def test_each_evaluation_is_a_snapshot(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "store"), chunk_size=4096)
    model = _model()
    cb = CkptTrainerCallback(store, "main", monitor="loss", keep_last=2, model="tiny-gpt")
    trainer = transformers.Trainer(
        model=model,
        args=_args(tmp_path / "out", 3, 5e-2),
        train_dataset=_data(32),
        eval_dataset=_data(8),
        callbacks=[cb],
    )
    trainer.train()
    log = store.log("main")
    assert [(s.step, s.epoch) for s in log] == [(12, 3.0), (8, 2.0), (4, 1.0)]
    best = cb.best()
    assert best is not None and {s.step for s in log if not s.pruned} == {12, 8, best.step}  # keep_last=2 + best
    assert "eval_loss" in log[0].metrics and log[0].model == "tiny-gpt"
    state = store.load("main")
    assert {"model", "optimizer", "scheduler", "trainer_state", "rng"} <= set(state)
    assert state["trainer_state"]["global_step"] == 12
    assert json.loads(store.files("main")["config.json"])["n_embd"] == 16
    for k, v in model.state_dict().items():
        assert torch.equal(state["model"][k], v), k
    trainer.evaluate()  # an evaluation outside training saves nothing
    assert len(store.log("main")) == 3
    fresh = _model()
    ckpt.restore(fresh, store, "main")
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values(), strict=True))


def test_early_stopping_stops_the_trainer(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "store"), chunk_size=4096)
    cb = CkptTrainerCallback(store, "main", monitor="eval_loss", patience=1, async_save=False)
    trainer = transformers.Trainer(
        model=_model(),
        args=_args(tmp_path / "out", 20, 0.0),
        train_dataset=_data(16),
        eval_dataset=_data(8),
        callbacks=[cb],
    )
    trainer.train()  # nothing learns (lr 0): the second evaluation brings no improvement
    assert trainer.state.epoch == 2.0 and len(store.log("main")) == 2
    best = cb.best()
    assert best is not None and cb.freeze_best(name="tiny-gpt-best") == "tiny-gpt-best"
