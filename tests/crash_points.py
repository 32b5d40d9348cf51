"""The app, for SIGKILL tests, with a crash point: a function of ours that, inside its unit of
work, does its writes and then stops (writing a marker file first), so the test kills the server
with the transaction open and half its effect written. Nothing else is changed: the real
database, the real handlers, the real webhook route.

uvicorn --factory tests.crash_points:create_app, with
  METERKIT_TEST_CRASH_AT    set_subscription (the Stripe reflection: tenant and subscription
                            rows written) or grant (a credit grant: bucket, ledger entry, balance)
  METERKIT_TEST_CRASH_FILE  the marker file, written when the point is reached."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from starlette.applications import Starlette


def _stop_after(module: Any, name: str, marker: Path) -> None:
    real = getattr(module, name)

    def stopped(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)  # its writes are in the open transaction...
        marker.write_text(name)
        time.sleep(600)  # ...and the test SIGKILLs the server here
        return result

    setattr(module, name, stopped)


def create_app() -> Starlette:
    from app.credits import ledger
    from app.integrations.stripe import handlers
    from app.main import create_app as real

    point, marker = os.environ["METERKIT_TEST_CRASH_AT"], Path(os.environ["METERKIT_TEST_CRASH_FILE"])
    module = {"set_subscription": handlers, "grant": ledger}[point]
    _stop_after(module, point, marker)
    return real()
