"""Fast inference (issue: performance): a VGG turned once into a chain of fused operations for one precision and one
device. One chain serves crops and whole images alike: fc6 is a kxk convolution and fc7/fc8 are 1x1 convolutions
(PAPER.md section 3, dense evaluation), so a crop gives a 1x1 score map and a larger image a larger one; whatever
is fast here is fast, and correct, for dense evaluation of any size.

Precisions:
- fp32 and bf16 on CPU: oneDNN convolutions with the ReLU fused in (VGG's ReLU passes are pure memory traffic:
  ~10% of an fp32 forward, ~20% of a bf16 one, measured layer by layer), weights pre-packed (bf16: for each input
  size, as the AMX kernels want), batch-norm folded into the convolutions, activations channels-last. In fp32 the
  3x3 convolutions with at least WINOGRAD_MIN_CHANNELS inputs use Winograd's F(4x4, 3x3) instead (`Winograd`):
  4x fewer multiplies, fp32 throughout, results within ~1e-5 of direct convolution.
- bf16 elsewhere (CUDA): the same chain as eager modules with bf16 weights, channels-last; `compile=True` hands it
  to torch.compile (one graph per input size: worth it for a long evaluation at few sizes, not for one image).
- int8 on CPU: PyTorch's x86 post-training quantisation (FX graph mode, per-channel symmetric weights, per-tensor
  activations, their ranges the min/max over the calibration images: on the study's nets PyTorch's histogram
  observer, which clips outliers to minimise the squared error, agreed as often but moved a few posteriors by up to
  0.81 where min/max moved them by 0.22), conv1_1 and fc8 kept in fp32: on a trained D, quantising fc8 alone cost
  2.3 points of top-1 agreement, any other single layer 0.3-1.0. `evaluate.Evaluator` calibrates on a sample of real
  images and recomputes near-ties in fp32, which brings int8 to bf16's agreement (evaluate.py, RECHECK_MARGIN).
"auto" picks bf16 where the hardware computes it natively (AMX or AVX512-BF16 CPUs, CUDA with bf16), else fp32.
"""
from __future__ import annotations

import copy
import logging
import math
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import ConfigError, UserError
from .models import VGG, check_memory
from .paper import pooled_size
from .precision import Precision, mkldnn_ok
from .utils import keep_freed_memory

log = logging.getLogger("verydeep")

