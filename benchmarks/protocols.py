"""Cost of the paper's test protocols (PAPER.md section 3) for VGG-16 at the paper's sizes.

Seconds per image for center, dense (whole image + flip) and multi-crop (5x5 grid x 2 flips) at one scale
(Q = 384) and three scales (256, 384, 512), on a 500x375 image (ImageNet's typical size), beside the arithmetic
(multiply-adds) that each needs; and the multi-crop / dense cost ratio.

    python benchmarks/protocols.py [--precision bf16] [--repeats 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import verydeep as vd  # noqa: E402
from verydeep.evaluate import predict_image  # noqa: E402
from verydeep.models import multiply_adds  # noqa: E402
from verydeep.transforms import scaled_size  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_pipeline import cpu_name  # noqa: E402


def macs(cfg, protocol: str, scales: list[int], w: int = 500, h: int = 375) -> int:
    crop = multiply_adds(cfg, 224)
    if protocol == "center":
        return crop * len(scales)
    if protocol == "multicrop":
        return 50 * crop * len(scales)
    return sum(2 * multiply_adds(cfg, *scaled_size(w, h, q)[::-1]) for q in scales)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args()
    torch.manual_seed(0)
    model = vd.vgg("D", init="glorot").eval()
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (375, 500, 3), dtype=np.uint8))
    predict_image(model, img, "center", [256], args.precision)  # warm-up
    rows = []
    for scales in ([384], [256, 384, 512]):
        for protocol in ("center", "dense", "multicrop"):
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                predict_image(model, img, protocol, scales, args.precision)
                times.append(time.perf_counter() - t0)
            rows.append({"protocol": protocol, "scales": scales, "seconds": statistics.median(times),
                         "range": [min(times), max(times)], "gmacs": macs(model.config, protocol, scales) / 1e9})
    print(f"machine: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.precision}")
    print(f"VGG-16 (D), one 500x375 image, median of {args.repeats}")
    print(f"{'protocol':<10} {'Q':<12} {'s/image':>9} {'range':>15} {'G mult-adds':>12}")
    for r in rows:
        print(f"{r['protocol']:<10} {','.join(map(str, r['scales'])):<12} {r['seconds']:>9.2f} "
              f"{r['range'][0]:>7.2f}-{r['range'][1]:<7.2f} {r['gmacs']:>12.1f}")
    for n in (1, 3):
        d = next(r for r in rows if r["protocol"] == "dense" and len(r["scales"]) == n)
        m = next(r for r in rows if r["protocol"] == "multicrop" and len(r["scales"]) == n)
        print(f"{n} scale(s): multicrop / dense = {m['seconds'] / d['seconds']:.2f}x measured, "
              f"{m['gmacs'] / d['gmacs']:.2f}x in multiply-adds")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
