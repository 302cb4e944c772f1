"""The miniature study's training throughput, end to end (loader, step, validation excluded), today's settings
beside the new ones in one run, interleaved, and each net's step against the same run's GEMM rate.

"today" is the study as it was at b221aa0: width x1/4, batch 32, bf16, NCHW, images read and decoded from disk by 2
worker processes. "new" is the new training path at the same geometry: batch 64 (StudyConfig's), the measured
precision, channels-last, the training images decoded into memory once (a fixed S: a crop is a slice, in-process).
"study" is what `verydeep reproduce` now trains: the new path at StudyConfig's width (x1/8).

    python benchmarks/study_training.py [--data runs/mini] [--nets A,D,E] [--repeats 3] [--load 0|1|2]

--load N runs N CPU-bound processes beside the measurement (a shared host or a CI runner). Prints one line per
(net, setting, repeat), then medians and the new/today ratio per net and for the study's mix of nets."""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path


SETTINGS = ("today", "new", "study")


def epoch_rate(data: str, net: str, setting: str, precision: str, seed: int) -> float:
    """Images per second of one training epoch (the trainer's own figure: loader and step, no validation)."""
    from verydeep.reproduce import StudyConfig
    from verydeep.train import Trainer, make_config
    from verydeep import distributed

    study = StudyConfig()
    common = {"data": data, "model": net, "width": 0.25, "fc_width": 512, "crop": 64, "init": "glorot",
              "lr": 0.005, "max_epochs": 1, "progress": False, "seed": seed, "force": True}
    if setting == "today":
        over = {"batch_size": 32, "precision": "bf16", "channels_last": False, "workers": 2, "cache": False,
                "dropout": 0.0}
    else:
        over = {"batch_size": study.batch_size, "precision": precision, "channels_last": True, "cache": True,
                "dropout": study.dropout}
        if setting == "study":
            over["width"] = study.width
    with tempfile.TemporaryDirectory() as tmp:
        cfg = make_config({**common, **over, "run_dir": str(Path(tmp) / "run")})
        trainer = Trainer(cfg, distributed.setup("cpu"))
        return trainer.train_epoch(0)["images_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="runs/mini")
    ap.add_argument("--nets", default="A,D,E")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--load", type=int, default=0)
    a = ap.parse_args()
    import logging

    import torch

    from verydeep.bench import cpu_load, gemm_gflops, train_step
    from verydeep.mini import MiniConfig, build
    from verydeep.provenance import device_name
    from verydeep.reproduce import StudyConfig, measure_precision

    logging.basicConfig(level=logging.ERROR)
    if not (Path(a.data) / "manifest.json").is_file():
        build(a.data, MiniConfig(), progress=False)
    with cpu_load(a.load):
        print(f"{device_name('cpu')}; {torch.get_num_threads()} threads; {a.load} CPU-bound process(es) beside")
        precision, timing = measure_precision()
        print(f"new precision (measured, net D's step): {precision} ({timing})")
        gemm = {"fp32": gemm_gflops(torch.float32), "bf16": gemm_gflops(torch.bfloat16)}
        print(f"same-run GEMM: fp32 {gemm['fp32']:.0f}, bf16 {gemm['bf16']:.0f} GFLOP/s")
        nets = a.nets.split(",")
        rates: dict = {}
        for r in range(a.repeats):
            for net in nets:
                for setting in SETTINGS:
                    v = epoch_rate(a.data, net, setting, precision, r)
                    rates.setdefault((net, setting), []).append(v)
                    print(f"repeat {r + 1}  {net}  {setting:<5}  {v:7.0f} img/s", flush=True)
        print("\nmedians (img/s, end to end)")
        med = {k: statistics.median(v) for k, v in rates.items()}
        for net in nets:
            t, n, s = (med[(net, x)] for x in SETTINGS)
            print(f"  {net}: today {t:6.0f}  new {n:6.0f} ({n / t:.2f}x)  study {s:6.0f} ({s / t:.2f}x)")
        # the study trains every configuration: the mix's throughput is the harmonic mean of the nets'
        hm = lambda xs: len(xs) / sum(1 / x for x in xs)  # noqa: E731
        mix = {x: hm([med[(n, x)] for n in nets]) for x in SETTINGS}
        print(f"  study mix ({'+'.join(nets)}): new/today {mix['new'] / mix['today']:.2f}x, "
              f"study/today {mix['study'] / mix['today']:.2f}x")
        print("\nstep against the same run's GEMM (batch 64, channels-last)")
        for width in (0.25, StudyConfig().width):
            for net in nets:
                row = train_step(net, 64, width, 512, 64, precision, 5, "cpu", gemm)
                print(f"  {net} x{width} {precision}: {row['images_per_s']:.0f} img/s, {row['gemm_ratio']:.2f} of "
                      f"the GEMM (beside: {row['beside_ratio']:.2f})")


if __name__ == "__main__":
    sys.exit(main())
