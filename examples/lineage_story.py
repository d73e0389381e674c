"""The whole story of ckpt in one run: a tiny language model is born, released, fine-tuned and adapted.

    python examples/lineage_story.py [STORE] [--quick]

On two CPU cores, in about a minute, this script

1. pre-trains a tiny character-level transformer on ``examples/data/lighthouse.txt`` (a short story written for
   this project), with a ``ckpt.Checkpointer`` saving every epoch (in the background) and stopping early once
   the validation loss stops improving;
2. freezes the best epoch as the release ``tiny-lm-<date>``;
3. goes back two saves and carries on differently on a branch (a lower learning rate);
4. fine-tunes the release into an instruct model and that into a chat model (relation ``finetune``);
5. trains a LoRA adapter on the chat model (relation ``adapter``: only the adapter's tensors are stored);
6. loads the adapter merged into its base and generates a line of text;
7. prints ``ckpt log --graph --all`` and the store's size against the same snapshots as separate safetensors
   files.

``STORE`` is the store to use (default: ``$CKPT_STORE``, else ``./.ckpt``); it is created if it does not
exist. Run the story again on the same store and it tells itself on new branches (``run2/main``…) next to the
first run's, and freezes ``tiny-lm-<date>.2``. ``--quick`` runs every step with a few training steps only (the
test suite does). Look around afterwards with ``ckpt log --graph --all``, ``ckpt show tiny-lm-<date>``…
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import ckpt
from ckpt import Checkpointer, rng_state, set_rng_state

DATA = Path(__file__).resolve().parent / "data"
CONTEXT = 48


class Tokenizer:
    """Characters ↔ ids, over every character of the project's texts."""

    def __init__(self, texts: list[str]) -> None:
        self.chars = sorted(set("".join(texts)))
        self.ids = {c: i for i, c in enumerate(self.chars)}

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor([self.ids[c] for c in text], dtype=torch.long)

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)


class Attention(torch.nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = torch.nn.Linear(dim, dim, bias=False)
        self.k_proj = torch.nn.Linear(dim, dim, bias=False)
        self.v_proj = torch.nn.Linear(dim, dim, bias=False)
        self.o_proj = torch.nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, d))


class Block(torch.nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = torch.nn.LayerNorm(dim)
        self.up_proj = torch.nn.Linear(dim, 4 * dim)
        self.down_proj = torch.nn.Linear(4 * dim, dim)
        self.drop = torch.nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.down_proj(F.gelu(self.up_proj(self.norm2(x)))))


