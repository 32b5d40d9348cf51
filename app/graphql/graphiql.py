"""GraphiQL served without a CDN, behind a key prompt: meterkit's own page (static/ide/) loads the
GraphiQL, React and explorer files vendored in static/graphiql (byte for byte, so the page's
integrity hashes hold) and asks for an API key before GraphiQL mounts, so the schema's
introspection is never sent without one (no 401 on first open)."""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"
ASSETS_DIR = STATIC / "graphiql"
ASSETS_PATH = "/graphiql-assets"
IDE_DIR = STATIC / "ide"  # served as ASSETS_PATH/meterkit: the page's own script and styles
IDE_PATH = f"{ASSETS_PATH}/meterkit"


def ide_html() -> str:
    return (IDE_DIR / "index.html").read_text()
