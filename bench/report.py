"""Turning raw bench measurements into figures: percentiles, the targets the figures are judged
against, the printed summary table and the JSON file. No processes, no I/O but the JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SATURATED = 0.90  # a load generator above this fraction of one core limits what we measure


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    limit: float
    unit: str
    higher: bool = False  # the figure must be at least the limit, not at most

    @property
    def shown(self) -> str:
        return f"{'>=' if self.higher else '<='} {self.limit:,g} {self.unit}".rstrip()


TARGETS = {
    "idle_kb": Target("idle_kb", "RSS per idle connection", 6.0, "KB"),
    "p50": Target("p50", "commit -> client p50", 0.5, "ms"),
    "p99": Target("p99", "commit -> client p99", 2.0, "ms"),
    "fanout_us": Target("fanout_us", "fan-out: server write CPU time per connection", 12.0, "us"),
    "most": Target("most", "connections one process holds", 19_000, "", higher=True),
}


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def pct_ms(seconds: Sequence[float], q: float, digits: int = 2) -> float:
    """Percentile q (0..100) of durations in seconds, in ms rounded to `digits`: the sorted
    values' element at index q% of their count (the last at 100), NaN when there are none.
    The scaling and retention benches' figures (distribution_ms's are nearest-rank)."""
    if not seconds:
        return math.nan
    ordered = sorted(seconds)
    return round(ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000, digits)


def median_window(p99s: Sequence[float]) -> int:
    """Which of back-to-back windows is the figure: the one with the median p99 (the tail of
    one window moves with whatever else the shared cores did then)."""
    return sorted(range(len(p99s)), key=lambda i: p99s[i])[len(p99s) // 2]


def distribution_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean of durations given in seconds, in milliseconds."""
    values = sorted(s * 1000 for s in seconds)
    if not values:
        return {
            "n": 0,
            "p50": math.nan,
            "p90": math.nan,
            "p99": math.nan,
            "p999": math.nan,
            "max": math.nan,
            "min": math.nan,
            "mean": math.nan,
        }
    return {
        "n": len(values),
        "min": values[0],
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "p999": percentile(values, 99.9),
        "max": values[-1],
        "mean": sum(values) / len(values),
    }


def saturated(cpu: dict[str, float]) -> list[str]:
    """Names of load-generator processes above the saturation threshold."""
    return [name for name, used in cpu.items() if name.startswith("client") and used > SATURATED]


def cores_busy(cpu: dict[str, float], cores: int) -> bool:
    """Whether the measured processes together kept (nearly) every core busy: then wall-clock
    figures are bounded by the shared CPU, whatever each process's own share."""
    return sum(cpu.values()) > SATURATED * cores


def _windows_title(run: dict[str, Any]) -> str:
    n = len(run.get("windows") or ())
    return f"; the median of {n} windows by p99" if n > 1 else ""


def _window_rows(t: Table, run: dict[str, Any]) -> None:
    """Each window's percentiles, the one shown first marked."""
    windows = run.get("windows") or []
    if len(windows) < 2:
        return
    t.row(
        "every window: p50 / p99 / p99.9 ms (* the one shown)",
        ";  ".join(
            f"{'*' if i == run['window'] else ''}{_num(c['p50'], 2)} / {_num(c['p99'], 2)} / "
            f"{_num(c['p999'], 2)}"
            for i, c in enumerate(w["commit_to_client_ms"] for w in windows)
        ),
    )


