"""Optional profiling of the daemon with py-spy (`run.py --profile`): sample it during a scenario
and boil the collapsed stacks down to the top frames, by self and by inclusive time."""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_LINE = re.compile(r"^(?P<name>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def find_py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Recording:
    """`py-spy record` of one process for a bounded time, non-blocking (the target is never
    paused), idle samples left out: what the daemon spends its CPU on."""

    def __init__(self, exe: str, pid: int, seconds: float, out: Path, native: bool) -> None:
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        # --native (C frames: uvloop, libc, the kernel entry) must pause the target to unwind
        mode = ["--native"] if native else ["--nonblocking"]
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, round(seconds))),
                "--rate",
                "250",
                *mode,
                "--format",
                "raw",
                "--output",
                str(out),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def finish(self, top: int = 12) -> dict[str, Any]:
        """Stop sampling (SIGINT makes py-spy write what it has) and summarise."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            _out, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _out, err = self.proc.communicate(timeout=5)
        if not self.out.exists():
            return {"error": (err or b"").decode(errors="replace").strip()[-500:]}
        return {"file": str(self.out), **top_frames(self.out.read_text(), top)}

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()


def _frame(raw: str) -> str:
    """`function (path/to/file.py:123)` -> `function (file.py)`: lines of one function merge."""
    m = _LINE.match(raw.strip())
    if not m:
        return raw.strip()
    return f"{m['name']} ({Path(m['file']).name})"


def top_frames(collapsed: str, top: int) -> dict[str, Any]:
    """Self (leaf) and inclusive sample shares of the most expensive functions. The entry path
    every stack shares (<module>, main, the event loop's run) is left out of the inclusive
    ranking: it is 100% by construction."""
    stacks: list[tuple[list[str], int]] = []
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [_frame(f) for f in stack.split(";") if f]
        if frames and count.isdigit():
            stacks.append((frames, int(count)))
    total = sum(n for _, n in stacks)
    if not total:
        return {"samples": 0, "self": [], "inclusive": []}
    entry = _common_prefix([frames for frames, _ in stacks])
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, n in stacks:
        leaf[frames[-1]] += n
        for frame in set(frames[len(entry) :]):
            inclusive[frame] += n

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(top)]

    return {"samples": total, "entry": entry, "self": shares(leaf), "inclusive": shares(inclusive)}


def _common_prefix(stacks: list[list[str]]) -> list[str]:
    """The leading frames shared by the stacks of the busiest thread's entry point."""
    roots = Counter(frames[0] for frames in stacks)
    main = [frames for frames in stacks if frames[0] == roots.most_common(1)[0][0]]
    prefix = main[0]
    for frames in main[1:]:
        i = 0
        while i < min(len(prefix), len(frames) - 1) and prefix[i] == frames[i]:
            i += 1
        prefix = prefix[:i]
    return prefix


def render(name: str, profile: dict[str, Any]) -> str:
    if "error" in profile:
        return f"py-spy during {name}: failed: {profile['error']}"
    lines = [
        f"py-spy during {name}: {profile['samples']} non-idle samples ({profile['file']})",
        "  self time (a Python frame's self time includes the C code it calls, e.g. "
        "the event loop's own I/O under Runner.run):",
    ]
    lines += [f"    {pct:5.1f}%  {frame}" for frame, pct in profile["self"]]
    lines.append(f"  inclusive time, below {' > '.join(profile['entry'][-2:]) or 'the root'}:")
    lines += [f"    {pct:5.1f}%  {frame}" for frame, pct in profile["inclusive"]]
    return "\n".join(lines)
