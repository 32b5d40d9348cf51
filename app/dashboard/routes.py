"""/dashboard (the page) and /dashboard/assets (its scripts, styles and the vendored uPlot).

The page holds no data and no key: the user types the key in, the browser keeps it in
sessionStorage and calls /graphql with it, like any other client of the public API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"

# Only this origin's own files and API: a typed-in key never leaves for a third party.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


async def page(_: Request) -> Response:
    return FileResponse(
        STATIC / "index.html",
        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache", "Referrer-Policy": "no-referrer"},
    )


def routes() -> list[Any]:
    return [
        Route("/dashboard", page, methods=["GET"]),
        Mount("/dashboard/assets", StaticFiles(directory=STATIC), name="dashboard-assets"),
    ]
