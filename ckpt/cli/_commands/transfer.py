"""Moving weights in and out: ``restore``, ``import`` and ``sync``."""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ckpt.cli._commands._common import json_option, parse_options, parse_size_option
from ckpt.cli._output import RefIndex, console, count, echo, emit_json, human_bytes, progress_bar, snapshot_json
from ckpt.errors import StoreNotFoundError

if TYPE_CHECKING:
    from ckpt.cli._context import CliState
    from ckpt.model import Relation

__all__ = ["import_", "restore", "sync"]

#: ``typing.get_args(ckpt.model.Relation)``, spelled out so that ``ckpt --help`` need not import the records
#: (tests/cli/test_app.py checks that the two agree).
_RELATIONS = ["continue", "finetune", "adapter", "merge", "quantized", "import"]


@click.command()
@click.argument("rev")
@click.option(
    "--to",
    "to",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="The folder to write (created if missing).",
)
@click.option("--shard-size", metavar="SIZE", help="Largest safetensors shard, e.g. 5GB (the default) or 500MB.")
@click.option(
    "--force",
    is_flag=True,
    help="Write into a non-empty folder: earlier weights and their index are replaced, other files kept.",
)
@click.option(
    "--sign",
    "key",
    type=click.Path(dir_okay=False, exists=True),
    metavar="KEY",
    help="Also write an OpenSSF model-signing signature of DIR, made with this ECDSA private key (PEM); REV must "
    "be a release signed with it (or with a --trust key).",
)
@click.option(
    "--signature",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PATH",
    help="Where --sign writes the signature (default: DIR/model.sig).",
)
@click.option(
    "--trust",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True),
    metavar="PUBKEY",
    help="With --sign: a public key (or file of them) whose release signature also counts (repeatable).",
)
@json_option
@click.pass_obj
def restore(
    state: CliState,
    rev: str,
    to: Path,
    shard_size: str | None,
    force: bool,
    key: str | None,
    signature: Path | None,
    trust: tuple[str, ...],
    as_json: bool,
) -> None:
    """Write snapshot REV as ordinary files in DIR: safetensors weights, attached files, state.json.

    `ckpt export REV --to DIR` is another name for this command (in Python: ckpt.export). It writes files; the
    Python function ckpt.restore loads a snapshot into a live torch module instead.

    The weights go to model.safetensors, or to model-0000i-of-0000N.safetensors shards plus
    model.safetensors.index.json, as Hugging Face writes them; an imported snapshot gives back its original
    files byte for byte, subfolders included. safetensors.torch.load_file reads them with no ckpt installed.
    A training snapshot also gets state.json (and state.safetensors) for the rest of its state, which
    `ckpt import DIR` reads back as the same snapshot state.

    DIR is written beside itself and renamed into place, so an interrupted restore never leaves old and new
    weights mixed. A non-empty DIR is refused without --force; with it, the earlier weights and index are
    replaced (each removed file is listed) and other files are kept. Links in DIR are never written through.

    An adapter snapshot (relation adapter) is written as a PEFT folder (adapter_model.safetensors and
    adapter_config.json) that PeftModel.from_pretrained loads onto its base; a diffusers LoRA as the folder
    (pytorch_lora_weights.safetensors) that pipe.load_lora_weights loads; a diffusers pipeline as its folder.

    With --sign KEY, REV must be a frozen release signed (`ckpt freeze --sign`) by KEY or by a --trust key, as
    it is now; the folder is then signed with OpenSSF model-signing, which verifies it with
    `model_signing verify key DIR --signature DIR/model.sig --public_key KEY.pub`. model-signing signs with
    ECDSA keys (P-256/384/521, PEM) only, so such a release is signed with an EC key.

    \b
    Examples:
      ckpt restore tiny-llama-2026-11-28 --to out/tiny-llama
      ckpt restore main~2 --to out/retry --shard-size 2GB --force
      ckpt restore lora --to out/lora
      ckpt restore tiny-llama-2026-11-28 --to out/tiny-llama --sign release-key.pem
    """
    size = parse_size_option(shard_size, flag="--shard-size")
    store = state.store()
    password = None
    vouched = None
    if key is not None:  # check the release before anything is written
        from ckpt.cli._commands._common import key_password
        from ckpt.store import (
            check_folder_key,
            load_private_key,
            load_trusted_keys,
            require_signed_release,
            store_parts,
        )

        password = key_password(key)
        check_folder_key(key, password=password)
        own = load_private_key(key, password=password).public_key()
        _, status = require_signed_release(
            store_parts(store), rev, [*load_trusted_keys([own]), *load_trusted_keys(trust)]
        )
        vouched = status.snapshot  # exported by id: what was checked is what is written
    elif signature is not None or trust:
        raise click.UsageError("--signature and --trust go with --sign KEY")
    snap = store.resolve(vouched or rev)
    with progress_bar("restore", total=snap.tensor_bytes, quiet=state.quiet) as progress:
        from ckpt.interop import export

        result = export(store, snap.id, to, shard_size=size, force=force, progress=progress)
    files: list[dict[str, Any]] = [{"path": str(p), "size": _size(result.path, p)} for p in result.written]
    removed = [str(p) for p in result.removed]
    signed = None
    if key is not None:
        from ckpt.store import sign_folder

        signed = sign_folder(to, key, signature=signature, password=password)
    if as_json:
        emit_json(
            {
                "snapshot": snap.id,
                "to": str(to),
                "files": files,
                "removed": removed,
                "signature": str(signed) if signed else None,
            }
        )
        return
    for f in files:
        echo(f"wrote {f['path']} ({human_bytes(f['size'])})")
    for path in removed:
        echo(f"removed {path} (superseded by this {click.get_current_context().info_name})")
    verb = "exported" if click.get_current_context().info_name == "export" else "restored"
    echo(f"{verb} {snap.short_id} to {to}: {count(len(files), 'file')}")
    if signed is not None:
        echo(f"signed {to} with model-signing: {signed}")


