"""Tasks with dependencies, run side by side in worker processes (`verydeep reproduce --jobs N`).

Why processes with one thread each rather than one process with all the threads: the miniature study's nets are
1/8 wide, and their operations are too small to keep two OpenMP threads of one process busy (each ends at a barrier
where one thread waits for the other); two independent runs at one thread each share nothing and wait for nothing
(benchmarks/study_jobs.py measures both ways). A task that is the only one that can run takes every core, and no other
starts beside it until it ends: two processes spinning at OpenMP barriers on the same cores slow each other by an
order of magnitude (BENCHMARKS.md)."""
from __future__ import annotations

import logging
import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import UserError
from .utils import cores, die_with_parent


@dataclass
class Task:
    method: str                                 # what to call (the caller's `call` maps it to code)
    args: tuple
    after: list = field(default_factory=list)   # keys of the tasks that must end first (absent keys: already done)


def describe(key) -> str:
    """("train", "D", 0) -> "train D (seed 0)"; keys end with the seed unless a precision follows it."""
    *what, last = key
    if isinstance(last, str) and len(what) >= 2 and isinstance(what[-1], int):  # ("evaluate", "D", 0, "fp32")
        return f"{' '.join(map(str, what[:-1]))} {last} (seed {what[-1]})"
    return f"{' '.join(map(str, what))} (seed {last})"


def log_name(key) -> str:
    return "-".join(map(str, key)) + ".log"


def _work(call: Callable, task: Task, threads: int, logfile: str) -> float:
    """In a worker process: the task with `threads` threads, its output and its log records (warnings and up)
    appended to its own log file, through a handler of its own. When workers ran task after task, the handler a
    first task set up (logging.basicConfig) kept writing to that task's file, closed by then ("Logging error" in
    every later task's log, its records lost)."""
    import torch

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    root = logging.getLogger()
    with open(logfile, "a", buffering=1) as f, redirect_stdout(f), redirect_stderr(f):
        handler = logging.StreamHandler(f)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
        try:
            call(task)
        finally:
            root.removeHandler(handler)
    return time.perf_counter() - t0


def run_tasks(tasks: dict, call: Callable[[Task], object], jobs: int, logs: Path,
              say: Callable[[str], None] = print) -> None:
    """Run every task after the tasks it names, at most `jobs` at a time, each with cores() // jobs threads (a task
    that can only run alone: all of them). `call` must be picklable (a module-level function or a partial of one).
    The first task that fails stops the rest and raises its error; what finished stays finished."""
    logs.mkdir(parents=True, exist_ok=True)
    n, total = cores(), len(tasks)
    # the ready task with the longest chain of tasks waiting on it goes first (a study's critical path: A, then D,
    # D at S = 384, jittered D, then their evaluations), then the order given
    height: dict = {}

    def chain(key) -> int:
        if key not in height:
            height[key] = 0  # tasks that wait for each other: no endless recursion (the loop below says so)
            height[key] = 1 + max((chain(k) for k, t in tasks.items() if key in t.after), default=0)
        return height[key]

    pending, running, done = dict(tasks), {}, 0

    def process():
        # One process per task: a process keeps its peak memory (utils.keep_freed_memory), and a worker that ran task
        # after task of a study held the largest of them all (one reached 5.7 GB, and the kernel's OOM killer ended
        # the study when other work ran beside it); a fresh process costs a second or two of start-up per task.
        # (An executor of one process per task: max_tasks_per_child races with shutdown in Python 3.11.) It dies with
        # this process however that ends: a study stopped by SIGTERM or SIGKILL, which skip the clean-up below, left
        # its workers training on, into run folders a restarted study then trains into again.
        return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=die_with_parent)

    try:
        while pending or running:
            waiting = set(pending) | {k for k, _, _ in running.values()}
            ready = sorted((k for k, t in pending.items() if not waiting.intersection(t.after)),
                           key=lambda k: -chain(k))
            if not ready and not running:
                raise ValueError(f"tasks wait for each other: {', '.join(map(describe, pending))}")
            busy = sum(th for _, th, _ in running.values()) if running else 0
            while ready and len(running) < jobs and busy < n:
                key = ready.pop(0)
                threads = n if not running and not ready else min(max(1, n // jobs), n - busy)
                task, pool = pending.pop(key), process()
                running[pool.submit(_work, call, task, threads, str(logs / log_name(key)))] = (key, threads, pool)
                busy += threads
                say(f"start {describe(key)} ({threads} thread{'s' * (threads > 1)}; log {logs / log_name(key)})")
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for f in finished:
                key, _, pool = running.pop(f)
                pool.shutdown()
                try:
                    seconds = f.result()  # a failed task raises here
                except BrokenProcessPool:
                    raise UserError(f"{describe(key)}: its worker process was killed (by the system's out-of-memory "
                                    f"killer or a signal; log {logs / log_name(key)}); what finished is kept: run "
                                    f"the same command again to continue") from None
                done += 1
                say(f"done {describe(key)} in {seconds:.0f} s ({done} of {total} tasks)")
    except BaseException:
        for _, _, pool in running.values():  # a failed study stops now, not after the others
            for p in list((getattr(pool, "_processes", None) or {}).values()):
                p.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
        raise
