"""VGG-16 inference, one setting against another in one process (interleaved rounds, medians): the figures behind
fast.Pick and share.py (BENCHMARKS.md, issue 20's fourth step).

  --section kernels   fp32: Winograd timed per layer ("auto", the default) against Winograd forced and all direct
  --section share     every precision with the thread share (share.py) on and off, beside --load CPU-bound processes
  --section pool      2x2 max-pooling, one thread: max_pool2d against the strided maxima the chains use (int8.MaxPool)
                      on the study's 1/8-width maps and VGG-16's, then whole chains of the study's nets both ways

    python benchmarks/inference_modes.py --section share --load 1
    python benchmarks/inference_modes.py --section pool
"""
import argparse
import statistics
import time


def rate(net, x, seconds: float) -> float:
    """Images per second over at least `seconds` of back-to-back calls (at least two)."""
    n, t0 = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t0 < seconds:
        net.score_map(x)
        n += 1
    return n * len(x) / (time.perf_counter() - t0)


def median_ms(fn, x, rounds: int = 15) -> float:
    for _ in range(3):
        fn(x)
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(x)
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def pool_section(rounds: int) -> None:
    """max_pool2d (which also writes int64 indices) against int8.MaxPool, alone and inside whole chains."""
    import torch
    import torch.nn.functional as F

    from verydeep import int8
    from verydeep.fast import FastVGG
    from verydeep.models import vgg
    from verydeep.utils import keep_freed_memory

    keep_freed_memory()  # page faults on fresh outputs would time the allocator, not the pooling
    torch.set_num_threads(1)
    strided = int8.MaxPool(2)
    print("one thread; ms per call, medians of 15 (interleaved over rounds)")
    for dtype in (torch.bfloat16, torch.float32):
        # the study's crops at 1/8 width (batch 256, channels 8-64) and VGG-16's first and fourth pools
        for n, c, h in ((256, 8, 64), (256, 16, 32), (256, 32, 16), (256, 64, 8), (1, 64, 224), (8, 64, 224),
                        (8, 512, 28)):
            x = torch.randn(n, c, h, h).to(dtype).contiguous(memory_format=torch.channels_last)
            a, b = [], []
            for _ in range(rounds):
                a.append(median_ms(lambda t: F.max_pool2d(t, 2), x))
                b.append(median_ms(strided, x))
            a, b = statistics.median(a), statistics.median(b)
            print(f"{str(dtype)[6:]:>8} {n:>3}x{c:>3}x{h:>3}: max_pool2d {a:7.3f}  strided {b:7.3f}  ({a / b:.2f}x)")
    plain = int8.MaxPool.plain
    for name in ("A", "E"):
        m = vgg(name, width=0.125, fc_width=512, num_classes=10, crop_size=64).eval()
        x = torch.randn(256, 3, 64, 64)
        nets = {"strided": FastVGG(m, "bf16")}
        int8.MaxPool.plain = staticmethod(lambda mod: False)  # the chain as it was: max_pool2d
        try:
            nets["max_pool2d"] = FastVGG(m, "bf16")
        finally:
            int8.MaxPool.plain = plain
        seen = {k: [] for k in nets}
        with torch.inference_mode():
            for r in range(rounds):
                for k in (nets if r % 2 == 0 else reversed(list(nets))):
                    seen[k].append(median_ms(nets[k], x, 7))
        t = {k: statistics.median(v) for k, v in seen.items()}
        print(f"net {name} (1/8 width, bf16, 256 crops of 64): max_pool2d {256e3 / t['max_pool2d']:.0f} img/s, "
              f"strided {256e3 / t['strided']:.0f} img/s ({t['max_pool2d'] / t['strided']:.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--section", choices=("kernels", "share", "pool"), default="share")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.5, help="per setting and round")
    ap.add_argument("--load", type=int, default=0)
    a = ap.parse_args()
    import torch

    from verydeep import share
    from verydeep.bench import cpu_load
    from verydeep.fast import FastVGG
    from verydeep.models import vgg
    from verydeep.provenance import device_name
    from verydeep.utils import cores

    torch.manual_seed(0)
    if a.section == "pool":
        return pool_section(a.rounds)
    m = vgg("D").eval()
    if a.section == "kernels":
        nets = {f"fp32 winograd={w}": (FastVGG(m, "fp32", winograd=w), None) for w in ("auto", True, False)}
    else:
        nets = {}
        for p in ("fp32", "bf16", "int8"):
            net = FastVGG(m, p)
            if p == "int8":
                net.calibrate(torch.randn(8, 3, 224, 224))  # speed only
            nets[f"{p} share off"], nets[f"{p} share on"] = (net, False), (net, True)
    print(f"{device_name('cpu')}; {cores()} cores, {torch.get_num_threads()} threads; torch {torch.__version__}; "
          f"{a.load} CPU-bound process(es) beside; medians of {a.rounds} rounds")
    with cpu_load(a.load), torch.inference_mode():
        time.sleep(1)
        for b in (int(v) for v in a.batches.split(",")):
            x = torch.randn(b, 3, 224, 224)
            seen: dict = {k: [] for k in nets}
            for r in range(a.rounds):
                order = list(nets) if r % 2 == 0 else list(reversed(nets))  # alternate which goes first
                for k in order:
                    net, on = nets[k]
                    if on is not None:
                        share.SHARE.enabled = on
                    seen[k].append(rate(net, x, a.seconds))
            share.SHARE.enabled = True
            print(f"batch {b}: " + "  ".join(f"{k} {statistics.median(v):.2f}" for k, v in seen.items()) + " img/s",
                  flush=True)


if __name__ == "__main__":
    main()
