"""CPU and memory of a process, from /proc: what the benchmarks and the fleet harness read."""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["CLK_TCK", "cpu_seconds", "memory_mib"]

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """user + system CPU time of a process, from /proc; children: with its waited-for children
    too (an OpenVPN instance's tls-crypt-v2-verify runs)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(f) for f in fields[11 : 15 if children else 13]) / CLK_TCK


def memory_mib(pid: int) -> tuple[float, float]:
    """(resident, peak resident) MiB of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss, hwm = (
        int(re.search(rf"^{k}:\s+(\d+) kB", status, re.M).group(1)) for k in ("VmRSS", "VmHWM")
    )
    return rss / 1024, hwm / 1024
