"""Several gateway processes starting at once on a fresh database (a deploy of N workers or
hosts): migrations and the first-start bootstrap are serialized, so every process starts and
exactly one makes and prints the operator key."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from sqlalchemy import text

from app.core.db import make_engine
from tests.conftest import PG_URL, Database, _pg_admin, count_rows
from tests.paths import ROOT

PREPARE = (
    "from app.bootstrap import prepare; from app.settings import Settings; print('KEY', prepare(Settings()) or '-')"
)


def _fresh_url(db: Database, tmp_path: Path) -> tuple[str, str | None]:
    if db.backend == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}", None
    name = f"mk_fresh_{uuid.uuid4().hex[:10]}"
    admin = _pg_admin()
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    from sqlalchemy.engine import make_url

    from app.core.db import normalize_url

    return make_url(normalize_url(PG_URL or "")).set(database=name).render_as_string(hide_password=False), name


def test_concurrent_first_starts(db: Database, tmp_path: Path) -> None:
    url, pg_name = _fresh_url(db, tmp_path)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("METERKIT_")} | {"METERKIT_DATABASE_URL": url}
        procs = [
            subprocess.Popen([sys.executable, "-c", PREPARE], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
            for _ in range(3)
        ]
        outputs = [p.communicate(timeout=120)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], outputs
        keys = [line.split()[1] for out in outputs for line in out.splitlines() if line.startswith("KEY ")]
        assert len(keys) == 3 and sum(k.startswith("mk_op_") for k in keys) == 1, keys
        engine = make_engine(url)
        try:
            assert count_rows(engine, "api_key", "plan", "account_kit") == {"api_key": 1, "plan": 2, "account_kit": 2}
        finally:
            engine.dispose()
    finally:
        if pg_name:
            admin = _pg_admin()
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)'))
            admin.dispose()
