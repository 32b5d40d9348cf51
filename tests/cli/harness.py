"""Running `meterkit` as a subprocess, the way a user does, and a live gateway to point it at: the
app on a real uvicorn (in a thread, so a test shares its clock and database) with an operator key.

The subprocess imports `app` and `meterkit_client` from this checkout (PYTHONPATH), not from
wherever the package happens to be installed: a test checks the code beside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from app.core.clock import FrozenClock
from app.core.db import unit_of_work
from app.main import create_app
from app.settings import Settings
from app.tenants.service import create_api_key
from tests.conftest import Api, Database
from tests.live import BackgroundServer
from tests.paths import ROOT
from tests.stripe_harness import _HttpApiClient

ENTRY = Path(sys.executable).with_name("meterkit")
SOURCES = os.pathsep.join([str(ROOT), str(ROOT / "clients" / "python")])


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def meterkit(*args: str, url: str | None, key: str | None, cwd: Path = ROOT, env: dict[str, str] | None = None) -> Run:
    """`meterkit ARGS` with no METERKIT_* setting but METERKIT_URL / METERKIT_API_KEY and `env`."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("METERKIT_")}
    environ["PYTHONPATH"] = os.pathsep.join(p for p in (SOURCES, environ.get("PYTHONPATH")) if p)
    if url is not None:
        environ["METERKIT_URL"] = url
    if key is not None:
        environ["METERKIT_API_KEY"] = key
    environ.update(env or {})
    cmd = [str(ENTRY)] if ENTRY.exists() else [sys.executable, "-m", "app.cli"]
    p = subprocess.run([*cmd, *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=60)
    return Run(p.returncode, p.stdout, p.stderr)


@dataclass
class Gateway:
    url: str
    api: Api
    db: Database
    clock: FrozenClock
    operator_key_id: str

    def op(self, *args: str) -> Run:
        """The command with the operator key."""
        return meterkit(*args, url=self.url, key=self.api.operator_key)


@pytest.fixture
def gateway(db: Database) -> Iterator[Gateway]:
    # The wall clock's second, frozen: the CLI's --since/--until are compared with the audit log's times.
    clock = FrozenClock(datetime.now(UTC).replace(microsecond=0))
    settings = Settings(env="test", database_url="sqlite://unused", auth_cache_seconds=0, webhook_allow_private=True)
    with BackgroundServer(create_app(settings, engine=db.engine, clock=clock)) as server:
        api = Api(cast(Any, _HttpApiClient(server.url)), db)
        with unit_of_work(db.engine) as s:
            row, api.operator_key = create_api_key(s, clock, role="operator", scope=None, name="cli tests")
            key_id = str(row.id)
        yield Gateway(server.url, api, db, clock, key_id)
