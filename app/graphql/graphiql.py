"""GraphiQL served without a CDN: Strawberry's IDE page with its unpkg.com asset URLs pointed at
the copies vendored in static/graphiql (same files, so the page's integrity hashes still hold).
An asset with no local copy keeps its CDN URL, so a Strawberry upgrade degrades, not breaks."""

from __future__ import annotations

import re
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent / "static" / "graphiql"
ASSETS_PATH = "/graphiql-assets"
_CDN = re.compile(r"https://unpkg\.com/([^\"'\s]+)")


def local_ide_html(html: str) -> str:
    def swap(m: re.Match[str]) -> str:
        return f"{ASSETS_PATH}/{m.group(1)}" if (ASSETS_DIR / m.group(1)).is_file() else m.group(0)

    return _CDN.sub(swap, html)
