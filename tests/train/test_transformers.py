"""The Hugging Face Trainer callback, with a real tiny GPT-2 trained on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import ckpt

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from ckpt.errors import StateMismatchError  # noqa: E402
from ckpt.integrations.transformers import CkptTrainerCallback  # noqa: E402

from . import trainer_run  # noqa: E402

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
    options = ckpt.CheckpointerOptions(monitor="loss", retention=ckpt.KeepLast(2), model="tiny-gpt")  # eval_loss
    cb = CkptTrainerCallback(store, "main", options=options)
    assert cb.monitor == "eval_loss"
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
    cb = CkptTrainerCallback(ckpt.Checkpointer(store, "main", monitor="eval_loss", async_save=False), patience=1)
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
    cb = CkptTrainerCallback(ckpt.Checkpointer(store, "hf-released", monitor="eval_loss"))
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
cb = CkptTrainerCallback(ckpt.Checkpointer(store, "main", monitor="eval_loss", async_save=False), patience=1)
model = torch.nn.Linear(4, 1)
state = TrainerState(is_world_process_zero=rank == 0, is_local_process_zero=rank == 0)
cb.on_train_begin(None, state, TrainerControl())
torch.manual_seed(100 + rank)  # every process draws its own dropout masks
answers = []
for step, loss in enumerate([1.0, 0.5, 0.6], start=1):  # the third evaluation brings no improvement
    state.global_step = step
    control = TrainerControl()
    cb.on_evaluate(None, state, control, model=model, metrics={"eval_loss": loss})
    answers.append(control.should_training_stop)
after = torch.rand(4)  # what this process drew after the last save
cb.on_train_end(None, state, TrainerControl())

# a new run resumes from the store: every process gets its own generators back where the Trainer would put them
again = CkptTrainerCallback(store, "main")
folder = again.resume_path()
resumed = TrainerState.load_from_json(os.path.join(folder, "trainer_state.json"))  # as the Trainer does
torch.manual_seed(0)
again.on_train_begin(None, resumed, TrainerControl(), train_dataloader=range(4))  # 3 of 4 steps into the epoch
again.on_step_begin(None, resumed, TrainerControl())
same = bool(torch.equal(torch.rand(4), after))
again.on_train_end(None, resumed, TrainerControl())
print(rank, answers, same, flush=True)
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
    assert outputs == ["0 [False, False, True] True", "1 [False, False, True] True"]
    assert len(ckpt.open(url).log("main")) == 3  # saved once, by the main process


# -- resuming a Trainer run from the store -------------------------------------------------------------------


def _same_run(a: object, b: object) -> None:
    """Two finished Trainers hold bit-identical weights and optimizer states, at the same point of the run."""
    wa, wb = a.model.state_dict(), b.model.state_dict()
    assert list(wa) == list(wb)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    oa, ob = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert oa["param_groups"] == ob["param_groups"]
    assert oa["state"].keys() == ob["state"].keys()
    for i in oa["state"]:
        for k, v in oa["state"][i].items():
            assert torch.equal(v, ob["state"][i][k]), (i, k)
    assert a.lr_scheduler.state_dict() == b.lr_scheduler.state_dict()
    sa, sb = a.state, b.state
    assert (sa.global_step, sa.epoch, sa.best_metric) == (sb.global_step, sb.epoch, sb.best_metric)
    evals_a = [e for e in sa.log_history if "eval_loss" in e]
    assert [e["eval_loss"] for e in evals_a] == [e["eval_loss"] for e in sb.log_history if "eval_loss" in e]


def test_a_killed_run_resumed_from_the_store_ends_bit_identical(tmp_path: Path) -> None:
    """A process killed (SIGKILL) in epoch 3 of 4, after the save of epoch 2 was committed; a new Trainer
    resumes from the store and ends where the uninterrupted run ends: weights, optimizer, scheduler, state."""
    import os
    import signal
    import subprocess
    import sys
    import threading

    url = str(tmp_path / "store")
    store = ckpt.init(url, chunk_size=4096)
    whole, _ = trainer_run.trainer(store, "whole", tmp_path / "out")
    whole.train()

    root = Path(__file__).resolve().parents[2]
    script = Path(trainer_run.__file__)
    pause_at = 2 * trainer_run.STEPS_PER_EPOCH + 1  # one step into epoch 3: weights moved on, unsaved
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, str(script), url, "main", str(pause_at), str(tmp_path / "killed")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    guard = threading.Timer(300, proc.kill)  # only if the child hangs: then readline() sees EOF and we fail
    guard.start()
    try:
        line = "{"
        while line.startswith("{"):  # the Trainer prints its logs; then the child's word that its saves are in
            line = proc.stdout.readline()
    finally:
        guard.cancel()
    head = store.resolve("main")
    assert line.split() == ["paused", head.id] and head.step == 2 * trainer_run.STEPS_PER_EPOCH
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert [s.epoch for s in store.log("main")] == [2.0, 1.0]

    resumed, cb = trainer_run.trainer(store, "main", tmp_path / "out")
    path = cb.resume_path()
    assert path is not None and sorted(os.listdir(path)) == ["config.json", "model.safetensors", "trainer_state.json"]
    resumed.train(resume_from_checkpoint=path)
    assert not os.path.exists(path)  # the temporary folder is gone once training began

    _same_run(whole, resumed)
    assert [s.step for s in store.log("main")] == [16, 12, 8, 4]
    assert store.log("main")[1].parents == (head.id,)  # the resumed run goes on from the killed one's last save
    final_whole, final_main = store.load("whole"), store.load("main")
    for key in ("model", "optimizer", "scheduler", "rng"):
        _same_tree(final_whole[key], final_main[key])


def _same_tree(a: object, b: object) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            _same_tree(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same_tree(x, y)
    else:
        assert a == b


@pytest.mark.parametrize(
    ("seedable", "accumulation", "lora"), [(True, 1, False), (False, 1, False), (False, 2, False), (True, 1, True)]
)
def test_a_run_interrupted_mid_epoch_resumes_bit_identical(
    tmp_path: Path, seedable: bool, accumulation: int, lora: bool
) -> None:
    """A save in the middle of an epoch: the Trainer skips the batches already trained on, the callback puts
    the generators back where the Trainer would; with a sampler that draws its order from torch's global
    generator (``use_seedable_sampler=False``) the epoch's order comes back too; with gradient accumulation
    the Trainer counts optimizer steps, the callback too; a PEFT LoRA fine-tune resumes the same way."""
    store = ckpt.init(str(tmp_path / "store"), chunk_size=4096)
    options = {
        "num_train_epochs": 2,
        "eval_strategy": "steps",
        "eval_steps": 3,
        "per_device_train_batch_size": 8 // accumulation,
        "gradient_accumulation_steps": accumulation,
        "accelerator_config": {"use_seedable_sampler": seedable},
    }
    whole, _ = trainer_run.trainer(store, "whole", tmp_path / "out", lora=lora, **options)
    whole.train()

    class Interrupt(transformers.TrainerCallback):
        def on_step_end(self, args: object, state: object, control: object, **kwargs: object) -> None:
            if state.global_step == 7:  # the save of step 6 is two batches into epoch 2
                raise KeyboardInterrupt

    first, cb = trainer_run.trainer(store, "main", tmp_path / "out", lora=lora, **options)
    first.add_callback(Interrupt())
    with pytest.raises(KeyboardInterrupt):
        first.train()
    assert cb.checkpointer.latest().step == 6
    cb.checkpointer.close()

    resumed, cb2 = trainer_run.trainer(store, "main", tmp_path / "out", lora=lora, **options)
    resumed.train(resume_from_checkpoint=cb2.resume_path())
    _same_run(whole, resumed)


def test_resume_path_on_a_new_branch_and_on_a_foreign_one(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "store"), chunk_size=4096)
    fresh, cb = trainer_run.trainer(store, "main", tmp_path / "out", num_train_epochs=1)
    assert cb.resume_path() is None  # a first run starts afresh
    fresh.train(resume_from_checkpoint=cb.resume_path())
    assert len(store.log("main")) == 1

    store.save({"weights": torch.zeros(3)}, branch="other", step=5)
    _, other = trainer_run.trainer(store, "other", tmp_path / "out")
    with pytest.raises(StateMismatchError, match="not saved by a CkptTrainerCallback") as info:
        other.resume_path()
    assert "ckpt.restore" in (info.value.hint or "")


def test_a_prepared_resume_that_train_does_not_use_is_not_applied(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "store"), chunk_size=4096)
    t, _ = trainer_run.trainer(store, "main", tmp_path / "out", num_train_epochs=1)
    t.train()
    again, cb2 = trainer_run.trainer(store, "main", tmp_path / "out", num_train_epochs=1)
    path = cb2.resume_path()
    with pytest.warns(UserWarning, match="did not resume from it"):
        again.train()  # resume_from_checkpoint not passed: a fresh run, nothing of the snapshot is forced on it
    assert again.state.global_step == trainer_run.STEPS_PER_EPOCH and not Path(path).exists()


def test_a_resume_into_another_model_or_without_optimizer_state_is_told(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "store"), chunk_size=4096)
    cb = CkptTrainerCallback(store, "weights-only", save_optimizer=False)
    t, _ = trainer_run.trainer(store, "unused", tmp_path / "out", num_train_epochs=1)
    t.remove_callback(CkptTrainerCallback)
    t.add_callback(cb)
    t.train()
    assert "optimizer" not in store.load("weights-only")
    again, cb2 = trainer_run.trainer(store, "weights-only", tmp_path / "out", num_train_epochs=2)
    with pytest.warns(UserWarning, match="holds no optimizer state"):
        again.train(resume_from_checkpoint=cb2.resume_path())
    assert again.state.global_step == 2 * trainer_run.STEPS_PER_EPOCH

    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=32, n_positions=16)
    other = transformers.Trainer(
        model=transformers.GPT2LMHeadModel(config),
        args=again.args,
        train_dataset=trainer_run.rows(32, 1),
        eval_dataset=trainer_run.rows(8, 2),
        callbacks=[cb3 := CkptTrainerCallback(store, "weights-only")],
    )
    with pytest.raises(StateMismatchError, match="weights of another model"):
        other.train(resume_from_checkpoint=cb3.resume_path())


def test_the_callback_takes_a_checkpointer_or_its_options(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "s"))
    assert CkptTrainerCallback(store).monitor == "eval_loss"  # the Trainer's default metric
    named = CkptTrainerCallback(store, "acc", options=ckpt.CheckpointerOptions(monitor="accuracy", mode="max"))
    assert named.monitor == "eval_accuracy" and named.checkpointer.mode == "max" and named.branch == "acc"
    ckpts = ckpt.Checkpointer(store, "run", monitor="eval_loss", keep_last=2)
    assert CkptTrainerCallback(ckpts, patience=1).checkpointer is ckpts
    with pytest.raises(ckpt.RecordError, match="eval_<name>"):
        CkptTrainerCallback(ckpt.Checkpointer(store, "bare", monitor="loss"))
    with pytest.raises(ckpt.RecordError, match="its own branch and options"):
        CkptTrainerCallback(ckpts, options=ckpt.CheckpointerOptions())
    with pytest.raises(ckpt.RecordError, match="needs a metric"):
        CkptTrainerCallback(ckpt.Checkpointer(store, "plain"), patience=1)
