"""`verydeep bench`: verydeep measured against the machine's own limit and against the peers, in one process and
one run (issue: performance). Every figure is the median over repeats after a warm-up, with its min-max; the
achieved GFLOP/s counts 2 FLOPs per multiply-add (VGG-16 at 224: 15.47 G multiply-adds an image) and is compared
with the same run's GEMM rate; peak memory is the resident-set (CPU) or allocator (CUDA) high-water mark over the
measurement, above what was held before it.

Sections: gemm, inference (verydeep: eager fp32 = plain PyTorch, and the fast chain in fp32 / bf16 / int8), peers
(ONNX Runtime on verydeep's exported model; Keras 3's VGG16 with the torch backend), train (forward, backward, SGD
step), protocols (dense vs multi-crop at 3 scales), parity (agreement of each precision with fp32 on real images,
when --weights and --data are given).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import fast, paper
from .config import repeated
from .errors import ConfigError
from .fast import FastVGG
from .models import multiply_adds, vgg
from .options import RunOptions
from .precision import BF16_SKIPPED, Precision, cpu_flags, native_bf16
from .train import forward_backward, optimizer, update
from .utils import keep_freed_memory, release_freed_memory

SECTIONS = ("gemm", "inference", "peers", "train", "protocols", "parity")


@dataclass
class BenchConfig(RunOptions):
    only: list[str] | None = None  # sections: gemm, inference, peers, train, protocols, parity (default: all but
    # parity; with --weights and --data, all)
    batches: list[int] = field(default_factory=lambda: [1, 8, 32])  # inference batch sizes
    repeats: int = 5               # timed repeats after a warm-up (the median is reported)
    train_batch: int = 32          # VGG-16 training-step batch (the paper's is 256; memory permitting)
    weights: list[str] = repeated()  # parity: trained verydeep weights (repeat for several nets)
    data: str | None = None        # parity: real images (a dataset folder; its test split when it has one)
    parity_images: int = 500       # parity: images compared
    parity_protocols: list[str] = field(default_factory=lambda: ["center", "dense"])  # parity: at the net's Q
    # (multicrop: 50 crops an image; int8 rechecks their mean)
    compile: bool = True           # also time the torch.compile'd chain (it compiles once per input size)
    width: float = 1.0             # VGG-16's convolution and FC widths times this (1: the paper's net; x1/8 runs the
    # whole bench in seconds, a check of the bench itself; Keras' VGG16 is full-width only)
    load: int = 0                  # CPU-bound processes started beside the measurement (a shared host, a CI runner)
    json: str | None = None        # write every figure to this JSON file

    @property
    def sections(self) -> list[str]:
        if self.only:
            return list(self.only)
        return [s for s in SECTIONS if s != "parity" or (self.weights and self.data)]

    def __post_init__(self):
        unknown = set(self.only or []) - set(SECTIONS)
        if unknown:
            raise ConfigError(f"--only {','.join(sorted(unknown))}: sections are {', '.join(SECTIONS)}")
        if self.repeats < 1 or any(b < 1 for b in self.batches) or self.train_batch < 1:
            raise ConfigError("--repeats, --batches and --train-batch must be at least 1")
        if self.load < 0:
            raise ConfigError("--load must be 0 or more")
        if not 0 < self.width <= 1:
            raise ConfigError(f"--width {self.width}: choose a multiplier in (0, 1]")
        from .evaluate import single_protocols

        if not self.parity_protocols or set(self.parity_protocols) - set(single_protocols()):
            raise ConfigError(f"--parity-protocols {','.join(self.parity_protocols)}: choose among "
                              f"{', '.join(single_protocols())}")


def _hog(stop) -> None:
    # element-wise NumPy only: one thread, one core, whatever BLAS threads the environment allows (a matrix product
    # here ran OpenBLAS on both cores, so one "load" process was two). 32k doubles stay in L2: compute, not memory.
    a = np.random.rand(32768)
    while not stop.is_set():
        for _ in range(1000):
            a = np.sqrt(a * a + 0.5)


@contextmanager
def cpu_load(n: int):
    """`n` CPU-bound processes (NumPy matrix products) running until the block ends: the machine as a shared host or
    a CI runner leaves it."""
    import multiprocessing as mp

    stop = mp.get_context("spawn").Event()
    procs = [mp.get_context("spawn").Process(target=_hog, args=(stop,), daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        yield
    finally:
        stop.set()
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.terminate()


def machine(device: str) -> dict:
    name = platform.processor() or platform.machine()
    try:
        name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": name, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "amx": "amx_bf16" in cpu_flags(), "device": device,
            "malloc": "keeps freed memory" if keep_freed_memory() else "system default"}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


class PeakMemory:
    """High-water mark of memory over a block, in MiB above the level at its start: the allocator's on CUDA,
    the process' resident set on the CPU (sampled every 2 ms in a thread; /proc/self/statm)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.peak_mib = 0.0

    @staticmethod
    def _rss() -> int:
        try:
            return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            return 0

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            release_freed_memory()  # hand freed memory back first, or a reused heap would hide this block's needs
            self.base = self.high = self._rss()
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while not self.stop.wait(0.002):
            self.high = max(self.high, self._rss())

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak_mib = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.stop.set()
            self.thread.join()
            self.peak_mib = (max(self.high, self._rss()) - self.base) / 2**20


