"""Inference on a shared CPU (issue 20): as many threads as the cores other processes leave free.

Every operation of the fast chain is split statically over PyTorch's OpenMP threads and ends at a barrier, so with
one core busy elsewhere the thread sharing it sets the pace and its partner spins. OpenVINO, whose threads steal
work (TBB), lost less to the same load (BENCHMARKS.md). Measured beside one CPU-bound process (`bench.cpu_load(1)`,
VGG-16, one-off script, interleaved, medians of 3; AMD EPYC, 2 cores): one thread against two, batch 1: fp32 6.88 /
5.21 img/s, bf16 13.89 / 10.00, int8 27.28 / 24.54; batch 8: fp32 7.95 / 6.99, bf16 15.90 / 14.97, int8 31.08 /
25.05. So before a call the chain asks `CoreShare` how many threads to use: the cores in this process's affinity
mask, less the CPU time other processes took on them over the last window (/proc/stat's per-CPU counters minus this
process's own CPU time, steal counted as taken), rounded; a batch that splits runs instead as one-thread streams,
one per core (`plan`). On a quiet machine that is every core; the count only moves on half a second or more of
evidence, and only on Linux (elsewhere, and with VERYDEEP_SHARE=off, the caller's thread count stands).
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

WINDOW = 0.5  # seconds of evidence before the count changes: a scheduler tick is 4-10 ms


def cpu_ticks(cpus: set[int], stat: str | None = None) -> tuple[int, int] | None:
    """(busy, total) clock ticks of these CPUs since boot, from /proc/stat (or its text `stat`); None where there is
    no such file."""
    try:
        lines = (Path("/proc/stat").read_text() if stat is None else stat).splitlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        v = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
        busy += v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
        total += sum(v)
    return (busy, total) if total else None


def free_cores(cpus: int, busy_s: float, own_s: float, wall_s: float) -> float:
    """The cores left to this process: `cpus` less what others ran (busy less our own CPU time) per second."""
    others = max(0.0, busy_s - own_s) / wall_s
    return max(0.0, cpus - others)


class CoreShare:
    """The thread count for the next call: `threads(want)`, at most `want`."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = (os.environ.get("VERYDEEP_SHARE", "auto") != "off") if enabled is None else enabled
        self.cpus = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.free: float | None = None  # cores free over the last window (None: not measured yet)
        self._last: tuple | None = None
        self._lock = threading.Lock()

    def _sample(self) -> tuple | None:
        j = cpu_ticks(self.cpus)
        if j is None:
            return None
        t = os.times()
        return time.monotonic(), j[0], t.user + t.system

    def threads(self, want: int) -> int:
        if not self.enabled or want < 2 or not self.cpus:
            return want
        with self._lock:
            now = self._sample()
            if now is None:
                self.enabled = False
                return want
            if self._last is None:
                self._last = now
            elif now[0] - self._last[0] >= WINDOW:
                wall = now[0] - self._last[0]
                self.free = free_cores(len(self.cpus), (now[1] - self._last[1]) / self.hz, now[2] - self._last[2],
                                       wall)
                self._last = now
            if self.free is None:
                return want
            return max(1, min(want, int(self.free + 0.5)))


SHARE = CoreShare()


def plan(want: int, batch: int, streams: int = 1) -> tuple[int, int]:
    """(threads, streams) for a call on a batch of `batch` wanting `want` threads (`streams` as fast.STREAMS asks).
    With cores busy elsewhere and a batch that splits `want` ways: `want` streams of one thread each, which share no
    barrier, so each runs at whatever its core gives it (beside one CPU-bound process, VGG-16 batch 8: fp32 8.63
    against 5.93 img/s on one thread, bf16 17.63 against 14.89; one-off, medians of 3). Otherwise the free cores'
    worth of threads, in the streams asked for where the batch splits."""
    free = SHARE.threads(want)
    if free < want and batch >= want and batch % want == 0:
        return want, want
    k = min(streams, free, batch)
    return free, (k if k >= 2 and batch % k == 0 else 1)


class shared_threads:
    """A block run on `plan(...)`'s thread count (the caller's count restored after it); it gives the streams."""

    def __init__(self, batch: int = 1, streams: int = 1):
        self.batch, self.streams = batch, streams

    def __enter__(self) -> int:
        import torch

        self.want = torch.get_num_threads()
        self.use, k = plan(self.want, self.batch, self.streams)
        if self.use != self.want:
            torch.set_num_threads(self.use)
        return k

    def __exit__(self, *exc):
        import torch

        if self.use != self.want:
            torch.set_num_threads(self.want)
