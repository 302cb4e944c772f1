"""Is the learning-rate schedule deciding on noise? Nets of a finished study trained again until their schedule ends,
`--repeats` times each, validated on the study's own validation images (1,000 in a study built before 1a11bee,
5,000 since) and on another validation folder
(`--val`: another split of the same Fashion-MNIST training items, disjoint from the training images, e.g. `verydeep
data mini-ilsvrc runs/val5k --train-per-class 2000 --val-per-class 500 --test-per-class 10`, whose train/ is
identical to the study's); each run's test error (dense, one scale, the study's test subset) and where its rate fell.

    python benchmarks/validation_size.py --study runs/study --val runs/val5k/val --nets D --seeds 0,1 --repeats 2

The schedule (schedule.PlateauSchedule, the paper's section 3.1) divides the rate after `patience` epochs without a
new best validation accuracy; with 1,000 images an epoch's error has a standard error of about 1.3 points, so two
unlucky epochs during the descent can end the fast phase early. Each run is `verydeep train --config
STUDY/runs/NET-sS/config.json --max-epochs N --run-dir STUDY/valsize/NET-sS-vV-rK --seed S+100K [--val VAL]`:
repeat K of seed S starts from the same net A as the study's run and trains on another stream (order, crops,
dropout); repeat 0 is the study's own stream, which at one thread retraces the study's run exactly through its
cap. Runs go two at a time, one thread each, as the study runs its tasks (jobs.run_tasks); a finished one is
reused."""
from __future__ import annotations

import argparse
import statistics
import sys
from functools import partial
from pathlib import Path


def train_one(max_epochs: int, task) -> None:
    """One jobs.run_tasks task (in a worker process): a study run's config trained again into a new folder, with
    some of its settings overridden (task.args: config, run folder, {TrainConfig field: value})."""
    from verydeep.config import build as build_config
    from verydeep.train import TrainConfig, train

    config, run_dir, overrides = task.args
    given = {"run_dir": run_dir, "resume": Path(run_dir).exists(), "progress": False,
             **({"max_epochs": max_epochs} if max_epochs else {}), **overrides}  # no max_epochs: TrainConfig's 74
    # (a study run's config.json does not hold the study's cap)
    train(build_config(TrainConfig, given, config))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="runs/study")
    ap.add_argument("--val", required=True, help="a larger validation folder (class subfolders of images)")
    ap.add_argument("--nets", default="D")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-epochs", type=int, default=60)
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    from verydeep.data import open_source
    from verydeep.jobs import Task, run_tasks
    from verydeep.reproduce import Study, records_of

    study = Study.open(a.study)
    seeds, nets = [int(s) for s in a.seeds.split(",")], a.nets.split(",")
    own, n_val = len(open_source(study.data, split="val")), len(open_source(a.val))
    if own == n_val:
        sys.exit(f"{a.val}: as many images as the study's own validation split ({own}); pass one of another size")
    runs: dict = {}  # (net, seed, val images, repeat) -> run folder
    tasks: dict = {}
    for net in nets:
        for seed in seeds:
            config = study.run_dir(net, seed) / "config.json"
            for val, size in ((None, own), (a.val, n_val)):
                for k in range(a.repeats):
                    run = Path(a.study) / "valsize" / f"{net}-s{seed}-v{size}-r{k}"
                    runs[(net, seed, size, k)] = run
                    if not (run / "model.safetensors").is_file():  # repeat k: the same net A, another stream
                        given = {"seed": seed + 100 * k, **({"val": val} if val else {})}
                        tasks[("train", net, f"v{size}", k, seed)] = Task("train", (str(config), str(run), given))
    if tasks:
        run_tasks(tasks, partial(train_one, a.max_epochs), a.jobs, Path(a.study) / "valsize" / "logs")

    rows: dict = {}
    print(f"top-1 error %, dense at one scale, {study.cfg.test_images} test images; each net's schedule ended "
          f"(cap {a.max_epochs} epochs)")
    for (net, seed, size, k), run in runs.items():
        recs = records_of(run)
        decays = [r["epoch"] for r in recs if r.get("schedule") == "decay"]
        err = study.dense_error(net, run / "model.safetensors")
        rows.setdefault((net, size), []).append(err)
        print(f"{net} seed {seed}, {size:>5} validation images, repeat {k}: {err:6.2f}%  ({len(recs)} epochs, rate "
              f"divided at epochs {decays}, {recs[-1].get('schedule')})", flush=True)
    for (net, size), errs in rows.items():
        sd = statistics.stdev(errs) if len(errs) > 1 else float("nan")
        print(f"{net}, {size:>5} validation images: mean {statistics.mean(errs):.2f}%, std over runs {sd:.2f}, "
              f"range {min(errs):.2f}-{max(errs):.2f} ({len(errs)} runs)")


if __name__ == "__main__":
    sys.exit(main())