def _sync(device: str):
    """What waits for the device's queued work before a clock is read (nothing on a CPU)."""
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def timed(fn, repeats: int, device: str, warmup: int = 1, between=None) -> dict:
    """Median seconds of fn() over repeats after warm-up, min-max, every time, and the peak memory of the whole;
    `between()`, if given, runs untimed before each timed call."""
    sync = _sync(device)
    with PeakMemory(device) as mem:
        for _ in range(warmup):
            fn()
        sync()
        times = []
        for _ in range(repeats):
            if between:
                between()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times), "min": min(times), "max": max(times), "times": times,
            "peak_mib": mem.peak_mib}


def gemm_operands(dtype: torch.dtype, device: str = "cpu") -> tuple[torch.Tensor, ...]:
    n = 2048 if device == "cpu" else 8192
    a = torch.randn(n, n, device=device).to(dtype)
    return a, torch.randn(n, n, device=device).to(dtype), torch.empty(n, n, device=device, dtype=dtype)


def gemm_best(ops: tuple[torch.Tensor, ...], repeats: int, device: str) -> float:
    """GFLOP/s of the fastest of `repeats` products a @ b (into a kept output: no allocation while it is timed)."""
    a, b, c = ops
    sync = _sync(device)
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * a.shape[0] ** 3 / best / 1e9


def gemm_gflops(dtype: torch.dtype, device: str = "cpu", repeats: int = 10) -> float:
    """The machine's limit: the best of repeated square matrix products (2048 on a CPU, where it ran fastest of
    2048/4096 on the development machine; 8192 on a GPU), after 3 warm-up products. The best, not the median, so
    that a ratio to it is a conservative figure on a noisy machine."""
    ops = gemm_operands(dtype, device)
    gemm_best(ops, 3, device)
    return gemm_best(ops, repeats, device)


def _row(kind: str, mode: str, batch: int, t: dict, gemm: float | None, macs: int, passes: int = 1) -> dict:
    rate = batch / t["seconds"]
    gflops = passes * 2 * macs * rate / 1e9
    return {"section": kind, "mode": mode, "batch": batch, "images_per_s": rate,
            "range": [batch / t["max"], batch / t["min"]], "gflops": gflops,
            "gemm_ratio": gflops / gemm if gemm else None, "peak_mib": t["peak_mib"]}


