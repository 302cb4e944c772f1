"""How dense evaluation batches its images, the earlier way against today's, in one process, interleaved, medians.

--compare flips:
  apart:    the images of a size, then their flips (what evaluate did before); the net meets each size twice
  together: the images and their flips as one batch (Evaluator.dense_posteriors while that fits in a batch)
--compare hold:
  old: at most 4 batches of images wait for a batch of their shape (evaluate before: HOLD_BYTES = 0), so the
       miniature study's test images at Q = 73, 110, 146 ran in batches of 1-2
  new: more wait while they take at most evaluate.HOLD_BYTES (32 MB): images of a shape gather into full batches

Images rescaled to a test scale share a shape when they share an aspect ratio (the miniature study's test images at
Q = 73, 110, 146: 333 shapes in 1,000 images), and the fast chain prepares its weights for every size it meets
(fast.py). Also reported: the largest difference of a posterior between the two.

    python benchmarks/dense_batching.py --weights runs/quick/runs/D-s0/model.safetensors --data runs/quick/data \\
        [--compare flips|hold] [--images 200] [--scales 73,110,146] [--precision fp32] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import verydeep.evaluate as evaluate  # noqa: E402
from verydeep.bench import machine  # noqa: E402
from verydeep.data import Subset, open_source  # noqa: E402
from verydeep.weights import load  # noqa: E402

HOLD = evaluate.HOLD_BYTES


class Apart(evaluate.Evaluator):
    _dense = staticmethod(lambda net, x, together: evaluate.Evaluator._dense(net, x, together=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", required=True, help="a dataset folder (its test split when it has one)")
    ap.add_argument("--compare", choices=("flips", "hold"), default="flips")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--scales", default="73,110,146")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    model = load(a.weights)
    root = Path(a.data)
    src = open_source(a.data, split="test") if (root / "test").is_dir() else open_source(a.data)
    src = Subset(src, np.arange(min(a.images, len(src))), "benchmark subset")
    scales = [int(q) for q in a.scales.split(",")]
    print(f"{machine('cpu')['cpu']}; {a.weights}; {len(src)} images, Q = {scales}, {a.precision}, "
          f"{a.rounds} rounds, --compare {a.compare}")
    # (name, evaluator class, bytes of images allowed to wait)
    ways = ((("apart", Apart, HOLD), ("together", evaluate.Evaluator, HOLD)) if a.compare == "flips" else
            (("old", evaluate.Evaluator, 0), ("new", evaluate.Evaluator, HOLD)))
    times, post = {w[0]: [] for w in ways}, {}
    for r in range(a.rounds):
        for name, cls, hold in ways if r % 2 == 0 else ways[::-1]:
            evaluate.HOLD_BYTES = hold
            ev = cls(model, "cpu", 32, 0, a.precision, progress=False)  # a fresh net: nothing prepared
            t = time.perf_counter()
            post[name] = ev.run(src, ["dense"], scales)
            times[name].append(time.perf_counter() - t)
    for name, ts in times.items():
        print(f"{name:<9} {statistics.median(ts):7.2f} s  ({min(ts):.2f}-{max(ts):.2f})")
    first, second = (w[0] for w in ways)
    print(f"{first} / {second}: {statistics.median(times[first]) / statistics.median(times[second]):.2f}x")
    diff = max(float(np.abs(post[first].probs[("dense", q)] - post[second].probs[("dense", q)]).max())
               for q in scales)
    print(f"largest posterior difference: {diff:.1e}")


if __name__ == "__main__":
    main()
