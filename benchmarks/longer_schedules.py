"""Evidence for a finding the study leaves short: nets of a finished study trained again with a raised epoch cap, so
that their schedule ends (3 learning-rate decays, then a plateau), and compared, paired on the study's own test subset
(dense, one test scale: Table 3's protocol), with the study's nets. The study's caps (StudyConfig.init_epochs: 20 for
the nets initialised from A) stop D and E before their schedule ends; this shows what that costs.

    python benchmarks/longer_schedules.py --study runs/study --nets D,E --seeds 0,1,2 [--max-epochs 60]

Each longer run is `verydeep train --config STUDY/runs/NET-sS/config.json --max-epochs N --run-dir
STUDY/longer/NET-sS` (a run's config.json is a config file); a finished one is reused. Prints per seed the top-1 error of
A, of each net as the study trained it and with its schedule ended, and the paired effects with the study's verdict
rule (report.verdict: 2 standard errors over seeds); then the nets against each other, every schedule ended, in the
order given (positive: the later net better, the paper's direction for C, D, E in that order)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="runs/study")
    ap.add_argument("--nets", default="D,E")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--max-epochs", type=int, default=60)
    a = ap.parse_args()
    from verydeep.config import build as build_config
    from verydeep.reproduce import Study, records_of
    from verydeep.report import paired, verdict
    from verydeep.train import TrainConfig, train

    study = Study.open(a.study)
    seeds, nets = [int(s) for s in a.seeds.split(",")], a.nets.split(",")

    err: dict = {}
    for seed in seeds:
        err.setdefault("A", {})[seed] = study.dense_error("A", study.train("A", seed))
        for net in nets:
            run = study.run_dir(net, seed)
            longer = Path(a.study) / "longer" / run.name
            if not (longer / "model.safetensors").is_file():
                cfg = build_config(TrainConfig, {"max_epochs": a.max_epochs, "run_dir": str(longer),
                                                 "resume": longer.exists(), "progress": False},
                                   run / "config.json")
                train(cfg)
            recs = records_of(longer)
            err.setdefault(net, {})[seed] = study.dense_error(net, run / "model.safetensors")
            err.setdefault(f"{net} ended", {})[seed] = study.dense_error(net, longer / "model.safetensors")
            print(f"seed {seed}: A {err['A'][seed]:.2f}%  {net} {err[net][seed]:.2f}% "
                  f"({len(records_of(run))} epochs)  {net} ended {err[f'{net} ended'][seed]:.2f}% ({len(recs)} "
                  f"epochs, {sum(r.get('schedule') == 'decay' for r in recs)} decays)", flush=True)
    print(f"\ntop-1 error, dense at one scale, {study.cfg.test_images} test images; effects in points "
          "(mean ± std over seeds), verdict at 2 standard errors")
    for net in nets:
        for what, x, y in ((f"err(A) - err({net}), as the study trained {net}", "A", net),
                           (f"err(A) - err({net}), {net}'s schedule ended", "A", f"{net} ended"),
                           (f"err({net}) - err({net}, schedule ended)", net, f"{net} ended")):
            m, s, n = paired({k: (v,) for k, v in err[x].items()}, {k: (v,) for k, v in err[y].items()})
            print(f"  {what:<48} {m:+.2f} ± {s:.2f}  ({n} seeds)  {verdict(m, s, n, +1)}")
    for i, x in enumerate(nets):  # the nets against each other, every schedule ended (C vs D: Table 3's 1x1 row)
        for y in nets[i + 1:]:
            m, s, n = paired({k: (v,) for k, v in err[f"{x} ended"].items()},
                             {k: (v,) for k, v in err[f"{y} ended"].items()})
            print(f"  {f'err({x}) - err({y}), both ended':<48} {m:+.2f} ± {s:.2f}  ({n} seeds)  "
                  f"{verdict(m, s, n, +1)} (positive: {y} better)")


if __name__ == "__main__":
    sys.exit(main())
