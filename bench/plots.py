"""PNG plots of a notifyd benchmark run (bench/results/latest.json and its latest.raw.json),
notifyd beside the peers: commit -> client latency by percentile, and server memory per open
connection.

    python bench/plots.py                                   bench/results/latest.json
    python bench/plots.py --results R.json --out DIR        R.json and R.raw.json, into DIR

Writes latency-cdf.png and memory-per-connection.png (headless, Agg) beside the results file
unless told otherwise; a plot with no data for any server is not written.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.ticker import FuncFormatter, NullLocator

LATENCY_PNG = "latency-cdf.png"
MEMORY_PNG = "memory-per-connection.png"
SCENARIOS = {"latency": "1,000/s", "latency_fast": "5,000/s"}  # raw key -> fallback title
FLOOR_MS = 0.01  # log axis: a commit -> client latency at or below this is drawn at it
PERCENTILES = [50.0, 90.0, 99.0, 99.9, 99.99, 99.999]  # ticks, as far as samples reach
POINTS = 600  # per line: percentiles picked evenly on the log axis (the tail point included)
NOTIFYD_COLOUR = "tab:blue"
PEER_COLOURS = [
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:olive",
    "tab:cyan",
    "tab:gray",
]
FIGSIZE = (10.0, 4.0)
DPI = 120

Server = tuple[str, str, dict[str, Any], str]  # raw key, title, its results, colour


def servers(results: dict[str, Any]) -> list[Server]:
    """notifyd, then the peers in the results' order, each with its colour for every plot."""
    out: list[Server] = [("notifyd", "notifyd", results, NOTIFYD_COLOUR)]
    peers: dict[str, Any] = results.get("peers") or {}
    for i, (name, peer) in enumerate(peers.items()):
        out.append((name, str(peer.get("title", name)), peer, PEER_COLOURS[i % len(PEER_COLOURS)]))
    return out


def run_label(results: dict[str, Any]) -> str:
    meta: dict[str, Any] = results.get("meta") or {}
    return (
        f"{meta.get('mode', '?')} run, {meta.get('started', '?')}, "
        f"{meta.get('cpus', '?')} cores, PostgreSQL {meta.get('postgres', '?')}"
    )


