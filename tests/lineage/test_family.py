"""A model family base → instruct → chat → LoRA: lineage, children, the graph, and the bytes it costs.

The members are real save_pretrained folders of a tiny Llama imported with ``ckpt.interop``; the fine-tunes each change
a quarter of the tensors (instruct: the top ones, head included; chat: the next quarter down).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

import ckpt  # noqa: E402
from ckpt.diff import diff  # noqa: E402
from ckpt.interop import import_folder, import_peft_folder  # noqa: E402

from .models import perturb, tiny_llama, weights, with_lora  # noqa: E402

pytestmark = [
    pytest.mark.torch,
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
]


@dataclass
class Family:
    store: ckpt.Store
    folders: dict[str, Path]  # member → its folder as save_pretrained wrote it
    snaps: dict[str, ckpt.Snapshot]
    changed: dict[str, list[str]]  # fine-tune → the tensors it changed
    tensor_count: int


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Family:
    root = tmp_path_factory.mktemp("family")
    store = ckpt.init(str(root / "store"))
    model = tiny_llama()
    names = list(model.state_dict())
    quarter = round(len(names) / 4)
    changed = {"instruct": names[-quarter:], "chat": names[-2 * quarter : -quarter]}
    folders = {m: root / m for m in ("base", "instruct", "chat", "adapter", "merged")}
    snaps: dict[str, ckpt.Snapshot] = {}

    model.save_pretrained(folders["base"])
    snaps["base"] = import_folder(store, folders["base"], branch="main", model="tiny-llama", message="pretrained")
    sd = weights(model)
    for member, parent in (("instruct", "main"), ("chat", "instruct")):
        sd = perturb(sd, changed[member], seed=len(member))
        model.load_state_dict(sd)
        model.save_pretrained(folders[member])
        snaps[member] = import_folder(
            store,
            folders[member],
            branch=member,
            model=f"tiny-llama-{member}",
            parents=[parent],
            relation="finetune",
            message=f"{member} tuning",
        )
    lora = with_lora(model)
    lora.save_pretrained(folders["adapter"])
    snaps["adapter"] = import_peft_folder(store, folders["adapter"], "chat", branch="chat-lora", message="LoRA")
    lora.merge_and_unload().save_pretrained(folders["merged"])  # the adapter as a full model, outside the store
    return Family(store, folders, snaps, changed, len(names))


def test_lineage_children_and_log(family: Family) -> None:
    store, s = family.store, family.snaps
    chain = store.lineage("chat-lora")
    assert [x.id for x in chain] == [s["adapter"].id, s["chat"].id, s["instruct"].id, s["base"].id]
    assert [x.relation for x in chain] == ["adapter", "finetune", "finetune", "import"]
    assert [x.model for x in chain] == ["tiny-llama-chat-lora", "tiny-llama-chat", "tiny-llama-instruct", "tiny-llama"]
    assert [x.id for x in store.log("chat-lora")] == [x.id for x in chain]
    assert s["adapter"].base == s["chat"].id  # which base does this adapter need? always answered

    assert store.children("main") == [s["instruct"]]
    assert store.children("instruct") == [s["chat"]]
    assert store.children("chat") == [s["adapter"]]
    assert store.children("chat-lora") == []
    assert [x.id for x in store.snapshots()] == [s[m].id for m in ("adapter", "chat", "instruct", "base")]


def test_log_graph_draws_the_family(family: Family) -> None:
    from click.testing import CliRunner

    from ckpt.cli import cli

    result = CliRunner().invoke(cli, ["--store", family.store.url, "log", "--graph", "--all"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "●" in line]
    assert len(rows) == 4
    expected = [("chat-lora", "adapter"), ("chat", "finetune"), ("instruct", "finetune"), ("main", "import")]
    for row, (branch, relation) in zip(rows, expected, strict=True):
        assert branch in row and relation in row, row


def test_fine_tunes_change_a_quarter_of_the_tensors(family: Family) -> None:
    store = family.store
    for member, parent in (("instruct", "base"), ("chat", "instruct")):
        rows = diff(store, family.snaps[parent].id, family.snaps[member].id).tensors  # bytes, not chunks: packs
        differ = [r.name.removeprefix("model/") for r in rows if r.status != "unchanged"]
        assert sorted(differ) == sorted(family.changed[member])
        assert 0.2 <= len(differ) / family.tensor_count <= 0.3
    assert "lm_head.weight" in family.changed["instruct"]


def test_storage_reflects_the_sharing(family: Family, capsys: pytest.CaptureFixture[str]) -> None:
    """Total store bytes against the four members saved as separate full folders: at most 0.45.

    The adapter's full folder is the model it makes (merged, as ``merge_and_unload().save_pretrained`` writes it).
    The ratio against three full folders plus the adapter's own small folder is printed too; by construction it
    cannot drop below 1.5 / 3 here (each fine-tune adds a quarter of a model), and the tiny model's tensor tables
    (about 5 kB a snapshot for 21 tensors, negligible for real models) add a few hundredths to both figures.
    """
    store_bytes = family.store.stats().total_bytes
    full = {m: _folder_bytes(family.folders[m]) for m in ("base", "instruct", "chat", "merged")}
    adapter_folder = _folder_bytes(family.folders["adapter"])
    ratio = store_bytes / sum(full.values())
    # a stricter baseline: the adapter as its own small PEFT folder instead of a merged full model
    strict = store_bytes / (full["base"] + full["instruct"] + full["chat"] + adapter_folder)
    with capsys.disabled():
        print(
            f"\nfamily storage: store {store_bytes} B; four full folders {sum(full.values())} B -> ratio {ratio:.3f}; "
            f"three full folders + adapter folder {sum(full.values()) - full['merged'] + adapter_folder} B "
            f"-> {strict:.3f}"
        )
    assert ratio <= 0.45


@pytest.mark.parametrize("chunk_size", [1024, 1000])
def test_vocabulary_growth_shares_leading_chunks(tmp_path: Path, chunk_size: int) -> None:
    """A chat model that appends rows for new special tokens stores only the chunks past the old rows."""
    store = ckpt.init(str(tmp_path / "store"), chunk_size=chunk_size)
    model = tiny_llama()
    base = store.save({"model": weights(model)}, "main", model="tiny-llama")
    model.resize_token_embeddings(136)  # 8 new tokens: 8 rows more in the embedding and the (untied) head
    before = store.stats().chunk_bytes
    chat = store.derive("main", {"model": weights(model)}, branch="chat", model="tiny-llama-chat")
    grown = store.stats().chunk_bytes - before

    old, new = store.table(base.id), store.table(chat.id)
    old_digests = {d for e in old.tensors.values() for d in e.chunks}
    new_chunks: dict[str, int] = {}
    for entry in new.tensors.values():
        for i, digest in enumerate(entry.chunks):
            if digest not in old_digests:
                new_chunks[digest] = min(chunk_size, entry.nbytes - i * chunk_size)
    expected = 0
    for name in ("model/model.embed_tokens.weight", "model/lm_head.weight"):
        before_entry, after_entry = old.tensors[name], new.tensors[name]
        assert before_entry.nbytes == 128 * 32 * 4 > chunk_size and after_entry.nbytes == 136 * 32 * 4
        leading = before_entry.nbytes // chunk_size  # chunks holding only old rows
        assert after_entry.chunks[:leading] == before_entry.chunks[:leading]
        expected += after_entry.nbytes - leading * chunk_size
    assert sum(new_chunks.values()) == expected  # only the tail past the old rows is new
    assert grown == expected + 16 * len(new_chunks)  # each stored chunk carries a 16-byte header
    assert expected <= 2 * (8 * 32 * 4 + chunk_size)
