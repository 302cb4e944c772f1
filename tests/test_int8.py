"""int8.py's convolution against exact integer arithmetic: what oneDNN computes from the codes must be the convolution
of the codes, on every CPU (without VNNI its kernels sum pairs of 8-bit products in a saturating int16)."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from verydeep import int8
from verydeep.int8 import QConv, QParams


def qconv(weight: torch.Tensor) -> QConv:
    # scale 1, zero point 0 in, float32 out: the output is the integer sum times the weights' scale
    s = SimpleNamespace(weight=weight, bias=torch.zeros(len(weight)), padding=1, relu=False)
    return QConv(s, QParams(1.0, 0), None)


@pytest.mark.parametrize("case", ["largest codes, weights of one sign", "random codes and weights"])
def test_qconv_is_the_exact_integer_convolution_of_its_codes(case):
    torch.manual_seed(0)
    if case.startswith("largest"):  # every pair of products at its largest: 255 x 127 x 2 overflows an int16
        weight, codes = torch.ones(8, 64, 3, 3), torch.full((1, 64, 6, 6), 255, dtype=torch.uint8)
    else:
        weight, codes = torch.randn(32, 64, 3, 3), torch.randint(0, 256, (2, 64, 12, 12), dtype=torch.uint8)
    conv = qconv(weight)
    codes = codes.contiguous(memory_format=torch.channels_last)
    exact = F.conv2d(codes.double(), conv.w.double() * conv.w_scale[:, None, None, None], padding=1)
    out = conv(codes)
    assert out.dtype == torch.float32
    assert ((out.double() - exact).abs().max() / exact.abs().max()).item() < 1e-6


def test_weight_codes_fit_the_cpus_8_bit_products(monkeypatch):
    # 7-bit weights where the CPU has no VNNI or AMX (the int16 pair sums then cannot overflow), 8-bit where it has
    for flags, levels in (({"avx2", "fma"}, 63), ({"avx512f", "avx512bw"}, 63), ({"avx2", "avx_vnni"}, 127),
                          ({"avx512_vnni"}, 127), ({"amx_int8", "amx_bf16"}, 127)):
        monkeypatch.setattr(int8, "cpu_flags", lambda flags=flags: frozenset(flags))
        assert int8.weight_levels() == levels
        assert qconv(torch.randn(4, 3, 3, 3)).w.abs().amax().item() == levels


def test_an_input_zero_point_is_folded_and_the_padding_stays_real_zero():
    # the first layer's input (an image minus its mean) has a zero point: QConv pads with its code and takes the
    # codes' offset out of the bias; the result must be the convolution of the real values, zero-padded
    torch.manual_seed(0)
    qin = QParams.of_range(-123.7, 151.1)
    assert qin.zero_point > 0
    layer = SimpleNamespace(weight=torch.randn(16, 3, 3, 3) * 0.1, bias=torch.randn(16), padding=1, relu=False)
    conv = QConv(layer, qin, None)
    codes = torch.randint(0, 256, (2, 3, 9, 13), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    real = (codes.double() - qin.zero_point) * qin.scale
    exact = F.conv2d(real, conv.w.double() * conv.w_scale[:, None, None, None], layer.bias.double(), padding=1)
    out = conv(codes)
    assert out.shape == exact.shape
    assert ((out.double() - exact).abs().max() / exact.abs().max()).item() < 1e-5
    # padded with code 0 instead, the border would be off by the zero point's worth
    wrong = F.conv2d(F.pad(real, (1, 1, 1, 1), value=-qin.zero_point * qin.scale),
                     conv.w.double() * conv.w_scale[:, None, None, None], layer.bias.double())
    assert (wrong - exact).abs().max().item() > 1.0
