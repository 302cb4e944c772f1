"""The miniature study's work one at a time with every thread, against two at a time with one thread each
(`verydeep reproduce --jobs`), in one run, interleaved round by round.

Each task is one training epoch of a study net (StudyConfig's geometry: x1/8, batch 64, the measured precision,
channels-last, images in memory; the trainer's own epoch: loader and step, no validation), run through
verydeep.jobs.run_tasks exactly as the study runs its tasks: --jobs 1 (each task alone, all cores) or --jobs 2
(side by side, cores / 2 threads each). Prints each round's wall time for the pair, then medians and the ratio.

    python benchmarks/study_jobs.py [--data DIR] [--pairs A+A-LRN,D+E] [--rounds 3] [--load 0]

--data: a mini-ILSVRC folder; by default runs/study_jobs_data, built at the study's size (20,000 training images) if
absent, so that an epoch lasts as long as one of the study's (a study's own OUT/data serves as well).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from study_training import epoch_rate  # noqa: E402  (a sibling benchmark: the trainer's epoch, as measured there)


def one_epoch(data: str, precision: str, out: str, task) -> None:
    net, seed = task.args
    rate = epoch_rate(data, net, "study", precision, seed)
    Path(out, f"{net}-{seed}.json").write_text(json.dumps(rate))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="runs/study_jobs_data")
    ap.add_argument("--pairs", default="A+A-LRN,D+E")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--load", type=int, default=0)
    a = ap.parse_args()
    import torch

    from verydeep.bench import cpu_load
    from verydeep.jobs import Task, cores, run_tasks
    from verydeep.mini import MiniConfig, build
    from verydeep.provenance import device_name
    from verydeep.reproduce import measure_precision

    if not (Path(a.data) / "manifest.json").is_file():
        build(a.data, MiniConfig(train_per_class=2000, val_per_class=100, test_per_class=10), progress=False)
    images = json.loads((Path(a.data) / "manifest.json").read_text())["counts"]["train"]
    with cpu_load(a.load), tempfile.TemporaryDirectory() as tmp:
        print(f"{device_name('cpu')}; {cores()} cores; torch {torch.__version__}; {a.load} CPU-bound process(es) "
              "beside")
        precision, seen = measure_precision("D", 64, 0.125)
        print(f"precision (measured, net D at x1/8): {precision} ({seen})")
        walls: dict = {}
        for r in range(a.rounds):
            for pair in a.pairs.split(","):
                for jobs in ((1, 2) if r % 2 == 0 else (2, 1)):  # alternate which goes first
                    nets = pair.split("+")
                    tasks = {(n, r): Task("epoch", (n, r)) for n in nets}
                    t0 = time.perf_counter()
                    run_tasks(tasks, partial(one_epoch, a.data, precision, tmp), jobs, Path(tmp) / "logs",
                              lambda s: None)
                    wall = time.perf_counter() - t0
                    rates = [json.loads(Path(tmp, f"{n}-{r}.json").read_text()) for n in nets]
                    walls.setdefault((pair, jobs), []).append(wall)
                    print(f"round {r + 1}  {pair:<10} jobs {jobs}: {wall:6.1f} s for both epochs  (each epoch's own "
                          f"rate: {', '.join(f'{x:.0f}' for x in rates)} img/s)", flush=True)
        print("\nmedians (wall seconds for the pair; lower is better)")
        for pair in a.pairs.split(","):
            one, two = (statistics.median(walls[(pair, j)]) for j in (1, 2))
            spread = {j: f"{min(walls[(pair, j)]):.1f}-{max(walls[(pair, j)]):.1f}" for j in (1, 2)}
            print(f"  {pair}: one at a time {one:.1f} s ({spread[1]}), side by side {two:.1f} s ({spread[2]}): "
                  f"{one / two:.2f}x  ({2 * images / one:.0f} against {2 * images / two:.0f} img/s)")


if __name__ == "__main__":
    sys.exit(main())