#: ``ckpt export REV --to DIR``: ``ckpt restore REV --to DIR`` under the name of its Python counterpart.
export = click.Command(
    "export",
    callback=restore.callback,
    params=restore.params,
    help="Another name for `ckpt restore REV --to DIR` (see its help): write snapshot REV as ordinary files in DIR."
    "\n\nIn Python this is ckpt.export(store, rev, path).",
    short_help="Write a snapshot as files in DIR (same as restore --to).",
)


def _lora_card_base(store: Any, path: Path) -> str | None:
    """The base pipeline a diffusers LoRA folder's card names, if it is in the store (and this is such a folder)."""
    from ckpt.interop import card_base, is_diffusers_lora_folder

    return card_base(store, path) if is_diffusers_lora_folder(path) else None


def _size(folder: Path, path: Path) -> int:
    return (Path(os.path.realpath(folder)) / path.relative_to(folder)).lstat().st_size


@click.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--branch", "branch", default="main", show_default=True, help="The branch to advance.")
@click.option("--model", help="The model's name (default: from config.json, else the folder's name).")
@click.option(
    "--parent", "parents", multiple=True, metavar="REV", help="A parent (repeatable; default: the branch head)."
)
@click.option("--relation", type=click.Choice(_RELATIONS), help="Relation to the first parent (finetune, adapter …).")
@click.option(
    "--base",
    metavar="REV",
    help="For a PEFT adapter folder or a diffusers LoRA (pytorch_lora_weights.safetensors): the snapshot it adapts "
    "(relation adapter; targets checked against it).",
)
@click.option("-m", "--message", help="A note, like a commit message (default: import <name>).")
@click.option(
    "--skip-pickles",
    is_flag=True,
    help="Leave pickle files (pytorch_model.bin, training_args.bin …) out instead of refusing the folder.",
)
@click.option(
    "--exclude",
    "exclude",
    multiple=True,
    metavar="PATTERN",
    help="Leave out paths matching a glob, e.g. 'onnx/*' or '*.h5' (repeatable).",
)
@json_option
@click.pass_obj
def import_(
    state: CliState,
    path: Path,
    branch: str,
    model: str | None,
    parents: tuple[str, ...],
    relation: str | None,
    base: str | None,
    message: str | None,
    skip_pickles: bool,
    exclude: tuple[str, ...],
    as_json: bool,
) -> None:
    """Save a .safetensors file, or a folder of them, as a new snapshot on a branch.

    Every file of the folder comes along, subfolders and hidden files included (not .git/): config.json,
    tokenizer files, the shard index, 1_Pooling/config.json … are attached as they are, .safetensors files in
    subfolders become tensors too, and `ckpt restore` writes it all back byte for byte. Symbolic links are
    followed only inside the folder (and into a hub cache's blobs/); one that leaves it or dangles is an error.
    Pickle-based files (.bin, .pt, .pth, .ckpt, .pkl) are refused, since loading them can run code:
    --skip-pickles leaves them out (a hub download often has both) and lists them. A folder `ckpt restore`
    wrote from a training snapshot (with state.json) comes back as the same state, step and metrics.

    \b
    Examples:
      ckpt import ./tiny-llama --model tiny-llama
      ckpt import ./instruct --branch instruct --parent tiny-llama-2026-11-28 --relation finetune
      ckpt import ./my-lora --branch lora --base instruct
      ckpt import ./style-lora --branch style --base tiny-sd   # a diffusers LoRA over a pipeline
      ckpt import ./style-lora --branch style   # its README.md names base_model: org/tiny-sd, which is here
      ckpt import ~/.cache/huggingface/hub/models--org--name/snapshots/<commit> --skip-pickles --exclude 'onnx/*'
    """
    from ckpt.interop import import_folder, plan_import

    store = state.store()
    if base is None and relation == "adapter":  # an adapter is checked against its base whichever way it is named
        if len(parents) != 1:
            raise click.UsageError("--relation adapter needs its base: pass --base REV (or one --parent REV)")
        base, parents, relation = parents[0], (), None
    plan = plan_import(path, skip_pickles=skip_pickles, exclude=exclude)
    if not as_json:
        for rel, why in plan.skipped:
            echo(f"skipped {rel}: {why}", err=True)
    with progress_bar("import", total=plan.weight_bytes, quiet=state.quiet) as progress:
        if base is not None:
            if parents or relation not in (None, "adapter"):
                raise click.UsageError("--base imports an adapter: it goes without --parent and --relation")
            from ckpt.interop import import_diffusers_lora, import_peft_folder, is_diffusers_lora_folder

            if is_diffusers_lora_folder(path):  # a diffusers LoRA (pytorch_lora_weights.safetensors) over a pipeline
                snap = import_diffusers_lora(
                    store, path, base, branch=branch, model=model, message=message, progress=progress
                )
            else:
                snap = import_peft_folder(
                    store, path, base, branch=branch, model=model, message=message, progress=progress
                )
        elif not parents and relation is None and _lora_card_base(store, path) is not None:
            from ckpt.interop import import_diffusers_lora  # a diffusers LoRA whose card names its base pipeline

            snap = import_diffusers_lora(
                store, path, None, branch=branch, model=model, message=message, progress=progress
            )
        else:
            snap = import_folder(
                store,
                path,
                branch=branch,
                model=model,
                parents=list(parents) or None,
                relation=typing.cast("Relation | None", relation),
                message=message,
                progress=progress,
                skip_pickles=skip_pickles,
                exclude=exclude,
            )
    if as_json:
        skipped = [{"path": rel, "reason": why} for rel, why in plan.skipped]
        emit_json({**snapshot_json(snap, RefIndex(store.branches(), store.tags())), "skipped": skipped})
        return
    echo(
        f"imported {path} as {snap.short_id} on {branch}: {count(snap.tensor_count, 'tensor')} "
        f"({human_bytes(snap.tensor_bytes)}), {snap.relation}, model {snap.model or '-'}"
    )


