"""Persisted documents: a client sends a document's SHA-256 instead of its text.

Two spellings, one registry:

- Apollo's automatic persisted queries: `{"extensions": {"persistedQuery": {"version": 1,
  "sha256Hash": "<hex>"}}, "variables": ...}`.
- A document id: `{"documentId": "sha256:<hex>", "variables": ...}` (the bare hex is accepted too).

A hash the server does not know is answered with the GraphQL error PERSISTED_QUERY_NOT_FOUND; the
client then sends the text with the hash, the server checks that the hash is the text's SHA-256
(PERSISTED_QUERY_HASH_MISMATCH otherwise, and nothing is registered), keeps it, and answers the
request. A malformed hash or version is PERSISTED_QUERY_INVALID. The registry is bounded (entries,
bytes, and the size of one text), least recently used first out: a client that sends many
documents can only push others out, and their clients re-send the text once. A document found
by its hash is the same `str` every time, so the parse cache and the hot path (hot.py) find it
as they find a repeated text.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

from graphql import GraphQLError

NOT_FOUND = "PERSISTED_QUERY_NOT_FOUND"
HASH_MISMATCH = "PERSISTED_QUERY_HASH_MISMATCH"
INVALID = "PERSISTED_QUERY_INVALID"

# The view moves a request's top-level documentId here (app/main.py parse_json), so it reaches
# resolve() with the extensions Strawberry parses.
DOCUMENT_ID = "documentId"

_HEX = frozenset("0123456789abcdef")


class PersistedQueryError(Exception):
    """A persisted-document request refused before any GraphQL work: answered as a GraphQL error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.error = GraphQLError(message, extensions={"code": code})


class PersistedDocuments:
    """sha256 hex -> document text, a bounded LRU (entries and bytes); hit and miss counts for tests."""

    def __init__(self, max_entries: int = 1024, max_bytes: int = 4 * 1024 * 1024, max_text: int = 64 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_text = max_text
        self._items: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, sha256: str) -> str | None:
        with self._lock:
            text = self._items.get(sha256)
            if text is None:
                self.misses += 1
                return None
            self._items.move_to_end(sha256)
            self.hits += 1
            return text

    def register(self, sha256: str, text: str) -> str:
        """Keeps `text` under its hash (already checked) and returns the kept text: an earlier
        registration's `str` when there is one, so every request shares one object."""
        size = len(text)
        if size > self.max_text:
            return text  # answered, not kept: the client sends the text again next time
        with self._lock:
            kept = self._items.get(sha256)
            if kept is not None:
                self._items.move_to_end(sha256)
                return kept
            self._items[sha256] = text
            self.bytes += size
            while self.bytes > self.max_bytes or len(self._items) > self.max_entries:
                _, dropped = self._items.popitem(last=False)
                self.bytes -= len(dropped)
            return text

    def resolve(self, query: str | None, extensions: dict[str, Any] | None) -> tuple[str | None, dict[str, Any] | None]:
        """(query, extensions) of a request as the GraphQL layer should see them: the text found by
        its hash, or the text sent with its hash, checked and registered; the document id taken
        out of the extensions. Raises PersistedQueryError for a refusal. A request that names no
        hash is returned unchanged."""
        if not extensions:
            return query, extensions
        persisted = extensions.get("persistedQuery")
        document_id = extensions.get(DOCUMENT_ID)
        if persisted is None and document_id is None:
            return query, extensions
        if document_id is not None:
            extensions = {k: v for k, v in extensions.items() if k != DOCUMENT_ID} or None
            sha256 = _document_hash(document_id)
        else:
            sha256 = _apq_hash(persisted)
        if query is None:
            text = self.get(sha256)
            if text is None:
                raise PersistedQueryError(NOT_FOUND, "PersistedQueryNotFound: send the document with its hash")
            return text, extensions
        if hashlib.sha256(query.encode("utf-8", "surrogatepass")).hexdigest() != sha256:
            raise PersistedQueryError(HASH_MISMATCH, "the hash is not the SHA-256 of the document sent with it")
        return self.register(sha256, query), extensions


def _apq_hash(persisted: Any) -> str:
    if not isinstance(persisted, dict) or persisted.get("version") != 1:
        raise PersistedQueryError(INVALID, "persistedQuery: version 1 is the one supported")
    return _checked(persisted.get("sha256Hash"), "persistedQuery.sha256Hash")


def _document_hash(document_id: Any) -> str:
    if isinstance(document_id, str) and document_id.startswith("sha256:"):
        document_id = document_id[len("sha256:") :]
    return _checked(document_id, "documentId")


def _checked(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or not _HEX.issuperset(value.lower()):
        raise PersistedQueryError(INVALID, f"{where}: expected a SHA-256 as 64 hexadecimal digits")
    return value.lower()
