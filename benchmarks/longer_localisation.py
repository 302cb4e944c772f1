"""Evidence for the study's SCR vs PCR finding (Table 8): the localisation nets of a finished study fine-tuned again
for more epochs, and the paired PCR - SCR difference at each length. The study trains each localisation net for
StudyConfig.loc_epochs (2) epochs; a per-class regressor (PCR) learns each class's box from a tenth of the images
(10 classes) where the single-class one (SCR) learns from all of them, so PCR may need the longer schedule.

    python benchmarks/longer_localisation.py --study runs/study --seeds 0,1,2 --epochs 2,6 [--layers fc]

Each run is Study.localise with another epoch count: cached as STUDY/runs/loc-MODE-LAYERS-eN-sS.safetensors and its
error in the study's eval folder, so a rerun only prints. Error = centre-crop localisation error (%) on the study's
test subset, ground-truth class; the verdict is report.verdict's (2 standard errors over seeds)."""
from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="runs/study")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", default="2,6")
    ap.add_argument("--layers", default="fc", choices=("fc", "all"))
    a = ap.parse_args()
    from verydeep.report import paired, verdict
    from verydeep.reproduce import Study

    study = Study.open(a.study)
    seeds, lengths = [int(s) for s in a.seeds.split(",")], [int(e) for e in a.epochs.split(",")]
    err = {(m, e): {s: 100 * study.localise(s, m, a.layers, e) for s in seeds} for e in lengths for m in ("scr", "pcr")}
    print(f"{a.study}: localisation error % (centre crop, ground-truth class), layers {a.layers}, seeds {seeds}")
    for e in lengths:
        scr, pcr = err[("scr", e)], err[("pcr", e)]
        mean, std, n = paired(scr, pcr)  # positive: PCR better, the paper's direction
        print(f"{e:>2} epochs: SCR " + " ".join(f"{scr[s]:.2f}" for s in seeds) + "  PCR " +
              " ".join(f"{pcr[s]:.2f}" for s in seeds) +
              f"  | SCR - PCR {mean:+.2f} ± {std:.2f}: {verdict(mean, std, n, +1)}")


if __name__ == "__main__":
    main()
