"""VGG-16 inference, one setting against another in one process (interleaved rounds, medians): the figures behind
fast.Pick and share.py (BENCHMARKS.md, issue 20's fourth step).

  --section kernels   fp32: Winograd timed per layer ("auto", the default) against Winograd forced and all direct
  --section share     every precision with the thread share (share.py) on and off, beside --load CPU-bound processes

    python benchmarks/inference_modes.py --section share --load 1
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--section", choices=("kernels", "share"), default="share")
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
