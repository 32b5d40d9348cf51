"""The repository's root, for tests that read its files or run from it: test files sit at different
depths under tests/, so none computes it from its own location."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
