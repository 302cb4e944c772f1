"""Training-transform throughput per core: verydeep's pipeline against a naive one, in the same run.

ImageNet-like JPEGs (500x375 and 375x500, quality 90, generated), S drawn from [256, 512], 224 crops, flips.
naive:    Pillow full decode -> resize the whole image to S (bicubic) -> random crop -> flip
verydeep: simplejpeg decode (DCT downscale when S <= side/2) -> resize only the crop's source box -> flip
Also verydeep with Pillow decoding (no simplejpeg), and the DataLoader with worker processes.

    python benchmarks/data_pipeline.py [--images 200] [--repeats 5] [--json out.json]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import verydeep.transforms as T  # noqa: E402
from verydeep.bench import machine  # noqa: E402
from verydeep.data import ImageFolder, LoaderConfig, TrainLoader  # noqa: E402


def make_jpegs(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = (500, 375) if i % 2 == 0 else (375, 500)
        base = Image.fromarray(rng.integers(0, 255, (h // 16 + 2, w // 16 + 2, 3), dtype=np.uint8)).resize(
            (w, h), Image.BICUBIC)
        arr = np.asarray(base, np.int16) + rng.integers(-16, 16, (h, w, 3))
        buf = io.BytesIO()
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def naive(data: bytes, rng: np.random.Generator) -> np.ndarray:
    s = int(rng.integers(256, 513))
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    img = img.resize(T.scaled_size(w, h, s), Image.BICUBIC)
    x, y = T.crop_position(*img.size, 224, rng)
    img = img.crop((x, y, x + 224, y + 224))
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(img)


def per_core(fn, files, repeats) -> list[float]:
    rates = []
    for r in range(repeats):
        rng = np.random.default_rng(r)
        t0 = time.perf_counter()
        for f in files:
            fn(f, rng)
        rates.append(len(files) / (time.perf_counter() - t0))
    return rates


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(1)
    files = make_jpegs(args.images)
    transform = T.TrainTransform(256, 512, crop=224)
    fast = lambda f, rng: transform(f, rng)  # noqa: E731

    def pillow_only(f, rng):
        saved, T.simplejpeg = T.simplejpeg, None
        try:
            return transform(f, rng)
        finally:
            T.simplejpeg = saved

    results = {}
    for name, fn in [("naive", naive), ("verydeep", fast), ("verydeep (Pillow decode)", pillow_only)]:
        per_core(fn, files[:20], 1)  # warm-up
        results[name] = per_core(fn, files, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        for i, f in enumerate(files):
            d = Path(tmp) / f"c{i % 4}"
            d.mkdir(exist_ok=True)
            (d / f"{i}.jpg").write_bytes(f)
        loader = TrainLoader(ImageFolder(tmp), transform,
                             LoaderConfig(batch_size=32, workers=args.workers, drop_last=False))
        list(loader.epoch(0))  # start the persistent workers
        loader_rates = []
        for e in range(1, 1 + args.repeats):
            t0 = time.perf_counter()
            n = sum(len(b.labels) for b in loader.epoch(e))
            loader_rates.append(n / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"machine: {machine('cpu')['cpu']}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, torch {torch.__version__}")
    print(f"{args.images} JPEGs 500x375/375x500 q90, S in [256, 512], crop 224, {args.repeats} repeats (median, "
          f"min-max)")
    print(f"{'pipeline':<28} {'img/s per core':>15} {'range':>17} {'vs naive':>9}")
    for k, v in results.items():
        print(f"{k:<28} {med[k]:>15.1f} {min(v):>8.1f}-{max(v):<8.1f} {med[k] / med['naive']:>8.2f}x")
    lm = statistics.median(loader_rates)
    print(f"{'DataLoader, ' + str(args.workers) + ' workers':<28} {lm:>15.1f} {min(loader_rates):>8.1f}-"
          f"{max(loader_rates):<8.1f}   (total img/s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"per_core": results, "median": med, "loader": loader_rates,
                                               "workers": args.workers}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
