"""CPU seconds from ``/proc``: a process tree, a process's threads, this driver, the machine."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """utime+stime of ``root`` and all its live descendants (all threads), in seconds."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        pid = int(entry)
        parents[pid] = int(fields[1])
        ticks[pid] = int(fields[11]) + int(fields[12])
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    return sum(ticks.get(pid, 0) for pid in tree) / CLK_TCK


def thread_cpu(pid: int | None) -> Counter[str]:
    """CPU seconds per thread name (``comm``) of process ``pid``."""
    found: Counter[str] = Counter()
    if not pid:
        return found
    with_tasks = Path(f"/proc/{pid}/task")
    try:
        tids = os.listdir(with_tasks)
    except OSError:
        return found
    for tid in tids:
        try:
            text = (with_tasks / tid / "stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        found[name] += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return found


def self_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def children_cpu_seconds() -> float:
    """CPU of this process's reaped children (h2load processes, once waited for)."""
    times = os.times()
    return times.children_user + times.children_system


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy (not idle, not iowait) since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


async def wait_for_idle(wait_idle: float, idle_below: float) -> float:
    """Wait (up to ``wait_idle`` s) until the machine uses < ``idle_below`` cores; return the
    last 1 s busy figure."""
    started = time.monotonic()
    busy = float("nan")
    while time.monotonic() - started < wait_idle:
        before = machine_busy_seconds()
        await asyncio.sleep(1.0)
        busy = machine_busy_seconds() - before
        if busy < idle_below:
            break
    else:
        if wait_idle > 0:
            print(f"  machine still busy ({busy:.2f} cores) after {wait_idle:g}s: running")
    return busy
