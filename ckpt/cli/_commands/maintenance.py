"""The store itself: ``init``, ``verify``, ``repair`` and ``gc``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Literal

import click
from rich.console import Console
from rich.text import Text

from ckpt.cli._commands._common import json_option, parse_duration, parse_options, parse_size_option
from ckpt.cli._output import console, count, echo, emit_json, human_bytes, progress_bar, progress_enabled

if TYPE_CHECKING:
    from ckpt.cli._context import CliState
    from ckpt.store import Damage

__all__ = ["gc", "init", "repair", "verify"]


@click.command()
@click.argument("url", required=False)
@click.option(
    "--chunk-size",
    metavar="SIZE",
    help="Bytes per chunk, at least 4KiB, e.g. 64MiB (default: $CKPT_CHUNK_SIZE or 64MiB).",
)
@click.option(
    "--compression/--no-compression",
    default=True,
    show_default=True,
    help="Store chunks byte-grouped and zstd-coded where that saves 3% or more (lossless).",
)
@click.option(
    "--delta-depth",
    type=click.IntRange(0, 64),
    default=None,
    metavar="N",
    help="Store a chunk as a delta against its parent's when smaller, in chains of at most N (default 16 with "
    "compression; 0: none). A store with deltas is format 2.0.",
)
@click.option(
    "--pack-size",
    metavar="SIZE",
    help="Pack tensors under 64KiB into shared chunks of at most SIZE (default 4MiB, at most the chunk size). "
    "A store with packs is format 3.0; 0 is --no-pack.",
)
@click.option("--no-pack", is_flag=True, help="Store every tensor in chunks of its own (no packs; format 2.0 or 1.3).")
@json_option
@click.pass_obj
def init(
    state: CliState,
    url: str | None,
    chunk_size: str | None,
    compression: bool,
    delta_depth: int | None,
    pack_size: str | None,
    no_pack: bool,
    as_json: bool,
) -> None:
    """Create an empty store at URL (default: --store, $CKPT_STORE, else ./.ckpt).

    \b
    Examples:
      ckpt init
      ckpt init s3://bucket/models --chunk-size 128MiB
      ckpt init runs --no-compression
    """
    size = parse_size_option(chunk_size, flag="--chunk-size")
    _check_chunk_size(size)
    if no_pack and pack_size is not None:
        raise click.UsageError("give --pack-size or --no-pack, not both")
    packs = 0 if no_pack else parse_size_option(pack_size, flag="--pack-size", zero=True)
    from ckpt.store import init as init_store

    store = init_store(
        url or state.store_url or None,
        chunk_size=size,
        compression=compression,
        delta_depth=delta_depth,
        pack_size=packs,
        **state.store_options,
    )
    if as_json:
        emit_json(
            {
                "url": store.url,
                "chunk_size": store.chunk_size,
                "compression": store.config.compression,
                "delta_depth": store.config.delta_depth,
                "pack_size": store.config.pack_size,
                "format_version": store.config.format_version,
            }
        )
    else:
        depth = store.config.delta_depth
        how = f"compressed, deltas up to {depth} deep" if depth else ("compressed" if compression else "raw")
        if store.config.pack_size:
            how += f", small tensors in packs of {human_bytes(store.config.pack_size)}"
        echo(f"initialised an empty ckpt store at {store.url} (chunks of {human_bytes(store.chunk_size)}, {how})")


@click.command()
@click.argument("rev", required=False)
@click.option("--all", "all_", is_flag=True, help="Check every reachable snapshot (the default without REV).")
@click.option(
    "--trust",
    "trust",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True),
    metavar="PUBKEY",
    help="A trusted public key, or a file of them (PEM or OpenSSH lines); every frozen release must be signed by "
    "one (repeatable).",
)
@json_option
@click.pass_obj
def verify(state: CliState, rev: str | None, all_: bool, trust: tuple[str, ...], as_json: bool) -> None:
    """Read objects back and check each against its digest; report all damage, exit 1 if any.

    With REV, checks that snapshot (record, table and every chunk); with --all or without REV, every snapshot
    reachable from a branch, a tag or the reflog, the refs themselves, and the frozen releases: against the
    reflog (moved, unfrozen, deleted) and against their signatures. With --trust, every frozen release must be
    signed by a trusted key as it is now; unsigned, repointed and forged releases are reported.

    \b
    Examples:
      ckpt verify
      ckpt verify tiny-llama-2026-11-28 --json
      ckpt verify --trust release-key.pub --trust team-keys.txt
    """
    if rev is not None and all_:
        raise click.UsageError("give REV or --all, not both")
    if rev is not None and trust:
        raise click.UsageError("--trust checks every frozen release: it goes without REV")
    store = state.store()
    with progress_bar("verify", quiet=state.quiet) as bar:
        report = store.verify(
            rev, trust=list(trust) if trust else None, progress=bar, progress_total=bar.total if bar else None
        )
    if as_json:
        emit_json({"ok": report.ok, **report.model_dump(mode="json")})
    else:
        out = console()
        for d in report.damage:
            where = f" (tensors: {', '.join(d.tensors[:3])}{' …' if len(d.tensors) > 3 else ''})" if d.tensors else ""
            out.print(Text.assemble((d.kind, "bold red"), f" {d.object} {_name(d)}{where}: {d.message}"))
        signed = [r for r in report.releases if r.status == "signed"]
        if trust:
            echo(f"{count(len(report.releases), 'frozen release')}, {len(signed)} signed by a trusted key")
        elif signed:  # without --trust a signature proves only that it matches the key it names
            echo(
                f"{count(len(signed), 'signed release')}: each signature matches the key it names; "
                "`ckpt verify --trust KEY.pub` checks who signed"
            )
        verdict = "ok" if report.ok else count(len(report.damage), "problem")
        echo(
            f"checked {count(report.snapshots, 'snapshot')}, {count(report.chunks, 'chunk')} "
            f"({human_bytes(report.bytes)}): {verdict}"
        )
    if not report.ok:
        if not as_json:
            if any(d.object != "release" for d in report.damage):
                echo("hint: put the damaged objects back from a good copy with `ckpt repair --from URL`", err=True)
            if any(d.object == "release" for d in report.damage):
                echo(
                    "hint: a release is not what was frozen and signed: do not use it; its reflog "
                    "(`ckpt reflog TAG`) and the signatures name the snapshot that was published",
                    err=True,
                )
        click.get_current_context().exit(1)


#: The smallest chunk ``ckpt init`` makes: below it, every chunk costs a file (an S3 object) and a header for a
#: few bytes of tensor, and a 1 GB model becomes millions of objects. The Python API allows less, for tests.
MIN_CHUNK_SIZE = 4096


def _check_chunk_size(size: int | None) -> None:
    """Refuse a chunk size under ``MIN_CHUNK_SIZE`` (given with --chunk-size or $CKPT_CHUNK_SIZE)."""
    from ckpt import settings

    flag = "--chunk-size"
    if size is None:
        size, flag = settings.chunk_size(), "$CKPT_CHUNK_SIZE"
    if size < MIN_CHUNK_SIZE:
        from ckpt.errors import RecordError

        raise RecordError(
            f"{flag} {size} is too small a chunk: each chunk is a file (an object on S3) with a header, so a "
            f"model would become millions of them; the smallest is {human_bytes(MIN_CHUNK_SIZE)}",
            cli_hint=f"give {flag} 4KiB or more; the default 64MiB suits most models (16MiB-256MiB)",
        )


def _damage_line(kind: str, d: Damage) -> Text:
    where = f" (tensors: {', '.join(d.tensors[:3])}{' …' if len(d.tensors) > 3 else ''})" if d.tensors else ""
    style = "bold green" if kind == "repaired" else "bold red"
    return Text.assemble((kind, style), f" {d.kind} {d.object} {_name(d)}{where}: {d.message}")


def _name(d: Damage) -> str:
    """A digest's first 16 characters; a ref's, reflog entry's, marker's or release's whole name."""
    return d.digest if d.object in ("ref", "reflog", "marker", "release") else d.digest[:16]


