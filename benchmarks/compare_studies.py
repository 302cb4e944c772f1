"""Two finished studies of the same data and seeds, paired seed by seed: what changing the recipe did to each net
and each test protocol. For every cell both studies hold (Table 3's nets at one scale, Table 4's over three, Table
5's protocols, Table 6's fusion, Table 8's localisation error, transfer's mean class recall), top-1 error % in
each (mean over the common seeds), and the paired difference err(first) - err(second) (recall: second - first) as
mean ± std over seeds with its verdict by the report's rule (report.verdict: 2
standard errors; positive means the second study's recipe is better). A net at chance level in either study is
left out of that net's rows (report.without_chance). Nothing is recomputed: it reads each study's results.json.

    python benchmarks/compare_studies.py runs/study6 runs/study9

Only a fair comparison when both studies were built on the same data (their data/manifest.json identical, checked)
and evaluate the same test subset (the same --test-images, checked): then a seed's net in each saw the same images.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load(study: Path) -> dict:
    try:
        return json.loads((study / "results.json").read_text())
    except (OSError, ValueError) as e:
        sys.exit(f"{study}: no readable results.json ({e}); run `verydeep reproduce --out {study}` to the end first")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first", type=Path)
    ap.add_argument("second", type=Path)
    a = ap.parse_args()
    from verydeep.report import SE_RULE, paired, verdict, without_chance

    first, second = load(a.first), load(a.second)
    manifests = [study / "data" / "manifest.json" for study in (a.first, a.second)]
    if not all(m.is_file() for m in manifests) or manifests[0].read_bytes() != manifests[1].read_bytes():
        sys.exit(f"{manifests[0]} and {manifests[1]} are missing or differ: "
                 "the studies were not built on the same data")
    if first["config"].get("test_images") != second["config"].get("test_images"):
        sys.exit("the studies evaluate different numbers of test images: not paired")
    (c1, dead1), (c2, dead2) = without_chance(first["cells"]), without_chance(second["cells"])
    print(f"err({a.first.name}) - err({a.second.name}), top-1 %, paired over the common seeds (positive: "
          f"{a.second.name} better); verdict at {SE_RULE:g} standard errors")
    if dead1 or dead2:
        print(f"left out (chance level): {a.first.name} {dead1 or '-'}; {a.second.name} {dead2 or '-'}")
    print(f"{'table':9} {'cell':24} {'seeds':>5} {a.first.name:>9} {a.second.name:>9} {'difference':>15}  verdict")
    for table in ("t3", "t4", "t5", "t6", "t8", "transfer"):
        for key, x in c1.get(table, {}).items():
            y = c2.get(table, {}).get(key)
            if not y or not all(isinstance(v, (int, float, list)) for v in [*x.values(), *y.values()]):
                continue  # absent from the second study, or not a figure (Table 6's names of the fused pair)
            # error in every table but transfer's mean class recall, where higher is better
            m, s, n = paired(y, x) if table == "transfer" else paired(x, y)
            if not n:
                continue
            common = sorted(set(x) & set(y))
            mean = lambda c: sum(c[k][0] if isinstance(c[k], list) else c[k] for k in common) / n  # noqa: E731
            name = " ".join(json.loads(key)) if key.startswith("[") else key
            diff = f"{m:+.2f}" + (f" ± {s:.2f}" if n > 1 else "")
            v = verdict(m, s, n, +1)  # the report's rule, worded for two recipes
            v = {"reproduced": f"{a.second.name} better",
                 "not reproduced (opposite)": f"{a.first.name} better"}.get(v, v)
            print(f"{table:9} {name:24} {n:5d} {mean(x):9.2f} {mean(y):9.2f} {diff:>15}  {v}")


if __name__ == "__main__":
    main()