def merge_counts(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    """Sum of per-process counters, e.g. close code -> connections."""
    total: dict[str, int] = {}
    for part in counts:
        for key, n in part.items():
            total[key] = total.get(key, 0) + n
    return total


def problems(results: dict[str, Any]) -> list[str]:
    """What broke: lost, duplicated or misrouted notifications, failed or dropped
    connections, failed inserts. Only these fail the run (exit 1); figures off their targets
    do not (they depend on the machine)."""
    found: list[str] = []
    if results.get("error"):
        found.append(f"stopped: {results['error'][:300]}")
    idle = results.get("idle_memory") or {}
    if idle.get("failed"):
        found.append(f"{idle['failed']} connection(s) failed to open")
    lat = results.get("latency") or {}
    for name in ("latency", "latency_fast"):
        run = results.get(name) or {}
        for key, what in (
            ("missing", "notification(s) never arrived"),
            ("duplicates", "notification(s) arrived twice"),
            ("misrouted", "notification(s) reached another user's connection"),
            ("unexpected", "unknown notification id(s) arrived"),
            ("unfinished_inserts", "insert(s) did not finish"),
        ):
            if run.get(key):
                found.append(f"{name}: {run[key]} {what}")
        if run.get("insert_errors"):
            found.append(f"{name}: inserts failed: {run['insert_errors'][:2]}")
    storm = results.get("storm") or {}
    if storm.get("failed"):
        found.append(
            f"reconnect storm: {storm['failed']} of {storm['clients']:,} clients did "
            f"not reconnect and sync: {storm['errors'][:2]}"
        )
    if storm.get("problems"):
        found.append(
            f"reconnect storm: sync-responses wrong ({storm['problems']}), e.g. "
            f"{storm['problem_examples'][:2]}"
        )
    for step in (results.get("ramp") or {}).get("steps", []):
        if step["duplicates"] or step["misrouted"]:  # late ones only end the ramp
            found.append(
                f"sustained throughput at {step['rate']:,.0f}/s: {step['duplicates']} "
                f"duplicated, {step['misrouted']} misrouted"
            )
        if step["insert_errors"]:
            found.append(
                f"sustained throughput at {step['rate']:,.0f}/s: inserts failed: "
                f"{step['insert_errors'][:2]}"
            )
    hands = results.get("handshakes") or {}
    if hands.get("failed"):
        found.append(
            f"handshakes: {hands['failed']} of {hands['tried']:,} failed: {hands['errors'][:2]}"
        )
    fan = results.get("fanout") or {}
    if fan and fan["received_total"] != fan["expected_total"]:
        found.append(
            f"fan-out: {fan['received_total']:,} broadcast frames received, "
            f"{fan['expected_total']:,} expected"
        )
    # the clients' totals at the end of the run (else as they were at the fan-out's end)
    last = results.get("clients_final") or fan or lat
    if last.get("foreign"):
        found.append(
            f"{last['foreign']} frame(s) of another user's stream, e.g. "
            f"{last['foreign_examples'][:2]}"
        )
    if last.get("malformed"):
        found.append(
            f"{last['malformed']} notification:new frame(s) without an id or stream, "
            f"e.g. {last['malformed_examples'][:1]}"
        )
    if last.get("dropped"):
        found.append(f"the server closed connections (close code: count): {last['dropped']}")
    return found


def write_json(results: dict[str, Any], path: Path, indent: int | None = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=indent, default=str, allow_nan=True) + "\n")


# -- the printed summary ------------------------------------------------------------------------


def _verdict(value: float, target: Target) -> str:
    if math.isnan(value):
        return "n/a"
    met = value >= target.limit if target.higher else value <= target.limit
    return "ok" if met else "MISS"


def _num(value: float, digits: int = 2) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return f"{value:,.{digits}f}"


def _cpu_label(title: str, cpu: dict[str, float]) -> str:
    return f"{title} ({' / '.join(cpu)})"


def _cpu(cpu: dict[str, float]) -> str:
    return " / ".join(f"{used * 100:.0f}%" for used in cpu.values())


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []

    def section(self, title: str) -> None:
        self.rows.append((title, "", "", ""))

    def row(self, label: str, measured: str, target: str = "", verdict: str = "") -> None:
        self.rows.append(("  " + label, measured, target, verdict))

    def judged(self, label: str, value: float, unit: str, target: Target, digits: int = 2) -> None:
        self.row(
            label, f"{_num(value, digits)} {unit}".rstrip(), target.shown, _verdict(value, target)
        )

    def render(self) -> str:
        head = ("metric", "measured", "target", "")
        rows = [head, *self.rows]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = []
        for i, (label, measured, target, verdict) in enumerate(rows):
            if i > 0 and not measured and not target:
                lines.append(label)
                continue
            lines.append(
                f"{label:<{widths[0]}}  {measured:>{widths[1]}}  "
                f"{target:<{widths[2]}}  {verdict}".rstrip()
            )
            if i == 0:
                lines.append("-" * (sum(widths) + 10))
        return "\n".join(lines)


