"""Which epoch each run of a study ended up exporting (its best validation accuracy) and at which learning rate:
the evidence behind StudyConfig.validate_first_rate (off), which leaves a fixed schedule's epochs at its first rate
unvalidated once the net is above chance, so that they cannot be the best. Reads the runs' metrics.jsonl only.

    python benchmarks/best_epochs.py --study /work/runs/study9
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from verydeep.reproduce import records_of


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", required=True)
    a = ap.parse_args()
    runs = sorted(p for p in (Path(a.study) / "runs").iterdir() if (p / "metrics.jsonl").is_file())
    at_first = 0
    print(f"{'run':<14} {'epochs':>6} {'best':>5} {'its lr':>7}  first epoch at a lower rate  validated")
    for run in runs:
        recs = {r["epoch"]: r for r in records_of(run) if r.get("kind") == "epoch"}  # a full epoch replaces a partial
        ep = [recs[e] for e in sorted(recs)]
        val = [r for r in ep if "val_top1_err" in r]
        if not val:
            continue
        best = min(val, key=lambda r: (r["val_top1_err"], r["epoch"]))  # the trainer keeps the first best
        lower = next((r["epoch"] for r in ep if r["lr"] < ep[0]["lr"]), None)
        fixed = (json.loads((run / "config.json").read_text()).get("rate_epochs") if (run / "config.json").is_file()
                 else None)
        learned = any(r.get("schedule") not in ("chance", "gave up") for r in ep)
        at_first += bool(fixed) and learned and best["lr"] == ep[0]["lr"]
        print(f"{run.name:<14} {len(ep):>6} {best['epoch']:>5} {best['lr']:>7.0e}  {lower or '-':>27}  "
              f"{len(val)}/{len(ep)}{'' if fixed else '  (plateau rule)'}{'' if learned else '  (never left chance)'}")
    print(f"runs on a fixed schedule that learned and whose best epoch was at the first rate: {at_first}")


if __name__ == "__main__":
    main()
