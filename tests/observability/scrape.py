"""Reading /metrics as Prometheus would: the text format parsed by prometheus-client's parser."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(base: str, key: str) -> Samples:
    r = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=30, trust_env=False)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: Any) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when none)."""
    want = {k: str(v) for k, v in labels.items()}
    return sum(v for (n, ls), v in samples.items() if n == name and want.items() <= dict(ls).items())


def names(samples: Samples) -> set[str]:
    return {n for n, _ in samples}
