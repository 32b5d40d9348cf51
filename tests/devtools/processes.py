"""`meterkit ...` as real processes for the dev-loop tests: each in its own process group (stopping
it stops only what it started), its output in a log file a failing assertion can show."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.paths import ROOT


@contextmanager
def meterkit_process(
    args: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("a") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopping it stops only what it started
        )
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_listening(proc: subprocess.Popen[bytes], base: str, log: Path) -> None:
    """Until the Stripe stand-in answers (any status) on `base`."""
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            httpx.get(f"{base}/checkout/cs_probe", timeout=1, trust_env=False)
            return
        except httpx.TransportError:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