def summary(results: dict[str, Any]) -> str:
    meta = results["meta"]
    t = Table()
    notes: list[str] = []

    idle = results.get("idle_memory")
    if idle:
        t.section("1. idle memory (daemon RSS)")
        for level in idle["levels"]:
            t.row(f"RSS with {level['live']:,} connections", f"{level['rss_kb'] / 1024:,.1f} MB")
        per_conn = list(idle["kb_per_connection"].items())
        for i, (n, kb) in enumerate(per_conn):
            label = f"per connection, (RSS_{int(n):,} - RSS_0) / {int(n):,}"
            if i == len(per_conn) - 1:  # judged at the largest count: the least noisy
                t.judged(label, kb, "KB", TARGETS["idle_kb"])
            else:
                t.row(label, f"{_num(kb)} KB")
        t.row("connect rate", f"{idle['connect_rate']:,.0f} /s")
        t.row(_cpu_label("CPU while connecting", idle["cpu"]), _cpu(idle["cpu"]))
        t.row(
            "client CPU per connection (TCP, handshake, 2 frames)",
            f"{_num(idle['client_cpu_us_per_connection'], 1)} us",
        )
        if idle["saturated"]:
            notes.append(
                "idle memory: load generator saturated while connecting (does not affect RSS)"
            )

    lat = results.get("latency")
    if lat:
        t.section(
            f"2. latency ({lat['rate']:,.0f}/s for {lat['seconds']:g} s over "
            f"{lat['users']:,} connected users{_windows_title(lat)})"
        )
        c, i = lat["commit_to_client_ms"], lat["insert_to_client_ms"]
        t.judged("commit -> client p50", c["p50"], "ms", TARGETS["p50"], 3)
        t.judged("commit -> client p99", c["p99"], "ms", TARGETS["p99"], 3)
        _window_rows(t, lat)
        t.row("commit -> client max", f"{_num(c['max'], 3)} ms")
        t.row(
            "before insert -> client p50 / p99 / max",
            f"{_num(i['p50'], 3)} / {_num(i['p99'], 3)} / {_num(i['max'], 3)} ms",
        )
        ins = lat["insert_round_trip_ms"]
        t.row("insert round trip p50 / p99", f"{_num(ins['p50'], 3)} / {_num(ins['p99'], 3)} ms")
        t.row(
            "sent / received / missing",
            f"{lat['sent']:,} / {lat['received']:,} / {lat['missing']:,}",
        )
        t.row(
            "duplicates / misrouted / foreign stream",
            f"{lat['duplicates']} / {lat['misrouted']} / {lat['foreign']}",
        )
        t.row("achieved insert rate", f"{lat['achieved_rate']:,.0f} /s")
        t.row(_cpu_label("CPU during the run", lat["cpu"]), _cpu(lat["cpu"]))
        t.row(
            f"client CPU per received message ({lat['frames']:,} frames in {lat['reads']:,} reads)",
            f"{_num(lat['client_cpu_us_per_frame'], 1)} us",
        )
        if lat["saturated"]:
            notes.append(f"latency: load generator saturated ({', '.join(lat['saturated'])})")
        elif lat["cores_busy"]:
            notes.append("latency: daemon and load generators together kept every core busy")
        if c["p50"] < 0:
            notes.append(
                "latency: a negative commit -> client figure means the client had "
                "the notification before the writer process saw its COMMIT reply "
                "(both leave PostgreSQL at commit; the writer's wake-up is the slower)"
            )
        if lat["missing"] or lat["foreign"] or lat["misrouted"]:
            notes.append("latency: notifications missing or delivered to the wrong user")

    fast = results.get("latency_fast")
    if fast:
        c = fast["commit_to_client_ms"]
        t.section(
            f"2b. latency at {fast['rate']:,.0f}/s ({fast['batch']} per INSERT) for "
            f"{fast['seconds']:g} s{_windows_title(fast)}"
        )
        t.row(
            "commit -> client p50 / p99 / p99.9 / max",
            f"{_num(c['p50'], 3)} / {_num(c['p99'], 3)} / {_num(c['p999'], 3)} / "
            f"{_num(c['max'], 3)} ms",
        )
        _window_rows(t, fast)
        t.row(
            "sent / received / missing / duplicates",
            f"{fast['sent']:,} / {fast['received']:,} / {fast['missing']:,} / {fast['duplicates']}",
        )
        t.row("achieved rate", f"{fast['achieved_rate']:,.0f} /s")
        t.row(_cpu_label("CPU during the run", fast["cpu"]), _cpu(fast["cpu"]))
        if fast["saturated"]:
            notes.append(
                f"latency at {fast['rate']:,.0f}/s: load generator saturated "
                f"({', '.join(fast['saturated'])})"
            )

    fan = results.get("fanout")
    if fan:
        m = fan["median"]
        n_runs = len(fan["runs"])
        t.section(
            f"3. fan-out (broadcast to {fan['connections']:,} connections, median of {n_runs})"
        )
        if fan["server_write_logged"]:
            t.row(
                "server write time (daemon's notifyd.core.fanout log)",
                f"{_num(m['server_write_ms'], 1)} ms",
            )
            # judged on the loop's CPU time: its wall time also holds the co-located clients
            # that preempted it (on its own host a server is not sharing two cores with them)
            t.judged(
                "  per connection, write loop CPU time / N",
                m["server_write_cpu_us_per_conn"],
                "us",
                TARGETS["fanout_us"],
            )
            t.row(
                "  per connection, write loop wall time / N",
                f"{_num(m['server_write_us_per_conn'])} us",
            )
            if fan["server_write_logged"] < n_runs:
                notes.append(
                    f"fan-out: the daemon logged its write time for "
                    f"{fan['server_write_logged']} of {n_runs} broadcasts"
                )
        else:
            t.row(
                "server write time / per connection",
                "n/a (daemon does not log fan-out time)",
                f"<= {TARGETS['fanout_us'].limit:g} {TARGETS['fanout_us'].unit}",
                "n/a",
            )
        t.row(
            "commit -> last client / per connection",
            f"{_num(m['last_ms'], 1)} ms / {_num(m['wall_us_per_conn'])} us",
            "(see note)",
            "load generator saturated" if fan["clients_saturated"] else "",
        )
        notes.append(
            "load: the WebSocket client processes run at nice 10 so that on these two "
            "shared cores they do not preempt the daemon being measured (in production "
            "clients are remote); this can only add to the latency figures"
        )
        notes.append(
            "fan-out: commit -> last client adds to the server's writes the NOTIFY "
            "delivery and the clients' reading, done on the same cores (not judged)"
        )
        t.row("commit -> first client", f"{_num(m['first_ms'], 1)} ms")
        t.row("per connection, daemon CPU (utime+stime) / N", f"{_num(m['cpu_us_per_conn'])} us")
        t.row("per connection, daemon on-CPU (schedstat) / N", f"{_num(m['oncpu_us_per_conn'])} us")
        t.row("  same, less the idle baseline", f"{_num(m['net_us_per_conn'])} us")
        t.row(
            "daemon idle CPU with all connections open",
            f"{fan['idle_cpu_fraction'] * 100:.1f}% of a core",
        )
        t.row(
            "received / expected (all runs)",
            f"{fan['received_total']:,} / {fan['expected_total']:,}",
        )
        t.row(_cpu_label("CPU during broadcasts, max", fan["cpu_max"]), _cpu(fan["cpu_max"]))
        t.row(
            "busiest client's CPU over commit -> last",
            f"{_num(m['client_busy'] * 100, 0)}% of a core",
        )
        last = fan["runs"][-1]
        t.row(
            f"client CPU per received message ({last['frames']:,} frames in "
            f"{last['reads']:,} reads)",
            f"{_num(m['client_cpu_us_per_frame'], 1)} us",
        )
        if fan["clients_saturated"]:
            notes.append(
                "fan-out: load generator saturated (a client process used more than "
                f"{SATURATED:.0%} of a core over commit -> last): that wall figure is "
                "bounded by the clients; the server write time is not"
            )
        elif fan["cores_busy"]:
            notes.append(
                "fan-out: daemon and load generators together kept every core busy: "
                "the wall figures are bounded by the shared CPU"
            )

    storm = results.get("storm")
    if storm:
        c = storm["caught_up_s"]  # seconds from the reconnect, through distribution_ms
        t.section(
            f"5. reconnect storm ({storm['clients']:,} clients cut at once, one "
            "notification each and a broadcast committed, all reconnect and sync)"
        )
        t.row("all caught up (last sync-response)", f"{_num(storm['all_caught_up_s'], 2)} s")
        t.row("caught up p50 / p99", f"{_num(c['p50'] / 1000, 2)} / {_num(c['p99'] / 1000, 2)} s")
        t.row("caught up / failed", f"{storm['caught_up']:,} / {storm['failed']:,}")
        t.row("sync-responses wrong", str(storm["problems"] or "none"))
        t.row(_cpu_label("CPU during the storm", storm["cpu"]), _cpu(storm["cpu"]))
        if storm["saturated"]:
            notes.append(
                f"reconnect storm: load generator saturated "
                f"({', '.join(storm['saturated'])}): the time is the clients' as much "
                "as the server's"
            )

    ramp = results.get("ramp")
    if ramp and ramp.get("steps"):
        t.section(
            f"6. sustained targeted throughput (steps until p99 passes {ramp['p99_limit_ms']:g} ms)"
        )
        for step in ramp["steps"]:
            again = ", again" if step.get("attempt", 1) > 1 else ""
            t.row(
                f"{step['rate']:,.0f}/s ({step['batch']} per INSERT{again}): p50 / p99, committed",
                f"{_num(step['p50'], 1)} / {_num(step['p99'], 1)} ms, {step['commit_rate']:,.0f}/s",
            )
        t.row(
            f"highest rate delivered with p99 <= {ramp['p99_limit_ms']:g} ms (committed)",
            f"{ramp['held']:,.0f} /s",
        )
        t.row("stopped by", ramp["stopped_by"])
        if ramp["load_bound"]:
            notes.append(
                f"sustained throughput: {ramp['stopped_by']}: the server held at least "
                "the rate shown"
            )

    hands = results.get("handshakes")
    if hands:
        t.section(f"7. handshakes ({hands['tried']:,} new connections beside the open ones)")
        t.row(
            "handshakes per second (JWT verified, greeting sent)", f"{hands['per_second']:,.0f} /s"
        )
        t.row("server CPU per handshake", f"{_num(hands['server_cpu_us_per_handshake'], 0)} us")
        t.row("client CPU per handshake", f"{_num(hands['client_cpu_us_per_handshake'], 0)} us")
        t.row(_cpu_label("CPU while connecting", hands["cpu"]), _cpu(hands["cpu"]))
        if hands["saturated"]:
            notes.append(
                f"handshakes: load generator saturated ({', '.join(hands['saturated'])})"
                ": the rate is a lower bound of the server's"
            )

    most = results.get("most_connections")
    if most:
        t.section(
            f"4. most connections in one process (up to {most['target']:,}; its open-file "
            f"limit {most['fd_limit']})"
        )
        base = results["idle_memory"]["levels"][0]["rss_kb"]
        t.judged("connections held", most["held"], "", TARGETS["most"], 0)
        t.row(
            f"RSS there, per connection (RSS_{most['held']:,} - RSS_0) / {most['held']:,}",
            f"{_num((most['rss_kb'] - base) / most['held'])} KB" if most["held"] else "n/a",
        )
        errors = [lv["error"] for lv in most["levels"] if "error" in lv]
        if errors:
            notes.append(f"most connections: stopped by {errors[0][:200]}")

    low = results.get("floor")
    if low:
        send = low["send"]
        t.section("8. floors on this machine (no server: what none can go below)")
        t.row(
            f"one bare send() to each of {send['connections']:,} loopback connections, CPU / N",
            f"{_num(send['cpu_us_per_conn'])} us",
        )
        t.row("  wall time / N", f"{_num(send['wall_us_per_conn'])} us")
        for notify in (low["notify"], low.get("notify_fast")):
            if not notify:
                continue
            heard = notify["commit_to_listener_ms"]
            t.row(
                f"commit -> bare LISTEN client at {notify['rate']:,.0f}/s "
                f"({notify.get('batch', 1)} per INSERT): p50 / p99 / p99.9",
                f"{_num(heard['p50'], 3)} / {_num(heard['p99'], 3)} / {_num(heard['p999'], 3)} ms",
            )
            if len(notify.get("windows") or ()) > 1:
                t.row(
                    "  p99 of each window",
                    " / ".join(_num(w["p99"], 2) for w in notify["windows"]) + " ms",
                )
            t.row("  heard / sent", f"{notify['heard']:,} / {notify['sent']:,}")

    head = (
        f"notifyd bench ({meta['mode']}) {meta['started']}  |  {meta['cpus']} cores, "
        f"Python {meta['python']}, websockets {meta['websockets']}, PostgreSQL "
        f"{meta['postgres']}  |  notifyd {meta['git_head'][:10]}"
    )
    out = [head, "", t.render()]
    if results.get("daemon_warnings"):
        notes.append(
            f"daemon logged {len(results['daemon_warnings'])} warning line(s); "
            "see daemon_warnings in the JSON"
        )
    if notes:
        out += ["", "notes:", *(f"  - {n}" for n in notes)]
    if results.get("problems"):
        out += ["", "PROBLEMS (the run fails):", *(f"  - {p}" for p in results["problems"])]
    return "\n".join(out)


