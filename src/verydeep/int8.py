"""int8 inference on the CPU (issue 20): the fast chain (fast.chain) as oneDNN's quantised convolutions on plain
uint8 channels-last maps, 8-bit from the first layer to the last.

Each convolution takes uint8 activations (per-tensor scale and zero point) and int8 weights (per output channel,
symmetric), adds the float bias and applies the ReLU inside the kernel, and writes uint8 for the next layer, or
float32 where the chain ends: the class scores are never rounded to 256 levels (quantising fc8's *output* is what
cost 2.3 points of top-1 agreement on a trained D under PyTorch's FX quantisation, which kept fc8 in fp32 for it).
Max-pooling runs on the uint8 codes themselves (`MaxPool`: the maximum commutes with a monotone
quantisation); anything else (LRN) is computed in float between a dequantisation and a quantisation. Ranges are the
min/max over the calibration images of each activation (PyTorch's histogram observer agreed as often but moved
single posteriors more: fast.py's history, BENCHMARKS.md).

It replaced PyTorch's FX quantisation (torch.ao), which verydeep used before: that graph ran conv1_1 and fc8 in fp32
(fc8, a 1x1 convolution on a 1x1 map, on PyTorch's slow reference convolution; conv1_1's ReLU and the quantisation of
its output as two more passes: 44 of 552 ms of a VGG-16 batch of 8 at one thread, measured with torch.profiler),
and packed every weight without knowing the input size. oneDNN's kernels choose their weight layout by the input
size, so the weights here are packed for each size met (two kept, as the bf16 chain does); packed for no size, the
same chain ran 3-16x slower (weights reordered on every call).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .precision import cpu_flags


@dataclass
class QParams:
    scale: float
    zero_point: int

    @classmethod
    def of_range(cls, lo: float, hi: float) -> "QParams":
        """uint8 over [lo, hi] widened to hold 0 (zero padding must be exact), as PyTorch's MinMaxObserver does."""
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = max((hi - lo) / 255.0, 1e-8)
        return cls(scale, int(min(255, max(0, round(-lo / scale)))))

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().contiguous(memory_format=torch.channels_last)
        return torch.round(x / self.scale).add_(self.zero_point).clamp_(0, 255).to(torch.uint8)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        return (q.float() - self.zero_point) * self.scale


def weight_levels() -> int:
    """The largest weight code: 127 where the CPU multiplies 8-bit pairs into 32 bits (VNNI, AMX); 63 elsewhere. There
    oneDNN's kernels add two uint8 x int8 products in a saturating int16 (vpmaddubsw), and 255 x 127 x 2 overflows
    it: on an AVX2-only CPU a worst-case sum came out at half its value and random codes 4% off (tests/test_int8.py);
    255 x 63 x 2 = 32,130 fits. The cost is one bit of weight precision, where PyTorch's FBGEMM gives up one of the
    activations' (reduce_range) for the same reason."""
    return 127 if cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"} else 63


class QConv:
    """One convolution: uint8 in (scale, zero point `qin`), uint8 out (`qout`) or float32 (`qout` None)."""

    def __init__(self, s, qin: QParams, qout: QParams | None):  # s: a fast.Conv
        w = s.weight.float()
        # symmetric per output channel over [-L, L] (-128 would have no positive twin; L: weight_levels)
        levels = weight_levels()
        self.w_scale = (w.abs().flatten(1).amax(1) / levels).clamp_min(1e-12).double()
        self.w = torch.round(w / self.w_scale.float()[:, None, None, None]).clamp_(-levels, levels).to(torch.int8)
        self.w = self.w.contiguous(memory_format=torch.channels_last)
        self.w_zp = torch.zeros(len(self.w_scale), dtype=torch.int64)
        self.bias, self.padding, self.relu, self.qin, self.qout = s.bias.float(), s.padding, s.relu, qin, qout
        # An input zero point (the first layer's: an image minus its mean has both signs) is folded away: the codes
        # padded here with the zero point's code (real 0.0), the kernel told zero point 0 and no padding, and the
        # codes' constant offset, scale x zero point x the weights' sum, taken out of the bias. Given the zero point,
        # oneDNN computes its compensation on every call: VGG-16's conv1_1 ran 1.20-1.39x slower that way
        # (benchmarks/int8_zero_point.py, AVX2 EPYC). The integer products are the same; the bias's float rounding
        # moves about one output code in 100,000 by one.
        self.pad_code = self.pad = 0
        if qin.zero_point:
            offset = (self.w.double().flatten(1).sum(1) * self.w_scale * (qin.scale * qin.zero_point)).float()
            self.bias = self.bias - offset
            self.pad_code, self.pad = qin.zero_point, self.padding
            self.padding, self.qin = 0, QParams(qin.scale, 0)
        self._packed: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def packed(self, shape: tuple) -> torch.Tensor:
        with self._lock:  # streams (share.py) call one net from two threads
            return self._packed_for(shape)

    def _packed_for(self, shape: tuple) -> torch.Tensor:
        if shape not in self._packed:
            self._packed[shape] = torch.ops.onednn.qconv_prepack(
                self.w, self.w_scale, self.qin.scale, self.qin.zero_point, [1, 1], [self.padding] * 2, [1, 1], 1,
                list(shape))
            while len(self._packed) > 2:  # a crop batch size and a dense size stay packed, as in the bf16 chain
                self._packed.popitem(last=False)
        self._packed.move_to_end(shape)
        return self._packed[shape]

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        out = self.qout or QParams(1.0, 0)
        if self.pad:  # an input zero point folded away (__init__)
            q = pad_codes(q, self.pad, self.pad_code)
        return torch.ops.onednn.qconv2d_pointwise(
            q, self.qin.scale, self.qin.zero_point, self.packed(tuple(q.shape)), self.w_scale, self.w_zp, self.bias,
            [1, 1], [self.padding] * 2, [1, 1], 1, out.scale, out.zero_point,
            None if self.qout else torch.float32, "relu" if self.relu else "none", [], "")


