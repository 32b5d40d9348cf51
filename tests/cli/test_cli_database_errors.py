"""`meterkit migrate` and `meterkit serve` against a database that is missing or unreachable:
one line with the cause and the fix, exit 1, no traceback (issue 8, point 5). Run as real
subprocesses, against the real PostgreSQL server when one is configured."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import Database
from tests.live import free_port

COMMANDS = [["migrate"], ["serve", "--no-demo"]]


def _run(args: list[str], database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "METERKIT_DATABASE_URL": database_url, "METERKIT_PORT": str(free_port())}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_missing_database_says_how_to_create_it(args: list[str], db: Database, tmp_path: Path) -> None:
    """On the backend of `db`: a PostgreSQL database name that does not exist on that server
    (createdb), or a SQLite file in a folder that does not exist (mkdir)."""
    if db.backend == "postgres":
        name = f"mk_missing_{uuid.uuid4().hex[:10]}"
        url = make_url(db.url).set(database=name).render_as_string(hide_password=False)
        line = _one_line(_run(args, url))
        assert f'database "{name}" does not exist' in line, line
        assert "createdb" in line and name in line, line
        return
    folder = tmp_path / "no" / "such"
    line = _one_line(_run(args, f"sqlite:///{folder}/meterkit.db"))
    assert "mkdir -p" in line and str(folder) in line, line
    assert not folder.exists()


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_unreachable_postgres_says_start_it(args: list[str]) -> None:
    port = free_port()  # nothing listens there
    line = _one_line(_run(args, f"postgresql://postgres@127.0.0.1:{port}/meterkit"))
    assert f"cannot reach PostgreSQL at 127.0.0.1:{port}" in line, line
    assert "METERKIT_DATABASE_URL" in line, line


def test_not_a_database_url() -> None:
    line = _one_line(_run(["migrate"], "mysql-ish://nowhere"))
    assert "METERKIT_DATABASE_URL is not a usable database URL" in line, line


def test_a_reachable_database_still_migrates(tmp_path: Path) -> None:
    proc = _run(["migrate"], f"sqlite:///{tmp_path}/ok.db")
    assert proc.returncode == 0, proc.stderr
    assert "migrated" in proc.stdout
