"""Field types shared by the records: digests and times, checked when a record is built or read.

A record that passes these checks can be used everywhere without a second look: an id in a record can be
turned into a path inside the store (it is 64 hex characters, never ``../x``), and a time can be parsed and
compared (it is exactly the form ``format_time`` writes).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Annotated

from pydantic import AfterValidator, StringConstraints

__all__ = ["TIME_FORMAT", "Digest", "Timestamp", "check_timestamp", "parse_time"]

#: How times are stored: ISO 8601 in UTC with microseconds, e.g. ``2026-11-28T10:02:41.123456Z``.
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z", re.ASCII)

#: A BLAKE3 hex digest: a chunk's address, a table's digest or a snapshot id (64 lowercase hex characters).
Digest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


def parse_time(text: str) -> datetime:
    """Parse a stored time back into an aware ``datetime``.

    Raises:
        ValueError: ``text`` is not a time in the stored form.

    Example:
        >>> parse_time("2026-11-28T10:02:41.123456Z").year
        2026
    """
    if not isinstance(text, str) or not _TIME.fullmatch(text):
        raise ValueError("not a time of the form 2026-11-28T10:02:41.123456Z")
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=timezone.utc)


def check_timestamp(text: str) -> str:
    """``text`` unchanged if it is a valid stored time (a real calendar date), else ``ValueError``."""
    parse_time(text)
    return text


#: A time as stored (``format_time``'s form); anything else is refused when a record is built or read.
Timestamp = Annotated[str, AfterValidator(check_timestamp)]
