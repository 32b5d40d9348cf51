"""Text every input must be: no NUL (U+0000). PostgreSQL's text and jsonb refuse it (a 500 when
it reached a statement) and SQLite stores it (a value that then differs by database, and that
C-string tools cut short). So the edges refuse it before anything runs: GraphQL variables and
literals (app/graphql/guard.py), REST bodies and URLs (app/http/edge.py)."""

from __future__ import annotations

from typing import Any

NUL = "\x00"
NUL_MESSAGE = "text must not contain NUL (U+0000)"


def find_nul(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string (or object key) in a JSON value holding a NUL; None if
    there is none. Iterative, so a deeply nested value cannot exhaust the stack."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        current, where = stack.pop()
        if isinstance(current, str):
            if NUL in current:
                return where
        elif isinstance(current, dict):
            for key, item in current.items():
                child = f"{where}.{key}" if where else str(key)
                if isinstance(key, str) and NUL in key:
                    return child
                stack.append((item, child))
        elif isinstance(current, list):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(current))
    return None
