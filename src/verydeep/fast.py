"""Fast inference (issue: performance): a VGG turned once into a chain of fused operations for one precision and one
device. One chain serves crops and whole images alike: fc6 is a kxk convolution and fc7/fc8 are 1x1 convolutions
(PAPER.md section 3, dense evaluation), so a crop gives a 1x1 score map and a larger image a larger one; whatever
is fast here is fast, and correct, for dense evaluation of any size.

Precisions:
- fp32 and bf16 on CPU: oneDNN convolutions with the ReLU fused in (VGG's ReLU passes are pure memory traffic:
  ~10% of an fp32 forward, ~20% of a bf16 one, measured layer by layer), weights pre-packed for each input size,
  as the kernels want (fp32: a score map's head runs as a matrix product the first time its size is met, `Gemm`),
  batch-norm folded into the convolutions, activations channels-last. Each 3x3 convolution with at least
  WINOGRAD_MIN_CHANNELS inputs runs by Winograd's algorithm where that times faster on this machine, else directly
  (`Pick`): F(4x4, 3x3) in fp32 (`Winograd`: 4x fewer multiplies, fp32 throughout, within ~1e-5 of direct
  convolution), F(2x2, 3x3) in bf16 (2.25x fewer, about twice the rounding error of a direct bf16 convolution).
- bf16 elsewhere (CUDA, or a CPU whose oneDNN has no bf16: AVX2 only): the same chain as eager modules with bf16
  weights, channels-last; `compile=True` hands it to torch.compile (one graph per input size: worth it for a long
  evaluation at few sizes, not for one image).
- int8 on CPU: every convolution in 8 bits on oneDNN's quantised kernels, uint8 activations from the first layer to
  the last, float32 out (int8.py: per-channel symmetric weights, per-tensor activation ranges from calibration
  images, weights packed per input size). `evaluate.Evaluator` calibrates on a sample of real images and recomputes
  near-ties in fp32, which brings int8 to bf16's agreement (evaluate.py, RECHECK_MARGIN).
"auto" picks bf16 where the hardware computes it natively (AMX or AVX512-BF16 CPUs, CUDA with bf16), else fp32.
"""
from __future__ import annotations

import copy
import logging
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn

from .errors import ConfigError, UserError
from .int8 import MaxPool  # strided maxima: the float chains pool with it too (its docstring has the figures)
from .models import VGG, check_memory
from .paper import pooled_size
from .precision import Precision, mkldnn_ok, onednn_bf16
from .share import shared_threads
from .utils import bound_kernel_caches, keep_freed_memory

log = logging.getLogger("verydeep")

# Streams: with STREAMS > 1, a CPU batch of at least STREAMS images runs as STREAMS parts, each on its own thread
# with threads / STREAMS intra-op threads, instead of every operation split across all threads. The fp32 Winograd
# chain is many short OpenMP-parallel operations whose barriers stall whenever one thread is preempted: VGG-16,
# batch 8, beside the study's training (a one-off script, one process, medians of 5), fp32 ran at 4.34 img/s in two
# streams against 1.64 across two threads, bf16 12.6 against 11.5; results are identical. On the quiet machine
# (`verydeep bench --only gemm,inference,peers --batches 1,8`, its -streams rows) the same fp32 batch ran at 5.86
# img/s in streams against 11.37 without (bf16 0.98x), so streams are off by default. Beside one single-core process
# (`verydeep bench ... --load 1`) they helped bf16 (15.33 against 12.77 img/s at batch 8) and not fp32 (3.74 against
# 4.41): no setting wins everywhere. STREAMS is what a quiet machine does; when other processes hold cores,
# share.plan picks threads and streams per call (share.py), whatever STREAMS says.
STREAMS = 1
_POOLS: dict = {}
# input sizes remembered as met once: a size met again within this many is packed for (FastVGG._ops_for)
SEEN_SIZES = 64


