"""Does the plateau rule end the fast phase on noise? A finished study's nets trained again from the same start on the
same stream under another rule: another `--patience` (epochs without a new best validation accuracy before lr / 10)
or a schedule fixed in epochs (`--rate-epochs 18,9,2,1`: epochs at lr, lr / 10, ...), each paired with the study's
own run: test error (dense, one scale, the study's test subset), epochs, where the rate fell.

    python benchmarks/patience.py --study runs/study --nets C,D,E --seeds 0,1,2,3,4 --patience 3
    python benchmarks/patience.py --study runs/study --nets C,D --seeds 0,1,2,3,4 --rate-epochs 18,9,2,1

At lr 1e-2 a net's validation error swings by about 2 points from epoch to epoch while it still falls (the study of
2026-11-24: D seed 1 26.3, 28.4, 26.6, then 22.5 the epoch after its rate fell at patience 2). Each run is `verydeep
train --config STUDY/runs/NET-sS/config.json --patience P --run-dir STUDY/patience/NET-sS-pP` (or `--rate-epochs
N1,N2,.. --run-dir STUDY/patience/NET-sS-fN1-N2-..`): the study's own
seed, so at one thread it retraces the study's run until the first epoch the two rules judge differently. Runs go
two at a time, one thread each, as the study runs its tasks (jobs.run_tasks); a finished one is reused. The runs are
capped at `--max-epochs` (the paper's 74 by default, not the study's 40: the question is where the schedule ends)."""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np

from validation_size import train_one


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="runs/study")
    ap.add_argument("--nets", default="C,D,E")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--rate-epochs", default="", help="a schedule fixed in epochs instead (N1,N2,...: epochs at lr, "
                    "lr / 10, ...); --patience is then ignored")
    ap.add_argument("--max-epochs", type=int, default=74, help="the cap of the runs (a study run's config.json "
                    "does not hold the study's cap: the default is the paper's 74 epochs, the schedule's end)")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    from scipy.stats import spearmanr

    from verydeep.jobs import Task, run_tasks
    from verydeep.report import paired, verdict
    from verydeep.reproduce import Study, records_of

    study = Study.open(a.study)
    seeds, nets = [int(s) for s in a.seeds.split(",")], a.nets.split(",")
    fixed = [int(n) for n in a.rate_epochs.split(",") if n]
    rule, tag, label = (({"rate_epochs": fixed}, "f" + "-".join(map(str, fixed)), f"epochs {fixed}") if fixed else
                        ({"patience": a.patience}, f"p{a.patience}", f"patience {a.patience}"))
    runs = {(n, s): Path(a.study) / "patience" / f"{n}-s{s}-{tag}" for n in nets for s in seeds}
    tasks = {("train", n, s): Task("train", (str(study.run_dir(n, s) / "config.json"), str(run), rule))
             for (n, s), run in runs.items() if not (run / "model.safetensors").is_file()}
    if tasks:
        run_tasks(tasks, partial(train_one, a.max_epochs), a.jobs, Path(a.study) / "patience" / "logs")

    def decays(recs):
        return [r["epoch"] for r in recs if r.get("schedule") == "decay"]

    def first_decay(recs):
        return (decays(recs) or [len(recs)])[0]

    def describe(recs):
        minutes = sum(r.get("train_seconds", 0) for r in recs) / 60
        return f"{len(recs):2d} epochs, {minutes:4.1f} min, lr / 10 at {decays(recs)}"

    print(f"top-1 error %, dense at one scale, {study.cfg.test_images} test images: the study's run (patience "
          f"{study.cfg.patience}) and the same run with {label}")
    errs: dict = {}  # net -> seed -> (the study's error, the rerun's)
    firsts: dict = {}  # rule -> [(epoch of the first decay, test error)]
    at_rate: dict = {}  # net -> [(epochs at lr, at lr / 10, at lr / 100 and below, test error)], both rules' runs

    def rate_epochs(recs):
        lr = recs[0]["lr"]
        return [sum(r["lr"] > lr * 0.3 for r in recs), sum(lr * 0.03 < r["lr"] <= lr * 0.3 for r in recs),
                sum(r["lr"] <= lr * 0.03 for r in recs)]

    for (net, seed), run in runs.items():
        own = study.err(study.posteriors(net, seed), "dense", study.single_q(net))[0]
        done = run / "test_error.json"  # measured once (the study's own runs' errors are in its evaluation cache)
        if not done.is_file():
            done.write_text(json.dumps(study.dense_error(net, run / "model.safetensors")))
        new = json.loads(done.read_text())
        errs.setdefault(net, {})[seed] = (own, new)
        recs_own, recs_new = records_of(study.run_dir(net, seed)), records_of(run)
        firsts.setdefault("own", []).append((first_decay(recs_own), own))
        firsts.setdefault("new", []).append((first_decay(recs_new), new))
        at_rate.setdefault(net, []).extend([(*rate_epochs(recs_own), own), (*rate_epochs(recs_new), new)])
        print(f"{net} seed {seed}: {own:6.2f} -> {new:6.2f}  ({describe(recs_own)} -> {describe(recs_new)})",
              flush=True)

    rules = ((0, f"patience {study.cfg.patience}"), (1, label))
    for net, by_seed in errs.items():
        own, new = np.array(list(by_seed.values())).T
        gain, sd, n = paired(dict(enumerate(own)), dict(enumerate(new)))
        spread = [np.std(e, ddof=1) if n > 1 else float("nan") for e in (own, new)]
        print(f"{net}: mean {own.mean():.2f} -> {new.mean():.2f} (gain {gain:+.2f}, SE {sd / n ** 0.5:.2f}); std over "
              f"seeds {spread[0]:.2f} -> {spread[1]:.2f}")
    for rule, (_, label) in zip(("own", "new"), rules):
        epochs = {e for e, _ in firsts[rule]}
        if len(epochs) == 1:  # a schedule fixed in epochs
            print(f"{label}: every run's rate first fell after epoch {epochs.pop()}")
        if len(firsts[rule]) < 3 or len(epochs) < 2:
            continue
        rho, p = spearmanr(*zip(*firsts[rule]))
        print(f"{label}: the epoch of the first decay against the test error, over {len(firsts[rule])} runs: "
              f"Spearman rho {rho:+.2f} (p = {p:.4f})")
    for net, rows in at_rate.items():  # which epochs the error follows, over the study's runs and the reruns
        cols = np.array(rows, float).T
        rhos = [f"{what} {spearmanr(c, cols[3])[0]:+.2f}" if np.ptp(c) else f"{what} (all {c[0]:.0f})"
                for what, c in zip(("at lr", "at lr / 10", "below"), cols[:3])]
        print(f"{net}: Spearman rho of the test error with the epochs run at each rate, over {len(rows)} runs of "
              f"both rules: {', '.join(rhos)}")
    for x, y in itertools.combinations(nets, 2):  # paired comparisons of these nets (shallower first), each rule
        for k, label in rules:
            m, sd, n = paired(errs[x], errs[y], k)
            print(f"err({x}) - err({y}), {label}: {m:+.2f} ± {sd:.2f} (std), 2 SE {2 * sd / n ** 0.5:.2f}, "
                  f"{verdict(m, sd, n, +1)}")

if __name__ == "__main__":
    sys.exit(main())
