"""int8: an input zero point handed to oneDNN against folded away (int8.QConv), one layer at a time, interleaved,
medians.

oneDNN: the uint8 input's zero point given to the kernel, which compensates for it on every call (and for the
        zero padding, whose codes are the zero point, not 0)
folded: what int8.QConv does when its input has a zero point: the codes padded with the zero point's code, the
        kernel told zero point 0 and no padding, the codes' constant offset taken out of the bias

Both compute the same integer products; the script reports how many output codes differ (by
one, where float rounding of the folded bias tips a code at a rounding boundary). Layers: VGG-16's
conv1_1 (3 -> 64 on 224 x 224, batch 1 and 8: the only layer of a VGG whose input has a zero point, the image minus
its mean), the miniature study's conv1_1 (3 -> 8, 64 x 64 crops, batch 128: a multi-crop call), and a 3x3 512 -> 512
layer on a 14 x 14 map as if its input had a zero point (the compensation's cost with the weights' size).

    python benchmarks/int8_zero_point.py [--rounds 7]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from verydeep.bench import machine  # noqa: E402
from verydeep.int8 import QConv, QParams  # noqa: E402

CASES = [("VGG-16 conv1_1, batch 1", 3, 64, 224, 1), ("VGG-16 conv1_1, batch 8", 3, 64, 224, 8),
         ("study conv1_1, 128 crops", 3, 8, 64, 128), ("3x3 512 -> 512 on 14 x 14, batch 1", 512, 512, 14, 1)]


def with_zero_point(conv: QConv, qin: QParams, qout: QParams, bias: torch.Tensor):
    """The convolution with oneDNN handling the input's zero point (QConv before the fold)."""
    packed = {}

    def run(q):
        if q.shape not in packed:
            packed[q.shape] = torch.ops.onednn.qconv_prepack(conv.w, conv.w_scale, qin.scale, qin.zero_point, [1, 1],
                                                             [1, 1], [1, 1], 1, list(q.shape))
        return torch.ops.onednn.qconv2d_pointwise(
            q, qin.scale, qin.zero_point, packed[q.shape], conv.w_scale, conv.w_zp, bias, [1, 1], [1, 1], [1, 1], 1,
            qout.scale, qout.zero_point, None, "relu", [], "")
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    info = machine("cpu")
    print(f"{info['cpu']}; {info['threads']} threads; torch {info['torch']}; medians of {args.rounds} rounds")
    torch.manual_seed(0)
    for name, cin, cout, size, batch in CASES:
        layer = SimpleNamespace(weight=torch.randn(cout, cin, 3, 3) * (2 / (9 * cin)) ** 0.5, bias=torch.randn(cout),
                                padding=1, relu=True)
        qin, qout = QParams.of_range(-123.7, 151.1), QParams.of_range(0.0, 60.0)  # an image minus its mean
        folded = QConv(layer, qin, qout)
        ways = {"oneDNN": with_zero_point(folded, qin, qout, layer.bias.float()), "folded": folded}
        x = torch.randint(0, 256, (batch, cin, size, size), dtype=torch.uint8)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            outs = {k: f(x) for k, f in ways.items()}
            d = (outs["oneDNN"].int() - outs["folded"].int()).abs()
            differ = f"{int(d.max())} ({100 * float(d.ne(0).float().mean()):.4f}% of codes)"
            times = {k: [] for k in ways}
            for _ in range(args.rounds):
                for k, f in ways.items():
                    t = time.perf_counter()
                    for _ in range(3):
                        f(x)
                    times[k].append((time.perf_counter() - t) / 3 * 1e3)
        med = {k: statistics.median(v) for k, v in times.items()}
        spread = {k: f"{min(v):.2f}-{max(v):.2f}" for k, v in times.items()}
        print(f"{name:36s} oneDNN {med['oneDNN']:8.3f} ms ({spread['oneDNN']})  folded {med['folded']:8.3f} ms "
              f"({spread['folded']})  {med['oneDNN'] / med['folded']:.2f}x  largest code difference {differ}")


if __name__ == "__main__":
    main()