@dataclass
class Runner:
    """One way of running VGG-16 inference: a callable on a batch size (inputs made once per size), the GEMM rate
    it is compared with, and whether it is a peer."""
    mode: str
    run: object
    limit: str = "fp32"
    section: str = "inference"


def verydeep_runners(cfg: BenchConfig, model) -> list[Runner]:
    dev = cfg.device
    out = []
    bf16 = native_bf16(torch.device(dev))  # emulated bf16 is not a mode anyone would pick: not timed
    modes = ["eager-fp32", "fp32"] + (["bf16"] + (["bf16-compiled"] if cfg.compile else []) if bf16 else [])
    # the fast chain with its batch in two streams (fast.STREAMS, off by default): what streams gain or lose here
    modes += ["fp32-streams"] + (["bf16-streams"] if bf16 else []) + ["int8"] if dev == "cpu" else []
    for mode in modes:
        if mode == "eager-fp32":   # what a plain PyTorch VGG does
            net = model.to(dev)
        else:
            net = FastVGG(model, mode.split("-")[0], dev, compile=mode.endswith("compiled"))
            if mode == "int8":     # speed only: calibrated on noise (parity measures accuracy on real images)
                net.calibrate(torch.randn(8, 3, 224, 224, device=dev))
        inputs: dict[int, torch.Tensor] = {}

        def run(batch, net=net, inputs=inputs, streams=2 if mode.endswith("-streams") else fast.STREAMS):
            x = inputs.setdefault(batch, torch.randn(batch, 3, 224, 224, device=dev))
            saved, fast.STREAMS = fast.STREAMS, streams
            try:
                with torch.inference_mode():
                    return net(x)
            finally:
                fast.STREAMS = saved
        # int8 has no GEMM rate of its own here: it is set against bf16's, the fastest measured (fp32's where bf16
        # is not native).
        out.append(Runner(f"verydeep {mode}", run, "fp32" if "fp32" in mode or not bf16 else "bf16"))
    return out


def onnxruntime_runner(cfg: BenchConfig, model, tmp: Path) -> list[Runner]:
    try:
        import onnxruntime as ort
    except ImportError:
        print("peers: onnxruntime not installed, skipped")
        return []
    from .export import export_onnx

    path = tmp / "vgg16.onnx"
    export_onnx(model.cpu(), path)
    so = ort.SessionOptions()
    if cfg.device == "cpu":
        so.intra_op_num_threads = torch.get_num_threads()
    providers = (["CUDAExecutionProvider"] if cfg.device.startswith("cuda") and "CUDAExecutionProvider" in
                 ort.get_available_providers() else []) + ["CPUExecutionProvider"]
    sess = ort.InferenceSession(str(path), so, providers=providers)
    name = sess.get_inputs()[0].name
    inputs: dict[int, np.ndarray] = {}

    def run(batch):
        x = inputs.setdefault(batch, np.random.default_rng(0).standard_normal((batch, 3, 224, 224),
                                                                               dtype=np.float32))
        return sess.run(None, {name: x})
    return [Runner(f"onnxruntime {ort.__version__} fp32 ({providers[0].replace('ExecutionProvider', '')})", run,
                   section="peers")]


