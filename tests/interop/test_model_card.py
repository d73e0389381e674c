"""Model-card front matter: read with safe_load only, written so that the Hub shows the model tree, nothing else
of the card changed."""

from __future__ import annotations

import pytest

from ckpt.errors import RecordError
from ckpt.interop import card_with_lineage, read_card

CARD = (
    b"---\n"
    b"# a comment the author wrote\n"
    b"license: apache-2.0\n"
    b"base_model:\n"
    b"- org/old-base\n"
    b"tags:\n"
    b"  - text-to-image\n"
    b"widget:\n"
    b"  - text: a cat\n"
    b"    output:\n"
    b"      url: images/cat.png\n"
    b"---\n"
    b"\n"
    b"# My style\n\nTrained for 3 epochs.  \n---\nA horizontal rule above; not front matter.\n"
)


def hub_card(data: bytes) -> dict:
    """What huggingface_hub's own parser reads from the card."""
    hub = pytest.importorskip("huggingface_hub")
    return hub.ModelCard(data.decode("utf-8")).data.to_dict()


def test_lineage_fields_are_read() -> None:
    card = read_card(CARD)
    assert card.base_models == ("org/old-base",)
    assert card.relation is None and card.library_name is None
    assert card.tags == ("text-to-image",)
    assert card.metadata["license"] == "apache-2.0"
    listed = read_card(
        b"---\nbase_model: [a/x, b/y]\nbase_model_relation: merge\nlibrary_name: diffusers\ntags: lora\n---\n"
    )
    assert (listed.base_models, listed.relation, listed.library_name, listed.tags) == (
        ("a/x", "b/y"),
        "merge",
        "diffusers",
        ("lora",),
    )


@pytest.mark.parametrize("data", [b"", b"# no front matter\n", b"---\n---\n", b"text\n---\nkey: value\n---\n"])
def test_a_card_without_front_matter_has_no_lineage(data: bytes) -> None:
    assert read_card(data).base_models == ()


def test_bom_and_crlf_are_read() -> None:
    card = read_card(b"\xef\xbb\xbf---\r\nbase_model: org/base\r\nbase_model_relation: quantized\r\n---\r\nbody\r\n")
    assert (card.base_models, card.relation) == (("org/base",), "quantized")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"---\nbase_model: !!python/object/apply:os.system ['touch pwned']\n---\n", "not valid YAML"),
        (b"---\nx: !!python/name:os.system\n---\n", "not valid YAML"),
        (b"---\nbase_model: [unclosed\n---\n", "not valid YAML"),
        (b"---\n- a\n- b\n---\n", "not a mapping"),
        (b"---\nbase_model: {org: x}\n---\n", "base_model"),
        (b"---\nbase_model: [1, 2]\n---\n", "base_model"),
        (b"---\nbase_model: a/b\nbase_model_relation: distilled\n---\n", "base_model_relation"),
        (b"---\nlibrary_name: [x]\n---\n", "library_name"),
        (b"---\ntags: {a: b}\n---\n", "tags"),
        (b"---\nbase_model: \xff\n---\n", "UTF-8"),
        (b"---\nbase_model: org/a\nlicense: mit\nbase_model: org/b\n---\n", "key 'base_model' twice"),  # which?
        (b"---\n{base_model: org/a, base_model: org/b}\n---\n", "twice"),
        (b"---\nx: {a: 1, a: 2}\n---\n", "key 'a' twice"),
        pytest.param(b"---\nx: " + b"[" * 50_000 + b"]" * 50_000 + b"\n---\n", "nested too deeply", id="deep"),
    ],
)
def test_bad_cards_are_refused_by_field(data: bytes, match: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecordError, match=match):
        read_card(data)
    assert not (tmp_path / "pwned").exists()


def test_a_huge_front_matter_is_refused() -> None:
    with pytest.raises(RecordError, match="more than"):
        read_card(b"---\n" + b"k: v\n" * 300_000 + b"---\n")


def test_an_alias_bomb_is_read_without_expanding_it() -> None:
    bomb = (
        b"---\na: &a [x, x, x, x, x, x, x, x, x]\n"
        + b"".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n".encode()
            for i in range(20)
        )
        + b"base_model: org/x\n---\n"
    )
    assert read_card(bomb).base_models == ("org/x",)


