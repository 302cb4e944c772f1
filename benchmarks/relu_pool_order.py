"""The training step of the miniature study's nets with each ReLU before its max-pool (the layer order) against after
it (VGG._features): the same values and gradients (checked here on one step, and in tests/test_models.py), so only
the time differs. bf16, channels-last, batch 64, crop 64, width 1/8, FC 512, the trainer's forward_backward and
fused SGD; the two orders alternate within one process, medians of the rounds.

    python benchmarks/relu_pool_order.py [--nets A,D,E] [--threads 1] [--rounds 6] [--steps 10]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", default="A,D,E")
    ap.add_argument("--threads", type=int, default=1, help="1: as the study trains, two tasks side by side")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    import torch

    from verydeep.models import vgg
    from verydeep.precision import Precision
    from verydeep.provenance import device_name
    from verydeep.train import forward_backward, optimizer, update
    from verydeep.utils import keep_freed_memory

    keep_freed_memory()
    torch.set_num_threads(a.threads)
    policy = Precision.resolve("bf16", torch.device("cpu"), training=True)
    print(f"{device_name('cpu')}; {a.threads} thread(s); torch {torch.__version__}; bf16, batch 64, crop 64, width "
          f"1/8; img/s, medians of {a.rounds} rounds of {a.steps} steps")
    for name in a.nets.split(","):
        torch.manual_seed(0)
        after = vgg(name, num_classes=10, width=0.125, fc_width=512, crop_size=64).to(memory_format=torch.channels_last)
        before = copy.deepcopy(after)
        before.forward = lambda x, m=before: m.classifier(torch.flatten(m.features(x), 1))  # the layer order
        x = torch.randn(64, 3, 64, 64).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (64,))
        for m in (after, before):  # dropout off for the comparison of gradients
            m.eval()
            forward_backward(m, x, y, policy, 1 / 64)
            m.train()
        same = all(torch.equal(p.grad, q.grad) for p, q in zip(after.parameters(), before.parameters()))
        opts = {id(m): optimizer(m.parameters(), 0.01, 0.9, 5e-4, "cpu") for m in (after, before)}
        rates: dict = {"ReLU, pool (layer order)": [], "pool, ReLU": []}
        runs = list(zip(rates, (before, after)))
        for r in range(a.rounds + 1):
            for key, m in (runs if r % 2 == 0 else runs[::-1]):
                t0 = time.perf_counter()
                for _ in range(a.steps):
                    forward_backward(m, x, y, policy, 1 / 64)
                    update(opts[id(m)])
                if r:  # round 0 warms both up
                    rates[key].append(64 * a.steps / (time.perf_counter() - t0))
        med = {k: statistics.median(v) for k, v in rates.items()}
        spread = "; ".join(f"{k}: {min(v):.0f}-{max(v):.0f}" for k, v in rates.items())
        b, f = med["ReLU, pool (layer order)"], med["pool, ReLU"]
        print(f"{name}: ReLU, pool {b:.0f} img/s; pool, ReLU {f:.0f} img/s ({f / b:.3f}x); gradients of one step "
              f"{'identical' if same else 'DIFFERENT'} (range {spread})")


if __name__ == "__main__":
    main()