@click.command()
@click.argument("revs", nargs=-1, metavar="[REV]...")
@click.option(
    "--from",
    "source",
    metavar="URL",
    help="A good copy of the store (a replica, a backup). Without it, only what needs no copy is fixed.",
)
@click.option(
    "--from-option", multiple=True, metavar="KEY=VALUE", help="fsspec storage option for --from (repeatable)."
)
@json_option
@click.pass_obj
def repair(
    state: CliState, revs: tuple[str, ...], source: str | None, from_option: tuple[str, ...], as_json: bool
) -> None:
    """Put back damaged or missing objects from a good copy of the store, then verify again.

    Every damaged chunk, tensor table and snapshot record that `ckpt verify` finds (for the given REVs, or
    everywhere) is read from --from, checked against its digest (bad bytes are never copied) and written over
    the damaged copy. Refs are never changed. Without --from, only what needs no copy is fixed: a ref's missing
    reflog entry, a pruned marker on a frozen release. Exits 0 when the store verifies clean afterwards, 1
    otherwise.

    \b
    Examples:
      ckpt repair
      ckpt repair --from s3://bucket/models-replica
      ckpt repair --from /mnt/backup/.ckpt tiny-llama-2026-11-28
    """
    from ckpt.cli._context import store_location

    store = state.store()
    from ckpt.store import open as open_store

    good = open_store(store_location(source), **parse_options(from_option, flag="--from-option")) if source else None
    with progress_bar("repair", quiet=state.quiet) as progress:
        report = store.repair(good, revs=list(revs) or None, progress=progress)
    if as_json:
        emit_json({"store": store.url, "source": good.url if good else None, **report.model_dump(mode="json")})
    else:
        out = console()
        for d in report.repaired:
            out.print(_damage_line("repaired", d))
        for d in report.unrepaired:
            out.print(_damage_line("unrepaired", d))
        n, m = len(report.repaired), len(report.unrepaired)
        verdict = "the store verifies clean" if report.ok else f"{count(m, 'problem')} remain{'s' if m == 1 else ''}"
        echo(f"{count(n, 'object')} repaired ({human_bytes(report.bytes_copied)} copied); {verdict}")
    if not report.ok:
        click.get_current_context().exit(1)