# -- notifyd beside the peers -------------------------------------------------------------------

# (label, getter, unit, lower is better, scenario whose load generator may have set the pace)
_Row = tuple[str, Callable[[dict[str, Any]], float], str, bool, str]
_ROWS: list[_Row] = [
    (
        "RSS per idle connection (at the top idle level)",
        lambda r: float(list(r["idle_memory"]["kb_per_connection"].values())[-1]),
        "KB",
        True,
        "",
    ),
    (
        "most connections one process held (tried 19,500)",
        lambda r: float(r["most_connections"]["held"]),
        "",
        False,
        "",
    ),
    (
        "RSS per connection there",
        lambda r: (
            (
                float(r["most_connections"]["rss_kb"])
                - float(r["idle_memory"]["levels"][0]["rss_kb"])
            )
            / float(r["most_connections"]["held"])
        ),
        "KB",
        True,
        "",
    ),
    (
        "handshakes per second (JWT verified, greeting sent)",
        lambda r: float(r["handshakes"]["per_second"]),
        "/s",
        False,
        "handshakes",
    ),
    (
        "server CPU per handshake",
        lambda r: float(r["handshakes"]["server_cpu_us_per_handshake"]),
        "µs",
        True,
        "",
    ),
    (
        "commit -> client p50, 1,000/s",
        lambda r: float(r["latency"]["commit_to_client_ms"]["p50"]),
        "ms",
        True,
        "latency",
    ),
    (
        "commit -> client p99, 1,000/s",
        lambda r: float(r["latency"]["commit_to_client_ms"]["p99"]),
        "ms",
        True,
        "latency",
    ),
    (
        "commit -> client p99.9, 1,000/s",
        lambda r: float(r["latency"]["commit_to_client_ms"]["p999"]),
        "ms",
        True,
        "latency",
    ),
    (
        "commit -> client p50, 5,000/s (10 per INSERT)",
        lambda r: float(r["latency_fast"]["commit_to_client_ms"]["p50"]),
        "ms",
        True,
        "latency_fast",
    ),
    (
        "commit -> client p99, 5,000/s",
        lambda r: float(r["latency_fast"]["commit_to_client_ms"]["p99"]),
        "ms",
        True,
        "latency_fast",
    ),
    (
        "commit -> client p99.9, 5,000/s",
        lambda r: float(r["latency_fast"]["commit_to_client_ms"]["p999"]),
        "ms",
        True,
        "latency_fast",
    ),
    (
        "5,000/s: notifications received of sent",
        lambda r: 100 * float(r["latency_fast"]["received"]) / float(r["latency_fast"]["sent"]),
        "%",
        False,
        "",
    ),
    (
        "sustained targeted rate with p99 <= 100 ms (as committed)",
        lambda r: float(r["ramp"]["held"]),
        "/s",
        False,
        "ramp",
    ),
    (
        "server CPU per 1,000 delivered, 1,000/s (idle work included)",
        lambda r: 1000 * float(r["latency"]["server_cpu_s_per_1000"]),
        "ms",
        True,
        "",
    ),
    (
        "server CPU per 1,000 delivered, 5,000/s",
        lambda r: 1000 * float(r["latency_fast"]["server_cpu_s_per_1000"]),
        "ms",
        True,
        "",
    ),
    (
        "broadcast to every connection: commit -> last client",
        lambda r: float(r["fanout"]["median"]["last_ms"]),
        "ms",
        True,
        "fanout",
    ),
    (
        "broadcast: server CPU per connection",
        lambda r: float(r["fanout"]["median"]["oncpu_us_per_conn"]),
        "µs",
        True,
        "",
    ),
    (
        "reconnect storm: all clients reconnected and synced",
        lambda r: float(r["storm"]["all_caught_up_s"]),
        "s",
        True,
        "storm",
    ),
    (
        "reconnect storm: half of them synced",
        lambda r: float(r["storm"]["caught_up_s"]["p50"]) / 1000,
        "s",
        True,
        "storm",
    ),
]


