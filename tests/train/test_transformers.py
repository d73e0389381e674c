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


def test_the_callback_releases_its_thread_after_training_and_trains_again(tmp_path: Path) -> None:
    import threading

    store = ckpt.init(str(tmp_path / "store"), chunk_size=4096)
    model = _model()
    cb = CkptTrainerCallback(store, "hf-released", monitor="eval_loss")
    for epochs in (1, 2):
        trainer = transformers.Trainer(
            model=model,
            args=_args(tmp_path / "out", epochs, 1e-2),
            train_dataset=_data(16),
            eval_dataset=_data(8),
            callbacks=[cb],
        )
        trainer.train()
        assert not [t for t in threading.enumerate() if t.name == "ckpt-save-hf-released" and t.is_alive()]
    assert len(store.log("hf-released")) == 3 and cb.best() is not None


_DDP = r"""
import os, sys
import torch
import torch.distributed as dist
from transformers import TrainerControl, TrainerState
import ckpt
from ckpt.integrations.transformers import CkptTrainerCallback

rank = int(os.environ["RANK"])
dist.init_process_group("gloo", rank=rank, world_size=2)
store = ckpt.open(sys.argv[1])
cb = CkptTrainerCallback(store, "main", monitor="eval_loss", patience=1, async_save=False)
model = torch.nn.Linear(4, 1)
state = TrainerState(is_world_process_zero=rank == 0, is_local_process_zero=rank == 0)
cb.on_train_begin(None, state, TrainerControl())
answers = []
for step, loss in enumerate([1.0, 0.5, 0.6], start=1):  # the third evaluation brings no improvement
    state.global_step = step
    control = TrainerControl()
    cb.on_evaluate(None, state, control, model=model, metrics={"eval_loss": loss})
    answers.append(control.should_training_stop)
cb.on_train_end(None, state, TrainerControl())
print(rank, answers, flush=True)
dist.destroy_process_group()
"""


def test_every_process_of_a_distributed_run_stops_together(tmp_path: Path) -> None:
    """Only the main process saves and judges; the others must get its answer, or they train on alone and
    the run hangs at their next collective."""
    import os
    import socket
    import subprocess
    import sys

    url = str(tmp_path / "store")
    ckpt.init(url)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[2]
    procs = []
    for rank in (0, 1):
        env = {
            **os.environ,
            "PYTHONPATH": str(root),
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _DDP, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )
        )
    outputs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, err
        outputs.append(out.strip())
    assert outputs == ["0 [False, False, True]", "1 [False, False, True]"]
    assert len(ckpt.open(url).log("main")) == 3  # saved once, by the main process
