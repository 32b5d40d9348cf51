"""PgBouncer for the tests: Debian's `pgbouncer` (installed by `make test`), started by the test
that needs it on a free loopback port with a generated config, in front of the test
PostgreSQL server. The tests run the gateway through it in transaction pooling mode."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url

from app.core.db import normalize_url
from tests.live import free_port

PGBOUNCER = "/usr/sbin/pgbouncer"


@contextmanager
def pgbouncer(
    server_url: str, *, pool_mode: str = "transaction", pool_size: int = 10, query_wait_timeout: int = 120
) -> Iterator[int]:
    """A running pgbouncer forwarding every database of `server_url`'s server; yields its port.
    Server connections per (database, user): at most `pool_size`; a client waits at most
    `query_wait_timeout` seconds for one (then pgbouncer answers an error and hangs up)."""
    if not os.path.exists(PGBOUNCER):
        raise RuntimeError("Debian's pgbouncer is missing: `make test` installs it (apt-get install pgbouncer)")
    url = make_url(normalize_url(server_url))
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="meterkit-pgbouncer-"))
    (work / "users.txt").write_text(f'"{url.username or "postgres"}" ""\n')
    ini = work / "pgbouncer.ini"
    ini.write_text(
        "\n".join(
            [
                "[databases]",
                f"* = host={url.host or '127.0.0.1'} port={url.port or 5432}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {work / 'users.txt'}",
                f"pool_mode = {pool_mode}",
                f"default_pool_size = {pool_size}",
                "max_client_conn = 1000",
                f"query_wait_timeout = {query_wait_timeout}",
                "ignore_startup_parameters = extra_float_digits",
                f"logfile = {work / 'pgbouncer.log'}",
                "",
            ]
        )
    )
    # pgbouncer refuses to run as root; -u drops to the postgres account, which must read the files.
    cmd = [PGBOUNCER, str(ini)]
    if os.geteuid() == 0:
        cmd[1:1] = ["-u", "postgres"]
        work.chmod(0o777)
        for f in work.iterdir():
            f.chmod(0o644)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_listening(proc, port, work)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


def through(url: str, port: int) -> str:
    """The same database and user as `url`, through the pgbouncer on `port`."""
    u = make_url(normalize_url(url))
    return u.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


def _wait_listening(proc: subprocess.Popen[bytes], port: int, work: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = (work / "pgbouncer.log").read_text() if (work / "pgbouncer.log").exists() else ""
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"pgbouncer exited ({proc.returncode}):\n{err}\n{log}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("pgbouncer did not start listening")
