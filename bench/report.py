"""`make bench`'s speed targets (TARGETS) and the table it prints (bench/run.py)."""

from __future__ import annotations

from typing import Any

from bench.common import target_entry, verdict
from bench.scenarios import BATCH

# Issue 13's targets: ratios to the bare reference measured in the same run, or within the run.
TARGETS = {
    "floor_vs_bare": 0.9,  # GraphQL { __typename } with auth / the bare app's, at least
    "charge_vs_bare": 0.8,  # GraphQL charge / the bare app's GraphQL charge, at least
    "plain_vs_bare": 0.6,  # plain POST /v1/charge / the bare app's plain route, at least
    "batch_vs_charge": 10.0,  # chargeBatch of 50 charges/s / single GraphQL charges/s, at least
    "check_vs_charge": 1.2,  # read-only check / GraphQL charge, at 1 and at 16 connections, at least
    "usage_1m_vs_10k": 1.5,  # p50 ratio, at most
    "open_loop_p99_ms": 10.0,  # at 80% of the closed-loop maximum, at most
    "open_loop_p999_ms": 25.0,  # at most
    "rss_200k_vs_20k": 1.1,  # at most: no growth under load
    "alerts_vs_plain_charge": 0.9,  # charge with alerts configured / without, at least (issue 11)
}


def report(results: dict[str, Any]) -> list[str]:
    rows = results["scenarios"]
    ol = results["open_loop"]
    lines = [
        f"meterkit bench {results['date']} at {results['commit']} | {results['machine']} | "
        f"uvicorn 1 worker ({results['loop']}), "
        f"SQLite file (WAL) | wrk {results['threads']} threads, {results['duration']:.0f} s per scenario",
        "",
        f"{'scenario':<34}{'conns':>6}{'requests/s':>12}{'charges/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}",
    ]
    for r in rows:
        cps = f"{r['charges_per_s']:,.0f}" if r["charges_per_s"] is not None else "-"
        lines.append(
            f"{r['scenario']:<34}{r['connections']:>6}{r['rps']:>12,.0f}{cps:>12}"
            f"{r['p50_us'] / 1000:>9.2f}{r['p99_us'] / 1000:>9.2f}{r['errors']:>8}"
        )
    lines.append(
        f"{'charge, open loop ' + format(ol['rate'], ',.0f') + '/s':<34}{ol['connections']:>6}"
        f"{ol['achieved']:>12,.0f}{ol['achieved']:>12,.0f}{ol['p50_ms']:>9.2f}{ol['p99_ms']:>9.2f}{ol['errors']:>8}"
    )
    lines.append(
        f"  open loop: {ol['completed']:,} of {ol['scheduled']:,} scheduled answered OK in {ol['elapsed']:.1f} s "
        f"({ol['unfinished']:,} unanswered after the grace period); "
        f"p99.9 {ol['p999_ms']:.2f} ms, max {ol['max_ms']:.2f} ms; scheduler lateness p99 {ol['lag_p99_ms']:.2f} ms"
    )
    for n, r in enumerate(ol.get("runs", []), 1):
        lines.append(
            f"  open loop run {n}: {r['achieved']:,.0f}/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
            f"p99.9 {r['p999_ms']:.2f} ms, max {r['max_ms']:.2f} ms, errors {r['errors']}"
        )
    st = ol["generator_selftest"]
    lines.append(
        f"  generator self-test against a do-nothing HTTP stub: {st['achieved']:,.0f}/s of {st['rate']:,.0f}/s, "
        f"p99 {st['p99_ms']:.2f} ms, errors {st['errors']} ({'can' if st['ok'] else 'CANNOT'} sustain the rate)"
    )
    lines += ["", f"{'target':<52}{'measured':>14}{'target':>12}  result"]
    for t in results["targets"]:
        lines.append(f"{t['name']:<52}{t['measured']:>14}{t['target']:>12}  {verdict(t['pass'])}")
    books = results["books"]
    lines += [
        "",
        f"checks: every response verified (errors column); events written >= charges acknowledged in every "
        f"charge scenario: {verdict(results['events_match'])}; balance drift {books['balance_drift_accounts']}, "
        f"counter drift {books['counter_drift_rows']}, {books['events_total']:,} events in the log",
    ]
    return lines


