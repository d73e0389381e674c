"""``ls``, ``branch``, ``reset``, ``tag``, ``freeze``, ``prune`` and ``reflog`` from the command line."""

from __future__ import annotations

import re

import ckpt

from .conftest import Invoke, parse


def test_ls_text_and_json(invoke: Invoke, store: ckpt.Store, family: dict[str, ckpt.Snapshot]) -> None:
    release = next(n for n, t in store.tags().items() if t.frozen)
    out = invoke("ls").stdout
    assert re.search(r"branch\s+main\s+" + family["c"].short_id + r"\s+tiny-llama\s+200", out)
    assert re.search(r"frozen\s+" + re.escape(release) + r"\s+" + family["c"].short_id, out)
    assert re.search(r"tag\s+best\s+" + family["b"].short_id, out)
    data = parse(invoke("ls", "--json"))
    assert data["branches"] == {
        "instruct": family["i2"].id,
        "lora": family["l"].id,
        "main": family["c"].id,
        "retry": family["r"].id,
    }
    assert data["tags"]["best"]["id"] == family["b"].id and data["tags"]["best"]["frozen"] is False
    assert data["tags"][release]["frozen"] is True
    assert set(data["tags"][release]) == {"id", "frozen", "created_at", "message"}


def test_ls_empty(invoke: Invoke, store: ckpt.Store) -> None:
    result = invoke("ls")
    assert result.stdout == "" and "no branches or tags" in result.stderr


def test_branch_create_list_delete(invoke: Invoke, store: ckpt.Store, family: dict[str, ckpt.Snapshot]) -> None:
    assert (
        invoke("branch", "exp/b", "--at", "main~1").stdout.strip() == f"created branch exp/b at {family['b'].short_id}"
    )
    assert store.branches()["exp/b"] == family["b"].id
    data = parse(invoke("branch", "exp/c", "--json"))
    assert data["id"] == family["c"].id and {"kind": "branch", "name": "exp/c"} in data["refs"]
    listing = parse(invoke("branch", "--json"))
    assert listing["exp/b"] == family["b"].id and "best" not in listing
    text = invoke("branch").stdout
    assert "exp/b" in text and "best" not in text
    assert "deleted branch exp/b" in invoke("branch", "-d", "exp/b").stdout
    assert parse(invoke("branch", "--delete", "exp/c", "--json")) == {"deleted": "exp/c", "id": family["c"].id}
    assert "exp/b" not in store.branches()


def test_branch_errors(invoke: Invoke, store: ckpt.Store, family: dict[str, ckpt.Snapshot]) -> None:
    assert "exists already" in invoke("branch", "main", code=1).stderr
    assert "invalid branch name" in invoke("branch", "bad..name", code=1).stderr
    assert "no branch named" in invoke("branch", "-d", "nope", code=1).stderr
    invoke("branch", "-d", code=2)
    invoke("branch", "-d", "x", "--at", "main", code=2)
    invoke("branch", "--at", "main", code=2)


def test_tag(invoke: Invoke, store: ckpt.Store, family: dict[str, ckpt.Snapshot]) -> None:
    assert invoke("tag", "v1", "main~1", "-m", "note").stdout.strip() == f"tagged {family['b'].short_id} as v1"
    assert store.tags()["v1"].message == "note" and not store.tags()["v1"].frozen
    data = parse(invoke("tag", "v2", "--json"))  # default: main
    assert data["id"] == family["c"].id
    listing = parse(invoke("tag", "--json"))
    assert listing["v1"]["id"] == family["b"].id and "main" not in listing
    assert "v1" in invoke("tag").stdout
    assert "deleted tag v1" in invoke("tag", "-d", "v1").stdout
    assert parse(invoke("tag", "-d", "v2", "--json")) == {"deleted": "v2", "id": family["c"].id}
    assert "exists already" in invoke("tag", "best", "main", code=1).stderr
    invoke("tag", "-d", code=2)
    invoke("tag", "-d", "best", "main", code=2)


def test_frozen_tag_cannot_be_deleted(invoke: Invoke, store: ckpt.Store, family: dict[str, ckpt.Snapshot]) -> None:
    release = next(n for n, t in store.tags().items() if t.frozen)
    result = invoke("tag", "-d", release, code=1)
    assert result.stderr.startswith("error: ") and "hint: frozen releases never change" in result.stderr
    assert store.tags()[release].frozen