def openvino_runners(cfg: BenchConfig, model, tmp: Path) -> list[Runner]:
    """OpenVINO, the peer a CPU user would pick: verydeep's exported ONNX graph, compiled per batch size (static
    shapes, as OpenVINO runs best) in fp32 and, where the CPU has native bf16, bf16; int8 through NNCF's
    post-training quantisation when nncf is installed (calibrated on noise: speed only, as verydeep's int8 row)."""
    if cfg.device != "cpu":
        return []
    try:
        import openvino as ov
    except ImportError:
        print("peers: openvino not installed, skipped (pip install openvino nncf)")
        return []
    from .export import export_onnx

    path = tmp / "vgg16.onnx"
    if not path.is_file():
        export_onnx(model.cpu(), path)
    core = ov.Core()
    base = core.read_model(str(path))
    bf16 = native_bf16(torch.device("cpu"))
    variants = [("fp32", "f32", base)] + ([("bf16", "bf16", base)] if bf16 else [])
    try:
        import nncf

        calib = [np.random.default_rng(i).standard_normal((1, 3, 224, 224), dtype=np.float32) for i in range(8)]
        variants.append(("int8", "f32", nncf.quantize(base, nncf.Dataset(calib), subset_size=len(calib))))
    except ImportError:
        print("peers: nncf not installed, OpenVINO int8 skipped (pip install nncf)")
    out = []
    for name, hint, graph in variants:
        compiled: dict[int, object] = {}
        inputs: dict[int, np.ndarray] = {}

        def run(batch, graph=graph, hint=hint, compiled=compiled, inputs=inputs):
            if batch not in compiled:
                g = graph.clone()
                g.reshape({g.inputs[0].any_name: [batch, 3, 224, 224]})
                compiled[batch] = core.compile_model(g, "CPU", {
                    "INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY",
                    "INFERENCE_NUM_THREADS": torch.get_num_threads()}).create_infer_request()
            x = inputs.setdefault(batch, np.random.default_rng(0).standard_normal((batch, 3, 224, 224),
                                                                                   dtype=np.float32))
            return compiled[batch].infer({0: x})
        out.append(Runner(f"openvino {ov.__version__.split('-')[0]} {name}", run,
                          "bf16" if name != "fp32" and bf16 else "fp32", section="peers"))  # as verydeep's int8
    return out


def keras_runner(cfg: BenchConfig) -> list[Runner]:
    if cfg.width != 1:
        print(f"peers: keras' VGG16 is full-width only, skipped at --width {cfg.width:g}")
        return []
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError:
        print("peers: keras not installed, skipped")
        return []
    if keras.backend.backend() != "torch":
        print(f"peers: keras runs the {keras.backend.backend()} backend here, skipped (KERAS_BACKEND=torch)")
        return []
    km = keras.applications.VGG16(weights=None)
    inputs: dict[int, torch.Tensor] = {}

    def run(batch):
        x = inputs.setdefault(batch, torch.randn(batch, 224, 224, 3, device=cfg.device))
        with torch.inference_mode():
            return km(x, training=False)
    return [Runner(f"keras {keras.__version__} VGG16 fp32", run, section="peers")]


def inference(cfg: BenchConfig, runners: list[Runner], gemm: dict, macs: int) -> list[dict]:
    """Every runner at every batch size, in interleaved rounds (one call of each per round) so that a slow spell
    of a shared machine hits them all alike; the median over rounds. The first call of each (compilation,
    first-touch) is timed apart; peak memory is taken over the second."""
    dev = cfg.device
    sync = _sync(dev)
    rows = []
    for batch in cfg.batches:
        first, peak, times = {}, {}, {r.mode: [] for r in runners}
        for r in runners:
            t0 = time.perf_counter()
            r.run(batch)
            sync()
            first[r.mode] = time.perf_counter() - t0
            with PeakMemory(dev) as mem:
                r.run(batch)
            peak[r.mode] = mem.peak_mib
        for _ in range(cfg.repeats):
            for r in runners:
                t0 = time.perf_counter()
                r.run(batch)
                sync()
                times[r.mode].append(time.perf_counter() - t0)
        for r in runners:
            t = {"seconds": statistics.median(times[r.mode]), "min": min(times[r.mode]),
                 "max": max(times[r.mode]), "peak_mib": peak[r.mode]}
            rows.append(_row(r.section, r.mode, batch, t, gemm[r.limit], macs))
            rows[-1]["first_call_s"] = first[r.mode]
            print(_fmt(rows[-1]) + (f"  (first call {first[r.mode]:.1f} s)" if "compiled" in r.mode else ""),
                  flush=True)
    return rows


