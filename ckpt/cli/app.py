"""The click application: the ``ckpt`` group, its global options, store selection and error handling.

Commands live in ``ckpt.cli.commands`` (one module per family) and only parse arguments, call the Python API
and hand the results to ``ckpt.cli.output``.

Store selection, first match wins: ``--store URL``; ``$CKPT_STORE``; the nearest ``.ckpt`` folder found walking
up from the current directory (as Git finds ``.git``).
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

import ckpt
from ckpt import settings
from ckpt.cli.commands._common import parse_options
from ckpt.errors import CkptError, StoreNotFoundError
from ckpt.store import layout

__all__ = ["CkptGroup", "CliState", "cli", "find_store"]


def find_store(start: Path | None = None) -> Path | None:
    """The nearest ``.ckpt`` store folder in ``start`` (default: the current directory) or a parent of it."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / settings.DEFAULT_STORE
        if (candidate / layout.CONFIG).is_file():
            return candidate
    return None


@dataclass
class CliState:
    """What the global options decided, shared by every command through ``ctx.obj``.

    Attributes:
        store_url: ``--store`` or ``$CKPT_STORE``, if given.
        store_options: fsspec storage options from ``--store-option``.
        debug: show tracebacks instead of one-line errors.
        quiet: no progress bars.
    """

    store_url: str | None = None
    store_options: dict[str, Any] = field(default_factory=dict)
    debug: bool = False
    quiet: bool = False

    def location(self) -> str:
        """The store URL to use: ``--store``, ``$CKPT_STORE``, else the nearest ``.ckpt`` walking up.

        Raises:
            StoreNotFoundError: none of these gives a store.
        """
        if self.store_url:
            return self.store_url
        found = find_store()
        if found is None:
            raise StoreNotFoundError(
                f"no ckpt store in {Path.cwd()} or any folder above it; create one with `ckpt init` "
                "(or pass --store URL, or set CKPT_STORE)",
                hint="",
            )
        return str(found)

    def store(self) -> ckpt.Store:
        """Open the selected store."""
        return ckpt.open(self.location(), **self.store_options)


class CkptGroup(click.Group):
    """A click group that turns a ``CkptError`` into ``error: …`` (+ ``hint: …``) and its exit code.

    Any other ``OSError`` (permission denied, disk full …) prints ``error: …`` and exits 1 too. Usage errors
    keep click's handling (exit code 2). ``--debug`` or ``CKPT_DEBUG=1`` re-raise instead, so the
    traceback shows. Ctrl-C prints one line and exits 130; the store stays consistent because every write
    follows the commit protocol (nothing half-written is ever visible).
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Commands in the order they were added (the order of a session: init, log, show … sync)."""
        return list(self.commands)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command, mapping errors to messages and exit codes."""
        try:
            return super().invoke(ctx)
        except CkptError as e:
            state = ctx.obj if isinstance(ctx.obj, CliState) else None
            if settings.debug() or (state is not None and state.debug):
                raise
            click.echo(f"error: {e}", err=True)
            if e.hint:
                click.echo(f"hint: {e.hint}", err=True)
            ctx.exit(e.exit_code)
        except OSError as e:  # the local filesystem refused (permission denied, disk full …): not a bug of ours
            state = ctx.obj if isinstance(ctx.obj, CliState) else None
            if isinstance(e, BrokenPipeError) or settings.debug() or (state is not None and state.debug):
                raise
            click.echo(f"error: {e}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            state = ctx.obj if isinstance(ctx.obj, CliState) else None
            if state is not None and state.debug:
                traceback.print_exc()
            click.echo(
                "\ninterrupted: the store is consistent (a save becomes visible only once it is complete); "
                "rerun the command to finish",
                err=True,
            )
            ctx.exit(130)


@click.group(cls=CkptGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--store",
    "store_url",
    envvar="CKPT_STORE",
    metavar="URL",
    help="The store: a path or fsspec URL (default: $CKPT_STORE, else the nearest .ckpt walking up).",
)
@click.option(
    "--store-option",
    "store_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="An fsspec storage option for the store, e.g. endpoint_url=http://127.0.0.1:9000 (repeatable).",
)
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.version_option(ckpt.__version__, "-V", "--version", prog_name="ckpt")
@click.pass_context
def cli(ctx: click.Context, store_url: str | None, store_options: tuple[str, ...], debug: bool, quiet: bool) -> None:
    """ckpt: Git for machine-learning checkpoints.

    Snapshots of model state, stored as content-addressed chunks, with branches, tags and frozen releases,
    on a local folder or any fsspec storage (s3://, gs://, az://, memory://).
    """
    ctx.obj = CliState(
        store_url=store_url or None,
        store_options=parse_options(store_options, flag="--store-option"),
        debug=debug,
        quiet=quiet,
    )


def _register() -> None:
    from ckpt.cli.commands import COMMANDS

    for command in COMMANDS:
        cli.add_command(command)


_register()
