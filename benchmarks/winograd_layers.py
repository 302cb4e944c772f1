"""Every 3x3 convolution shape of VGG-16 at 224, fp32: oneDNN's direct convolution (ReLU fused, weights pre-packed)
against verydeep's Winograd F(4x4, 3x3) (src/verydeep/fast.py), interleaved, median of the rounds, and the error of
each against a float64 convolution. The evidence behind fast.WINOGRAD_MIN_CHANNELS:

    python benchmarks/winograd_layers.py [--batch 8] [--rounds 5]
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from verydeep.fast import Conv, Winograd
from verydeep.utils import keep_freed_memory

# (in, out, map size) of VGG-16's 3x3 convolutions at 224 (conv1_1's 3 inputs left out: never Winograd)
LAYERS = [(64, 64, 224), (64, 128, 112), (128, 128, 112), (128, 256, 56), (256, 256, 56), (256, 512, 28),
          (512, 512, 28), (512, 512, 14)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    keep_freed_memory()  # as every verydeep command runs
    print(f"{'layer':<16} {'direct ms':>10} {'Winograd ms':>12} {'speed-up':>9} {'err direct':>11} "
          f"{'err Winograd':>13}")
    torch.manual_seed(0)
    with torch.inference_mode():
        for ci, co, s in LAYERS:
            x = torch.randn(args.batch, ci, s, s).contiguous(memory_format=torch.channels_last)
            w, b = torch.randn(co, ci, 3, 3) * (2 / (9 * ci)) ** 0.5, torch.randn(co) * 0.1
            wp = torch.ops.mkldnn._reorder_convolution_weight(w.contiguous(memory_format=torch.channels_last),
                                                              [1, 1], [1, 1], [1, 1], 1, None)
            runs = {"direct": lambda: torch.ops.mkldnn._convolution_pointwise(x, wp, b, [1, 1], [1, 1], [1, 1], 1,
                                                                              "relu", [], ""),
                    "winograd": (lambda layer: lambda: layer(x))(Winograd(Conv(w, b, 1, True)))}
            ref = F.conv2d(x.double(), w.double(), b.double(), padding=1).relu()
            err = {k: ((f().double() - ref).abs().max() / ref.abs().max()).item() for k, f in runs.items()}
            times = {k: [] for k in runs}
            for _ in range(args.rounds):
                for k, f in runs.items():
                    t0 = time.perf_counter()
                    f()
                    times[k].append(time.perf_counter() - t0)
            d, wg = (1e3 * statistics.median(times[k]) for k in ("direct", "winograd"))
            print(f"{ci:>4}->{co:<4} @{s:<5} {d:10.1f} {wg:12.1f} {d / wg:8.2f}x {err['direct']:11.1e} "
                  f"{err['winograd']:13.1e}", flush=True)


if __name__ == "__main__":
    main()
