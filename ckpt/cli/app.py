"""The click application. Commands only parse arguments, call the Python API and format its results."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import click

import ckpt
from ckpt.model import Snapshot

__all__ = ["cli"]


def _store(ctx: click.Context) -> ckpt.Store:
    return ckpt.open(ctx.obj.get("store"))


def _snap_json(s: Snapshot) -> dict[str, Any]:
    return {"id": s.id, "pruned": s.pruned, **s.model_dump(mode="json")}


@click.group()
@click.option("--store", "store_url", envvar="CKPT_STORE", help="Store URL (default: $CKPT_STORE or ./.ckpt).")
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.version_option(ckpt.__version__, prog_name="ckpt")
@click.pass_context
def cli(ctx: click.Context, store_url: str | None, debug: bool, quiet: bool) -> None:
    """ckpt: Git for machine-learning checkpoints."""
    ctx.obj = {"store": store_url, "debug": debug, "quiet": quiet}


@cli.command()
@click.argument("url", required=False)
@click.option("--chunk-size", default=None, help="Bytes per chunk, e.g. 64MiB.")
@click.pass_context
def init(ctx: click.Context, url: str | None, chunk_size: str | None) -> None:
    """Create a new store at URL (default: ./.ckpt)."""
    store = ckpt.init(url or ctx.obj.get("store"), chunk_size=chunk_size)
    click.echo(f"initialised an empty ckpt store at {store.url} (chunk size {store.chunk_size} bytes)")


@cli.command()
@click.argument("rev", default="main")
@click.option("-n", "limit", type=int, default=None, help="Show at most N snapshots.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def log(ctx: click.Context, rev: str, limit: int | None, as_json: bool) -> None:
    """History of REV (default: main), newest first."""
    snaps = _store(ctx).log(rev, limit=limit)
    if as_json:
        click.echo(json.dumps([_snap_json(s) for s in snaps], indent=2))
        return
    for s in snaps:
        metrics = " ".join(f"{k}={v:.4g}" for k, v in s.metrics.items())
        bits = [
            s.short_id,
            s.relation,
            s.model or "",
            f"step {s.step}" if s.step is not None else "",
            metrics,
            s.message or "",
            "(pruned)" if s.pruned else "",
        ]
        click.echo("  ".join(b for b in bits if b))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def ls(ctx: click.Context, as_json: bool) -> None:
    """Branches and tags."""
    store = _store(ctx)
    branches, tags = store.branches(), store.tags()
    if as_json:
        click.echo(
            json.dumps(
                {"branches": branches, "tags": {n: t.model_dump(mode="json") for n, t in tags.items()}},
                indent=2,
            )
        )
        return
    for name, sid in branches.items():
        click.echo(f"branch  {name}  {sid[:12]}")
    for name, tag in tags.items():
        click.echo(f"tag     {name}  {tag.id[:12]}{'  (frozen)' if tag.frozen else ''}")


@cli.command()
@click.argument("rev", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def verify(ctx: click.Context, rev: str | None, as_json: bool) -> None:
    """Check every object against its digest."""
    report = _store(ctx).verify(rev)
    if as_json:
        click.echo(json.dumps(report.model_dump(mode="json"), indent=2))
    else:
        click.echo(f"{report.snapshots} snapshots, {report.chunks} chunks, {report.bytes} bytes checked")
        for d in report.damage:
            click.echo(f"{d.kind} {d.object} {d.digest[:12]}: {d.message}")
    if not report.ok:
        ctx.exit(1)


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only report what would be deleted.")
@click.option("--grace", default="1h", help="Keep objects younger than this (e.g. 1h, 30m, 0).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def gc(ctx: click.Context, dry_run: bool, grace: str, as_json: bool) -> None:
    """Delete what no live snapshot needs."""
    report = _store(ctx).gc(grace=_duration(grace), dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(report.model_dump(mode="json"), indent=2))
    else:
        verb = "would free" if dry_run else "freed"
        click.echo(f"{verb} {report.freed_bytes} bytes: {report.chunks} chunks, {report.snapshots} snapshots")


def _duration(text: str) -> timedelta:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip()
    if text.isdigit():
        return timedelta(seconds=int(text))
    if text[:-1].replace(".", "", 1).isdigit() and text[-1] in units:
        return timedelta(seconds=float(text[:-1]) * units[text[-1]])
    raise click.BadParameter(f"not a duration: {text!r} (examples: 0, 90s, 30m, 1h, 7d)")
