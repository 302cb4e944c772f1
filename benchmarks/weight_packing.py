"""fp32 weight packing, the old way against the new, in one process, interleaved, medians.

old: each layer's weights packed once for no input size (but a layer whose kernel covers its whole input: fc6 on
     crops), as fast.py did before ea8957b
new: packed for each input size (the last two kept), and a score map's head (the unpadded layers whose kernel does
     not cover their input) run as a matrix product (fast.Gemm) the first time its size is met

Cases: VGG-16 (random weights) on crops at batch 1 and 8, and score maps at Q = 256, 384, 512 of a 4:3 image (the
first, second and third call of each size: a first call also times Winograd against direct convolution, `Pick`);
the miniature study's D (1/8 wide, 64 crop) on score maps of 40 sizes met once each, as dense evaluation meets them.

    python benchmarks/weight_packing.py [--repeats 3] [--no-vgg16]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import verydeep.fast as fast  # noqa: E402
from verydeep.bench import machine  # noqa: E402
from verydeep.models import vgg  # noqa: E402

NEW_PACK = fast.FastVGG._pack_weight
NEW_OPS = fast.FastVGG._ops_for


def old_pack(op, size):
    wt, _, p, _ = op
    if p == [0, 0] and tuple(size[2:]) == tuple(wt.shape[2:]):
        return torch.ops.mkldnn._reorder_convolution_weight(wt, p, [1, 1], [1, 1], 1, size)
    key = (tuple(wt.shape), wt.data_ptr())
    if key not in old_pack.cache:
        old_pack.cache[key] = torch.ops.mkldnn._reorder_convolution_weight(wt, p, [1, 1], [1, 1], 1, None)
    return old_pack.cache[key]


old_pack.cache = {}


def old_ops(self, shape):
    key = (shape[0], shape[2], shape[3])
    if key not in self._by_shape:
        self._by_shape[key] = self._packed(key)
        while len(self._by_shape) > 2:
            self._by_shape.popitem(last=False)
    self._by_shape.move_to_end(key)
    return self._by_shape[key]


def use(way: str) -> None:
    fast.FastVGG._pack_weight = staticmethod(old_pack if way == "old" else NEW_PACK)
    fast.FastVGG._ops_for = old_ops if way == "old" else NEW_OPS


def seconds(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-vgg16", dest="vgg16", action="store_false")
    a = ap.parse_args()
    print(f"{machine('cpu')['cpu']}, torch {torch.__version__}, {torch.get_num_threads()} threads; fp32")
    ways = ("old", "new")
    torch.manual_seed(0)
    with torch.inference_mode():
        if a.vgg16:
            m = vgg("D").eval()
            for b in (1, 8):
                x = torch.randn(b, 3, 224, 224)
                nets = {}
                for w in ways:
                    use(w)
                    nets[w] = fast.FastVGG(m, "fp32")
                    nets[w](x)
                t = {w: [] for w in ways}
                for _ in range(a.repeats):
                    for w in ways:
                        use(w)
                        t[w].append(min(seconds(lambda: nets[w](x)) for _ in range(2)))
                med = {w: b / statistics.median(v) for w, v in t.items()}
                print(f"VGG-16 crops, batch {b}: old {med['old']:.2f}, new {med['new']:.2f} img/s "
                      f"({med['new'] / med['old']:.2f}x)", flush=True)
            for q in (256, 384, 512):
                x = torch.randn(1, 3, q, q * 4 // 3)
                calls = {w: [] for w in ways}
                out = {}
                for w in ways:  # fresh nets: every size met for the first time
                    use(w)
                    net = fast.FastVGG(m, "fp32")
                    net(torch.randn(1, 3, 224, 224))
                    for _ in range(3):
                        calls[w].append(seconds(lambda: out.__setitem__(w, net.score_map(x))))
                diff = float((out["old"] - out["new"]).abs().max() / out["old"].abs().max())
                print(f"VGG-16 score map at Q = {q} ({x.shape[2]}x{x.shape[3]}), calls 1, 2, 3: " + "; ".join(
                    f"{w} " + ", ".join(f"{s:.2f}" for s in calls[w]) for w in ways) + f" s (max rel diff {diff:.1e})",
                      flush=True)
        d = vgg("D", crop_size=64, width=0.125, fc_width=512, num_classes=10).eval()
        sizes = [(73, 73 + k) for k in range(0, 40)]
        t = {w: [] for w in ways}
        for _ in range(a.repeats):
            for w in ways:
                use(w)
                net = fast.FastVGG(d, "fp32")
                net(torch.randn(64, 3, 64, 64))
                xs = [torch.randn(1, 3, *s) for s in sizes]
                t[w].append(seconds(lambda: [net.score_map(x) for x in xs]))
        med = {w: statistics.median(v) * 1e3 / len(sizes) for w, v in t.items()}
        print(f"study D (x1/8) score maps, {len(sizes)} sizes met once: old {med['old']:.2f}, new {med['new']:.2f} ms "
              f"a map ({med['old'] / med['new']:.2f}x)", flush=True)
    use("new")
    return 0


if __name__ == "__main__":
    sys.exit(main())