def train_step(name: str, crop: int, width: float, fc: int, batch: int, precision: str, repeats: int,
               device: str, gemm: dict) -> dict:
    """One SGD step (momentum, weight decay, fused update) of a net on random crops, through the trainer's own
    step functions (train.forward_backward, train.update)."""
    torch.manual_seed(0)
    model = vgg(name, crop_size=crop, width=width, fc_width=fc, init="glorot").to(device)
    model = model.to(memory_format=torch.channels_last).train()
    opt = optimizer(model.parameters(), 1e-3, 0.9, 5e-4, device)
    policy = Precision.resolve(precision, device, training=True)
    x = torch.randn(batch, 3, crop, crop, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step():
        forward_backward(model, x, y, policy, 1.0 / batch)
        update(opt)

    # A GEMM beside every step too: this machine's speed drifts 2x within minutes, so a ratio to the GEMM taken at
    # the start of the run says as much about the drift as about the step. Both ratios are reported.
    ops = gemm_operands(policy.dtype, device)
    gemm_best(ops, 2, device)
    beside: list[float] = []
    t = timed(step, repeats, device, between=lambda: beside.append(gemm_best(ops, 3, device)))
    macs = multiply_adds(model.config, crop)
    r = _row("train", f"{name} crop {crop} width {width:g} {precision}", batch, t, gemm[precision], macs, passes=3)
    r["gemm_beside"] = statistics.median(beside)
    r["beside_ratio"] = statistics.median(3 * 2 * macs * batch / s / 1e9 / g for s, g in zip(t["times"], beside))
    r.update(macs_per_image=macs, step_seconds=t["times"], gemm_each=beside)
    print(_fmt(r) + f"  /GEMM beside {r['beside_ratio']:.2f} (of {r['gemm_beside']:.0f})", flush=True)
    return r


def protocols(cfg: BenchConfig, model) -> list[dict]:
    from PIL import Image

    from .evaluate import Evaluator, predict_image
    from .transforms import scaled_size

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (375, 500, 3), dtype=np.uint8))
    ev = Evaluator(model.to(cfg.device), cfg.device, batch_size=16, workers=0, progress=False)
    rows = []
    scales = [256, 384, 512]
    for protocol in ("dense", "multicrop"):
        t = timed(lambda: predict_image(model, img, protocol, scales, evaluator=ev), max(1, cfg.repeats // 3),
                  cfg.device)
        macs = (50 * multiply_adds(model.config, 224) * 3 if protocol == "multicrop" else
                sum(2 * multiply_adds(model.config, *scaled_size(500, 375, q)[::-1]) for q in scales))
        rows.append({"section": "protocols", "mode": f"{protocol} Q=256,384,512 ({ev.precision})",
                     "seconds_per_image": t["seconds"], "range": [t["min"], t["max"]], "gmacs": macs / 1e9,
                     "peak_mib": t["peak_mib"]})
        print(f"{rows[-1]['mode']:<44} {t['seconds']:8.2f} s/image  ({t['min']:.2f}-{t['max']:.2f})  "
              f"{macs / 1e9:7.1f} G mult-adds  peak {t['peak_mib']:7.0f} MiB", flush=True)
    rows.append({"section": "protocols", "mode": "multicrop / dense",
                 "ratio": rows[1]["seconds_per_image"] / rows[0]["seconds_per_image"]})
    print(f"multi-crop costs {rows[-1]['ratio']:.2f}x dense per image at 3 scales")
    return rows


def parity(cfg: BenchConfig) -> list[dict]:
    """Agreement of each precision with fp32 direct convolution on real images: top-1 labels and the largest
    posterior difference, for the --parity-protocols (centre crops and dense score maps by default) at the net's own
    test scale (Q = S). "fp32" is the default fp32 chain (Winograd convolutions on a CPU). int8 is calibrated as
    `evaluate` does it (a sample of the data's train split when it has one, else of the compared images) and
    measured twice: as it runs in `evaluate` (near-ties recomputed in fp32; their share is reported) and alone
    ("int8-raw")."""
    from .data import Subset, open_source
    from .evaluate import CALIBRATION_IMAGES, Evaluator
    from .weights import load

    root = Path(cfg.data)
    src = open_source(cfg.data, split="test") if (root / "test").is_dir() else open_source(cfg.data)
    cal = open_source(cfg.data, split="train") if (root / "train").is_dir() else src
    src = Subset(src, np.random.default_rng(0).permutation(len(src))[:cfg.parity_images], "parity subset")
    precisions = ("fp32", "bf16", "int8", "int8-raw")
    if not native_bf16(torch.device(cfg.device)):
        print(f"parity: {BF16_SKIPPED}")
        precisions = ("fp32", "int8", "int8-raw")
    rows = []
    for w in cfg.weights:
        model = load(w)
        q = model.train_scale[0] if model.train_scale else paper.default_test_scale(model.config.crop_size)
        evs = {p: Evaluator(model, cfg.device, 32, 0, p, progress=False) for p in precisions if p != "int8-raw"}
        evs["int8-raw"] = Evaluator(model, cfg.device, 32, 0, "int8", progress=False, recheck=0.0)
        evs["direct"] = Evaluator(model, cfg.device, 32, 0, "fp32", progress=False)
        evs["direct"].net = FastVGG(model, "fp32", cfg.device, winograd=False)
        for p in ("int8", "int8-raw"):
            evs[p].calibrate(cal, q)
        post = {p: ev.run(src, cfg.parity_protocols, [q]) for p, ev in evs.items()}
        for p in precisions:
            for protocol in cfg.parity_protocols:
                a, b = post["direct"].combine(protocol, [q]), post[p].combine(protocol, [q])
                ok = post["direct"].valid
                rows.append({"section": "parity", "weights": str(w), "precision": p, "protocol": protocol,
                             "images": int(ok.sum()),
                             "top1_agreement": float((a[ok].argmax(1) == b[ok].argmax(1)).mean()),
                             "max_posterior_diff": float(np.abs(a[ok] - b[ok]).max())})
                r = rows[-1]
                print(f"parity {Path(w).parent.name or w:<14} {p:<8} {protocol:<7} top-1 agreement "
                      f"{100 * r['top1_agreement']:6.2f}%  max posterior diff {r['max_posterior_diff']:.4f}  "
                      f"({r['images']} images)", flush=True)
        ev = evs["int8"]
        rows.append({"section": "parity", "weights": str(w), "precision": "int8", "protocol": "rechecked",
                     "calibration_images": min(CALIBRATION_IMAGES, len(cal)),
                     "rechecked_share": ev.rechecked / max(ev.checked, 1)})
        print(f"parity {Path(w).parent.name or w:<14} int8: calibrated on {rows[-1]['calibration_images']} images "
              f"of {cal.root}; {100 * rows[-1]['rechecked_share']:.1f}% of results (an image's protocol) "
              f"recomputed in fp32 (top-2 margin < {ev.recheck})", flush=True)
    return rows


def _fmt(r: dict) -> str:
    ratio = f"{r['gemm_ratio']:6.2f}" if r.get("gemm_ratio") is not None else "     -"
    return (f"{r['section']:<9} {r['mode']:<40} batch {r['batch']:>3} {r['images_per_s']:8.2f} img/s "
            f"({r['range'][0]:.2f}-{r['range'][1]:.2f})  {r['gflops']:7.1f} GFLOP/s  /GEMM {ratio}  "
            f"peak {r['peak_mib']:7.0f} MiB")


def run(cfg: BenchConfig) -> dict:
    """`verydeep bench` (with --load N, beside N CPU-bound processes it starts)."""
    with cpu_load(cfg.load):
        if cfg.load:
            print(f"load: {cfg.load} CPU-bound process(es) running beside the measurement", flush=True)
        return _run(cfg)


def _run(cfg: BenchConfig) -> dict:
    from .provenance import provenance

    device, _ = cfg.runtime()
    dev = str(device)
    cfg = replace(cfg, device=dev)  # "auto" resolved, once
    info = machine(dev)
    print(f"machine: {info['cpu']}" + (f", {info['gpu']}" if "gpu" in info else "") +
          f"; {info['cores']} cores, {info['threads']} threads, torch {info['torch']}; "
          f"auto precision here: {Precision.resolve('auto', dev).name}; malloc {info['malloc']}", flush=True)
    bf16 = native_bf16(device)
    gemm = {"fp32": gemm_gflops(torch.float32, dev)} | ({"bf16": gemm_gflops(torch.bfloat16, dev)} if bf16 else {})
    print(f"gemm      same-run GEMM rate: fp32 {gemm['fp32']:.1f} GFLOP/s"
          + (f", bf16 {gemm['bf16']:.1f} GFLOP/s" if bf16 else f"; {BF16_SKIPPED}"), flush=True)
    rows: list[dict] = []
    torch.manual_seed(0)
    model = vgg("D", init="glorot", width=cfg.width, fc_width=round(4096 * cfg.width)).eval()
    if cfg.width != 1:
        print(f"model: VGG-16 at width x{cfg.width:g} (conv {model.config.channels(64)}-"
              f"{model.config.channels(512)}, FC {model.config.fc_width}): not the paper's net", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        runners = verydeep_runners(cfg, model) if "inference" in cfg.sections else []
        if "peers" in cfg.sections:
            runners += onnxruntime_runner(cfg, model, Path(tmp)) + openvino_runners(cfg, model, Path(tmp)) + \
                keras_runner(cfg)
        if runners:
            rows += inference(cfg, runners, gemm, multiply_adds(model.config, 224))
        runners = []  # frees every net before training
    if "train" in cfg.sections:
        for p in gemm:
            rows.append(train_step("D", 224, 1.0, 4096, cfg.train_batch, p, max(2, cfg.repeats // 2), dev, gemm))
        for name in ("A", "D", "E"):  # the miniature study's nets (reproduce.py: crop 64, width 1/4, FC 512)
            for p in gemm:
                rows.append(train_step(name, 64, 0.25, 512, 64, p, cfg.repeats, dev, gemm))
    if "protocols" in cfg.sections:
        rows += protocols(cfg, model)
    if "parity" in cfg.sections:
        if not (cfg.weights and cfg.data):
            print("parity: needs --weights (trained nets) and --data (real images), skipped")
        else:
            rows += parity(cfg)
    summary = _summary(rows)
    for line in summary:
        print(line)
    result = {"machine": info, "gemm_gflops": gemm, "rows": rows, "summary": summary, "config": asdict(cfg),
              "provenance": provenance(dev)}
    if cfg.json:
        Path(cfg.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {cfg.json}")
    return result


def _summary(rows: list[dict]) -> list[str]:
    """The issue's ratios, from this run's own rows: at batch 8 (or the first batch measured)."""
    batches = [r["batch"] for r in rows if r["section"] in ("inference", "peers")]
    if not batches:
        return []
    batch = 8 if 8 in batches else batches[0]

    def rate(prefix: str) -> float | None:
        r = [x["images_per_s"] for x in rows if x.get("batch") == batch and
             (x["mode"] == prefix or x["mode"].startswith(prefix + " "))]
        return r[0] if r else None

    out = []
    ort, keras = rate("onnxruntime"), rate("keras")
    for mode in ("eager-fp32", "fp32", "bf16", "bf16-compiled", "int8"):
        ours = rate(f"verydeep {mode}")
        if ours and ort:
            out.append(f"summary   batch {batch}: verydeep {mode} = {ours / ort:.2f}x ONNX Runtime fp32"
                       + (f", {ours / keras:.2f}x Keras VGG16" if keras else ""))
    return out