def test_writing_keeps_every_other_byte() -> None:
    out = card_with_lineage(CARD, base_models=["org/tiny-sd"], relation="adapter", tags=["lora"])
    head, _, body = out.partition(b"\n---\n")
    assert body == CARD.partition(b"\n---\n")[2]  # the body, byte for byte
    assert b"# a comment the author wrote\nlicense: apache-2.0\n" in head  # other keys' lines as written
    assert b"      url: images/cat.png\n" in head
    assert b"old-base" not in out
    card = read_card(out)
    assert (card.base_models, card.relation, card.tags) == (("org/tiny-sd",), "adapter", ("text-to-image", "lora"))
    assert card.metadata["widget"] == read_card(CARD).metadata["widget"]
    hub = hub_card(out)
    assert (hub["base_model"], hub["base_model_relation"], hub["license"]) == ("org/tiny-sd", "adapter", "apache-2.0")


def test_writing_twice_changes_nothing_more() -> None:
    once = card_with_lineage(CARD, base_models=["org/tiny-sd"], relation="adapter", tags=["lora"])
    assert card_with_lineage(once, base_models=["org/tiny-sd"], relation="adapter", tags=["lora"]) == once


def test_several_bases_make_a_list_and_no_relation_drops_the_field() -> None:
    merged = card_with_lineage(CARD, base_models=["a/x", "b/y"], relation="merge")
    assert read_card(merged).base_models == ("a/x", "b/y")
    plain = card_with_lineage(merged, base_models=["a/x"], relation=None)
    assert read_card(plain).relation is None and b"base_model_relation" not in plain
    gone = card_with_lineage(merged, base_models=[], relation=None)
    assert read_card(gone).base_models == () and b"license: apache-2.0" in gone


def test_line_breaks_and_bom_are_kept() -> None:
    crlf = b"\xef\xbb\xbf---\r\nlicense: mit\r\n---\r\n# Title\r\n"
    out = card_with_lineage(crlf, base_models=["org/base"], relation="finetune")
    assert out.startswith(b"\xef\xbb\xbf---\r\n") and out.endswith(b"---\r\n# Title\r\n")
    assert b"\n" not in out.replace(b"\r\n", b"")
    assert read_card(out).base_models == ("org/base",)


def test_a_card_without_front_matter_gets_one() -> None:
    assert card_with_lineage(None, base_models=["org/x"], relation="adapter", library_name="diffusers") == (
        b"---\nbase_model: org/x\nbase_model_relation: adapter\nlibrary_name: diffusers\n---\n"
    )
    out = card_with_lineage(b"# Title\n\ntext\n", base_models=["org/x"], relation="quantized")
    assert out.endswith(b"---\n# Title\n\ntext\n")


def test_a_layout_the_line_edit_cannot_follow_is_written_again() -> None:
    flow = b"---\n{license: mit, base_model: org/old}\n---\nbody\n"
    out = card_with_lineage(flow, base_models=["org/new"], relation="finetune")
    card = read_card(out)
    assert (card.base_models, card.metadata["license"]) == (("org/new",), "mit")
    assert out.endswith(b"\n---\nbody\n")


def test_a_merge_key_may_be_overridden_as_yaml_defines() -> None:
    card = read_card(b"---\ndefaults: &d {base_model: org/a, license: mit}\n<<: *d\nbase_model: org/b\n---\n")
    assert (card.base_models, card.metadata["license"]) == (("org/b",), "mit")


def test_an_unknown_relation_is_refused() -> None:
    with pytest.raises(RecordError, match="relation"):
        card_with_lineage(None, base_models=["a/b"], relation="distilled")  # type: ignore[arg-type]


def alias_bomb(levels: int = 24) -> bytes:
    """A few hundred bytes of YAML whose value, written out, would hold 4**24 strings."""
    lines = [b"a0: &a0 [x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]".encode())
    return b"\n".join(lines) + b"\n"


def test_an_alias_bomb_in_a_field_is_refused_quickly() -> None:
    bomb = b"---\n" + alias_bomb() + b"base_model: *a23\n---\n"
    with pytest.raises(RecordError, match="base_model"):
        read_card(bomb)
    tags = b"---\n" + alias_bomb() + b"tags: *a23\n---\n"
    with pytest.raises(RecordError, match="tags"):
        read_card(tags)


def test_a_card_holding_an_alias_bomb_is_written_quickly() -> None:
    card = b"---\n" + alias_bomb() + b"license: mit\n---\nbody\n"
    out = card_with_lineage(card, base_models=["org/x"], relation="finetune")
    assert out.startswith(card.partition(b"license")[0]) and out.endswith(b"---\nbody\n")
    assert read_card(out).base_models == ("org/x",)