@click.command()
@click.argument("src", metavar="SRC")
@click.argument("dst", metavar="DST")
@click.argument("revs", nargs=-1, metavar="[REV]...")
@click.option("--all", "all_", is_flag=True, help="Every branch and tag of SRC.")
@click.option("--src-option", multiple=True, metavar="KEY=VALUE", help="fsspec storage option for SRC (repeatable).")
@click.option("--dst-option", multiple=True, metavar="KEY=VALUE", help="fsspec storage option for DST (repeatable).")
@click.option("--init", "create", is_flag=True, hidden=True, help="(Kept for old scripts: DST is created anyway.)")
@json_option
@click.pass_obj
def sync(
    state: CliState,
    src: str,
    dst: str,
    revs: tuple[str, ...],
    all_: bool,
    src_option: tuple[str, ...],
    dst_option: tuple[str, ...],
    create: bool,
    as_json: bool,
) -> None:
    """Copy snapshots with their history, tables, chunks and refs from store SRC to store DST.

    Only chunks DST lacks are sent; an interrupted sync is safe to rerun. A DST with no store yet is created
    (with SRC's chunk size), as `aws s3 sync` creates its prefix. SRC and DST are URLs or folders: a folder
    holding a .ckpt store (`.`, a project folder) means that store. Branches only fast-forward: a branch that
    diverged on DST is reported, not overwritten, and the exit status is 1. Frozen tags stay frozen. Each REV
    is a branch or tag (an id would arrive with no ref, and DST's gc would delete it: tag it first). S3
    endpoints and credentials come from --src-option/--dst-option or the usual AWS_* variables
    (AWS_ENDPOINT_URL included).

    \b
    Examples:
      ckpt sync . s3://bucket/models --all
      ckpt sync s3://bucket/models . tiny-llama-2026-11-28
      ckpt sync . s3://bucket/models main --dst-option endpoint_url=http://127.0.0.1:9000
    """
    from ckpt.cli._context import store_location
    from ckpt.store import init as init_store
    from ckpt.store import open as open_store
    from ckpt.store import sync as sync_stores

    if revs and all_:
        raise click.UsageError("give the revisions to copy or --all, not both")
    if not revs and not all_:
        raise click.UsageError(
            "say what to copy: the revisions (branches, tags, ids), or --all for every branch and tag"
        )
    src_store = open_store(store_location(src), **parse_options(src_option, flag="--src-option"))
    dst_options = parse_options(dst_option, flag="--dst-option")
    created = False
    try:
        dst_store = open_store(store_location(dst), **dst_options)
    except StoreNotFoundError:
        dst_store = init_store(
            store_location(dst),
            chunk_size=src_store.chunk_size,
            compression=src_store.config.compression,  # the source's settings, so a copy stays a copy
            delta_depth=src_store.config.delta_depth,
            pack_size=src_store.config.pack_size,
            **dst_options,
        )
        created = True
    if created and not as_json:
        echo(f"created a ckpt store at {dst_store.url} (chunks of {human_bytes(dst_store.chunk_size)})")
    with progress_bar("sync", quiet=state.quiet) as bar:
        report = sync_stores(
            src_store,
            dst_store,
            list(revs) if revs else None,
            progress=bar,
            progress_total=bar.total if bar else None,
        )
    if as_json:
        emit_json({"src": src_store.url, "dst": dst_store.url, "created": created, **report.model_dump(mode="json")})
    else:
        out = console()
        if report.snapshots == 0 and not report.refs:
            out.print(f"{dst_store.url} is up to date: nothing to copy")
        else:
            line = (
                f"copied {count(report.snapshots, 'snapshot')}, {count(report.chunks, 'chunk')} "
                f"({human_bytes(report.bytes)})"
            )
            if report.chunks_skipped:
                line += (
                    f"; {count(report.chunks_skipped, 'chunk')} ({human_bytes(report.bytes_skipped)}) "
                    "were on the destination already"
                )
            out.print(line)
        for ref in report.refs:
            out.print(f"updated {ref}")
        for conflict in report.conflicts:
            echo(f"conflict: {conflict}", err=True)
    if report.conflicts:
        if not as_json:
            n = len(report.conflicts)
            echo(f"error: {count(n, 'ref')} left alone on {dst_store.url}; nothing was overwritten", err=True)
        click.get_current_context().exit(1)
