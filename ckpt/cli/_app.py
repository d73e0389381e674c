"""The click application: the ``ckpt`` group, its global options and error handling.

Commands live in ``_commands`` (one module per family) and only parse arguments, call the Python API and hand
the results to ``_output``; the store they work on comes from ``_context`` (``--store``, ``$CKPT_STORE``, or the
nearest ``.ckpt`` walking up). This module imports the commands; they never import it.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from typing import Any

import click

from ckpt import settings
from ckpt._version import __version__
from ckpt.cli._commands._common import parse_options
from ckpt.cli._context import CliState
from ckpt.cli._output import echo
from ckpt.errors import CkptError

__all__ = ["INTERRUPTED", "INTERRUPTED_BY_COMMAND", "CkptGroup", "cli", "on_interrupt"]


#: What Ctrl-C leaves behind, for a command that writes to the store (the default).
INTERRUPTED = (
    "interrupted: the store is consistent (what was being written becomes visible only once it is complete); "
    "rerun the command to finish"
)
_READ_ONLY = "interrupted; nothing was changed"
#: What Ctrl-C leaves behind, by command (commands not listed: ``INTERRUPTED``).
INTERRUPTED_BY_COMMAND = {
    **dict.fromkeys(("log", "show", "ls", "reflog", "diff"), _READ_ONLY),
    "verify": "interrupted before every object was checked; nothing was changed",
    **dict.fromkeys(
        ("restore", "export"), "interrupted: the store was only read; rerun the restore to write the folder"
    ),
    "import": "interrupted: nothing was committed and the branch did not move; rerun the import",
    "sync": "interrupted: what was copied stays, and every record on the destination is whole; rerun the sync "
    "to finish (chunks already copied are not sent again)",
    "gc": "interrupted: gc deletes records before the chunks they need, so the store is consistent; rerun "
    "`ckpt gc` to finish",
    "repair": "interrupted: what was repaired stays repaired; rerun `ckpt repair` to finish",
}


def on_interrupt(message: str) -> None:
    """Say what Ctrl-C during the running command leaves behind (instead of ``INTERRUPTED_BY_COMMAND``)."""
    click.get_current_context().meta["ckpt.interrupted"] = message


def _usage_message(e: click.ClickException) -> str:
    """Click's message in ckpt's voice: ``No such command 'lg'.`` → ``no such command 'lg'``."""
    text = e.format_message().strip().rstrip(".")
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        text = text[0].lower() + text[1:]
    return text


def _usage_hint(e: click.UsageError) -> str:
    """Where to read more: the usage line of the command that refused, and its ``--help``."""
    ctx = e.ctx
    if ctx is None or isinstance(ctx.command, click.Group):
        path = ctx.command_path if ctx is not None else "ckpt"
        return f"`{path} --help` lists the commands and options"
    usage = ctx.get_usage().strip()
    usage = usage[len("Usage:") :].strip() if usage.startswith("Usage:") else usage
    return f"usage: {usage} (`{ctx.command_path} --help` says more)"


class CkptGroup(click.Group):
    """A click group that turns a ``CkptError`` into ``error: …`` (+ ``hint: …``) and its exit code.

    Any other ``OSError`` (permission denied, disk full …) prints ``error: …`` and exits 1 too. Usage errors
    (an unknown command or option, a missing argument) print the same two lines and exit 2. ``--debug`` or
    ``CKPT_DEBUG=1`` re-raise instead, so the traceback shows. Ctrl-C prints one line that says what it left
    behind (``on_interrupt``) and exits 130.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Commands in the order they were added (the order of a session: init, log, show … sync)."""
        return list(self.commands)

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the program; in standalone mode click's own errors print as ``error:``/``hint:`` lines."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:  # plain `ckpt`: the help, as click prints it
            e.show()
            sys.exit(e.exit_code)
        except click.UsageError as e:
            echo(f"error: {_usage_message(e)}", err=True)
            echo(f"hint: {_usage_hint(e)}", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            echo(f"error: {_usage_message(e)}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            echo("aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command, mapping errors to messages and exit codes."""
        try:
            return super().invoke(ctx)
        except CkptError as e:
            state = ctx.obj if isinstance(ctx.obj, CliState) else None
            if settings.debug() or (state is not None and state.debug):
                raise
            echo(f"error: {e.message}", err=True)
            if e.cli_hint:
                echo(f"hint: {e.cli_hint}", err=True)
            ctx.exit(e.exit_code)
        except OSError as e:  # the local filesystem refused (permission denied, disk full …): not a bug of ours
            state = ctx.obj if isinstance(ctx.obj, CliState) else None
            if isinstance(e, BrokenPipeError) or settings.debug() or (state is not None and state.debug):
                raise
            echo(f"error: {e}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            state = ctx.obj if isinstance(ctx.obj, CliState) else None
            if state is not None and state.debug:
                traceback.print_exc()
            default = INTERRUPTED_BY_COMMAND.get(ctx.invoked_subcommand or "", INTERRUPTED)
            echo(f"\n{ctx.meta.get('ckpt.interrupted', default)}", err=True)
            ctx.exit(130)


@click.group("ckpt", cls=CkptGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
@click.version_option(__version__, "-V", "--version", prog_name="ckpt")
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
    from ckpt.cli._commands import COMMANDS

    for command in COMMANDS:
        cli.add_command(command)


_register()
