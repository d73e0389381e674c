"""Refs: ``ls``, ``branch``, ``reset``, ``tag``, ``freeze``, ``prune`` and ``reflog``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from rich.text import Text

from ckpt.cli._commands._common import default_rev, json_option
from ckpt.cli._output import (
    RefIndex,
    age,
    echo,
    emit_json,
    keep_column,
    print_table,
    shown,
    snapshot_json,
    table,
)
from ckpt.errors import CkptError

if TYPE_CHECKING:
    from ckpt.cli._context import CliState
    from ckpt.store import Store

__all__ = ["branch", "freeze", "ls", "prune", "reflog", "reset", "tag"]


def _ref_table(store: Store, *, branches: bool = True, tags: bool = True) -> None:
    refs = RefIndex(store.branches() if branches else {}, store.tags() if tags else {})
    rows: list[tuple[Text, str, str]] = [
        (Text("branch", style="green"), shown(n), sid) for n, sid in refs.branches.items()
    ]
    for name, tag in refs.tags.items():
        kind = Text("frozen", style="bold cyan") if tag.frozen else Text("tag", style="yellow")
        rows.append((kind, shown(name), tag.id))
    if not rows:
        echo("no branches or tags yet", err=True)
        return
    cells: list[tuple[Text, str, Text, str, str, str]] = []
    for kind, name, sid in rows:
        try:
            snap = store.get(sid)
            info = (
                shown(snap.model or ""),
                "" if snap.step is None else str(snap.step),
                age(snap.created_at, short=True),
            )
        except CkptError:  # a ref to a missing snapshot: `ckpt verify` reports it
            info = ("(missing snapshot)", "", "")
        cells.append((kind, name, Text(sid[:12], style="yellow"), *info))
    t = table()
    keep_column(t, "", [c[0] for c in cells])
    keep_column(t, "name", [c[1] for c in cells])
    keep_column(t, "id", [c[2] for c in cells])
    t.add_column("model", overflow="fold")
    keep_column(t, "step", [c[4] for c in cells])
    keep_column(t, "age", [c[5] for c in cells])
    for row in cells:
        t.add_row(*row)
    print_table(t)


@click.command()
@json_option
@click.pass_obj
def ls(state: CliState, as_json: bool) -> None:
    """Branches and tags, with the snapshot each points at; frozen releases marked.

    \b
    Examples:
      ckpt ls
      ckpt ls --json
    """
    store = state.store()
    if as_json:
        emit_json(
            {
                "branches": store.branches(),
                "tags": {n: t.model_dump(mode="json") for n, t in store.tags().items()},
            }
        )
        return
    _ref_table(store)


@click.command()
@click.argument("name", required=False)
@click.option(
    "--at", "at", metavar="REV", help="Where the new branch starts (default: main, or the store's only branch)."
)
@click.option("-d", "--delete", is_flag=True, help="Delete the branch NAME (its snapshots stay until gc).")
@json_option
@click.pass_obj
def branch(state: CliState, name: str | None, at: str | None, delete: bool, as_json: bool) -> None:
    """Create a branch NAME at REV, delete one with -d, or list branches without NAME.

    \b
    Examples:
      ckpt branch retry --at main~2
      ckpt branch -d retry
      ckpt branch
    """
    store = state.store()
    if name is None:
        if delete or at:
            raise click.UsageError("-d and --at need a branch NAME")
        if as_json:
            emit_json(store.branches())
        else:
            _ref_table(store, tags=False)
        return
    if delete:
        if at:
            raise click.UsageError("-d and --at cannot be combined")
        old = store.branches().get(name)
        store.delete_branch(name)
        if as_json:
            emit_json({"deleted": name, "id": old})
        else:
            was = (old or "")[:12]
            echo(f"deleted branch {name} (was {was})")
            echo(
                f"`ckpt branch {name} --at {was}` brings it back; its snapshots stay reachable through the reflog "
                "(`ckpt reflog`) until its entries expire (30 days), so `ckpt gc` frees their chunks only then, or "
                "now with `ckpt gc --expire-reflog 0`",
                err=True,
            )
        return
    snap = store.branch(name, at=at or default_rev(store))
    if as_json:
        emit_json(snapshot_json(snap, RefIndex(store.branches(), store.tags())))
    else:
        echo(f"created branch {name} at {snap.short_id}")


@click.command()
@click.argument("name", required=False)
@click.argument("rev", required=False)
@click.option("-m", "--message", help="A note kept with the tag.")
@click.option("-d", "--delete", is_flag=True, help="Delete the tag NAME (frozen tags are never deleted).")
@json_option
@click.pass_obj
def tag(state: CliState, name: str | None, rev: str | None, message: str | None, delete: bool, as_json: bool) -> None:
    """Tag REV (default: main, or the store's only branch) as NAME; a tag never moves. Without NAME, list tags.

    \b
    Examples:
      ckpt tag best-val main~4
      ckpt tag -d best-val
      ckpt tag
    """
    store = state.store()
    if name is None:
        if delete:
            raise click.UsageError("-d needs a tag NAME")
        if as_json:
            emit_json({n: t.model_dump(mode="json") for n, t in store.tags().items()})
        else:
            _ref_table(store, branches=False)
        return
    if delete:
        if rev:
            raise click.UsageError("-d takes only the tag NAME")
        old = store.tags().get(name)
        store.delete_tag(name)
        if as_json:
            emit_json({"deleted": name, "id": old.id if old else None})
        else:
            echo(f"deleted tag {name} (was {old.id[:12] if old else '?'})")
        return
    snap = store.tag(name, rev or default_rev(store), message=message)
    if as_json:
        emit_json(snapshot_json(snap, RefIndex(store.branches(), store.tags())))
    else:
        echo(f"tagged {snap.short_id} as {name}")


@click.command()
@click.argument("rev", required=False)
@click.option("--model", help="The model name for the release name <model>-<YYYY-MM-DD> (default: the snapshot's).")
@click.option("--name", help="The full release name, instead of <model>-<date>.")
@click.option("-m", "--message", help="A release note.")
@click.option(
    "--sign",
    "key",
    type=click.Path(dir_okay=False, exists=True),
    metavar="KEY",
    help="Sign the release with this private key (Ed25519 or ECDSA P-256/384/521, PEM or OpenSSH).",
)
@click.option("--signer", metavar="NAME", help="Who signs (e.g. an e-mail address), recorded with the signature.")
@json_option
@click.pass_obj
def freeze(
    state: CliState,
    rev: str | None,
    model: str | None,
    name: str | None,
    message: str | None,
    key: str | None,
    signer: str | None,
    as_json: bool,
) -> None:
    """Publish REV as a frozen release: a tag that is never moved, deleted or pruned.

    REV defaults to main (in a store with no branch main, its only branch).

    With --sign, the release is signed: a statement naming the release, the snapshot id (which commits to every
    byte), the time and the key is signed and stored beside the tag; `ckpt verify --trust KEY.pub` checks it.
    An encrypted key's passphrase is asked for.

    \b
    Examples:
      ckpt freeze main~4 --model tiny-llama      # -> tiny-llama-2026-11-28
      ckpt freeze best --name tiny-llama-v1
      ckpt freeze main --model tiny-llama --sign ~/.ssh/release_ed25519 --signer alice@lab
    """
    store = state.store()
    release_signer = None
    if key is not None:
        from ckpt.cli._commands._common import key_password
        from ckpt.store import ReleaseSigner

        release_signer = ReleaseSigner.from_file(key, password=key_password(key), name=signer)
    elif signer is not None:
        raise click.UsageError("--signer names who signs: it goes with --sign KEY")
    target = rev if rev is not None else default_rev(store)
    tag_name = store.freeze(target, model=model, name=name, message=message, signer=release_signer)
    tag_record = store.tags()[tag_name]
    if as_json:
        signed = {"signed_by": release_signer.key_id} if release_signer else {}
        emit_json({"tag": tag_name, **tag_record.model_dump(mode="json"), **signed})
    else:
        echo(f"froze {tag_record.id[:12]} as {tag_name}")
        if release_signer is not None:
            echo(f"signed by {release_signer.key_id}")


@click.command()
@click.argument("revs", nargs=-1, required=True, metavar="REV...")
@click.option("--reason", help="Why, kept in the pruned marker.")
@json_option
@click.pass_obj
def prune(state: CliState, revs: tuple[str, ...], reason: str | None, as_json: bool) -> None:
    """Release the tensors of snapshots; their records stay in the log, marked pruned.

    Frozen, tagged and branch-head snapshots are refused. `ckpt gc` then frees the bytes. Every REV is
    resolved before anything is pruned.

    \b
    Examples:
      ckpt prune main~5 main~6
      ckpt gc
    """
    store = state.store()
    snaps = [store.resolve(r) for r in revs]
    done = [store.prune(s.id, reason=reason) for s in snaps]
    if as_json:
        refs = RefIndex(store.branches(), store.tags())
        emit_json([snapshot_json(s, refs) for s in done])
        return
    for s in done:
        echo(f"pruned {s.short_id}")
    one = len(done) == 1
    echo(
        f"{'its record stays' if one else 'their records stay'} in the log; `ckpt gc` frees the chunks only "
        f"{'it' if one else 'they'} used once those are older than its grace period (1h by default: a save "
        "running now may reuse them), `ckpt gc --grace 0` at once",
        err=True,
    )


@click.command()
@click.argument("name")
@click.argument("rev")
@json_option
@click.pass_obj
def reset(state: CliState, name: str, rev: str, as_json: bool) -> None:
    """Move the existing branch NAME to REV, like `git reset`; the old head stays in the reflog.

    Nothing is deleted: the snapshots the branch leaves behind stay reachable through `ckpt reflog` until
    their reflog entries expire (`ckpt gc --expire-reflog`).

    \b
    Examples:
      ckpt reset main main~2          # undo the last two saves on main
      ckpt reset main 3f9a1c          # put back a head found with `ckpt reflog main`
    """
    store = state.store()
    old = store.branches().get(name)
    snap = store.reset(name, rev)
    if as_json:
        emit_json({"branch": name, "old": old, "new": snap.id})
    else:
        echo(f"moved {name} from {(old or '?')[:12]} to {snap.short_id}")
        if old and old != snap.id:
            echo(f"{old[:12]} stays in the reflog: `ckpt reset {name} {name}@{{1}}` puts it back", err=True)


def _ref_names(name: str) -> set[str]:
    """The full ref paths a name given on the command line may mean."""
    if name.startswith("refs/"):
        return {name}
    return {f"refs/heads/{name}", f"refs/tags/{name}"}


def _moved_to(old: str | None, new: str | None) -> Text:
    """Where the ref went, as ``git reflog`` shows it: the new id; a deleted ref's last id, struck through."""
    if new:
        return Text(new[:12], style="yellow")
    return Text((old or "-")[:12], style="dim strike")


def _short_ref(ref: str) -> str:
    for prefix in ("refs/heads/", "refs/tags/"):
        if ref.startswith(prefix):
            return ref[len(prefix) :]
    return ref


@click.command()
@click.argument("ref", required=False)
@click.option("-n", "--max-count", "limit", type=click.IntRange(min=1), metavar="N", help="Show at most N entries.")
@json_option
@click.pass_obj
def reflog(state: CliState, ref: str | None, limit: int | None, as_json: bool) -> None:
    """Every move of every ref (or of the branch or tag REF), newest first.

    Each line: the age, the ref, the action, the id the ref moved to (for a deletion, the id it had, struck
    through; --json gives both ids of every move) and the message.

    Commits, branch creations and deletions, resets, tags, freezes, syncs, and saves that lost a race for their
    branch (`conflict`: the snapshot was written, the branch had moved). Any id here is a revision: use it to
    find a snapshot again (`ckpt branch found --at ID`).

    \b
    Examples:
      ckpt reflog
      ckpt reflog main -n 5
      ckpt reflog --json
    """
    store = state.store()
    entries = store.reflog()
    if ref is not None:
        wanted = _ref_names(ref)
        entries = [e for e in entries if e.ref in wanted]
    entries = list(reversed(entries))[:limit]
    if as_json:
        emit_json([e.model_dump(mode="json") for e in entries])
        return
    if not entries:
        if ref is not None:
            from ckpt.errors import RevisionNotFoundError

            raise RevisionNotFoundError(
                f"no reflog entries for {ref!r}: no branch or tag of that name ever moved",
                cli_hint="`ckpt reflog` lists every ref's moves; `ckpt ls` lists the branches and tags",
            )
        echo("no reflog entries: nothing was saved, branched or tagged yet", err=True)
        return
    styles = {"conflict": "bold red", "delete": "red", "reset": "magenta", "freeze": "bold cyan", "commit": "green"}
    rows = [
        (
            age(e.time, short=True),
            shown(_short_ref(e.ref)),
            Text(e.action, style=styles.get(e.action, "")),
            _moved_to(e.old, e.new),
            shown(e.message or ""),
        )
        for e in entries
    ]
    t = table()
    keep_column(t, "age", [r[0] for r in rows])
    keep_column(t, "ref", [r[1] for r in rows])
    keep_column(t, "action", [r[2] for r in rows])
    keep_column(t, "id", [r[3] for r in rows])
    t.add_column("message", overflow="fold")
    for row in rows:
        t.add_row(*row)
    print_table(t)