class TinyLM(torch.nn.Module):
    """A small GPT: token and position embeddings, pre-norm transformer blocks, a language-model head."""

    def __init__(self, vocab: int, dim: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.pos = torch.nn.Embedding(CONTEXT, dim)
        self.blocks = torch.nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm = torch.nn.LayerNorm(dim)
        self.lm_head = torch.nn.Linear(dim, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos(torch.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm(x))


class LoRA:
    """LoRA on every block's ``q_proj`` and ``v_proj``: ``W x + (alpha / r) · B A x``, the base left frozen.

    The update is added by forward hooks, so the model's own weights and names stay as they are; the adapter
    tensors carry PEFT's names, so ckpt can merge them (and export them as a PEFT folder).
    """

    def __init__(self, model: TinyLM, r: int = 4, alpha: int = 8) -> None:
        self.config = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": ["q_proj", "v_proj"]}
        self.scale = alpha / r
        self.params: dict[str, torch.nn.Parameter] = {}
        for name, module in model.named_modules():
            if name.endswith(("q_proj", "v_proj")):
                assert isinstance(module, torch.nn.Linear)
                a = torch.nn.Parameter(torch.randn(r, module.in_features) / math.sqrt(module.in_features))
                b = torch.nn.Parameter(torch.zeros(module.out_features, r))
                self.params[f"base_model.model.{name}.lora_A.weight"] = a
                self.params[f"base_model.model.{name}.lora_B.weight"] = b
                module.register_forward_hook(self._hook(a, b))

    def _hook(self, a: torch.Tensor, b: torch.Tensor):  # type: ignore[no-untyped-def]
        def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> torch.Tensor:
            return output + self.scale * (inputs[0] @ a.t()) @ b.t()

        return hook

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.params.items()}


def batches(data: torch.Tensor, n: int, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` batches of random windows (drawn from torch's global generator, which the saves record)."""
    out = []
    for _ in range(n):
        starts = torch.randint(0, len(data) - CONTEXT - 1, (size,))
        x = torch.stack([data[s : s + CONTEXT] for s in starts])
        y = torch.stack([data[s + 1 : s + CONTEXT + 1] for s in starts])
        out.append((x, y))
    return out


def loss_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def train_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, data: torch.Tensor, steps: int) -> float:
    model.train()
    total = 0.0
    for x, y in batches(data, steps):
        loss = loss_of(model, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += float(loss.detach())
    return total / steps


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: torch.Tensor) -> float:
    """Mean loss over every full window of ``data``, in order (no randomness)."""
    model.eval()
    starts = range(0, len(data) - CONTEXT - 1, CONTEXT // 2)
    x = torch.stack([data[s : s + CONTEXT] for s in starts])
    y = torch.stack([data[s + 1 : s + CONTEXT + 1] for s in starts])
    return float(loss_of(model, x, y))


@torch.no_grad()
def generate(model: TinyLM, tok: Tokenizer, prompt: str, max_new: int = 60) -> str:
    """Greedy continuation of ``prompt`` up to the end of the line."""
    model.eval()
    ids = tok.encode(prompt).tolist()
    for _ in range(max_new):
        logits = model(torch.tensor([ids[-CONTEXT:]]))[0, -1]
        nxt = int(logits.argmax())
        if tok.chars[nxt] == "\n":
            break
        ids.append(nxt)
    return tok.decode(ids)[len(prompt) :]


def split(text: str, tok: Tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 90 % to train on, the rest to validate on."""
    ids = tok.encode(text)
    cut = int(len(ids) * 0.9)
    return ids[:cut], ids[cut - CONTEXT :]


def state_of(model: torch.nn.Module, opt: torch.optim.Optimizer, epoch: int) -> dict[str, object]:
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": rng_state(), "epoch": epoch}


def full_file_bytes(store: ckpt.Store, snap: ckpt.Snapshot, folder: Path) -> int:
    """The size of a snapshot as one standalone safetensors file (an adapter: the merged model it gives)."""
    if snap.relation == "adapter":
        tensors = dict(ckpt.load_merged(store, snap.id)["model"])
    else:
        tensors = dict(store.tensors(snap.id))
    path = folder / f"{snap.id}.safetensors"
    save_file({name: t.contiguous() for name, t in tensors.items()}, str(path))
    return path.stat().st_size


def chunk_bytes(store: ckpt.Store, snaps: list[ckpt.Snapshot]) -> int:
    """Bytes of the distinct chunks some snapshots use (what they cost together in the store)."""
    seen: dict[str, int] = {}
    for snap in snaps:
        table = store.table(snap.id)
        entries = [(e.nbytes, e.chunks) for e in table.tensors.values()]
        entries += [(e.size, e.chunks) for e in table.files.values()]
        for size, chunks in entries:
            for k, digest in enumerate(chunks):
                seen[digest] = min(table.chunk_size, size - k * table.chunk_size) + 16  # + the chunk's header
    return sum(seen.values())


def run_prefix(store: ckpt.Store) -> str:
    """``""`` for the first story in a store, else ``runN/`` with the first N whose branches are all free."""
    taken = set(store.branches())
    n = 1
    while True:
        prefix = "" if n == 1 else f"run{n}/"
        if not any(name.startswith(prefix) and name.removeprefix(prefix) in STORY_BRANCHES for name in taken):
            return prefix
        n += 1


STORY_BRANCHES = ("main", "main-slow", "instruct", "chat", "chat-ahoy")


def release_name(store: ckpt.Store, model: str) -> str:
    """``<model>-<today, UTC>`` (as ``Store.freeze`` names it), or ``….2``, ``….3`` if an earlier run took it."""
    base = f"{model}-{datetime.now(timezone.utc):%Y-%m-%d}"
    tags, n = store.tags(), 2
    name = base
    while name in tags:
        name, n = f"{base}.{n}", n + 1
    return name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store", nargs="?", help="The store (default: $CKPT_STORE, else ./.ckpt); created if missing.")
    ap.add_argument("--quick", action="store_true", help="A few training steps per stage (for tests).")
    args = ap.parse_args()
    url = args.store or os.environ.get("CKPT_STORE") or ".ckpt"
    try:
        store = ckpt.open(url)
    except ckpt.StoreNotFoundError:
        store = ckpt.init(url)
    run = run_prefix(store)
    b = {name: f"{run}{name}" for name in ("main", "main-slow", "instruct", "chat", "chat-ahoy")}
    print(f"store: {url}" + (f" (already has a story: this run's branches are {run}*)" if run else "") + "\n")

    torch.manual_seed(0)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    texts = {name: (DATA / f"{name}.txt").read_text(encoding="utf-8") for name in ("lighthouse", "instruct", "chat")}
    texts["notes"] = (DATA / "margin_notes.txt").read_text(encoding="utf-8")
    tok = Tokenizer(list(texts.values()))
    steps, max_epochs, patience = (3, 4, 2) if args.quick else (30, 40, 3)

    # 1. pre-training: a checkpoint every epoch, early stopping on the validation loss -------------------------
    print("1. pre-training tiny-lm on lighthouse.txt (a save every epoch, early stopping on val_loss)")
    train, val = split(texts["lighthouse"], tok)
    model = TinyLM(len(tok.chars))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    with Checkpointer(store, b["main"], monitor="val_loss", keep_last=3, model="tiny-lm") as ckpts:
        for epoch in range(max_epochs):
            train_loss = train_epoch(model, opt, train, steps)
            val_loss = evaluate(model, val)
            handle = ckpts.save(
                state_of(model, opt, epoch),
                step=(epoch + 1) * steps,
                epoch=epoch,
                metrics={"train_loss": train_loss, "val_loss": val_loss},
                message=f"epoch {epoch}",
            )
            print(f"   epoch {epoch:2d}  train {train_loss:.3f}  val {val_loss:.3f}  (saving in the background)")
            if ckpts.should_stop(patience):
                print(f"   val_loss has not improved for {patience} epochs: stopping early")
                break
        handle.result()
        best = ckpts.best()
        assert best is not None
        print(f"   best: epoch {best.epoch} ({best.short_id}), val_loss {best.metrics['val_loss']:.3f}")

        # 2. the best epoch becomes a frozen, dated release ----------------------------------------------------
        release = ckpts.freeze_best(name=release_name(store, "tiny-lm"))
    print(f"\n2. froze the best epoch as the release {release!r} (it can never move or be pruned)")

    # 3. go back two saves and carry on differently --------------------------------------------------------------
    print(f"\n3. back to {b['main']}~2, carrying on with a lower learning rate on branch {b['main-slow']!r}")
    store.branch(b["main-slow"], at=f"{b['main']}~2")
    with Checkpointer(store, b["main-slow"], monitor="val_loss", model="tiny-lm") as ckpts:
        state = ckpts.resume()
        assert state is not None
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        for group in opt.param_groups:
            group["lr"] = 1e-3
        for epoch in range(state["epoch"] + 1, state["epoch"] + 3):
            train_loss = train_epoch(model, opt, train, steps)
            val_loss = evaluate(model, val)
            ckpts.save(
                state_of(model, opt, epoch), step=(epoch + 1) * steps, epoch=epoch, metrics={"val_loss": val_loss}
            )
            print(f"   epoch {epoch:2d}  val {val_loss:.3f}")

    # 4. fine-tunes: release -> instruct -> chat ----------------------------------------------------------------
    parent = release
    for label, name, epochs in (("4a", "instruct", 4), ("4b", "chat", 12)):
        print(f"\n{label}. fine-tuning {parent} into tiny-lm-{name} on {name}.txt")
        model = TinyLM(len(tok.chars))
        ckpt.restore(model, store, parent)
        # the embeddings and the first block stay as they are (their tensors are shared, not stored again)
        for module in (model.embed, model.pos, model.blocks[0]):
            module.requires_grad_(False)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
        data = tok.encode(texts[name])
        for epoch in range(1 if args.quick else epochs):
            loss = train_epoch(model, opt, data, steps)
            print(f"   epoch {epoch}  train {loss:.3f}")
        snap = store.derive(
            parent,
            {"model": model.state_dict()},
            branch=b[name],
            model=f"tiny-lm-{name}",
            step=epochs * steps,
            metrics={"train_loss": loss},
            message=f"fine-tuned on {name}.txt",
        )
        print(f"   {snap.short_id}: relation {snap.relation!r} to {store.get(snap.parents[0]).short_id}")
        parent = b[name]
    chat = model

    # 5. a LoRA adapter over the chat model: only its tensors are stored -----------------------------------------
    print("\n5. training a LoRA adapter (q_proj, v_proj, r=8) over the chat model on margin_notes.txt")
    for p in chat.parameters():
        p.requires_grad_(False)
    lora = LoRA(chat, r=8, alpha=16)
    opt = torch.optim.AdamW(lora.params.values(), lr=1e-2)
    data = tok.encode(texts["notes"])
    for epoch in range(1 if args.quick else 15):
        loss = train_epoch(chat, opt, data, steps)
        print(f"   epoch {epoch}  train {loss:.3f}")
    adapter = ckpt.save_adapter(
        store,
        b["chat"],
        lora.state_dict(),
        branch=b["chat-ahoy"],
        config=lora.config,
        model="tiny-lm-chat-ahoy",
        message="ahoy",
    )
    print(f"   {adapter.short_id}: relation {adapter.relation!r}, base {store.get(adapter.base or '').short_id},")
    print(f"   {adapter.tensor_count} tensors, {adapter.tensor_bytes / 1e3:.1f} kB (the chat model has ", end="")
    print(f"{store.resolve(b['chat']).tensor_bytes / 1e3:.1f} kB)")

    # 6. load the adapter merged into its base, and talk to it ------------------------------------------------
    merged = TinyLM(len(tok.chars))
    merged.load_state_dict(ckpt.load_merged(store, b["chat-ahoy"])["model"])
    plain = TinyLM(len(tok.chars))
    plain.load_state_dict(store.load(b["chat"])["model"])
    prompt = "User: hello keeper\nBot:"
    with torch.no_grad():
        x = tok.encode(prompt)[None]
        assert torch.allclose(merged.eval()(x), chat.eval()(x), atol=1e-4)  # merged == base + live adapter
    print("\n6. the adapter merged into its base (W + alpha/r · B A), and the chat model without it:")
    print(f"   {prompt!r} -> with the adapter:    {generate(merged, tok, prompt)!r}")
    print(f"   {prompt!r} -> without the adapter: {generate(plain, tok, prompt)!r}")

    # 7. the family tree, and what it costs ----------------------------------------------------------------------
    report = store.gc(grace=timedelta(0))
    print(f"\n7. gc reclaimed {report.freed_bytes / 1e6:.2f} MB of pruned epochs; the family tree:\n")
    from ckpt.cli import main as cli

    try:
        cli(["--store", url, "log", "--graph", "--all"])
    except SystemExit as e:
        if e.code:
            raise
    live = [s for s in store.snapshots() if not s.pruned]
    family = [store.resolve(rev) for rev in (release, b["instruct"], b["chat"], b["chat-ahoy"])]
    folder = Path(tempfile.mkdtemp(prefix="ckpt-lineage-files-"))
    sizes = {snap.id: full_file_bytes(store, snap, folder) for snap in live}
    shutil.rmtree(folder)
    in_store, as_files = store.stats().total_bytes, sum(sizes.values())
    print(f"\nall {len(live)} live snapshots: {in_store / 1e6:.2f} MB in the store (chunks, records, refs, logs)")
    print(f"   vs {as_files / 1e6:.2f} MB as {len(live)} full safetensors files: {in_store / as_files:.0%}")
    shared, alone = chunk_bytes(store, family), sum(sizes[s.id] for s in family)
    print(f"the family release -> instruct -> chat -> adapter: {shared / 1e6:.2f} MB of chunks")
    print(f"   vs {alone / 1e6:.2f} MB as 4 full files (the adapter as its merged model): {shared / alone:.0%}")
    where = "" if url == ".ckpt" else f" --store {url}"
    print(f"\nexplore it: ckpt{where} log --graph --all, ckpt{where} show {release}")


if __name__ == "__main__":
    main()
