"""Page faults of re-allocating a VGG step's worth of memory, with glibc's default malloc and with verydeep's kept
freed memory (utils.keep_freed_memory). A measurement, not a test: the count of a round depends on the allocator's
state (the first re-allocation may still grow the heap) and on the machine, so it lives here, not in the suite.

    python benchmarks/malloc_faults.py [--mib 64] [--rounds 6] [--repeats 5]

Prints the page faults of each round for each mode (median over repeated fresh processes), and a verdict on the
steady state (the last half of the rounds)."""
import argparse
import json
import os
import statistics
import subprocess
import sys

SCRIPT = """
import json, resource, sys, torch
from verydeep.utils import keep_freed_memory
kept = keep_freed_memory()
faults = []
for _ in range({rounds}):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty({mib} * 2**20 // 4).fill_(1.0)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({{"kept": kept, "faults": faults}}))
"""


def run(mode: str, mib: int, rounds: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "VERYDEEP_MALLOC"}
    if mode == "system":
        env["VERYDEEP_MALLOC"] = "system"
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(mib=mib, rounds=rounds)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    pages = a.mib * 2**20 // os.sysconf("SC_PAGE_SIZE")
    print(f"re-allocating {a.mib} MiB ({pages:,} pages) {a.rounds} times per process, {a.repeats} processes each")
    for mode in ("system", "kept"):
        runs = [run(mode, a.mib, a.rounds) for _ in range(a.repeats)]
        med = [statistics.median(r["faults"][k] for r in runs) for k in range(a.rounds)]
        steady = med[a.rounds // 2:]
        print(f"{mode:<7} in force: {runs[0]['kept']!s:<5} faults per round (median): "
              f"{', '.join(f'{m:,.0f}' for m in med)}; steady state {max(steady):,.0f} "
              f"({max(steady) / pages:.0%} of the pages)")


if __name__ == "__main__":
    main()
