"""The publisher's own Python cost, without sockets or a database: what notifyd.core.fanout
(with each connection's counts) spends per delivery of a user's notification and its count
frame, and per connection of a broadcast, to connections whose deliver() only adds up the
bytes. The rest of a delivery's CPU (the write, the NOTIFY's parse) is bench/run.py's.

    python bench/publish_cost.py                    # this tree: 10,000 connections
    python bench/publish_cost.py --baseline 3837ec6 # and another revision's, side by side
    python bench/publish_cost.py --quick            # 1,000 connections (CI)

Each figure is the best of ROUNDS runs of the loop in each of PROCESSES processes (the least
disturbed by the rest of the machine), in CPU time.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import infra

ROUNDS = 5
PROCESSES = 3


class _Sink:
    """A live connection as the publisher sees it: deliver() only counts the bytes."""

    __slots__ = ("bytes", "session")

    def __init__(self, session: Any) -> None:
        self.session = session
        self.bytes = 0

    def deliver(self, frame: bytes) -> None:
        self.bytes += len(frame)


def _measure(connections: int, deliveries: int) -> dict[str, float]:
    """Runs in the tree on sys.path (this one, or a baseline's via PYTHONPATH)."""
    from notifyd.core import events
    from notifyd.core.auth import Identity
    from notifyd.core.fanout import Publisher
    from notifyd.core.index import StreamIndex
    from notifyd.core.session import Session

    feed = "tallies" in inspect.signature(events.New).parameters  # the feed's version on
    index: StreamIndex[_Sink] = StreamIndex()
    publisher = Publisher(index)
    sinks = []
    for i in range(connections):
        session = Session(f"c{i}")
        identity = Identity(str(i), ("staff",) if i % 2 else (), time.time() + 3600, None)
        session.authenticate(identity)
        sink = _Sink(session)
        index.add(sink, identity.streams)
        sinks.append(sink)
        if feed:  # its counts, as read at connect
            own = identity.user_stream
            parts = [(s, 0, {"": (3, 2)} if s == own else {}) for s in identity.streams]
            publisher.read_counts(session, parts)
    wire = {
        "id": 1,
        "stream": "all",
        "seq": 1,
        "type": "t",
        "title": "x" * 40,
        "message": "y" * 80,
        "data": {},
        "priority": "medium",
        "createdAt": "2026-12-07T00:00:00.000000Z",
    }

    make: Any = events.New  # the versions before the feed took an unread count, not tallies

    def new(stream: str, seq: int, nid: int, unread: int | None) -> Any:
        notification = dict(wire, stream=stream, seq=seq, id=nid)
        if feed:
            tallies = None if unread is None else {"": (unread, unread)}
            return make(stream, seq, nid, notification, time.time(), tallies)
        return make(stream, seq, nid, notification, time.time(), unread)

    seq = 0

    def broadcast() -> None:
        nonlocal seq
        seq += 1
        publisher.publish(new("all", seq, seq, None))

    broadcast()  # the first makes each connection's next counts: not the steady state
    per_connection = []
    for _ in range(ROUNDS):
        started = time.process_time()
        for _ in range(4):
            broadcast()
        per_connection.append((time.process_time() - started) / 4 / connections)
    per_delivery = []
    n = 0
    for _ in range(ROUNDS):
        started = time.process_time()
        for _ in range(deliveries):
            n += 1
            user = n % connections
            stream = f"user:{user}"
            publisher.publish(new(stream, 100 + n // connections, 10**6 + n, 4 + n % 3))
        per_delivery.append((time.process_time() - started) / deliveries)
    assert all(sink.bytes > 0 for sink in sinks)
    return {
        "broadcast_us_per_connection": min(per_connection) * 1e6,
        "delivery_us": min(per_delivery) * 1e6,
    }


def _run_in(tree: Path, connections: int, deliveries: int) -> dict[str, float]:
    """_measure() in another process, with `tree` first on the path."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(connections), str(deliveries)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 connections (CI)")
    parser.add_argument("--baseline", metavar="REV", help="also measure this git revision")
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(*args.child)))
        return
    connections, deliveries = (1_000, 5_000) if args.quick else (10_000, 50_000)
    with tempfile.TemporaryDirectory() as workdir:
        trees = {"this tree": Path(__file__).resolve().parent.parent}
        if args.baseline:
            tree = Path(workdir) / "baseline"
            commit = infra.export_tree(args.baseline, tree)
            trees[f"at {commit[:10]}"] = tree
        # each tree in PROCESSES processes, taking turns: one process's figures move with its
        # memory layout and hash seed by more than the difference measured
        rows: dict[str, dict[str, float]] = {}
        for _ in range(PROCESSES):
            for name, tree in trees.items():
                got = _run_in(tree, connections, deliveries)
                best = rows.setdefault(name, got)
                for key, value in got.items():
                    best[key] = min(best[key], value)
    print(
        f"publisher's Python cost, {connections:,} connections "
        f"(best of {ROUNDS} loops in each of {PROCESSES} processes)"
    )
    for name, row in rows.items():
        print(
            f"  {name:>16}: {row['delivery_us']:6.2f} µs per delivery (with its count), "
            f"{row['broadcast_us_per_connection']:5.2f} µs per connection of a broadcast"
        )


if __name__ == "__main__":
    main()
