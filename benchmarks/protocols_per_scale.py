"""Evidence for the study's multi-crop vs dense finding (Table 5): each protocol at each test scale alone, and over
the three, from a finished study's cached posteriors (nothing is recomputed). For each jittered net: top-1 error of
dense, multi-crop and the centre crop at Q = 73, 110, 146 (the paper's 256, 384, 512 scaled) and combined, the
paired difference dense - multi-crop over seeds with the study's verdict rule (report.verdict: 2 standard errors),
and how peaked each protocol's posteriors are (mean max posterior): flat posteriors weigh little in a multi-scale
average, so the combined ranking follows the scales where a protocol is confident.

    python benchmarks/protocols_per_scale.py --study runs/study [--seeds 0,1,2] [--nets Cj,Dj,Ej]
"""
from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="runs/study")
    ap.add_argument("--seeds", default=None, help="default: the study's")
    ap.add_argument("--nets", default="Cj,Dj,Ej")
    a = ap.parse_args()
    from verydeep import paper
    from verydeep.evaluate import topk_error
    from verydeep.report import paired, verdict
    from verydeep.reproduce import Study

    study = Study.open(a.study)
    seeds = [int(s) for s in a.seeds.split(",")] if a.seeds else study.cfg.seeds
    q3 = paper.multi_scales(study.cfg.crop)
    print(f"{a.study}: seeds {seeds}; top-1 error %, mean over seeds; dense - multi-crop paired over seeds "
          f"(positive: multi-crop better, the paper's direction); peak = mean max posterior")
    for name in a.nets.split(","):
        posts = {s: study.posteriors(name, s) for s in seeds}  # cached: a missing one is computed (and cached)
        for qs in [[q] for q in q3] + [q3]:
            err, peak = {}, {}
            for p in ("dense", "multicrop", "center"):
                err[p], peak[p] = {}, {}
                for s, post in posts.items():
                    probs, y = post.combine(p, qs)[post.valid], post.labels[post.valid]
                    err[p][s], peak[p][s] = 100 * topk_error(probs, y, 1), float(probs.max(1).mean())
            mean, std, n = paired(err["dense"], err["multicrop"])
            se2 = 2 * std / np.sqrt(n) if n > 1 else float("nan")
            print(f"{name:>3} Q={'+'.join(map(str, qs)):<11} " + "  ".join(
                f"{p} {np.mean(list(err[p].values())):5.2f} (peak {np.mean(list(peak[p].values())):.2f})"
                for p in ("dense", "multicrop", "center")) +
                f"  | dense - multi-crop {mean:+.2f} ± {std:.2f} (2 SE {se2:.2f}): {verdict(mean, std, n, +1)}")


if __name__ == "__main__":
    main()
