"""Memory of a training process and its loader workers: a short jittered training run of a finished study's net (its
own config.json, a few steps), the proportional set size (PSS: shared pages counted once over the processes sharing
them) of the process and its children sampled every 0.2 s, its peak reported. Two comparisons:

- `--compare spawn` (the default): the run in a process of its own, and the same run in a process spawned the way
  jobs.py starts a study's tasks (data.loader.worker_options: the loader's workers are forked in both, sharing the
  decoded images with their parent);
- `--compare trim`: the heap handed back before the workers fork (utils.release_freed_memory, the default) and not.

    python benchmarks/loader_memory.py --run runs/study/runs/Dj-s0 [--steps 60] [--compare spawn|trim]

Each setting runs in a fresh process (a process keeps its peak memory), one after the other."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time


def pss_mb(pid: int) -> int:
    """PSS of `pid` and its children, in MB (0 for processes gone meanwhile)."""
    total = 0
    pids = [pid] + [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == pid]
    for p in pids:
        try:
            for line in open(f"/proc/{p}/smaps_rollup"):
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total // 1024


def _parent(pid: int) -> int:
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(") ", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def child(run: str, steps: int, trim: bool) -> None:
    from verydeep.data import loader
    from verydeep.train import make_config, train

    if not trim:
        loader.release_freed_memory = lambda: None
    cfg = json.loads(open(os.path.join(run, "config.json")).read())
    keep = {k: v for k, v in cfg.items() if not k.startswith("_")}
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], pss_mb(os.getpid()))
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    with tempfile.TemporaryDirectory() as d:
        train(make_config({**keep, "run_dir": d, "max_steps": steps, "resume": False, "progress": False,
                           "workers": 2}))
    stop.set()
    t.join()
    print(json.dumps({"trim": trim, "peak_pss_mb": peak[0]}))


def in_spawned_task(run: str, steps: int) -> None:
    """child(), in a process started as jobs.run_tasks starts a study's task."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(child, run, steps, True).result()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a study run folder (its config.json is trained again briefly)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--compare", choices=("spawn", "trim"), default="spawn")
    ap.add_argument("--child", choices=("on", "off", "spawned"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child == "spawned":
        return in_spawned_task(a.run, a.steps)
    if a.child:
        return child(a.run, a.steps, a.child == "on")
    settings = {"spawn": [("on", "its own process"), ("spawned", "a spawned task process (jobs.py)")],
                "trim": [("off", "heap handed back before the workers fork: no "),
                         ("on", "heap handed back before the workers fork: yes")]}[a.compare]
    for setting, label in settings:
        out = subprocess.run([sys.executable, __file__, "--run", a.run, "--steps", str(a.steps), "--child", setting],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        print(f"{label}: peak PSS of the process and its loader workers {json.loads(out)['peak_pss_mb']:,} MB",
              flush=True)


if __name__ == "__main__":
    main()