def load_bound(results: dict[str, Any], scenario: str) -> bool:
    """Whether the load generator set the pace of that scenario's figures: a client process
    saturated, or (sustained throughput) the writer fell behind."""
    run = results.get(scenario) or {}
    if scenario == "fanout":
        return bool(run.get("clients_saturated"))
    if scenario == "ramp":
        return bool(run.get("load_bound"))
    return bool(run.get("saturated"))


def peer_problems(results: dict[str, Any]) -> dict[str, list[str]]:
    """What went wrong with each peer (reported beside its figures; not a failed run)."""
    return {name: problems(peer) for name, peer in results.get("peers", {}).items()}


def side_by_side(results: dict[str, Any]) -> str:
    """A markdown table: notifyd against each peer, with the peer / notifyd ratio (above 1:
    notifyd ahead where lower is better, and the inverse where higher is better)."""
    peers = results.get("peers") or {}
    if not peers:
        return ""
    meta = results["meta"]
    lines = [
        f"## notifyd beside the peers ({meta['mode']} run, {meta['started']}, "
        f"{meta['cpus']} cores, PostgreSQL {meta.get('postgres', '?')})",
        "",
    ]
    head = ["metric", "notifyd"]
    for peer in peers.values():
        versions = ", ".join(f"{k} {v}" for k, v in peer["versions"].items())
        head += [f"{peer['title']} ({versions})", "ratio"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    marked = False  # some figure is load-bound
    for label, get, unit, lower, scenario in _ROWS:
        ours = _safe(get, results)
        if math.isnan(ours):
            continue  # a scenario this run did not have (e.g. --quick)
        digits = 0 if unit in ("", "/s") else 2  # counts and rates are whole
        cells = []
        bounds = []
        for of in (results, *peers.values()):
            bound = bool(scenario) and load_bound(of, scenario)
            marked = marked or bound
            bounds.append(bound)
            cells.append(f"{_num(_safe(get, of), digits)} {unit}".rstrip() + (" †" * bound))
        row = [label, cells[0]]
        for peer, cell, theirs_bound in zip(peers.values(), cells[1:], bounds[1:], strict=True):
            theirs = _safe(get, peer)
            # a ratio of a negative latency (the client before the writer's commit reply,
            # see the notes) means nothing: none is shown
            ratio = (
                (theirs / ours if lower else ours / theirs) if ours > 0 and theirs > 0 else math.nan
            )
            # a load-bound figure is a bound on the server's own (it would do at least as
            # well): notifyd's makes the ratio a lower bound, the peer's an upper one
            sign = {(True, False): ">= ", (False, True): "<= "}.get((bounds[0], theirs_bound), "")
            shown = (
                "—"
                if math.isnan(ratio) or (bounds[0] and theirs_bound)
                else f"{sign}{_num(ratio)}x"
            )
            row += [cell, shown]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "ratio: how many times better notifyd is on that row (below 1: behind)."]
    windows = len((results.get("latency") or {}).get("windows") or ())
    if windows > 1:
        lines.append(
            f"Latency rows: each server's median of {windows} back-to-back windows "
            "by p99 (every window's figures are in the JSON results)."
        )
    low = results.get("floor")
    if low:
        send = low["send"]

        def heard(notify: dict[str, Any]) -> str:
            ms = notify["commit_to_listener_ms"]
            return (
                f"p50 {_num(ms['p50'], 3)} ms, p99 {_num(ms['p99'], 3)} ms, p99.9 "
                f"{_num(ms['p999'], 3)} ms"
            )

        fast = low.get("notify_fast")
        lines.append(
            f"Floors in the same run, no server: one bare send() to each of "
            f"{send['connections']:,} loopback connections costs {_num(send['cpu_us_per_conn'])} "
            f"µs of CPU per connection; commit -> a bare LISTEN client at "
            f"{low['notify']['rate']:,.0f}/s: {heard(low['notify'])}"
            + (
                f"; at {fast['rate']:,.0f}/s ({fast['batch']} per INSERT): {heard(fast)}"
                if fast
                else ""
            )
            + "."
        )
    if marked:
        lines.append(
            "†: the load generator set the pace (a client process above "
            f"{SATURATED:.0%} of a core, or the writer behind its schedule): a bound "
            "on the server's figure, not the figure itself."
        )
    lines.append("")
    for name, found in peer_problems(results).items():
        if found:
            lines.append(f"- {peers[name]['title']}: {'; '.join(found)}")
    return "\n".join(lines) + "\n"


def _safe(get: Callable[[dict[str, Any]], float], results: dict[str, Any]) -> float:
    try:
        return get(results)
    except (LookupError, TypeError, ValueError, IndexError):
        return math.nan
