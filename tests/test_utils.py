"""Shared helpers: keeping freed memory for reuse (no page faults on the next step's activations)."""
import json
import os
import subprocess
import sys

import pytest

SCRIPT = """
import json, resource, torch
from verydeep.utils import keep_freed_memory
kept = keep_freed_memory()
faults = []
for _ in range(6):  # a step's worth of activations, freed and allocated again
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(64 * 2**20 // 4).fill_(1.0)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
# the steady state: the first rounds may still grow the heap (an aligned request does not fit the exact freed
# block once; the next round's does)
print(json.dumps({"kept": kept, "faults": faults[3:]}))
"""


def faults(env_value):
    env = {k: v for k, v in os.environ.items() if k != "VERYDEEP_MALLOC"}
    if env_value:
        env["VERYDEEP_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_freed_memory_is_reused_without_page_faults():
    kept, system = faults(None), faults("system")
    assert kept["kept"] and not system["kept"]
    # 64 MiB is 16,384 pages: from the kernel each one faults; from the kept heap none does
    assert min(system["faults"]) > 10_000
    assert max(kept["faults"]) < 1_000
