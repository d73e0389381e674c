"""The ``ckpt`` command line: parses arguments, calls the Python API, formats results."""

from __future__ import annotations

import sys

from ckpt.cli.app import cli

__all__ = ["cli", "main"]


def main(argv: list[str] | None = None) -> None:
    """Run the command line; a ``CkptError`` prints ``error: …`` (and its hint) and exits with its code."""
    from ckpt import settings
    from ckpt.errors import CkptError

    try:
        cli.main(args=argv, prog_name="ckpt", standalone_mode=False)
    except CkptError as e:
        if settings.debug() or "--debug" in (argv if argv is not None else sys.argv):
            raise
        print(f"error: {e}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted; the store is consistent (nothing half-written is ever visible)", file=sys.stderr)
        sys.exit(130)
    except __import__("click").exceptions.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except __import__("click").exceptions.Abort:
        sys.exit(1)
