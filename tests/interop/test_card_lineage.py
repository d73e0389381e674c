"""Model-card lineage in and out of a store: ``base_model`` in a ``README.md`` front matter becomes the parents of
an imported folder when the bases are in the store, and an export writes a snapshot's bases into its card.

Real folders of safetensors files (numpy, no torch), real stores; what a user checks is the record (relation,
parents) and the card's bytes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import ckpt
from ckpt.errors import AmbiguousRevisionError, RecordError
from ckpt.interop import import_folder, read_card


def model_folder(path: Path, card: str | None = None, seed: int = 0) -> Path:
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    save_file({"w.weight": rng.standard_normal((4, 4)).astype(np.float32)}, str(path / "model.safetensors"))
    (path / "config.json").write_text('{"hidden_size": 4}')
    if card is not None:
        (path / "README.md").write_text(card)
    return path


def card(base: str | list[str], relation: str | None = None) -> str:
    bases = base if isinstance(base, str) else "[" + ", ".join(base) + "]"
    rel = f"base_model_relation: {relation}\n" if relation else ""
    return f"---\nlicense: mit\nbase_model: {bases}\n{rel}---\n# A model\n"


@pytest.fixture
def store(tmp_path: Path) -> ckpt.Store:
    s = ckpt.init(str(tmp_path / "store"))
    import_folder(s, model_folder(tmp_path / "tiny"), model="tiny")
    return s


def test_the_base_is_found_by_model_name_and_by_tag(store: ckpt.Store, tmp_path: Path) -> None:
    base = store.resolve("main").id
    snap = import_folder(store, model_folder(tmp_path / "a", card("org/tiny"), 1), branch="a")
    assert (snap.relation, snap.parents) == ("finetune", (base,))  # no relation in the card: the Hub's finetune
    store.tag("tiny-v1", "main")
    other = import_folder(store, model_folder(tmp_path / "b", card("tiny-v1", "quantized"), 2), branch="b")
    assert (other.relation, other.parents) == ("quantized", (base,))


def test_several_bases_are_a_merge(store: ckpt.Store, tmp_path: Path) -> None:
    second = import_folder(store, model_folder(tmp_path / "other", seed=3), branch="other", model="other")
    snap = import_folder(store, model_folder(tmp_path / "m", card(["org/tiny", "org/other"]), 4), branch="m")
    assert (snap.relation, snap.parents) == ("merge", (store.resolve("main").id, second.id))


def test_a_base_not_in_the_store_leaves_a_line_of_its_own(store: ckpt.Store, tmp_path: Path) -> None:
    snap = import_folder(store, model_folder(tmp_path / "x", card(["org/tiny", "org/elsewhere"]), 1), branch="x")
    assert (snap.relation, snap.parents) == ("import", ())
    assert read_card(store.files(snap.id)["README.md"]).base_models == ("org/tiny", "org/elsewhere")  # kept


def test_explicit_lineage_and_an_existing_branch_win_over_the_card(store: ckpt.Store, tmp_path: Path) -> None:
    tuned = model_folder(tmp_path / "t", card("org/tiny"), 1)
    snap = import_folder(store, tuned, branch="t", parents=[], relation=None)
    assert snap.parents == ()  # parents=[] says: no parent
    again = import_folder(store, tuned, branch="t")
    assert (again.relation, again.parents) == ("continue", (snap.id,))  # the branch's head, as without a card


def test_a_base_named_by_two_branch_heads_is_refused(store: ckpt.Store, tmp_path: Path) -> None:
    import_folder(store, model_folder(tmp_path / "tiny2", seed=5), branch="tiny-b", model="tiny")
    before = len(store.snapshots())
    with pytest.raises(AmbiguousRevisionError, match="parent"):
        import_folder(store, model_folder(tmp_path / "a", card("org/tiny"), 1), branch="a")
    assert len(store.snapshots()) == before and "a" not in store.branches()


@pytest.mark.parametrize(
    "front",
    [
        "base_model: !!python/object/apply:os.system ['echo pwned']\n",  # safe_load refuses it
        "base_model: {a: 1}\n",
        "base_model: org/tiny\nbase_model_relation: fork\n",
        "base_model: [org/tiny\n",
    ],
)
def test_a_bad_card_is_refused_and_nothing_is_stored(store: ckpt.Store, tmp_path: Path, front: str) -> None:
    before = len(store.snapshots())
    with pytest.raises(RecordError, match=r"README\.md"):
        import_folder(store, model_folder(tmp_path / "bad", f"---\n{front}---\n# Bad\n", 1), branch="bad")
    assert len(store.snapshots()) == before and "bad" not in store.branches()


def test_export_writes_the_line_s_bases_into_the_card(store: ckpt.Store, tmp_path: Path) -> None:
    state = store.load("main")
    files = {k: v for k, v in store.files("main").items() if not k.startswith(".ckpt/")}
    files["README.md"] = b"---\nlicense: mit # ours\n---\n# Tuned\n\nBody kept.\n"
    store.derive("main", state, branch="tuned", model="tiny-tuned", files=files)
    store.save(state, "tuned", step=2)  # a training save continues the line: its base is the line's
    ckpt.export(store, "tuned", tmp_path / "out")
    written = (tmp_path / "out" / "README.md").read_bytes()
    assert (
        written
        == b"---\nlicense: mit # ours\nbase_model: tiny\nbase_model_relation: finetune\n---\n# Tuned\n\nBody kept.\n"
    )


def test_export_of_an_import_gives_its_files_back(store: ckpt.Store, tmp_path: Path) -> None:
    source = model_folder(tmp_path / "a", card("org/tiny"), 1)
    import_folder(store, source, branch="a")
    ckpt.export(store, "a", tmp_path / "out")
    assert (tmp_path / "out" / "README.md").read_bytes() == (source / "README.md").read_bytes()
    shutil.rmtree(tmp_path / "out")
    import_folder(
        store, model_folder(tmp_path / "plain", seed=2), branch="plain", parents=["main"], relation="finetune"
    )
    ckpt.export(store, "plain", tmp_path / "out")
    assert not (tmp_path / "out" / "README.md").exists()  # an imported folder comes back file for file


def test_a_peft_adapter_export_names_its_base(store: ckpt.Store, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    adapter = {
        "base_model.model.w.lora_A.weight": rng.standard_normal((2, 4)).astype(np.float32),
        "base_model.model.w.lora_B.weight": rng.standard_normal((4, 2)).astype(np.float32),
    }
    ckpt.save_adapter(store, "main", adapter, branch="lora", config={"r": 2, "lora_alpha": 4, "target_modules": ["w"]})
    ckpt.export(store, "lora", tmp_path / "out")
    found = read_card((tmp_path / "out" / "README.md").read_bytes())
    assert (found.base_models, found.relation, found.library_name) == (("tiny",), "adapter", "peft")


def peft_folder(path: Path, base_card: str, rows: int = 4) -> Path:
    path.mkdir(parents=True)
    rng = np.random.default_rng(0)
    save_file(
        {
            "base_model.model.w.lora_A.weight": rng.standard_normal((2, rows)).astype(np.float32),
            "base_model.model.w.lora_B.weight": rng.standard_normal((4, 2)).astype(np.float32),
        },
        str(path / "adapter_model.safetensors"),
    )
    (path / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["w"]}')
    (path / "README.md").write_text(f"---\nbase_model: {base_card}\nlibrary_name: peft\n---\n# LoRA\n")
    return path


def test_a_peft_folder_whose_card_names_its_base_is_an_adapter(store: ckpt.Store, tmp_path: Path) -> None:
    snap = import_folder(store, peft_folder(tmp_path / "lora", "org/tiny"), branch="lora")
    assert (snap.relation, snap.parents, snap.base) == (
        "adapter",
        (store.resolve("main").id,),
        store.resolve("main").id,
    )
    assert ckpt.load_merged(store, "lora")["model"]["w.weight"].shape == (4, 4)
    before = len(store.snapshots())
    with pytest.raises(ckpt.StateMismatchError):  # checked against the base before anything is stored
        import_folder(store, peft_folder(tmp_path / "bad", "org/tiny", rows=5), branch="bad")
    assert len(store.snapshots()) == before


def test_an_adapter_card_on_a_plain_folder_is_not_recorded(store: ckpt.Store, tmp_path: Path) -> None:
    snap = import_folder(store, model_folder(tmp_path / "x", card("org/tiny", "adapter"), 1), branch="x")
    assert (snap.relation, snap.parents, snap.base) == ("import", (), None)
