"""OpenMP's wait policy, quiet and beside a CPU-bound process: `verydeep bench --only gemm,SECTION` run as whole
processes (libgomp reads OMP_WAIT_POLICY when it loads, so one process cannot time both), alternating the policies
round by round; medians over rounds of each row's median img/s, and each policy's ratio to libgomp's default.

    python benchmarks/wait_policy.py [--rounds 3] [--load 0,1] [--batches 1,8] [--policies default,PASSIVE]
                                     [--section inference|train]

"default" is libgomp's own: OMP_WAIT_POLICY and GOMP_SPINCOUNT unset (it spins a while at each barrier, then sleeps);
a policy is a value of OMP_WAIT_POLICY or VAR=VALUE (GOMP_SPINCOUNT=10000)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def bench(policy: str, load: int, batches: str, section: str) -> tuple[dict, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if policy != "default":  # PASSIVE / ACTIVE, or VAR=VALUE (e.g. GOMP_SPINCOUNT=10000: spin that long, then sleep)
        var, value = policy.split("=", 1) if "=" in policy else ("OMP_WAIT_POLICY", policy)
        env[var] = value
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "b.json"
        subprocess.run([sys.executable, "-m", "verydeep", "bench", "--only", f"gemm,{section}", "--batches", batches,
                        "--repeats", "3", "--no-compile", "--load", str(load), "--json", str(out)], env=env,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        res = json.loads(out.read_text())
    rows = {(r["mode"].removeprefix("verydeep "), r["batch"]): r["images_per_s"] for r in res["rows"]
            if r.get("section") == section}
    return rows, res["gemm_gflops"]["fp32"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--load", default="0,1")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--policies", default="default,PASSIVE")
    ap.add_argument("--section", default="inference", choices=["inference", "train"])
    a = ap.parse_args()
    policies = a.policies.split(",")
    for load in [int(x) for x in a.load.split(",")]:
        seen: dict = {}
        for r in range(a.rounds):
            for policy in policies:
                rows, gemm = bench(policy, load, a.batches, a.section)
                for k, v in rows.items():
                    seen.setdefault((policy,) + k, []).append(v)
                print(f"load {load} round {r + 1} {policy:<8} fp32 GEMM {gemm:.0f} GFLOP/s  " +
                      "  ".join(f"{m} b{b} {v:.2f}" for (m, b), v in sorted(rows.items())), flush=True)
        print(f"\nload {load}: medians over {a.rounds} rounds (img/s), ratio to the default policy")
        for mode, batch in sorted({k[1:] for k in seen}):
            base = statistics.median(seen[("default", mode, batch)]) if ("default", mode, batch) in seen else None
            cells = []
            for policy in policies:
                m = statistics.median(seen[(policy, mode, batch)])
                cells.append(f"{policy} {m:6.2f}" + (f" ({m / base:.2f}x)" if base and policy != "default" else ""))
            print(f"  {mode:<44} b{batch}  " + "   ".join(cells))
        print()


if __name__ == "__main__":
    sys.exit(main())
