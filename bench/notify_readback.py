#!/usr/bin/env python3
"""What trusting the NOTIFY channel costs: commit -> a bare LISTEN client that takes each
notification from its (signed) payload, against one that reads every notification back by id
from the table (one query at a time; the ids heard meanwhile go in the next).

    python bench/notify_readback.py            1,000/s and 5,000/s (10 per INSERT), 3 x 10 s
    python bench/notify_readback.py --quick    the same, 1 x 2 s

Both ways alternate window by window on the same database and load, so that they see the same
machine. PostgreSQL: NOTIFYD_BENCH_DSN, else an embedded server. Prints p50/p99/p99.9 of each
(the window with the median p99, as bench/run.py reports) and writes
bench/results/notify_readback.json. Exit status 1 when a notification was not heard.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import floor
import infra
import sql_writer
from infra import Worker, say
from report import write_json

HERE = Path(__file__).resolve().parent
USERS = 1_500
RATES = ((1_000.0, 1), (5_000.0, 10))  # notifications per second, per INSERT


def measure(seconds: float, windows: int) -> dict[str, Any]:
    results: dict[str, Any] = {
        "meta": {"git_head": infra.git_head(), "seconds": seconds, "windows": windows},
        "runs": [],
    }
    with infra.bench_database() as dsn:
        infra.migrate(dsn)
        writer = Worker("writer", sql_writer.main, dsn, 4)
        try:
            writer.call("open", timeout=60)
            users = [f"u{i}" for i in range(USERS)]
            for rate, batch in RATES:
                runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
                for _ in range(windows):
                    for readback in (False, True):
                        runs[readback].append(
                            floor.notify_floor(
                                dsn, writer, rate, seconds, users, batch, 1, readback
                            )
                        )
                for readback, done in runs.items():
                    chosen = sorted(done, key=lambda r: r["commit_to_listener_ms"]["p99"])[
                        len(done) // 2
                    ]
                    results["runs"].append(
                        {
                            "rate": rate,
                            "batch": batch,
                            "readback": readback,
                            "sent": sum(r["sent"] for r in done),
                            "heard": sum(r["heard"] for r in done),
                            "ms": chosen["commit_to_listener_ms"],
                            "windows_p99": [r["commit_to_listener_ms"]["p99"] for r in done],
                        }
                    )
        finally:
            writer.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 window of 2 s per way and rate")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "notify_readback.json")
    args = parser.parse_args(argv)
    results = measure(2.0 if args.quick else 10.0, 1 if args.quick else 3)
    write_json(results, args.output)
    print("| rate | how the listener takes a notification | p50 ms | p99 ms | p99.9 ms |")
    print("|---|---|---|---|---|")
    lost = 0
    for run in results["runs"]:
        way = "read back by id" if run["readback"] else "from the payload"
        ms = run["ms"]
        print(
            f"| {run['rate']:,.0f}/s | {way} | {ms['p50']:.2f} | {ms['p99']:.2f} | "
            f"{ms['p999']:.2f} |"
        )
        lost += run["sent"] - run["heard"]
    if lost:
        say(f"FAILED: {lost} notifications not heard")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
