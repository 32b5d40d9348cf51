"""The GraphQL parse cache (query text -> DocumentNode), bounded in bytes, not only in entries.

Counting entries let 300 distinct 1 MB documents grow a server from 125 MB to 720 MB (issue 17).
Each entry is charged an estimate of what it holds: its text plus its syntax tree, which graphql-core
builds at ~350-500 bytes per token (measured with tracemalloc on documents from 35 to 3,500 tokens).
The least recently used entries go first once the total passes `max_bytes`; a document alone
over the bound is not kept at all."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from graphql import DocumentNode

BYTES_PER_TOKEN = 512


def document_bytes(query: str, doc: DocumentNode) -> int:
    """What keeping `doc` (parsed from `query`) costs, estimated: the text and its tree."""
    tokens = 0
    token = doc.loc.start_token if doc.loc is not None else None
    while token is not None:
        tokens += 1
        token = token.next
    if doc.loc is None:  # parsed without locations: no token list, assume the densest tree
        tokens = len(query)
    return len(query) + BYTES_PER_TOKEN * tokens


class ParseCache:
    """A bounded LRU by bytes (and by entries), with hit and miss counts (for tests). Keys are
    (query text, *parse options); values are the documents."""

    def __init__(self, max_bytes: int, max_entries: int = 512) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._items: OrderedDict[Any, tuple[DocumentNode, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Any) -> DocumentNode | None:
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: Any, doc: DocumentNode) -> None:
        size = document_bytes(key[0], doc)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._items[key] = (doc, size)
            self.bytes += size
            while self.bytes > self.max_bytes or len(self._items) > self.max_entries:
                _, (_, dropped) = self._items.popitem(last=False)
                self.bytes -= dropped