@click.command()
@click.option("--dry-run", is_flag=True, help="Only report what would be deleted.")
@click.option(
    "--grace",
    default="1h",
    show_default=True,
    metavar="DURATION",
    help="Keep objects younger than this (0, 90s, 30m, 1h, 7d): protects saves running right now.",
)
@click.option(
    "--expire-reflog",
    default="30d",
    show_default=True,
    metavar="DURATION|never",
    help="Reflog entries older than this no longer keep snapshots alive.",
)
@click.option(
    "--keep-damaged",
    is_flag=True,
    help="If something gc must read is damaged, collect anyway, keeping everything it might need "
    "(default: refuse and name the damage).",
)
@json_option
@click.pass_obj
def gc(state: CliState, dry_run: bool, grace: str, expire_reflog: str, keep_damaged: bool, as_json: bool) -> None:
    """Delete what no live snapshot needs: unreachable records, chunks of pruned snapshots, crash leftovers.

    gc is fail-closed: if a ref, reflog entry, record, table or pruned marker it must read is damaged or
    missing, it deletes nothing and names the damage (run `ckpt verify`, then `ckpt repair`).

    \b
    Examples:
      ckpt gc --dry-run
      ckpt gc --grace 0
    """
    grace_td = parse_duration(grace, flag="--grace")
    on_damage: Literal["refuse", "keep"] = "keep" if keep_damaged else "refuse"
    expire = None if expire_reflog.strip().lower() == "never" else parse_duration(expire_reflog, flag="--expire-reflog")
    store = state.store()
    if progress_enabled() and not state.quiet and not as_json:
        with Console(file=sys.stderr, force_terminal=True).status(
            "planning garbage collection…" if dry_run else "collecting garbage…"
        ):
            report = store.gc(grace=grace_td, dry_run=dry_run, expire_reflog=expire, on_damage=on_damage)
    else:
        report = store.gc(grace=grace_td, dry_run=dry_run, expire_reflog=expire, on_damage=on_damage)
    if as_json:
        emit_json(report.model_dump(mode="json"))
        return
    verb = "would free" if dry_run else "freed"
    removed = [
        count(report.chunks, "chunk"),
        count(report.tables, "table"),
        count(report.snapshots, "snapshot record"),
        count(report.other, "leftover"),
    ]
    echo(
        f"{verb} {human_bytes(report.freed_bytes)} of storage: {', '.join(removed)}; "
        f"kept {count(report.kept_chunks, 'chunk')} ({human_bytes(report.kept_bytes)})"
    )
    # what the grace period kept (GcReport.young_*), and chunks a save reused while gc ran (reused_*)
    young, young_records = report.young_chunks, report.young_records
    if young or young_records:
        them = "it" if young + young_records == 1 else "them"
        what = count(young, "chunk") + f" ({human_bytes(report.young_bytes)})"
        if young_records:
            what += f" and {count(young_records, 'other object')}"
        echo(
            f"spared {what} that nothing needs: written or reused less than {grace.strip()} ago (--grace), a save "
            f"running now may still need {them}; a later gc frees {them}, or `ckpt gc --grace 0` now if no save "
            "is running"
        )
    reused = report.reused_chunks
    if reused:
        echo(f"kept {count(reused, 'chunk')} ({human_bytes(report.reused_bytes)}) that a save reused while gc ran")
    for d in report.damage:
        echo(f"damaged, everything it might need was kept: {d.object} {d.digest[:40]}: {d.message}", err=True)
