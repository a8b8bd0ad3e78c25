"""Where a stage's seconds go: its phases in the order they ran, from the process start to the last mark.

    timeline = Timeline()          # first thing in main()
    ...                            # imports, loading, the loop, saving
    timeline.mark("model_load")    # the seconds since the previous mark are the phase "model_load"
    timeline.write("train", last_phase="save")   # marks "save", writes reports/timelines/train.json

The first phase, "startup", is the interpreter and the stage's light imports before main() ran, measured
from the process's start time (Linux: /proc/self/stat and /proc/uptime). A worker started by the train
stage's launcher (train.num_processes > 1) counts from the launcher's start instead (ALPACA_QLORA_STAGE_STARTED,
set by training/launch.py), so the launch is inside "startup" too. Everything the stage does is in some
phase; what the timeline cannot see is the interpreter's exit after the last mark.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from alpaca_qlora.files import atomic_write_bytes

STARTED_ENV = "ALPACA_QLORA_STAGE_STARTED"
TIMELINES_DIR = Path("reports") / "timelines"


def process_started_at() -> float:
    """Wall-clock time (time.time()) at which this process, or the launcher that started it, began."""
    if STARTED_ENV in os.environ:
        return float(os.environ[STARTED_ENV])
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22: start time, in clock ticks after boot
        with open("/proc/uptime", encoding="ascii") as uptime:
            since_boot = float(uptime.read().split()[0])
        return time.time() - (since_boot - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()  # not Linux: "startup" is then 0


class Timeline:
    def __init__(self, started_at: float | None = None):
        self.started_at = process_started_at() if started_at is None else started_at
        self.phases: list[tuple[str, float]] = []
        self._last = self.started_at
        self.mark("startup")

    def mark(self, phase: str) -> float:
        """End `phase` now; return its seconds. A phase marked twice adds up."""
        now = time.time()
        seconds, self._last = max(0.0, now - self._last), now
        self.phases.append((phase, seconds))
        return seconds

    def seconds(self, phase: str) -> float:
        return sum(seconds for name, seconds in self.phases if name == phase)

    def as_dict(self) -> dict[str, Any]:
        merged: dict[str, float] = {}
        for name, seconds in self.phases:
            merged[name] = merged.get(name, 0.0) + seconds
        return {"phases": [[name, round(seconds, 2)] for name, seconds in merged.items()],
                "total_s": round(self._last - self.started_at, 2)}

    def write(self, stage: str, directory: Path = TIMELINES_DIR, *, last_phase: str | None = None) -> Path:
        """<directory>/<stage>.json: {"phases": [[phase, seconds], ...] in order, "total_s": seconds}, a phase
        a line; `last_phase` is marked first (the stage's last outputs written)."""
        if last_phase is not None:
            self.mark(last_phase)
        timeline = self.as_dict()
        phases = ",\n".join(f"    {json.dumps(phase)}" for phase in timeline["phases"])
        path = Path(directory) / f"{stage}.json"
        atomic_write_bytes(path, f'{{\n  "phases": [\n{phases}\n  ],\n  "total_s": {timeline["total_s"]}\n}}\n'
                           .encode("utf-8"))
        return path

    def summary(self) -> str:
        """One line for the stage's log: the phases over one second, longest first."""
        shown = sorted(((s, n) for n, s in self.as_dict()["phases"] if s >= 1), reverse=True)
        return ", ".join(f"{name} {seconds:.1f}s" for seconds, name in shown) or "all phases under 1 s"