def _streams(jobs: list) -> torch.Tensor:
    """Streams: each job (a callable taking its thread count) on its own pool thread with threads / k OpenMP threads
    (one on 2 cores), so no thread waits at an operation's barrier for a preempted peer; their outputs concatenated
    (the parts of one batch, in order)."""
    threads, k = torch.get_num_threads(), len(jobs)
    pool = _stream_pool(k)
    # the caller's count too: torch.set_num_threads also sets MKL's process-wide count, which the streams share
    torch.set_num_threads(max(1, threads // k))
    try:
        return torch.cat([f.result() for f in [pool.submit(job, max(1, threads // k)) for job in jobs]])
    finally:
        torch.set_num_threads(threads)


def _stream_pool(k: int):
    from concurrent.futures import ThreadPoolExecutor

    if k not in _POOLS:
        _POOLS[k] = ThreadPoolExecutor(k, thread_name_prefix="verydeep-stream")
    return _POOLS[k]


# ---------------------------------------------------------------------------------------------------- the chain
@dataclass
class Conv:
    weight: torch.Tensor
    bias: torch.Tensor
    padding: int
    relu: bool


# ------------------------------------------------------------------------------------------------- Winograd
# F(m x m, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): an (m+2)x(m+2) input tile d
# gives an m x m output tile A^T [(G g G^T) * (B^T d B)] A, so a 3x3 convolution becomes (m+2)^2 matrix products over
# the channels. fp32 uses F(4x4, 3x3): 36 multiplies per 16 outputs instead of 144. bf16 uses F(2x2, 3x3): 16 per 4
# instead of 36, because its transforms' coefficients (0, +-1, 1/2) are exact in bf16 and add little error, where
# F(4x4)'s (up to 8 and 1/24) amplify bf16's rounding: on VGG-16's layers (benchmarks/winograd_layers.py --precision
# bf16) the error of F(2x2) is about 2x bf16's direct convolution's, F(4x4)'s about 11x. oneDNN runs direct
# convolutions only on the CPU, and ONNX Runtime's fp32 kernels are faster than them (BENCHMARKS.md). Channels below
# WINOGRAD_MIN_CHANNELS make the products too thin to beat a direct convolution (benchmarks/winograd_layers.py, fp32
# batch 8: 64->64 at 224 0.85x, 64->128 at 112 1.0-1.3x in two runs, 128->128 at 112 1.5x, 256 and 512 channels
# 1.5-2.5x, in issue 20's first measurements). On the same kind of machine a later day, oneDNN's direct fp32
# kernels ran at about twice PyTorch's fp32 GEMM rate and won almost everywhere, hence `Pick`: the choice is timed,
# not assumed.
_TRANSFORMS = {  # m: (B^T, G, A^T)
    4: ([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
         [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]),
    2: ([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]]),
}
WINOGRAD_TILE = {torch.float32: 4, torch.bfloat16: 2}  # m of F(m x m, 3x3) for each precision (see above)
WINOGRAD_MIN_CHANNELS = 128
# tiles transformed and multiplied at once, by m: a chunk's working set stays in the L2/L3 cache. F(2x2), VGG-16 bf16
# in the chain (a one-off layer-by-layer timer, medians of 11 calls): its Winograd layers summed 29.6 ms at batch 1
# with 784 tiles against 31.2 with 196 and 29.9 with 441 (1,568: 29.8), 224 ms at batch 8 against 244 and 236 (221).
_TILES_PER_CHUNK = {4: 196, 2: 784}


class Winograd:
    """A 3x3, padding-1 convolution (+ bias, optional ReLU) by F(m x m, 3x3) on channels-last maps of any size, in
    the weights' dtype: fp32 by F(4x4), bf16 by F(2x2) (WINOGRAD_TILE; bf16 products accumulate in fp32, as
    oneDNN's direct bf16 convolution does). The work goes in chunks of tiles through buffers kept between calls:
    whole-map temporaries would be 2.25x the input (F(4x4)) and fresh memory on every call (page faults), which
    measured slower than the direct convolution. The buffers are shared by the layers of one net and kept per thread,
    so the streams of one net do not collide."""

    def __init__(self, s: Conv, workspace: threading.local | None = None, dtype: torch.dtype = torch.float32,
                 m: int | None = None):
        self.m = m or WINOGRAD_TILE[dtype]  # m: another tile, for benchmarks/winograd_layers.py
        self.a = self.m + 2
        bt, g, at = (torch.tensor(t, dtype=torch.float64) for t in _TRANSFORMS[self.m])
        u = torch.einsum("ik,ockl,jl->ijco", g, s.weight.double(), g)  # G g G^T for every (out, in) pair
        self.u = u.reshape(self.a * self.a, s.weight.shape[1], s.weight.shape[0]).to(dtype).contiguous()
        # both sides of each transform; their coefficients are exact in bf16 (F(2x2)) as in fp32
        self.bb, self.aa = torch.kron(bt, bt).to(dtype), torch.kron(at, at).to(dtype)
        self.bias, self.relu, self.dtype = s.bias.to(dtype), s.relu, dtype
        self.ws = workspace if workspace is not None else threading.local()

    def _buf(self, name: str, *shape: int) -> torch.Tensor:
        n = math.prod(shape)
        ws = self.ws.__dict__  # threading.local: each stream (fast.STREAMS) has its own buffers
        if ws.get(name) is None or ws[name].numel() < n or ws[name].dtype != self.dtype:
            ws[name] = torch.empty(n, dtype=self.dtype)
        return ws[name][:n].view(shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n_img, c, h, w = x.shape
        m, a, co = self.m, self.a, self.u.shape[-1]
        th, tw = -(-h // m), -(-w // m)
        xp = self._buf("in", n_img, th * m + 2, tw * m + 2, c)  # zero-padded NHWC input
        xp[:, 1:h + 1, 1:w + 1].copy_(x.permute(0, 2, 3, 1))
        for border in (xp[:, :1], xp[:, h + 1:], xp[:, :, :1], xp[:, :, w + 1:]):
            border.zero_()
        st = xp.stride()
        tiles = xp.as_strided((n_img, th, a, a, tw, c), (st[0], m * st[1], st[1], st[2], m * st[2], st[3]))
        out = torch.empty(n_img, th * m, tw * m, co, dtype=self.dtype)
        per_chunk = _TILES_PER_CHUNK[m]
        rows = max(1, min(th, per_chunk // tw))  # tile rows of one image per chunk ...
        imgs = max(1, per_chunk // (th * tw)) if rows == th else 1  # ... or whole small images
        for i in range(0, n_img, imgs):
            k = min(imgs, n_img - i)
            for r in range(0, th, rows):
                rr = min(rows, th - r)
                p = k * rr * tw
                d = self._buf("d", a, a, k, rr, tw, c)
                d.copy_(tiles[i:i + k, r:r + rr].permute(2, 3, 0, 1, 4, 5))
                v = self._buf("v", a * a, p, c)
                torch.mm(self.bb, d.view(a * a, -1), out=v.view(a * a, -1))
                mm = self._buf("m", a * a, p, co)
                torch.bmm(v, self.u, out=mm)
                y = self._buf("y", m, m, k, rr, tw, co)
                torch.mm(self.aa, mm.view(a * a, -1), out=y.view(m * m, -1))
                o = out[i:i + k, r * m:(r + rr) * m].view(k, rr, m, tw, m, co)
                torch.add(y.permute(2, 3, 0, 4, 1, 5), self.bias, out=o)
                if self.relu:
                    o.relu_()
        if th * m != h or tw * m != w:
            out = out[:, :h, :w].contiguous()
        return out.permute(0, 3, 1, 2)  # NCHW view of NHWC memory: channels-last, as the chain keeps it


# Winograd is picked only when it times at least this much faster alone: inside the chain its buffers and fresh
# output evict what the next layer reads. VGG-16 fp32, batch 8: picking by the plain minimum chose Winograd for the
# 28x28 layers (4-13% faster alone) and the whole call ran at 14.83 img/s against 15.65 with every layer direct.
WINOGRAD_MARGIN = 0.85
PICK_ROUNDS = 3  # timed calls of each kernel, alternating, after one untimed call of each


class Pick:
    """A 3x3 layer that may run by Winograd or directly (fp32 and bf16, `winograd="auto"`): both timed on the first
    input of each size class (its pixel count to a power of two), Winograd kept only if faster by WINOGRAD_MARGIN,
    the verdict remembered. Which wins depends on the machine and the map: on the AMD EPYC here (VGG-16, one-off
    per-layer timings) fp32's F(4x4) won only on 28x28 maps with 256-512 channels at batch 8 (4-13%) and lost
    elsewhere, by up to 2x on 64-channel maps, because its products run on PyTorch's fp32 GEMM (about half the rate
    oneDNN's direct kernels reach here); the figures above WINOGRAD_MIN_CHANNELS had it ahead from 128 channels. Both
    compute the same convolution in fp32 (within ~1e-5). bf16's F(2x2) won on the 28x28 and 56x56 maps of 256-512
    channels (in the chain at batch 1: 2.2-2.5 against 3.2-3.4 ms) and lost on the 112x112 ones (and at batch 1 on
    the 14x14 ones)."""

    def __init__(self, winograd: Winograd, direct: tuple):
        self.winograd, self.direct = winograd, direct
        self.chosen: dict[int, str] = {}
        self._lock = threading.Lock()

    def __call__(self, y: torch.Tensor, direct: tuple) -> torch.Tensor:
        size = (y.shape[0] * y.shape[2] * y.shape[3]).bit_length()
        if size not in self.chosen:
            with self._lock:  # streams: one of them times, the other waits for its verdict
                if size not in self.chosen:
                    self.chosen[size] = self._time(y, direct)
        return self.winograd(y) if self.chosen[size] == "winograd" else _direct(y, direct)

    def _time(self, y: torch.Tensor, direct: tuple) -> str:
        kernels = {"winograd": self.winograd, "onednn": lambda x: _direct(x, direct)}
        for f in kernels.values():  # the first call of each may allocate its buffers and create its primitives
            f(y)
        # rounds alternate, and each kernel's best is compared: Winograd's time swings from spell to spell where
        # the direct kernel's does not (VGG-16's 56x56x256 layer in bf16, two threads, one-off timings: 2.4 ms in
        # some spells and 3.2-3.3 ms in others of the same process, the direct kernel 3.3 ms in both; its many
        # passes over memory are the likely reason, not measured), and timed once, one slow spell decided for the
        # rest of the run
        seconds = dict.fromkeys(kernels, math.inf)
        for _ in range(PICK_ROUNDS):
            for name, f in kernels.items():
                t0 = time.perf_counter()
                f(y)
                seconds[name] = min(seconds[name], time.perf_counter() - t0)
        log.debug("%s 3x3 layer, %d pixels: %s", y.dtype, y.shape[0] * y.shape[2] * y.shape[3], seconds)
        return "winograd" if seconds["winograd"] < WINOGRAD_MARGIN * seconds["onednn"] else "onednn"


def _direct(y: torch.Tensor, op: tuple) -> torch.Tensor:
    w, b, p, attr = op
    return torch.ops.mkldnn._convolution_pointwise(y, w, b, p, [1, 1], [1, 1], 1, attr, [], "")


class Gemm:
    """An unpadded convolution (fc6 as a kxk convolution, fc7 and fc8 as 1x1, net C's 1x1 layers) run as one matrix
    product of its input's kxk patches with its weights as they are: nothing to pack for the input's size. A score map
    of a size seen for the first time runs its head this way (FastVGG._ops_for): packing VGG-16's fc6 for a size
    takes 220-250 ms, more than the layer itself (15-270 ms), and whole images come in many sizes."""

    def __init__(self, op: tuple):
        w, b, _, attr = op
        self.k, self.relu, self.b = tuple(w.shape[2:]), attr == "relu", b
        self.w = w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)  # (out, kh kw in): a view of the channels-last weight

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        x = y.permute(0, 2, 3, 1)  # channels-last: NHWC in memory
        if self.k != (1, 1):  # (N, H', W', C, kh, kw) -> (N, H', W', kh kw C), the weights' order
            x = x.unfold(1, self.k[0], 1).unfold(2, self.k[1], 1).permute(0, 1, 2, 4, 5, 3)
            x = x.reshape(*x.shape[:3], -1)
        out = torch.nn.functional.linear(x, self.w, self.b)
        return (out.relu_() if self.relu else out).permute(0, 3, 1, 2)  # channels-last again


@dataclass
class Op:
    """A layer kept as it is (max-pooling, LRN)."""
    module: nn.Module = field(repr=False)


def chain(model: VGG, upto: str | None = None) -> list[Conv | Op]:
    """The net as convolutions (batch-norm folded, the following ReLU fused) and other ops, up to layer `upto`
    (its output included; a conv name means the pre-ReLU output). Dropout is the identity at test time."""
    names = model.layer_names
    if upto is not None and upto not in names:
        raise UserError(f"no layer {upto!r}; layers are {', '.join(names)}")
    k = model.config.head_kernel
    layers: list[tuple[str, nn.Module]] = list(zip(model.feature_names, model.features))
    layers += list(zip(model.head_names, model.classifier))
    steps: list[Conv | Op] = []
    for name, m in layers:
        last = steps[-1] if steps else None
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight.detach().float()
            if isinstance(m, nn.Linear):
                kk = k if name == "fc6" else 1
                w = w.reshape(m.out_features, -1, kk, kk)
            pad = m.padding[0] if isinstance(m, nn.Conv2d) else 0
            steps.append(Conv(w, m.bias.detach().float(), pad, False))
        elif isinstance(m, nn.BatchNorm2d) and isinstance(last, Conv) and not last.relu:
            scale = m.weight.detach().float() / torch.sqrt(m.running_var.float() + m.eps)
            last.weight = last.weight * scale[:, None, None, None]
            last.bias = (last.bias - m.running_mean.float()) * scale + m.bias.detach().float()
        elif isinstance(m, nn.ReLU) and isinstance(last, Conv) and not last.relu:
            last.relu = True
        elif isinstance(m, nn.Dropout):  # KeyedDropout included: the identity at test time
            pass
        elif isinstance(m, nn.ReLU):
            steps.append(Op(nn.ReLU()))
        else:
            steps.append(Op(m))
        if name == upto:
            break
    return steps


def _as_sequential(steps: list[Conv | Op]) -> nn.Sequential:
    """The chain as plain modules (eager path, and the graph the int8 quantiser traces)."""
    mods: list[nn.Module] = []
    for s in steps:
        if isinstance(s, Conv):
            c = nn.Conv2d(s.weight.shape[1], s.weight.shape[0], s.weight.shape[2], padding=s.padding)
            c.weight.data, c.bias.data = s.weight.clone(), s.bias.clone()
            mods.append(c)
            if s.relu:
                mods.append(nn.ReLU(inplace=True))
        else:
            mods.append(copy.deepcopy(s.module))
    return nn.Sequential(*mods).eval()


class FastVGG:
    """A VGG prepared for inference. ``net.score_map(x)`` takes preprocessed float images (N, C, H, W) of any size
    at least the crop and returns float32 maps of the last layer kept (the class scores unless `upto` stops
    earlier); ``net(x)`` takes crops and returns (N, classes) logits, like ``VGG.forward``. fp32's 3x3 layers with
    WINOGRAD_MIN_CHANNELS inputs or more: ``winograd="auto"`` runs each by Winograd or directly, whichever is faster
    here (`Pick`), True always by Winograd, False always directly (the exact reference the benchmark's parity rows
    compare with)."""

    def __init__(self, model: VGG, precision: str | Precision = "auto", device: str | torch.device | None = None,
                 upto: str | None = None, compile: bool = False, winograd: bool | str = "auto"):
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.policy = Precision.resolve(precision, self.device)
        self.precision = self.policy.name
        keep_freed_memory()  # activations are allocated anew on every call: reuse them, no page faults (utils.py)
        bound_kernel_caches()  # a kernel for every input size met (utils.py)
        self.crop, self.upto, self.preprocess = model.config.crop_size, upto, model.preprocess
        self.config = model.config
        self.steps: list[Conv | Op] | None = chain(model, upto)
        self._quant = None  # the calibrated int8 chain (int8.Int8Chain)
        if self.precision == "int8":
            self._backend = "int8"
            return
        if self.device.type == "cpu" and mkldnn_ok() and not compile and (self.precision == "fp32" or onednn_bf16()):
            self._backend = "onednn"
            self._pack(winograd)
        else:
            self._backend = "eager"
            self._seq = _as_sequential(self.steps).to(self.device, self.dtype).to(memory_format=torch.channels_last)
            if compile:  # one graph per input size (inductor; oneDNN/AMX kernels with freezing on a CPU)
                import torch._inductor.config as inductor

                inductor.freezing = True
                self._seq = torch.compile(self._seq, dynamic=False)
        self.steps = None  # the float copies are no longer needed (VGG-16: 0.5 GB)

    @property
    def dtype(self) -> torch.dtype:
        return self.policy.dtype

    def kernels(self) -> list[str]:
        """What runs each step of the chain: "winograd", "onednn" (fused convolution), "winograd|onednn" (the faster,
        timed per size class: `Pick`), "int8", "eager" or the name of a kept layer ("MaxPool2d", ...): for tests and
        the curious."""
        if self._backend == "int8":
            return ["int8"]
        if self._backend == "eager":
            return ["eager"]
        return ["winograd" if isinstance(op, Winograd) else "onednn" if isinstance(op, tuple) else
                "winograd|onednn" if isinstance(op, Pick) else type(op).__name__ for op in self._ops]

    @property
    def packed_sizes(self) -> int:
        """How many input sizes the bf16 weights are packed for now (at most 2: bf16 kernels pick their layout by
        size)."""
        return len(getattr(self, "_by_shape", {}))

    @property
    def calibrated(self) -> bool:
        return self._quant is not None

    def _pack(self, winograd: bool) -> None:
        self._ops = []
        # the Winograd layers' buffers, shared by the layers (they run one after another), one set per thread
        self._workspace = threading.local()
        for s in self.steps:
            if isinstance(s, Conv):
                w = s.weight.to(self.dtype).contiguous(memory_format=torch.channels_last)
                direct = (w, s.bias.to(self.dtype), [s.padding] * 2, "relu" if s.relu else "none")
                if not (winograd and self.dtype in WINOGRAD_TILE and s.padding == 1
                        and s.weight.shape[2:] == (3, 3) and s.weight.shape[1] >= WINOGRAD_MIN_CHANNELS):
                    self._ops.append(direct)
                elif winograd == "auto":
                    self._ops.append(Pick(Winograd(s, self._workspace, self.dtype), direct))
                else:
                    self._ops.append(Winograd(s, self._workspace, self.dtype))
            elif MaxPool.plain(s.module):
                self._ops.append(MaxPool(s.module.kernel_size))
            else:
                self._ops.append(s.module)
        self._by_shape: OrderedDict[tuple, list] = OrderedDict()
        self._seen: OrderedDict[tuple, None] = OrderedDict()  # input sizes met once (fp32: see _ops_for)

    @staticmethod
    def _pack_weight(op: tuple, size: list) -> torch.Tensor:
        """One layer's weights in oneDNN's blocked layout for inputs of `size` (N, C, H, W), in every precision.
        The kernels pick their layout by input size, and weights packed for another size (or for none) are reordered
        on every call, or run on a slow path: VGG-16 bf16 at batch 1, 6.0 img/s packed for no size against 15.5
        packed for its own; fp32 on an AVX2-only EPYC (one-off timings, 2 threads), VGG-16's fc6 on a 12 x 16 map
        3.7 s packed for no size against 94 ms, fc7 on 3 x 3 542 ms against 3.1, conv5 on 24 x 32 126 ms against 22,
        and the study's 1/8-wide fc7 on 1 x 2 8.1 ms against 0.08 (BENCHMARKS.md)."""
        wt, _, p, _ = op
        return torch.ops.mkldnn._reorder_convolution_weight(wt, p, [1, 1], [1, 1], 1, size)

    def _packed(self, shape: tuple, heads: bool = True) -> list:
        """The chain's steps for inputs of `shape` (N, H, W), weights packed for it (`_pack_weight`); heads=False
        runs the unpadded layers whose kernel does not cover their input (the head of a score map) as `Gemm`s."""
        out = []
        n, h, w = shape
        for op in self._ops:
            if isinstance(op, (tuple, Pick)):
                d = op if isinstance(op, tuple) else op.direct
                wt, b, p, attr = d
                if not heads and p == [0, 0] and (h, w) != tuple(wt.shape[2:]):
                    out.append(Gemm(d))
                    h, w = h - wt.shape[2] + 1, w - wt.shape[3] + 1
                    continue
                packed = (self._pack_weight(d, [n, wt.shape[1], h, w]), b, p, attr)
                out.append(packed if isinstance(op, tuple) else partial(op, direct=packed))
                h, w = h + 2 * p[0] - wt.shape[2] + 1, w + 2 * p[1] - wt.shape[3] + 1
            else:
                out.append(op)
                if isinstance(op, nn.MaxPool2d):
                    k, st = op.kernel_size, op.stride
                    k, st = (k if isinstance(k, int) else k[0]), (st if isinstance(st, int) else st[0])
                    h, w = pooled_size(h, k, st, op.ceil_mode), pooled_size(w, k, st, op.ceil_mode)
                elif isinstance(op, MaxPool):  # k x k, stride k, floor
                    h, w = h // op.k, w // op.k
        return out

    def _ops_for(self, shape: torch.Size) -> list:
        """The steps for inputs of this shape. fp32: a size met for the first time runs its head by `Gemm` and keeps
        nothing (packing the head's weights costs more than running it once); met again, it is packed and kept.
        (bf16 packs at once, as measured on the AMX and AVX512-BF16 machines; its matrix products were not timed.)"""
        key = (shape[0], shape[2], shape[3])
        if key not in self._by_shape:
            ops = None
            if self.precision == "fp32" and key not in self._seen:
                self._seen[key] = None
                while len(self._seen) > SEEN_SIZES:
                    self._seen.popitem(last=False)
                ops = self._packed(key, heads=False)
                if any(isinstance(op, Gemm) for op in ops):
                    return ops
                # else nothing ran as a matrix product (crops: the head covers its input): packed already, kept
            self._by_shape[key] = ops if ops is not None else self._packed(key)
            while len(self._by_shape) > 2:  # a crop batch size and a dense size stay packed; 2 copies of weights
                self._by_shape.popitem(last=False)
        self._by_shape.move_to_end(key)
        return self._by_shape[key]

    def _onednn(self, x: torch.Tensor, k: int = 1) -> torch.Tensor:
        y = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        if k < 2:
            return self._run(y, self._ops_for(y.shape))
        parts = y.chunk(k)
        ops = self._ops_for(parts[0].shape)  # packed here, not raced for by the streams
        return _streams([partial(self._run, part, ops) for part in parts])

    def _int8_part(self, x: torch.Tensor, threads: int) -> torch.Tensor:
        torch.set_num_threads(threads)  # a pool thread keeps its own count (see _run)
        return self._quant(x)

    @staticmethod
    def _run(y: torch.Tensor, ops: list, threads: int | None = None) -> torch.Tensor:
        if threads is not None:
            # OpenMP's thread count is a per-thread setting: a stream's pool thread keeps the count it first ran
            # with, whatever the caller has set since
            torch.set_num_threads(threads)
        for op in ops:
            y = _direct(y, op) if isinstance(op, tuple) else op(y)
        return y

    def calibrate(self, *batches: torch.Tensor) -> None:
        """int8: fix the activation ranges from these inputs (any sizes) and quantise (int8.py); without it the
        first input the net is given calibrates it."""
        from .int8 import Int8Chain

        if self.precision != "int8" or self._quant is not None:
            raise ValueError("calibrate() applies once, to a net prepared with precision int8")
        self._quant = Int8Chain(self.steps, tuple(x.to(self.device) for x in batches))
        self.steps = None
        log.info("int8: calibrated on %d image(s)", sum(len(x) for x in batches))

    @torch.inference_mode()
    def score_map(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < self.crop:
            raise ConfigError(f"input {tuple(x.shape[-2:])} is smaller than the {self.crop} crop")
        check_memory(self.config, x.shape, self.device, 4)
        x = x.to(self.device)
        if self._backend == "int8" and self._quant is None:
            self.calibrate(x)
        if self.device.type != "cpu":
            return self._seq(x.to(self.dtype).contiguous(memory_format=torch.channels_last)).float().contiguous()
        # on a shared CPU, the cores others leave free, or one-thread streams (share.py); else STREAMS as set
        with shared_threads(len(x), STREAMS) as k:
            if self._backend == "onednn":
                y = self._onednn(x, k)
            elif self._backend == "int8":
                y = _streams([partial(self._int8_part, p) for p in x.chunk(k)]) if k > 1 else self._quant(x)
            else:
                y = self._seq(x.to(self.dtype).contiguous(memory_format=torch.channels_last))
        return y.float().contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.crop, self.crop):
            raise ConfigError(f"input {tuple(x.shape[-2:])} does not match the {self.crop}x{self.crop} crop; use "
                             "score_map for other sizes")
        return self.score_map(x).flatten(1)
