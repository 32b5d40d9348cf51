"""`meterkit migrate` and `meterkit serve` against a database that is missing or unreachable:
one line with the cause and the fix, exit 1, no traceback (issue 8, point 5); the maintenance
commands on a SQLite file that does not exist: exit 2, and the file is never created (issue 22,
point 4). Run as real subprocesses, against the real PostgreSQL server when one is configured."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.cli.harness import meterkit
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


# Issue 22, item 4: only migrate and serve may create a database. The maintenance commands work on
# one that exists, and the client commands never open one at all.
MAINTENANCE = [["reconcile"], ["stripe", "reconcile"], ["webhooks", "work"]]
STRIPE = {"METERKIT_STRIPE_API_KEY": "sk_test_cli"}  # so stripe reconcile gets as far as the database


@pytest.mark.parametrize("args", MAINTENANCE, ids=" ".join)
def test_a_maintenance_command_never_creates_a_sqlite_file(args: list[str], tmp_path: Path) -> None:
    path = tmp_path / "meterkit.db"
    run = meterkit(
        *args, url=None, key=None, cwd=tmp_path, env={**STRIPE, "METERKIT_DATABASE_URL": f"sqlite:///{path}"}
    )
    assert run.code == 2, (run.code, run.out, run.err)
    lines = [line for line in (run.out + run.err).splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert f"the SQLite database {path} does not exist" in lines[0] and "meterkit migrate" in lines[0], lines
    assert list(tmp_path.iterdir()) == []  # no file, no -wal, no -shm


@pytest.mark.parametrize("args", MAINTENANCE, ids=" ".join)
def test_the_default_database_is_not_created_in_the_current_folder(args: list[str], tmp_path: Path) -> None:
    # No METERKIT_DATABASE_URL: the default ./meterkit.db, relative to where the command runs.
    run = meterkit(*args, url=None, key=None, cwd=tmp_path, env=STRIPE)
    assert run.code == 2 and f"{tmp_path.resolve()}/meterkit.db does not exist" in run.err, run.err
    assert list(tmp_path.iterdir()) == []


def test_a_file_never_migrated_is_refused_too(tmp_path: Path) -> None:
    """The empty meterkit.db an older CLI left behind: `no such table` was the traceback it led to."""
    path = tmp_path / "meterkit.db"
    path.touch()
    run = meterkit("reconcile", url=None, key=None, cwd=tmp_path, env={"METERKIT_DATABASE_URL": f"sqlite:///{path}"})
    assert run.code == 2 and "has no meterkit tables" in run.err and "meterkit migrate" in run.err, run.err
    assert path.stat().st_size == 0


def test_migrate_creates_it_then_the_maintenance_command_runs(tmp_path: Path) -> None:
    env = {"METERKIT_DATABASE_URL": f"sqlite:///{tmp_path}/meterkit.db"}
    assert meterkit("migrate", url=None, key=None, cwd=tmp_path, env=env).code == 0
    run = meterkit("reconcile", url=None, key=None, cwd=tmp_path, env=env)
    assert run.code == 0 and "checked 0 tenant(s), 0 with drift" in run.out, run.out + run.err


def test_a_maintenance_command_on_a_missing_postgres_database(db: Database) -> None:
    """PostgreSQL: a database name that does not exist gets the createdb line, as migrate does."""
    if db.backend != "postgres":
        # SQLite's case is the tests above; here the same database the suite made works.
        run = meterkit("reconcile", url=None, key=None, env={"METERKIT_DATABASE_URL": db.url})
        assert run.code == 0 and "with drift" in run.out, run.out + run.err
        return
    name = f"mk_missing_{uuid.uuid4().hex[:10]}"
    url = make_url(db.url).set(database=name).render_as_string(hide_password=False)
    run = meterkit("reconcile", url=None, key=None, env={"METERKIT_DATABASE_URL": url})
    assert run.code == 1 and f'database "{name}" does not exist' in run.err and "createdb" in run.err, run.err


CLIENT_COMMANDS = [
    ["primitive", "list"],
    ["primitive", "upsert", "vault.read", "--name", "V", "--credits", "1"],
    ["kits", "upsert", "kit_x", "--name", "X", "--primitive", "email.send"],
    ["plans", "upsert", "plan_x", "--name", "X", "--kit", "kit_x"],
    ["audit"],
    ["webhooks", "endpoints"],
    ["webhooks", "deliveries", "whe_0123456789abcdef0123456789abcdef"],
    ["webhooks", "replay", "1"],
    ["tenants", "list"],
]


@pytest.mark.parametrize("args", CLIENT_COMMANDS, ids=" ".join)
def test_a_client_command_never_opens_the_database(args: list[str], tmp_path: Path) -> None:
    """The issue's report: `meterkit primitive list` created an empty meterkit.db and crashed with
    `no such table`. Now it asks the gateway at METERKIT_URL; none answers here, so exit 3, and
    neither METERKIT_DATABASE_URL's file nor ./meterkit.db comes to exist."""
    env = {"METERKIT_DATABASE_URL": f"sqlite:///{tmp_path}/elsewhere.db"}
    nowhere = f"http://127.0.0.1:{free_port()}"
    run = meterkit(*args, "--json", url=nowhere, key="mk_op_" + "x" * 43, cwd=tmp_path, env=env)
    assert run.code == 3 and run.json()["error"]["code"] == "UNREACHABLE", (run.out, run.err)
    assert nowhere in run.json()["error"]["message"]
    assert list(tmp_path.iterdir()) == []
