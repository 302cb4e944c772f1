"""Training-step throughput (forward, backward, SGD step) beside the same run's GEMM rate.

VGG-16 (config D) at 224 and the small configs of the miniature study, fp32 and bf16 autocast (channels_last),
images/s, achieved GFLOP/s (a training step is ~3x the forward multiply-adds, x2 FLOPs each) and its ratio to the
GEMM rate measured in the same process. Warm-up, then the median of repeats.

    python benchmarks/train_step.py [--repeats 3] [--batch 16] [--small-only] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import verydeep as vd  # noqa: E402
from verydeep.models import multiply_adds  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_pipeline import cpu_name  # noqa: E402


def gemm_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def step_rate(name: str, crop: int, width: float, fc: int, batch: int, precision: str, repeats: int,
              device: str = "cpu") -> dict:
    torch.manual_seed(0)
    model = vd.vgg(name, crop_size=crop, width=width, fc_width=fc, init="glorot").to(device)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, crop, crop, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)
    ctx = torch.autocast(device, dtype=torch.bfloat16) if precision == "bf16" else torch.autocast(device,
                                                                                                 enabled=False)

    def step():
        with ctx:
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device != "cpu":
            torch.cuda.synchronize()

    step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    flops = 3 * 2 * multiply_adds(model.config, crop) * batch  # forward + ~2x backward
    return {"model": name, "crop": crop, "width": width, "batch": batch, "precision": precision,
            "images_per_s": batch / t, "gflops": flops / t / 1e9, "seconds_per_step": t,
            "spread": [batch / max(times), batch / min(times)]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--small-only", action="store_true")
    p.add_argument("--json")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gemm = {"fp32": gemm_gflops(torch.float32, device=device), "bf16": gemm_gflops(torch.bfloat16, device=device)}
    configs = [] if args.small_only else [("D", 224, 1.0, 4096, args.batch)]
    configs += [("A", 64, 0.25, 512, 64), ("D", 64, 0.25, 512, 64), ("E", 64, 0.25, 512, 64)]
    rows = []
    for name, crop, width, fc, batch in configs:
        for precision in ("fp32", "bf16"):
            r = step_rate(name, crop, width, fc, batch, precision, args.repeats, device)
            r["gemm_ratio"] = r["gflops"] / gemm[precision]
            rows.append(r)
    print(f"machine: {cpu_name() if device == 'cpu' else torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"same-run GEMM (2048^3): fp32 {gemm['fp32']:.1f} GFLOP/s, bf16 {gemm['bf16']:.1f} GFLOP/s")
    print(f"{'net':<5}{'crop':>5}{'width':>7}{'batch':>6} {'prec':<5}{'img/s':>9}{'range':>16}{'GFLOP/s':>9}"
          f"{'/GEMM':>7}")
    for r in rows:
        print(f"{r['model']:<5}{r['crop']:>5}{r['width']:>7}{r['batch']:>6} {r['precision']:<5}"
              f"{r['images_per_s']:>9.1f}{r['spread'][0]:>8.1f}-{r['spread'][1]:<7.1f}{r['gflops']:>9.1f}"
              f"{r['gemm_ratio']:>7.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"gemm": gemm, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