def render(results: dict[str, Any], raw: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write the plots that have data into out_dir; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, draw in ((LATENCY_PNG, _latency_figure), (MEMORY_PNG, _memory_figure)):
        fig = draw(results, raw)
        if fig is not None:
            path = out_dir / name
            FigureCanvasAgg(fig)  # attaches itself: Agg, no display needed
            fig.savefig(path, format="png", dpi=DPI)
            written.append(path)
    return written


def _figure(bottom: float) -> Figure:
    """A README-width figure, laid out above a caption strip `bottom` high (figure fraction)."""
    return Figure(
        figsize=FIGSIZE,
        dpi=DPI,
        layout=ConstrainedLayoutEngine(rect=(0.0, bottom, 1.0, 1.0 - bottom)),
    )


# -- commit -> client latency -------------------------------------------------------------------


def commit_to_client_ms(scenario: dict[str, Any]) -> npt.NDArray[np.float64]:
    """t_received - t_commit_returned per notification id (its first row only), in ms."""
    columns: list[str] = scenario["columns"]
    i_id, i_commit, i_received = (
        columns.index(c) for c in ("id", "t_commit_returned", "t_received")
    )
    first: dict[Any, float] = {}
    for row in scenario["rows"]:
        if row[i_id] not in first:
            first[row[i_id]] = (float(row[i_received]) - float(row[i_commit])) * 1000
    return np.sort(np.fromiter(first.values(), dtype=np.float64, count=len(first)))


def percentile_curve(
    sorted_ms: npt.NDArray[np.float64],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(1 / (1 - p), value) of n sorted values: the i-th smallest at p = i / n (the largest at
    x = n), thinned to about POINTS points spread evenly on a log x axis."""
    n = len(sorted_ms)
    wanted = np.geomspace(1.0, float(n), POINTS)
    index = np.unique(np.clip(np.floor(n - n / wanted).astype(np.int64), 0, n - 1))
    return n / (n - index).astype(np.float64), sorted_ms[index]


def _scenario_title(scenario: str, runs: list[Server]) -> str:
    for _, _, res, _ in runs:
        figures = res.get(scenario)
        if isinstance(figures, dict) and "rate" in figures:
            batch = figures.get("batch", 1)
            return f"{float(figures['rate']):,.0f} notifications/s, {batch} per INSERT"
    return SCENARIOS[scenario]


def _percentile_label(p: float) -> str:
    return f"{p:g}%"


def _ms_label(value: float, _pos: object = None) -> str:
    return f"{value:g}"


def _latency_figure(results: dict[str, Any], raw: dict[str, Any]) -> Figure | None:
    runs = servers(results)
    data: dict[str, list[tuple[Server, npt.NDArray[np.float64]]]] = {}
    for scenario in SCENARIOS:
        for server in runs:
            found = (raw.get(server[0]) or {}).get(scenario)
            if not found or not found.get("rows"):
                continue
            ms = commit_to_client_ms(found)
            if len(ms):
                data.setdefault(scenario, []).append((server, ms))
    if not data:
        return None
    fig = _figure(0.07)
    axes: list[Axes] = list(fig.subplots(1, len(data), squeeze=False)[0])
    clipped = total = 0
    for ax, (scenario, lines) in zip(axes, data.items(), strict=True):
        most = max(len(ms) for _, ms in lines)
        for (_, title, _, colour), ms in lines:
            clipped += int(np.count_nonzero(ms < FLOOR_MS))
            total += len(ms)
            x, y = percentile_curve(np.maximum(ms, FLOOR_MS))
            ax.plot(x, y, color=colour, linewidth=1.5, label=title)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ticks = [p for p in PERCENTILES if 1 / (1 - p / 100) <= most * (1 + 1e-9)]
        ax.set_xticks(
            [1 / (1 - p / 100) for p in ticks], labels=[_percentile_label(p) for p in ticks]
        )
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlim(1.0, float(most))
        ax.yaxis.set_major_formatter(FuncFormatter(_ms_label))
        ax.grid(True, which="major", linewidth=0.5, alpha=0.5)
        ax.grid(True, which="minor", axis="y", linewidth=0.3, alpha=0.25)
        ax.set_title(_scenario_title(scenario, runs), fontsize=10)
        ax.set_xlabel("percentile")
        ax.legend(fontsize=8, loc="upper left")
    axes[0].set_ylabel("commit → client (ms)")
    fig.suptitle(f"Commit → client latency by percentile ({run_label(results)})", fontsize=11)
    fig.text(
        0.01,
        0.015,
        "commit → client: receipt time minus the writer's commit reply, first delivery per "
        f"notification; below {FLOOR_MS:g} ms (received before the commit reply) drawn at "
        f"{FLOOR_MS:g} ms: {clipped:,} of {total:,}.",
        fontsize=7,
        color="0.35",
    )
    return fig


# -- memory per connection ----------------------------------------------------------------------


def memory_points(res: dict[str, Any]) -> list[tuple[int, int]]:
    """(open connections, RSS KB) of the idle levels and the most-connections levels, by count."""
    levels: list[dict[str, Any]] = [
        *(res.get("idle_memory") or {}).get("levels", []),
        *(res.get("most_connections") or {}).get("levels", []),
    ]
    return sorted(
        (int(lv["live"]), int(lv["rss_kb"]))
        for lv in levels
        if "error" not in lv and "live" in lv and "rss_kb" in lv
    )


def kb_per_connection(res: dict[str, Any], points: list[tuple[int, int]]) -> tuple[float, int]:
    """(RSS at the most connections - RSS at none) / that count, and the count; nan without."""
    idle: list[dict[str, Any]] = (res.get("idle_memory") or {}).get("levels", [])
    base = next((lv["rss_kb"] for lv in idle if lv.get("connections") == 0), None)
    if base is None or not points or points[-1][0] <= 0:
        return math.nan, 0
    top = max(points, key=lambda p: (p[0], -p[1]))  # the largest count; its first (lowest) RSS
    return (top[1] - float(base)) / top[0], top[0]


def _thousands(value: float, _pos: object = None) -> str:
    return f"{value:,.0f}"


def _memory_figure(results: dict[str, Any], _raw: dict[str, Any]) -> Figure | None:
    rows: list[tuple[Server, list[tuple[int, int]]]] = []
    for server in servers(results):
        points = memory_points(server[2])
        if points:
            rows.append((server, points))
    if not rows:
        return None
    fig = _figure(0.0)
    left, right = fig.subplots(1, 2, width_ratios=(3, 2))
    bars: list[tuple[str, float, int, str]] = []
    for (_, title, res, colour), points in rows:
        live, rss = zip(*points, strict=True)
        left.plot(
            live,
            [kb / 1024 for kb in rss],
            color=colour,
            marker="o",
            markersize=3.5,
            linewidth=1.5,
            label=title,
        )
        kb, at = kb_per_connection(res, points)
        if not math.isnan(kb):
            bars.append((title, kb, at, colour))
    left.xaxis.set_major_formatter(FuncFormatter(_thousands))
    left.set_xlim(left=0)
    left.set_ylim(bottom=0)
    left.set_xlabel("open connections")
    left.set_ylabel("server RSS (MB)")
    left.set_title("Server RSS by open connections", fontsize=10)
    left.grid(True, linewidth=0.5, alpha=0.5)
    left.legend(fontsize=8, loc="upper left")
    if bars:
        ypos = list(range(len(bars)))
        drawn = right.barh(ypos, [b[1] for b in bars], color=[b[3] for b in bars], height=0.6)
        right.bar_label(drawn, labels=[f" {b[1]:,.1f} KB (at {b[2]:,})" for b in bars], fontsize=8)
        right.set_yticks(ypos, labels=[b[0] for b in bars], fontsize=8)
        right.invert_yaxis()  # notifyd on top
        right.set_xlim(0, max(max(b[1] for b in bars), 0.0) * 1.6 or 1.0)
    else:
        right.set_yticks([])
    right.set_xlabel("KB per connection")
    right.set_title("RSS per idle connection\n(at the most connections, above none)", fontsize=10)
    right.grid(True, axis="x", linewidth=0.5, alpha=0.5)
    fig.suptitle(f"Memory per connection ({run_label(results)})", fontsize=11)
    return fig


# -- command line -------------------------------------------------------------------------------


def _load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    here = Path(__file__).resolve().parent
    parser.add_argument(
        "--results",
        type=Path,
        default=here / "results" / "latest.json",
        help="the run's results JSON (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the PNGs (default: the results file's folder)",
    )
    args = parser.parse_args(argv)
    results_path: Path = args.results
    if not results_path.is_file():
        print(f"no results file {results_path}", file=sys.stderr)
        return 2
    raw_path = results_path.with_suffix(".raw.json")
    raw: dict[str, Any] = {}
    if raw_path.is_file():
        raw = _load(raw_path)
    else:
        print(f"no {raw_path}: no latency plot", file=sys.stderr)
    written = render(_load(results_path), raw, args.out or results_path.parent)
    for path in written:
        print(path)
    if not written:
        print("nothing to plot", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