def targets(by: dict[str, dict[str, Any]], ol: dict[str, Any], rss: dict[str, Any]) -> list[dict[str, Any]]:
    t = TARGETS
    floor = by["graphql_floor"]["rps"] / by["bare_floor"]["rps"]
    charge = by["graphql_charge"]["rps"] / by["bare_charge"]["rps"]
    plain = by["plain_charge"]["rps"] / by["bare_plain"]["rps"]
    batch = by["graphql_batch"]["charges_per_s"] / by["graphql_charge"]["charges_per_s"]
    check1 = by["check_1"]["rps"] / by["graphql_charge_1"]["rps"]
    check16 = by["check_16"]["rps"] / by["graphql_charge"]["rps"]
    usage_ratio = by["usage_1m"]["p50_us"] / by["usage_10k"]["p50_us"]
    series_ratio = by["series_1m"]["p50_us"] / by["series_10k"]["p50_us"]
    # The open-loop figures only count if the generator held the rate and nothing failed.
    held = ol["errors"] == 0 and ol["unfinished"] == 0 and ol["achieved"] >= 0.97 * ol["rate"]
    rss_ratio = rss["after_200k_mb"] / rss["after_20k_mb"]
    alerts = by["graphql_charge_alerts"]["rps"] / by["graphql_charge"]["rps"]
    return [
        target_entry(
            "GraphQL { __typename } with auth / bare", floor, f">= {t['floor_vs_bare']}x", floor >= t["floor_vs_bare"]
        ),
        target_entry(
            "GraphQL charge / bare GraphQL charge", charge, f">= {t['charge_vs_bare']}x", charge >= t["charge_vs_bare"]
        ),
        target_entry(
            "plain POST /v1/charge / bare plain route", plain, f">= {t['plain_vs_bare']}x", plain >= t["plain_vs_bare"]
        ),
        target_entry(
            f"chargeBatch of {BATCH} / single charge (charges/s)",
            batch,
            f">= {t['batch_vs_charge']:.0f}x",
            batch >= t["batch_vs_charge"],
        ),
        target_entry(
            "check / charge, 1 connection", check1, f">= {t['check_vs_charge']}x", check1 >= t["check_vs_charge"]
        ),
        target_entry(
            "check / charge, 16 connections", check16, f">= {t['check_vs_charge']}x", check16 >= t["check_vs_charge"]
        ),
        target_entry(
            "charge with alerts configured / without",
            alerts,
            f">= {t['alerts_vs_plain_charge']}x",
            alerts >= t["alerts_vs_plain_charge"],
        ),
        target_entry(
            "usageSeries p50 at 1M events / at 10k events",
            series_ratio,
            f"<= {t['usage_1m_vs_10k']}x",
            series_ratio <= t["usage_1m_vs_10k"],
        ),
        target_entry(
            "usage p50 at 1M events / at 10k events",
            usage_ratio,
            f"<= {t['usage_1m_vs_10k']}x",
            usage_ratio <= t["usage_1m_vs_10k"],
        ),
        target_entry(
            f"charge p99 open loop at {ol['rate']:,.0f}/s, median run (ms)",
            ol["p99_ms"],
            f"<= {t['open_loop_p99_ms']:.0f}",
            held and ol["p99_ms"] <= t["open_loop_p99_ms"],
            "{:.2f}",
        ),
        target_entry(
            f"charge p99.9 open loop at {ol['rate']:,.0f}/s, median (ms)",
            ol["p999_ms"],
            f"<= {t['open_loop_p999_ms']:.0f}",
            held and ol["p999_ms"] <= t["open_loop_p999_ms"],
            "{:.2f}",
        ),
        target_entry(
            f"RSS after {rss['charges_large'] // 1000}k / {rss['charges_small'] // 1000}k charges "
            f"({rss['after_20k_mb']:.0f} -> {rss['after_200k_mb']:.0f} MB)",
            rss_ratio,
            f"<= {t['rss_200k_vs_20k']}x",
            rss_ratio <= t["rss_200k_vs_20k"],
        ),
    ]
