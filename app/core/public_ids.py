"""Opaque public ids for usage events and ledger entries (issue 22).

Both tables keep their integer identity (append-only inserts in index order, a total order, the
cursors of their lists), but no API shows it: a counter tells a tenant the whole system's volume
(its event 1,000,123 after 1,000,000). Every edge writes `evt_` / `led_` and 16 hex digits, the
integer put through a keyed permutation of 64-bit numbers: a 4-round Feistel network (Luby-Rackoff:
a pseudo-random permutation) whose round function is keyed BLAKE2b, one key per kind derived from
the install's secret. Why a permutation rather than a random public id column: nothing to migrate or
backfill on the two largest tables, no second unique index to maintain on every charge, and a
lookup by public id is a decode (microseconds) and then the primary key, as before.

The secret is made once per database (a random 256-bit value in `server_secret`, written by the
migration, or on first use if missing, so every process of an install agrees), read once per
engine."""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import weakref

from sqlalchemy import Column, String, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, SQLModel

from app.core.db import connect
from app.core.errors import ValidationFailed

EVENT = "evt"  # usage_event.id
ENTRY = "led"  # ledger_entry.id
ALERT = "alr"  # alert_event.id: an alert webhook's id (a tenant's receiver sees it)
KINDS = (EVENT, ENTRY, ALERT)
SECRET_NAME = "public_ids"
_ROUNDS = 4
_MASK = 0xFFFFFFFF
_PUBLIC = re.compile(r"^(?P<kind>[a-z]{3})_(?P<hex>[0-9a-f]{16})$")


class ServerSecret(SQLModel, table=True):
    """Secrets an install makes for itself (not configuration): one row per purpose."""

    __tablename__ = "server_secret"

    name: str = Field(sa_column=Column(String(40), primary_key=True))
    value: str = Field(sa_column=Column(String(128), nullable=False))


class IdCodec:
    """Integer ids <-> public ids, under one secret."""

    def __init__(self, secret: bytes) -> None:
        self._keys = {
            kind: hashlib.blake2b(kind.encode(), key=secret[:64], digest_size=32, person=b"meterkit-ids").digest()
            for kind in KINDS
        }
        # Each round's keyed, salted hash state before any data, made once: a round copies it and
        # hashes its half (the same digest as a new keyed hash per round, without the key block's work).
        self._rounds = {
            kind: tuple(hashlib.blake2b(key=key, digest_size=4, salt=bytes([i]) * 16) for i in range(_ROUNDS))
            for kind, key in self._keys.items()
        }

    def encode(self, kind: str, n: int) -> str:
        if not 0 <= n < 2**64:
            raise ValueError(f"{kind} id out of range: {n}")
        left, right = n >> 32, n & _MASK
        for state in self._rounds[kind]:
            h = state.copy()
            h.update(right.to_bytes(4, "big"))
            left, right = right, left ^ int.from_bytes(h.digest(), "big")
        return f"{kind}_{(left << 32 | right):016x}"

    def decode(self, kind: str, public: str, *, field: str = "id") -> int:
        """The integer behind a public id of this kind; a malformed one (or another kind's, or an
        integer as the API wrote ids before) is a ValidationFailed, never a database read."""
        m = _PUBLIC.match(public or "")
        if m is None or m.group("kind") != kind:
            raise ValidationFailed(f"{field} is not a valid {kind}_ id", field=field)
        value = int(m.group("hex"), 16)
        left, right = value >> 32, value & _MASK
        for state in reversed(self._rounds[kind]):
            h = state.copy()
            h.update(left.to_bytes(4, "big"))
            left, right = right ^ int.from_bytes(h.digest(), "big"), left
        return left << 32 | right


_CODECS: weakref.WeakKeyDictionary[Engine, IdCodec] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def codec(engine: Engine) -> IdCodec:
    """The engine's codec: its database's secret, made on first use (read once per engine)."""
    found = _CODECS.get(engine)
    if found is not None:
        return found
    with _LOCK:
        found = _CODECS.get(engine)
        if found is None:
            found = _CODECS[engine] = IdCodec(bytes.fromhex(_secret(engine)))
    return found


def _secret(engine: Engine) -> str:
    """Through app.core.db.connect, so a database out of connections is Unavailable (503, retryable)
    as for any request; each connection is closed after, not kept in the pool (a read at start must
    not hold one of a small pool's slots)."""
    read = text("SELECT value FROM server_secret WHERE name = :n")
    with connect(engine) as conn:
        value = conn.execute(read, {"n": SECRET_NAME}).scalar()
        conn.invalidate()
    if value is not None:
        return str(value)
    try:
        with connect(engine) as conn:
            with conn.begin():
                conn.execute(
                    text("INSERT INTO server_secret (name, value) VALUES (:n, :v)"),
                    {"n": SECRET_NAME, "v": secrets.token_hex(32)},
                )
            conn.invalidate()
    except IntegrityError:
        pass  # another process made it first: theirs is the install's
    with connect(engine) as conn:
        value = conn.execute(read, {"n": SECRET_NAME}).scalar_one()
        conn.invalidate()
    return str(value)
