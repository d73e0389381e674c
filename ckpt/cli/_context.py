"""What every command shares: the store the global options (or the working directory) select.

Store selection, first match wins: ``--store URL``; ``$CKPT_STORE``; the nearest ``.ckpt`` folder found walking
up from the current directory (as Git finds ``.git``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpt import settings
from ckpt.errors import StoreNotFoundError

if TYPE_CHECKING:
    from ckpt.store import Store

__all__ = ["CliState", "find_store", "store_location"]


def find_store(start: Path | None = None) -> Path | None:
    """The nearest ``.ckpt`` store folder in ``start`` (default: the current directory) or a parent of it."""
    from ckpt.store import CONFIG_FILE

    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / settings.DEFAULT_STORE
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    return None


def store_location(url: str) -> str:
    """A store given on the command line: a URL as it is; a local folder that is not a store itself but holds
    one in ``.ckpt`` (``.``, a project folder) means that ``.ckpt``, as Git takes a work tree for its ``.git``.
    """
    from ckpt.store import CONFIG_FILE

    if "://" in url:
        return url
    folder = Path(url).expanduser()
    inner = folder / settings.DEFAULT_STORE
    if not (folder / CONFIG_FILE).is_file() and (inner / CONFIG_FILE).is_file():
        return str(inner)
    return url


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
            return store_location(self.store_url)
        found = find_store()
        if found is None:
            raise StoreNotFoundError(
                f"no ckpt store in {Path.cwd()} or any folder above it",
                cli_hint="create one here with `ckpt init`, or name one with --store URL or $CKPT_STORE",
            )
        return str(found)

    def store(self) -> Store:
        """Open the selected store."""
        from ckpt.store import open as open_store

        return open_store(self.location(), **self.store_options)
