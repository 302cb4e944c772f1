"""Does the plateau rule end the fast phase on noise? A finished study's nets trained again from the same start on the
same stream, with another `--patience` (epochs without a new best validation accuracy before lr / 10), each paired
with the study's own run: test error (dense, one scale, the study's test subset), epochs, where the rate fell.

    python benchmarks/patience.py --study runs/study --nets C,D,E --seeds 0,1,2,3,4 --patience 3

At lr 1e-2 a net's validation error swings by 2-3 points from epoch to epoch while it still falls (the study of
2026-11-24: D seed 1 26.3, 28.4, 26.6, then 22.5 the epoch after its rate fell at patience 2). Each run is `verydeep
train --config STUDY/runs/NET-sS/config.json --patience P --run-dir STUDY/patience/NET-sS-pP`: the study's own
seed, so at one thread it retraces the study's run until the first epoch the two rules judge differently. Runs go
two at a time, one thread each, as the study runs its tasks (jobs.run_tasks); a finished one is reused."""
from __future__ import annotations

import argparse
import statistics
import sys
from functools import partial
from pathlib import Path

from validation_size import train_one


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="runs/study")
    ap.add_argument("--nets", default="C,D,E")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    from verydeep.jobs import Task, run_tasks
    from verydeep.reproduce import Study, records_of

    study = Study.open(a.study)
    seeds, nets = [int(s) for s in a.seeds.split(",")], a.nets.split(",")
    runs = {(n, s): Path(a.study) / "patience" / f"{n}-s{s}-p{a.patience}" for n in nets for s in seeds}
    tasks = {("train", n, s): Task("train", (str(study.run_dir(n, s) / "config.json"), str(run),
                                             {"patience": a.patience}))
             for (n, s), run in runs.items() if not (run / "model.safetensors").is_file()}
    if tasks:
        run_tasks(tasks, partial(train_one, None), a.jobs, Path(a.study) / "patience" / "logs")

    def describe(recs):
        decays = [r["epoch"] for r in recs if r.get("schedule") == "decay"]
        return f"{len(recs):2d} epochs, {sum(r.get('train_seconds', 0) for r in recs) / 60:4.1f} min, lr / 10 at {decays}"

    print(f"top-1 error %, dense at one scale, {study.cfg.test_images} test images: the study's run (patience "
          f"{study.cfg.patience}) and the same run at patience {a.patience}")
    errs: dict = {}
    for (net, seed), run in runs.items():
        own = study.err(study.posteriors(net, seed), "dense", study.single_q(net))[0]
        new = study.dense_error(net, run / "model.safetensors")
        errs.setdefault(net, []).append((own, new))
        print(f"{net} seed {seed}: {own:6.2f} -> {new:6.2f}  ({describe(records_of(study.run_dir(net, seed)))} -> "
              f"{describe(records_of(run))})", flush=True)
    for net, pairs in errs.items():
        own, new = zip(*pairs)
        gain = [o - n for o, n in pairs]
        se = statistics.stdev(gain) / len(gain) ** 0.5 if len(gain) > 1 else float("nan")
        print(f"{net}: mean {statistics.mean(own):.2f} -> {statistics.mean(new):.2f} (gain {statistics.mean(gain):+.2f}"
              f", SE {se:.2f}); std over seeds {statistics.stdev(own):.2f} -> {statistics.stdev(new):.2f}")
    if len(nets) > 1:  # the paired comparisons of the study between these nets, under each rule
        for x, y in zip(nets, nets[1:]):
            for k, label in ((0, f"patience {study.cfg.patience}"), (1, f"patience {a.patience}")):
                d = [p[k] - q[k] for p, q in zip(errs[x], errs[y])]
                print(f"err({x}) - err({y}), {label}: {statistics.mean(d):+.2f} ± {statistics.stdev(d):.2f} (std), "
                      f"2 SE {2 * statistics.stdev(d) / len(d) ** 0.5:.2f}")


if __name__ == "__main__":
    sys.exit(main())