def pad_codes(q: torch.Tensor, p: int, code: int) -> torch.Tensor:
    """uint8 maps (channels-last) with a border of `p` pixels of `code`, channels-last."""
    n, c, h, w = q.shape
    out = torch.full((n, h + 2 * p, w + 2 * p, c), code, dtype=q.dtype).permute(0, 3, 1, 2)
    out[:, :, p:p + h, p:p + w] = q
    return out


class MaxPool(nn.Module):
    """k x k, stride k max-pooling (floor, VGG's only kind) of maps of any dtype, uint8 codes included (PyTorch has
    no max_pool2d for uint8, and its quantised one costs a copy back to plain uint8 here): rows pairwise, then
    columns, on views of the NHWC memory; channels-last out. The float chains (fast.py) pool with it too: at one
    thread it ran 1.7-3.8x max_pool2d on the study's 1/8-width maps (8-64 channels; max_pool2d also writes int64
    indices), 1.0-1.7x on VGG-16's (benchmarks/inference_modes.py --section pool, BENCHMARKS.md)."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    @staticmethod
    def plain(m: nn.Module) -> bool:
        return (isinstance(m, nn.MaxPool2d) and m.kernel_size == m.stride and isinstance(m.kernel_size, int)
                and m.padding == 0 and m.dilation == 1 and not m.ceil_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        k, h2, w2 = self.k, h // self.k, w // self.k
        v = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)[:, :h2 * k, :w2 * k]
        v = v.reshape(n, h2, k, w2 * k * c)  # a view: only the sizes of the cut dimensions changed
        rows = v[:, :, 0]
        for i in range(1, k):
            rows = torch.maximum(rows, v[:, :, i])
        cols = rows.view(n, h2, w2, k, c)
        out = cols[:, :, :, 0]
        for i in range(1, k):
            out = torch.maximum(out, cols[:, :, :, i])
        return out.permute(0, 3, 1, 2)  # NCHW view of NHWC memory


class Int8Chain:
    """The chain `steps` (fast.chain: a fast.Conv has a weight, a fast.Op a module; fast.py imports this module, so
    the steps are told apart by what they hold) calibrated on `batches` (float images of any sizes) and quantised.
    Calling it with float images gives what the float chain gives (float32), computed in 8 bits."""

    def __init__(self, steps: list, batches: tuple[torch.Tensor, ...]):
        ranges = self._ranges(steps, batches)
        self.qin = QParams.of_range(*ranges[0])
        self.ops: list = []  # callables, one after another, from the input's uint8 codes to the output
        q: QParams | None = self.qin  # the codes flowing at this point (None: float)
        for i, s in enumerate(steps):
            ends = i == len(steps) - 1 or (hasattr(steps[i + 1], "module") and not MaxPool.plain(steps[i + 1].module))
            if hasattr(s, "weight"):
                qout = None if ends else QParams.of_range(*ranges[i + 1])
                if q is None:  # after a float op
                    q = QParams.of_range(*ranges[i])
                    self.ops.append(q.quantize)
                self.ops.append(QConv(s, q, qout))
                q = qout
            elif MaxPool.plain(s.module) and q is not None:
                self.ops.append(MaxPool(s.module.kernel_size))
            else:
                if q is not None:
                    self.ops.append(q.dequantize)
                self.ops.append(s.module)
                q = None
        self.qout = q

    @staticmethod
    @torch.inference_mode()
    def _ranges(steps: list, batches: tuple[torch.Tensor, ...]) -> list[tuple[float, float]]:
        """(min, max) of the chain's input and of every step's output over the calibration images."""
        lo = [float("inf")] * (len(steps) + 1)
        hi = [float("-inf")] * (len(steps) + 1)
        for x in batches:
            y = x.float()
            for i in range(len(steps) + 1):
                if i:
                    s = steps[i - 1]
                    if hasattr(s, "weight"):
                        y = F.conv2d(y, s.weight, s.bias, padding=s.padding)
                        y = y.relu_() if s.relu else y
                    else:
                        y = s.module(y)
                lo[i], hi[i] = min(lo[i], float(y.min())), max(hi[i], float(y.max()))
        return list(zip(lo, hi))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self.qin.quantize(x)
        for op in self.ops:
            y = op(y)
        return self.qout.dequantize(y) if self.qout is not None else y