# Streams: with STREAMS > 1, a CPU batch of at least STREAMS images runs as STREAMS parts, each on its own thread
# with threads / STREAMS intra-op threads, instead of every operation split across all threads. The fp32 Winograd
# chain is many short OpenMP-parallel operations whose barriers stall whenever one thread is preempted: VGG-16,
# batch 8, beside the study's training (a one-off script, one process, medians of 5), fp32 ran at 4.34 img/s in two
# streams against 1.64 across two threads, bf16 12.6 against 11.5; results are identical. On the quiet machine
# (`verydeep bench --only gemm,inference,peers --batches 1,8`, its -streams rows) the same fp32 batch ran at 5.86
# img/s in streams against 11.37 without (bf16 0.98x), so streams are off by default. Beside one single-core process
# (`verydeep bench ... --load 1`) they helped bf16 (15.33 against 12.77 img/s at batch 8) and not fp32 (3.74 against
# 4.41): no setting wins everywhere. On a shared host OMP_WAIT_POLICY=PASSIVE helps more (BENCHMARKS.md).
STREAMS = 1
_POOLS: dict = {}


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
# F(4x4, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): a 6x6 input tile d gives
# a 4x4 output tile A^T [(G g G^T) * (B^T d B)] A, so a 3x3 convolution becomes 36 matrix products over the channels
# with 36 multiplies per 16 outputs instead of 144. Used for fp32 on the CPU, where oneDNN runs direct convolutions
# only and ONNX Runtime's fp32 kernels are faster than them (BENCHMARKS.md). Channels below WINOGRAD_MIN_CHANNELS make
# 36 products too thin to beat a direct convolution (benchmarks/winograd_layers.py, batch 8: 64->64 at 224 0.85x,
# 64->128 at 112 1.0-1.3x in two runs, 128->128 at 112 1.5x, 256 and 512 channels 1.5-2.5x).
_BT = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
       [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
_G = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
      [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
_AT = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
WINOGRAD_MIN_CHANNELS = 128
_TILES_PER_CHUNK = 196  # tiles transformed and multiplied at once: a chunk's working set stays in the L2/L3 cache


class Winograd:
    """A 3x3, padding-1 convolution (+ bias, optional ReLU) by F(4x4, 3x3) on channels-last fp32 maps of any size.
    The work goes in chunks of tiles through buffers kept between calls: whole-map temporaries would be 2.25x the
    input and fresh memory on every call (page faults), which measured slower than the direct convolution. The
    buffers are shared by the layers of one net and kept per thread, so the streams of one net do not collide."""
    m, a = 4, 6

    def __init__(self, s: Conv, workspace: threading.local | None = None):
        bt, g, at = (torch.tensor(t, dtype=torch.float64) for t in (_BT, _G, _AT))
        u = torch.einsum("ik,ockl,jl->ijco", g, s.weight.double(), g)  # G g G^T for every (out, in) pair
        self.u = u.reshape(self.a * self.a, s.weight.shape[1], s.weight.shape[0]).float().contiguous()
        self.bb, self.aa = torch.kron(bt, bt).float(), torch.kron(at, at).float()  # both sides of each transform
        self.bias, self.relu = s.bias.float(), s.relu
        self.ws = workspace if workspace is not None else threading.local()

    def _buf(self, name: str, *shape: int) -> torch.Tensor:
        n = math.prod(shape)
        ws = self.ws.__dict__  # threading.local: each stream (fast.STREAMS) has its own buffers
        if ws.get(name) is None or ws[name].numel() < n:
            ws[name] = torch.empty(n)
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
        out = torch.empty(n_img, th * m, tw * m, co)
        rows = max(1, min(th, _TILES_PER_CHUNK // tw))  # tile rows of one image per chunk ...
        imgs = max(1, _TILES_PER_CHUNK // (th * tw)) if rows == th else 1  # ... or whole small images
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
    earlier); ``net(x)`` takes crops and returns (N, classes) logits, like ``VGG.forward``. ``winograd=False`` keeps
    fp32 on direct convolutions (the exact reference the benchmark's parity rows compare with)."""

    def __init__(self, model: VGG, precision: str | Precision = "auto", device: str | torch.device | None = None,
                 upto: str | None = None, compile: bool = False, winograd: bool = True):
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.policy = Precision.resolve(precision, self.device)
        self.precision = self.policy.name
        keep_freed_memory()  # activations are allocated anew on every call: reuse them, no page faults (utils.py)
        self.crop, self.upto, self.preprocess = model.config.crop_size, upto, model.preprocess
        self.config = model.config
        self.steps: list[Conv | Op] | None = chain(model, upto)
        self._quant: nn.Module | None = None
        if self.precision == "int8":
            self._backend = "int8"
            return
        if self.device.type == "cpu" and mkldnn_ok() and not compile:
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
        """What runs each step of the chain: "winograd", "onednn" (fused convolution), "int8", "eager" or the name of
        a kept layer ("MaxPool2d", ...): for tests and the curious."""
        if self._backend == "int8":
            return ["int8"]
        if self._backend == "eager":
            return ["eager"]
        return ["winograd" if isinstance(op, Winograd) else "onednn" if isinstance(op, tuple) else type(op).__name__
                for op in self._ops]

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
            if (winograd and self.precision == "fp32" and isinstance(s, Conv) and s.padding == 1
                    and s.weight.shape[2:] == (3, 3) and s.weight.shape[1] >= WINOGRAD_MIN_CHANNELS):
                self._ops.append(Winograd(s, self._workspace))
            elif isinstance(s, Conv):
                w = s.weight.to(self.dtype).contiguous(memory_format=torch.channels_last)
                self._ops.append((w, s.bias.to(self.dtype), [s.padding] * 2, "relu" if s.relu else "none"))
            else:
                self._ops.append(s.module)
        self._by_shape: OrderedDict[tuple, list] = OrderedDict()
        if self.precision == "fp32":  # fp32: one packing serves every size (measured: per-size packing gains nothing)
            self._by_shape[None] = self._packed(None)

    def _packed(self, shape: tuple | None) -> list:
        """The weights in oneDNN's blocked layout for inputs of `shape` (N, H, W), or a size-free layout (None).
        The bf16 (AMX) kernels pick their weight layout by input size: packed for another size, every call
        reorders all weights (VGG-16 bf16 at batch 1: 6.0 img/s packed for no size, 15.5 packed for its own)."""
        out = []
        n, h, w = shape if shape else (None, None, None)
        for op in self._ops:
            if isinstance(op, tuple):
                wt, b, p, attr = op
                size = [n, wt.shape[1], h, w] if shape else None
                out.append((torch.ops.mkldnn._reorder_convolution_weight(wt, p, [1, 1], [1, 1], 1, size), b, p, attr))
                if shape:
                    h, w = h + 2 * p[0] - wt.shape[2] + 1, w + 2 * p[1] - wt.shape[3] + 1
            else:
                out.append(op)
                if shape and isinstance(op, nn.MaxPool2d):
                    k, st = op.kernel_size, op.stride
                    k, st = (k if isinstance(k, int) else k[0]), (st if isinstance(st, int) else st[0])
                    h, w = pooled_size(h, k, st, op.ceil_mode), pooled_size(w, k, st, op.ceil_mode)
        return out

    def _ops_for(self, shape: torch.Size) -> list:
        key = None if None in self._by_shape else (shape[0], shape[2], shape[3])
        if key not in self._by_shape:
            self._by_shape[key] = self._packed(key)
            while len(self._by_shape) > 2:  # a crop batch size and a dense size stay packed; 2 copies of weights
                self._by_shape.popitem(last=False)
        self._by_shape.move_to_end(key)
        return self._by_shape[key]

    def _onednn(self, x: torch.Tensor) -> torch.Tensor:
        y = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        threads = torch.get_num_threads()
        k = min(STREAMS, threads, len(y)) if self.device.type == "cpu" else 1
        if k < 2 or len(y) % k:
            return self._run(y, self._ops_for(y.shape))
        # Streams: the batch in k parts, each on threads / k threads (one on 2 cores), so fewer threads wait at an
        # operation's barrier for a preempted peer (see STREAMS).
        parts = y.chunk(k)
        ops = self._ops_for(parts[0].shape)  # packed here, not raced for by the streams
        pool = _stream_pool(k)
        # the caller's count too: torch.set_num_threads also sets MKL's process-wide count, which the streams share
        torch.set_num_threads(threads // k)
        try:
            return torch.cat([f.result() for f in [pool.submit(self._run, part, ops, threads // k)
                                                   for part in parts]])
        finally:
            torch.set_num_threads(threads)

    @staticmethod
    def _run(y: torch.Tensor, ops: list, threads: int | None = None) -> torch.Tensor:
        if threads is not None:
            # OpenMP's thread count is a per-thread setting: a stream's pool thread keeps the count it first ran
            # with, whatever the caller has set since
            torch.set_num_threads(threads)
        for op in ops:
            if isinstance(op, tuple):
                w, b, p, attr = op
                y = torch.ops.mkldnn._convolution_pointwise(y, w, b, p, [1, 1], [1, 1], 1, attr, [], "")
            else:
                y = op(y)
        return y

    def calibrate(self, *batches: torch.Tensor) -> None:
        """int8: fix the activation ranges from these inputs (any sizes) and quantise; without it the first input
        the net is given calibrates it."""
        from torch.ao.quantization import QConfig, QConfigMapping
        from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        if self.precision != "int8" or self._quant is not None:
            raise ValueError("calibrate() applies once, to a net prepared with precision int8")
        seq = _as_sequential(self.steps)
        act = MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=False)  # VNNI: no overflow, full range
        wt = PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
        mapping = QConfigMapping().set_global(QConfig(activation=act, weight=wt))
        convs = [n for n, m in seq.named_children() if isinstance(m, nn.Conv2d)]
        for n in {convs[0], convs[-1]}:
            mapping = mapping.set_module_name(n, None)
        torch.backends.quantized.engine = "x86"
        with warnings.catch_warnings():  # FX quantisation's deprecation notice (it moves to torchao)
            warnings.simplefilter("ignore")
            prepared = prepare_fx(seq, mapping, example_inputs=(batches[0][:1].float(),))
            with torch.inference_mode():
                for x in batches:
                    prepared(x.float().to(self.device))
            self._quant = convert_fx(prepared)
        self.steps = None
        log.info("int8: calibrated on %d image(s)", sum(len(x) for x in batches))

    @torch.inference_mode()
    def score_map(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < self.crop:
            raise ConfigError(f"input {tuple(x.shape[-2:])} is smaller than the {self.crop} crop")
        check_memory(self.config, x.shape, self.device, 4)
        x = x.to(self.device)
        if self._backend == "onednn":
            y = self._onednn(x)
        elif self._backend == "int8":
            if self._quant is None:
                self.calibrate(x)
            y = self._quant(x.float().contiguous())
        else:
            y = self._seq(x.to(self.dtype).contiguous(memory_format=torch.channels_last))
        return y.float().contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.crop, self.crop):
            raise ConfigError(f"input {tuple(x.shape[-2:])} does not match the {self.crop}x{self.crop} crop; use "
                             "score_map for other sizes")
        return self.score_map(x).flatten(1)
