"""Every 3x3 convolution shape of VGG-16 at 224: oneDNN's direct convolution (ReLU fused, weights pre-packed) against
verydeep's Winograd (src/verydeep/fast.py), interleaved, median of the rounds, and the error of each against a
float64 convolution (the norm of the difference over the norm of the result). fp32 runs F(4x4, 3x3); bf16 runs
F(2x2, 3x3), the tile fast.py uses, and F(4x4) beside it (the tile it does not use, and why). The evidence behind
fast.WINOGRAD_MIN_CHANNELS and fast.WINOGRAD_TILE:

    python benchmarks/winograd_layers.py [--precision fp32|bf16] [--batch 8] [--rounds 5]
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from verydeep.fast import WINOGRAD_TILE, Conv, Winograd
from verydeep.utils import keep_freed_memory

# (in, out, map size) of VGG-16's 3x3 convolutions at 224 (conv1_1's 3 inputs left out: never Winograd)
LAYERS = [(64, 64, 224), (64, 128, 112), (128, 128, 112), (128, 256, 56), (256, 256, 56), (256, 512, 28),
          (512, 512, 28), (512, 512, 14)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    keep_freed_memory()  # as every verydeep command runs
    dtype = torch.float32 if args.precision == "fp32" else torch.bfloat16
    tiles = [WINOGRAD_TILE[dtype]] + ([4] if dtype == torch.bfloat16 else [])
    names = ["direct"] + [f"F({m}x{m})" for m in tiles]
    print(f"{args.precision}, batch {args.batch}: ms (median of {args.rounds} rounds), speed-up over direct, error")
    print(f"{'layer':<16}" + "".join(f"{n + ' ms':>13}{'x':>7}{'error':>9}" for n in names))
    torch.manual_seed(0)
    with torch.inference_mode():
        for ci, co, s in LAYERS:
            x = torch.randn(args.batch, ci, s, s).relu().to(dtype).contiguous(memory_format=torch.channels_last)
            w, b = torch.randn(co, ci, 3, 3) * (2 / (9 * ci)) ** 0.5, torch.randn(co) * 0.1
            wp = torch.ops.mkldnn._reorder_convolution_weight(
                w.to(dtype).contiguous(memory_format=torch.channels_last), [1, 1], [1, 1], [1, 1], 1,
                None if dtype == torch.float32 else list(x.shape))  # bf16 kernels want weights packed for the size
            runs = {"direct": lambda: torch.ops.mkldnn._convolution_pointwise(x, wp, b.to(dtype), [1, 1], [1, 1],
                                                                              [1, 1], 1, "relu", [], "")}
            for name, m in zip(names[1:], tiles):
                runs[name] = (lambda layer: lambda: layer(x))(Winograd(Conv(w, b, 1, True), dtype=dtype, m=m))
            ref = F.conv2d(x.double(), w.double(), b.double(), padding=1).relu()
            err = {k: ((f().double() - ref).norm() / ref.norm()).item() for k, f in runs.items()}
            times = {k: [] for k in runs}
            for _ in range(args.rounds):
                for k, f in runs.items():
                    t0 = time.perf_counter()
                    f()
                    times[k].append(time.perf_counter() - t0)
            ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
            print(f"{ci:>4}->{co:<4} @{s:<5}" + "".join(
                f"{ms[k]:13.2f}{ms['direct'] / ms[k]:6.2f}x{err[k]:9.1e}" for k in names), flush=True)


if __name__ == "__main__":
    main()
