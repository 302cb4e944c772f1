"""A training task's start: the fixed-S image cache decoded from the JPEGs against read back from its file beside
the data (data/cache.py), in the same run, interleaved, medians.

decode: every training image decoded and rescaled to S in memory (what each training task of the study paid before)
write:  the same, then the file written (the first task at an S on a data folder)
read:   the file's header checked against the images' paths, sizes and times, then memory-mapped (every later task)

    python benchmarks/image_cache.py [--data runs/quick/data] [--s 73] [--repeats 3]

Without the folder, builds the demo's mini-ILSVRC there first (verydeep.mini, 20,000 training images)."""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="runs/quick/data")
    ap.add_argument("--s", type=int, default=73)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    import torch

    from verydeep.bench import machine
    from verydeep.data import cache, open_source
    from verydeep.data.loader import ImageCache
    from verydeep.mini import MiniConfig, build
    from verydeep.transforms import TrainTransform

    if not (Path(a.data) / "manifest.json").is_file():
        build(a.data, MiniConfig(train_per_class=2000, val_per_class=100), progress=True)
    src = open_source(a.data, split="train")
    tf = TrainTransform(a.s, a.s, crop=64)
    path = cache.identify(src, a.s, a.s)[0]
    print(f"{machine('cpu')['cpu']}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads; {len(src)} images of {src.root} at S = {a.s} -> {path}")
    times: dict = {"decode": [], "write": [], "read": []}
    for r in range(a.repeats):
        t = time.perf_counter()
        ImageCache(src, tf, disk=False)
        times["decode"].append(time.perf_counter() - t)
        shutil.rmtree(path.parent, ignore_errors=True)
        t = time.perf_counter()
        c = ImageCache(src, tf)
        times["write"].append(time.perf_counter() - t)
        assert not c.from_disk and path.is_file()
        t = time.perf_counter()
        c = ImageCache(src, tf)
        times["read"].append(time.perf_counter() - t)
        assert c.from_disk
        print(f"repeat {r + 1}: " + "  ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"medians: decode {med['decode']:.2f} s ({med['decode'] / len(src) * 1e3:.2f} ms an image), write "
          f"{med['write']:.2f} s, read {med['read']:.2f} s ({med['decode'] / med['read']:.0f}x faster than decoding); "
          f"file {path.stat().st_size / 2**20:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
