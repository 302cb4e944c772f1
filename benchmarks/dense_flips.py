"""Dense evaluation with each image's flip in the same call as the image, against a call of its own, in one
process, interleaved, medians.

apart:    the images of a size, then their flips (what evaluate did before); the net meets each size twice
together: the images and their flips as one batch (Evaluator.dense_posteriors while that fits in a batch); the net
          meets each size once

Most test images have a size of their own at a test scale (the miniature study's: 1,768 sizes in its first 2,000
test images), and the fast chain prepares its weights for every size it meets (fast.py), so the second call of a size
repeats that work. Also reported: the largest difference of a posterior between the two.

    python benchmarks/dense_flips.py --weights runs/quick/runs/D-s0/model.safetensors --data runs/quick/data \\
        [--images 200] [--scales 73,110,146] [--precision fp32] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from verydeep.bench import machine  # noqa: E402
from verydeep.data import Subset, open_source  # noqa: E402
from verydeep.evaluate import Evaluator  # noqa: E402
from verydeep.weights import load  # noqa: E402


class Apart(Evaluator):
    def dense_posteriors(self, images):
        self.forward_images += 2 * len(images)
        return self._dense(self.net, self._prep(images), together=False).cpu()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", required=True, help="a dataset folder (its test split when it has one)")
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
          f"{a.rounds} rounds")
    times, post = {"apart": [], "together": []}, {}
    for r in range(a.rounds):
        order = (("apart", Apart), ("together", Evaluator))
        for name, cls in order if r % 2 == 0 else order[::-1]:
            ev = cls(model, "cpu", 32, 0, a.precision, progress=False)  # a fresh net: nothing prepared
            t = time.perf_counter()
            post[name] = ev.run(src, ["dense"], scales)
            times[name].append(time.perf_counter() - t)
    for name, ts in times.items():
        print(f"{name:<9} {statistics.median(ts):7.2f} s  ({min(ts):.2f}-{max(ts):.2f})")
    print(f"apart / together: {statistics.median(times['apart']) / statistics.median(times['together']):.2f}x")
    diff = max(float(np.abs(post["apart"].probs[("dense", q)] - post["together"].probs[("dense", q)]).max())
               for q in scales)
    print(f"largest posterior difference: {diff:.1e}")


if __name__ == "__main__":
    main()