def test_freeze(invoke: Invoke, store: ckpt.Store, family: dict[str, ckpt.Snapshot]) -> None:
    out = invoke("freeze", "retry", "--name", "tiny-llama-v1", "-m", "first").stdout
    assert out.strip() == f"froze {family['r'].short_id} as tiny-llama-v1"
    assert store.tags()["tiny-llama-v1"].frozen and store.tags()["tiny-llama-v1"].message == "first"
    data = parse(invoke("freeze", "instruct", "--model", "chat", "--json"))
    assert re.fullmatch(r"chat-\d{4}-\d{2}-\d{2}", data["tag"])
    assert data["id"] == family["i2"].id and data["frozen"] is True
    # a release name is never reused
    assert "exists already" in invoke("freeze", "main", "--name", "tiny-llama-v1", code=1).stderr
    # no model name to build the release name from
    store.save({"w": [1]}, branch="nameless")
    assert "hint:" in invoke("freeze", "nameless", code=1).stderr


def test_prune(invoke: Invoke, store: ckpt.Store, family: dict[str, ckpt.Snapshot]) -> None:
    store.delete_tag("best")
    result = invoke("prune", family["b"].id[:10], "--reason", "space")
    assert result.stdout.strip() == f"pruned {family['b'].short_id}"
    assert "ckpt gc" in result.stderr
    assert store.get(family["b"].id).pruned
    data = parse(invoke("prune", family["b"].id, family["a"].id, "--json"))
    assert [d["pruned"] for d in data] == [True, True]
    assert "[pruned]" in invoke("log").stdout.splitlines()[1]


def test_prune_refuses_refs_and_frozen(invoke: Invoke, store: ckpt.Store, family: dict[str, ckpt.Snapshot]) -> None:
    assert "frozen release" in invoke("prune", "main", code=1).stderr
    assert "head of branch 'retry'" in invoke("prune", "retry", code=1).stderr
    assert "tagged 'best'" in invoke("prune", "best", code=1).stderr
    # every REV resolves before anything is pruned
    store.delete_tag("best")
    invoke("prune", "main~1", "nope", code=1)
    assert not store.get(family["b"].id).pruned
    invoke("prune", code=2)


def test_reset_moves_a_branch_and_the_reflog_keeps_the_old_head(
    invoke: Invoke, store: ckpt.Store, family: dict[str, ckpt.Snapshot]
) -> None:
    result = invoke("reset", "main", "main~1")
    assert result.stdout.strip() == f"moved main from {family['c'].short_id} to {family['b'].short_id}"
    assert "ckpt reset main main@{1}" in result.stderr
    assert store.branches()["main"] == family["b"].id
    data = parse(invoke("reset", "main", family["c"].id[:8], "--json"))
    assert data == {"branch": "main", "old": family["b"].id, "new": family["c"].id}
    invoke("reset", "nope", "main", code=1)  # only existing branches move
    assert "nope" not in store.branches()


def test_reflog_text_json_filter_and_limit(invoke: Invoke, store: ckpt.Store, family: dict[str, ckpt.Snapshot]) -> None:
    invoke("reset", "retry", "main")
    entries = parse(invoke("reflog", "--json"))
    assert entries[0]["ref"] == "refs/heads/retry" and entries[0]["action"] == "reset"
    assert (entries[0]["old"], entries[0]["new"]) == (family["r"].id, family["c"].id)
    assert [e["time"] for e in entries] == sorted((e["time"] for e in entries), reverse=True)  # newest first
    assert {e["action"] for e in entries} >= {"commit", "branch", "tag", "freeze", "reset"}
    retry = parse(invoke("reflog", "retry", "--json"))
    assert [e["action"] for e in retry] == ["reset", "commit", "branch"]
    assert parse(invoke("reflog", "refs/heads/retry", "--json")) == retry
    assert parse(invoke("reflog", "retry", "-n", "1", "--json")) == retry[:1]
    assert [e["action"] for e in parse(invoke("reflog", "best", "--json"))] == ["tag"]
    out = invoke("reflog", "retry").stdout
    assert re.search(r"retry\s+reset\s+" + family["c"].short_id, out)
    result = invoke("reflog", "nothing-here", code=1)
    assert (
        "error: no reflog entries for 'nothing-here'" in result.stderr and "hint: `ckpt reflog` lists" in result.stderr
    )
    invoke("reflog", "-n", "0", code=2)
