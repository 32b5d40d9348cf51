"""A real uvicorn server for end-to-end tests: in a thread (so a test can inject a clock)
or in a subprocess (so a test can SIGKILL it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from app.devtools.serving import BackgroundServer

__all__ = ["BackgroundServer", "free_port", "serve_in_thread", "server_output", "start_subprocess", "wait_healthy"]


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    with BackgroundServer(app) as server:
        yield server.url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_subprocess(
    database_url: str, port: int, *, factory: str = "app.main:create_app", **env: str
) -> subprocess.Popen[bytes]:
    """The server's stderr goes to a file (a pipe nobody reads would stall a chatty server once
    full); `server_output(proc)` reads it, so a failing test can show what the server said.
    `factory`: the app factory uvicorn calls (a test's crash-point wrapper, tests/crash_points.py)."""
    log = tempfile.NamedTemporaryFile(prefix="meterkit-server-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            factory,
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--timeout-keep-alive",
            "120",
        ],
        env={**os.environ, "METERKIT_DATABASE_URL": database_url, "METERKIT_ENV": "test", **env},
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    log.close()
    proc.log_path = log.name  # type: ignore[attr-defined]
    wait_healthy(proc, f"http://127.0.0.1:{port}", 30, lambda: server_output(proc))
    return proc


def server_output(proc: subprocess.Popen[Any]) -> str:
    """What a server started by start_subprocess wrote to stderr so far (its tail)."""
    path = getattr(proc, "log_path", None)
    if path is None:
        return ""
    with open(path, errors="replace") as f:
        return f.read()[-20_000:]


def wait_healthy(proc: subprocess.Popen[Any], base: str, seconds: float, output: Callable[[], str]) -> None:
    """Until GET /healthz answers 200; a server that exits or never gets there fails with its output."""
    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{output()}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"server did not become healthy:\n{output()}")
        time.sleep(0.05)
