"""Paginated answers: cursor pages followed to the end (§1.7), and the field errors of a
listing page turned into :class:`~autolabel.redbrick.types.ListingError` records."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from autolabel.redbrick.types import (
    ListingError,
)

T = TypeVar("T")


log = logging.getLogger(__name__)


#: Told about each field error of a task listing (the listing goes on).
ListingErrorHandler = Callable[[ListingError], None]


def listing_errors(
    operation: str,
    problems: list[dict[str, Any]],
    entries: list[Any],
    on_error: ListingErrorHandler | None,
) -> None:
    """Turn a listing page's field errors into :class:`ListingError` records.

    An error's ``path`` (``[root, "entries", n, ...]``) names the entry it hit; the task id
    is that entry's, when the entry itself survived."""
    for problem in problems:
        path = problem.get("path") or []
        at = path[2] if len(path) > 2 and path[1] == "entries" else None
        entry = entries[at] if isinstance(at, int) and 0 <= at < len(entries) else None
        task_id = str(entry["taskId"]) if isinstance(entry, dict) and entry.get("taskId") else None
        where = ".".join(str(p) for p in path) or "the answer"
        error = ListingError(operation, f"{problem.get('message')} (at {where})", task_id)
        if on_error is None:
            log.warning("%s: %s", operation, error.message)
        else:
            on_error(error)


def paginate(
    fetch_page: Callable[[str | None, int], tuple[list[T], str | None]],
    *,
    page_size: int = 50,
    limit: int | None = None,
) -> Iterator[T]:
    """Yield entries across cursor pages (§1.7) until the cursor is null or ``limit`` is hit.

    ``fetch_page(after, first)`` returns ``(entries, next_cursor)``. An empty page with a
    non-null cursor is followed (the server may filter a page empty), unless the cursor did
    not move, which would loop forever.
    """
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    seen = 0
    cursor: str | None = None
    while limit is None or seen < limit:
        first = page_size if limit is None else min(page_size, limit - seen)
        previous = cursor
        entries, cursor = fetch_page(cursor, first)
        for entry in entries:
            yield entry
            seen += 1
            if limit is not None and seen >= limit:
                return
        if not cursor or (not entries and cursor == previous):
            return
