"""One pagination shape for every list: Relay connections (`edges { node cursor }`,
`pageInfo { hasNextPage endCursor }`, plus `nodes`), built the same way from a page fetched
with one row more than asked (that row only says whether a next page exists).

Bad arguments (`first`, `after`, `days`, `from`/`to`, `primitive`, `apiKeyId`) are checked by
app/core/paging.py and raised: the connection fields are non-null, so every list answers
`data: null` and one error with extensions {code: VALIDATION_FAILED, field}."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

import strawberry

from app.core.paging import DEFAULT_FIRST, HistoryFilter, check_first, history_filter

N = TypeVar("N")
R = TypeVar("R")


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class Edge(Generic[N]):
    cursor: str
    node: N


@strawberry.type
class Connection(Generic[N]):
    edges: list[Edge[N]]
    page_info: PageInfo

    @strawberry.field
    def nodes(self) -> list[N]:
        return [e.node for e in self.edges]


C = TypeVar("C", bound=Connection[Any])


def connection(cls: type[C], rows: Sequence[R], first: int, cursor: Callable[[R], str], node: Callable[[R], Any]) -> C:
    """A page of `cls` (a Connection[X], or a named subclass of one that other slices can point at
    lazily) from `rows` fetched with limit first + 1."""
    page = rows[:first]
    edges = [Edge(cursor=cursor(r), node=node(r)) for r in page]
    return cls(
        edges=edges,
        page_info=PageInfo(has_next_page=len(rows) > first, end_cursor=edges[-1].cursor if edges else None),
    )


# The arguments every history list takes, declared once.
First = Annotated[int, strawberry.argument(description=f"Page size, 1-200 (default {DEFAULT_FIRST}).")]
After = Annotated[str | None, strawberry.argument(description="endCursor of the previous page.")]
Days = Annotated[int | None, strawberry.argument(description="The last N days (default 30); or give from/to instead.")]
From = Annotated[datetime | None, strawberry.argument(name="from", description="Inclusive start.")]
To = Annotated[datetime | None, strawberry.argument(name="to", description="Exclusive end (default: now).")]


def history_args(
    first: int,
    days: int | None,
    start: datetime | None,
    end: datetime | None,
    primitive: str | None = None,
    api_key_id: str | None = None,
) -> tuple[int, HistoryFilter]:
    check_first(first)
    filt = history_filter(days=days, start=start, end=end, primitive=primitive, api_key_id=api_key_id)
    return first, filt
