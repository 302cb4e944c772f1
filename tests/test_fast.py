"""The fast inference chain (fused oneDNN convolutions, Winograd in fp32 and bf16, int8) against the reference VGG:
crops and score maps of any size, truncation at a named layer, batch-norm folding, precision resolution."""
import pytest
import torch
import torch.nn.functional as F

import verydeep as vd
from verydeep import fast
from verydeep.errors import UserError
from verydeep.fast import Conv, FastVGG, Winograd
from verydeep.int8 import MaxPool
from verydeep.precision import Precision, native_bf16, onednn_bf16

# oneDNN's bf16 chain (packed weights, Winograd, streams) exists where oneDNN runs bf16; elsewhere (AVX2-only CPUs)
# bf16 inference runs PyTorch's eager kernels (test_bf16_without_onednn_runs_the_eager_chain)
needs_onednn_bf16 = pytest.mark.skipif(not onednn_bf16(), reason="oneDNN has no bf16 on this CPU (AVX2 only)")


def small(name="A", seed=0, **kw):
    torch.manual_seed(seed)
    m = vd.vgg(name, crop_size=32, width=0.125, fc_width=64, num_classes=10, init="kaiming", **kw).eval()
    for mod in m.modules():  # non-trivial batch-norm statistics, so that folding them is tested
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return m


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("shape", [(3, 5, 13, 17), (2, 4, 61, 66), (1, 3, 1, 1), (5, 6, 8, 4)])
@pytest.mark.parametrize("relu", [False, True])
def test_winograd_equals_direct_convolution(shape, relu):
    """Partial tiles (sizes not a multiple of 4), chunks of whole images and of tile rows, a 1x1 map."""
    n, c, h, w = shape
    torch.manual_seed(0)
    weight, bias = torch.randn(7, c, 3, 3), torch.randn(7)
    x = torch.randn(n, c, h, w).contiguous(memory_format=torch.channels_last)
    ref = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    ref = ref.relu() if relu else ref
    layer = Winograd(Conv(weight, bias, 1, relu))
    for _ in range(2):  # the second call reuses the buffers: stale padding would show
        out = layer(x)
        assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
        assert rel(out.double(), ref) < 1e-5


@pytest.mark.parametrize("shape", [(3, 5, 13, 17), (2, 4, 61, 66), (1, 3, 1, 1)])
def test_bf16_winograd_is_f2x2_within_a_small_multiple_of_direct_bf16s_error(shape):
    """bf16 runs F(2x2, 3x3) in bf16 (partial tiles, chunks, a 1x1 map): its error against float64 stays within a
    small multiple of the direct bf16 convolution's (F(4x4) in bf16 is about 11x: benchmarks/winograd_layers.py)."""
    n, c, h, w = shape
    torch.manual_seed(0)
    weight, bias = torch.randn(7, c, 3, 3), torch.randn(7)
    x = torch.randn(n, c, h, w).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    ref = F.conv2d(x.double(), weight.double(), bias.double(), padding=1).relu()
    direct = F.conv2d(x, weight.to(torch.bfloat16), bias.to(torch.bfloat16), padding=1).relu()
    layer = Winograd(Conv(weight, bias, 1, True), dtype=torch.bfloat16)
    assert layer.m == 2 and layer.u.dtype == torch.bfloat16
    err = lambda y: ((y.double() - ref).norm() / ref.norm()).item()  # noqa: E731
    for _ in range(2):  # buffers reused
        out = layer(x)
        assert out.dtype == torch.bfloat16 and out.shape == ref.shape
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert err(out) < max(4 * err(direct), 1e-2)


@needs_onednn_bf16
def test_bf16_chain_runs_winograd_close_to_direct(monkeypatch):
    # every 3x3 layer of a bf16 chain by F(2x2): crops and odd-sized maps stay within bf16's tolerance of the fp32
    # reference, as the direct bf16 chain does
    monkeypatch.setattr(fast, "WINOGRAD_MIN_CHANNELS", 1)
    m = small("D")
    wino, direct = FastVGG(m, "bf16", winograd=True), FastVGG(m, "bf16", winograd=False)
    assert "winograd" in wino.kernels() and "winograd" not in direct.kernels()
    x, big = torch.randn(4, 3, 32, 32), torch.randn(2, 3, 45, 61)
    with torch.inference_mode():
        ref, ref_map = m(x), m.score_map(big)
    for net in (wino, direct):
        assert rel(net(x), ref) < 5e-2 and rel(net.score_map(big), ref_map) < 5e-2
    assert wino.score_map(big).shape == ref_map.shape


@pytest.mark.parametrize("winograd_from", [None, 1])  # the default threshold, and every 3x3 layer by Winograd
@pytest.mark.parametrize("name", ["A", "A-LRN", "C", "E", "vgg11_bn"])
def test_fp32_equals_reference_on_crops_and_maps(name, winograd_from, monkeypatch):
    m = small(name)
    if winograd_from:
        monkeypatch.setattr(fast, "WINOGRAD_MIN_CHANNELS", winograd_from)
    net = FastVGG(m, "fp32", winograd=True)
    n_conv3 = sum(1 for x in m.features if isinstance(x, torch.nn.Conv2d) and x.kernel_size == (3, 3))
    assert net.kernels().count("winograd") == (n_conv3 if winograd_from else 0)
    x, big = torch.randn(3, 3, 32, 32), torch.randn(2, 3, 45, 61)  # odd sizes: pooling floors, maps 2x1
    with torch.inference_mode():
        ref, ref_map = m(x), m.score_map(big)
    assert rel(net(x), ref) < 1e-4
    out = net.score_map(big)
    assert out.shape == ref_map.shape and out.dtype == torch.float32
    assert rel(out, ref_map) < 1e-4


@pytest.mark.parametrize("name", ["C", "E"])
def test_a_score_map_size_met_first_runs_its_head_as_a_matrix_product_then_is_packed(name, monkeypatch):
    """fp32: a new input size runs the unpadded layers that do not cover their input (fc6 as a 2x2 convolution at a
    64 crop, fc7, fc8 and C's 1x1 layers) as matrix products (fast.Gemm) and packs nothing; the size met again is
    packed and kept. Both give the eager net's score maps; on crops the head covers its input: packed at once."""
    torch.manual_seed(0)
    m = vd.vgg(name, crop_size=64, width=0.125, fc_width=64, num_classes=10, init="kaiming").eval()
    net = FastVGG(m, "fp32")
    calls = []
    monkeypatch.setattr(fast.Gemm, "__call__", lambda self, y, f=fast.Gemm.__call__: calls.append(self.k) or f(self, y))
    big, other = torch.randn(2, 3, 130, 99), torch.randn(1, 3, 64, 100)  # maps 4x3 and 2x3 before fc6
    with torch.inference_mode():
        ref_big, ref_other = m.score_map(big), m.score_map(other)
    ones = [(1, 1)] * (3 if name == "C" else 0)  # C's 1x1 layers (conv3_3, conv4_3, conv5_3)
    first = net.score_map(big)
    assert calls == ones + [(2, 2), (1, 1), (1, 1)] and net.packed_sizes == 0
    assert first.shape == ref_big.shape == (2, 10, 3, 2) and rel(first, ref_big) < 1e-4
    calls.clear()
    assert rel(net.score_map(other), ref_other) < 1e-4 and len(calls) == len(ones) + 3
    calls.clear()
    again = net.score_map(big)  # met again: packed, kept
    assert not calls and net.packed_sizes == 1 and rel(again, ref_big) < 1e-4
    with torch.inference_mode():
        ref = m(x := torch.randn(3, 3, 64, 64))
    assert rel(net(x), ref) < 1e-4 and calls == ones  # a crop's head covers its 2x2 input: packed
    assert net.packed_sizes == (1 if name == "C" else 2)  # nothing ran as a matrix product (E): kept at once


@pytest.mark.parametrize("precision, tol", [("fp32", 1e-4), pytest.param("bf16", 5e-2, marks=needs_onednn_bf16)])
def test_winograd_or_direct_timed_once_per_size_class(precision, tol, monkeypatch):
    # winograd="auto": every eligible layer runs whichever kernel it timed faster on the first input of a size class
    # (pixels to a power of two), remembered; the results are the convolution's either way
    monkeypatch.setattr(fast, "WINOGRAD_MIN_CHANNELS", 1)
    m = small("A")
    net = FastVGG(m, precision)
    picks = [op for op in net._ops if isinstance(op, fast.Pick)]
    assert len(picks) == net.kernels().count("winograd|onednn") == 8
    x, big = torch.randn(3, 3, 32, 32), torch.randn(2, 3, 45, 61)
    with torch.inference_mode():
        ref, ref_map = m(x), m.score_map(big)
    assert rel(net(x), ref) < tol and rel(net.score_map(big), ref_map) < tol
    verdicts = [dict(p.chosen) for p in picks]
    assert all(set(v.values()) <= {"winograd", "onednn"} for v in verdicts)
    assert all(len(v) == 2 for v in verdicts[:6])  # crops and maps: two size classes until the maps meet at 2x2
    timed = []
    monkeypatch.setattr(fast.time, "perf_counter", lambda: timed.append(1) or 0.0)
    assert rel(net(x[:2]), ref[:2]) < tol  # 2 crops: the same size class as 3 at the first layers
    assert [dict(p.chosen) for p in picks] == verdicts and not timed  # nothing timed again


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=needs_onednn_bf16)])
def test_streams_compute_what_one_stream_does(precision, monkeypatch):
    # a batch in two streams (one thread each, fast.STREAMS) gives the single-stream results, crops and maps; the
    # Winograd layers' buffers are per thread, and the thread count is restored
    monkeypatch.setattr(fast, "WINOGRAD_MIN_CHANNELS", 1)
    m = small("D")
    net = FastVGG(m, precision)
    x, big = torch.randn(4, 3, 32, 32), torch.randn(2, 3, 45, 61)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(fast, "STREAMS", 1)
        one, one_map = net(x), net.score_map(big)
        monkeypatch.setattr(fast, "STREAMS", 2)
        two, two_map = net(x), net.score_map(big)
        odd = net(x[:3])  # not divisible: one stream
        assert torch.get_num_threads() == 2
        # each stream runs on threads / 2 OpenMP threads, also after the caller's count changed (the count is a
        # per-thread setting that a pool thread otherwise keeps from its first use): a last step records it
        seen = []
        packed = net._ops_for
        monkeypatch.setattr(net, "_ops_for", lambda shape: packed(shape) + [
            lambda y: (seen.append(torch.get_num_threads()), y)[1]])
        torch.set_num_threads(4)
        net(x)
        assert seen == [2, 2]
    finally:
        torch.set_num_threads(threads)
    tol = 1e-5 if precision == "fp32" else 1e-2
    assert rel(two, one) < tol and rel(two_map, one_map) < tol and rel(odd, one[:3]) < tol


@pytest.mark.parametrize("precision, tol, name", [("bf16", 5e-2, "D"), ("int8", 0.15, "D"), ("int8", 0.15, "A-LRN")])
def test_reduced_precisions_stay_close(precision, tol, name):
    m = small(name)  # A-LRN: int8 computes the LRN in float between a dequantisation and a quantisation
    x = torch.randn(16, 3, 32, 32)
    big = torch.randn(1, 3, 40, 72)
    net = FastVGG(m, precision)
    if precision == "int8":
        net.calibrate(x, big)
    with torch.inference_mode():
        ref = m(x)
        ref_map = m.score_map(big)
    out = net(x)
    assert torch.isfinite(out).all() and rel(out, ref) < tol
    assert net.score_map(big).shape == ref_map.shape == (1, 10, 1, 2)
    assert rel(net.score_map(big), ref_map) < tol


def test_int8_streams_compute_what_one_stream_does(monkeypatch):
    m = small("D")
    net = FastVGG(m, "int8")
    x = torch.randn(4, 3, 32, 32)
    net.calibrate(x)
    one = net(x)
    monkeypatch.setattr(fast, "STREAMS", 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = net(x)  # halves on two pool threads, weights packed for the half batch under a lock
    finally:
        torch.set_num_threads(threads)
    assert torch.allclose(two, one, atol=1e-5)


def test_int8_calibrates_once_and_is_deterministic():
    m = small("A")
    net = FastVGG(m, "int8")
    x = torch.randn(8, 3, 32, 32)
    net.calibrate(x)
    a = net(x[:2])
    b = net(x[:2])
    assert torch.equal(a, b)
    assert net.calibrated


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8])
@pytest.mark.parametrize("shape", [(2, 5, 9, 7), (1, 3, 2, 2), (3, 8, 16, 12)])
def test_max_pool_equals_torch(dtype, shape):
    x = (torch.randn(shape) * 60 + 100).clamp(0, 255).to(dtype)
    for x in (x, x.contiguous(memory_format=torch.channels_last)):  # any layout in, channels-last out
        out = MaxPool(2)(x)
        assert torch.equal(out, F.max_pool2d(x.float(), 2).to(dtype))  # odd sizes floor
        assert out.is_contiguous(memory_format=torch.channels_last)


def test_int8_ends_in_float():
    # the chain stopped before ReLU (negative features) or after a pool: float outputs close to fp32's
    m = small("B")
    big = torch.randn(2, 3, 48, 40)
    for layer in ("conv5_2", "pool5"):
        net = FastVGG(m, "int8", upto=layer)
        net.calibrate(big)
        with torch.inference_mode():
            ref = m.extract(big, [layer], dense=True)[layer]
        out = net.score_map(big)
        assert out.dtype == torch.float32 and out.shape == ref.shape and rel(out, ref) < 0.1
    assert (out >= 0).all() and (FastVGG(m, "int8", upto="conv5_2").score_map(big) < 0).any()


@pytest.mark.parametrize("layer", ["conv5_2", "relu5_2", "pool5", "fc6", "relu7", "drop7"])
def test_upto_matches_extract(layer):
    m = small("B")
    big = torch.randn(2, 3, 48, 40)
    with torch.inference_mode():
        ref = m.extract(big, [layer], dense=True)[layer]
    out = FastVGG(m, "fp32", upto=layer).score_map(big)
    assert out.shape == ref.shape and rel(out, ref) < 1e-4


def test_errors_and_auto():
    m = small("A")
    with pytest.raises(UserError, match="no layer"):
        FastVGG(m, "fp32", upto="conv9_9")
    with pytest.raises(UserError, match="choose one of"):
        Precision.resolve("fp8")
    with pytest.raises(UserError, match="CPU only"):
        Precision.resolve("int8", "cuda")
    with pytest.raises(ValueError, match="smaller than"):
        FastVGG(m, "fp32").score_map(torch.randn(1, 3, 16, 40))
    with pytest.raises(ValueError, match="crop"):
        FastVGG(m, "fp32")(torch.randn(1, 3, 40, 40))
    assert Precision.resolve("auto", "cpu").name == ("bf16" if native_bf16(torch.device("cpu")) else "fp32")
    with pytest.raises(UserError, match="int8 is for inference"):
        Precision.resolve("int8", "cpu", training=True)


@needs_onednn_bf16
def test_bf16_packing_per_size_is_bounded_and_stable():
    m = small("A")
    net = FastVGG(m, "bf16")
    sizes = [torch.randn(2, 3, 32, 32), torch.randn(1, 3, 40, 56), torch.randn(3, 3, 48, 48)]
    first = net.score_map(sizes[0])
    for x in sizes[1:]:
        net.score_map(x)
    assert net.packed_sizes == 2  # least recently used packing dropped
    torch.testing.assert_close(net.score_map(sizes[0]), first)  # repacked for it, same numbers


def test_bf16_without_onednn_runs_the_eager_chain(monkeypatch, caplog):
    # a CPU whose oneDNN has no bf16 (AVX2 only: packing a bf16 weight raises there) runs bf16 inference on PyTorch's
    # eager kernels, close to fp32 on crops and maps, and says once that bf16 is emulated there
    import verydeep.precision as P

    monkeypatch.setattr(fast, "onednn_bf16", lambda: False)
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"avx2"}))
    P._warn_emulated.cache_clear()
    m = small("D")
    with caplog.at_level("WARNING", logger="verydeep"):
        net = FastVGG(m, "bf16")
        FastVGG(m, "bf16")
    assert net.kernels() == ["eager"] and net.precision == "bf16"
    assert sum("no native bf16" in r.getMessage() for r in caplog.records) == 1
    assert Precision.resolve("auto", "cpu").name == "fp32"
    x, big = torch.randn(4, 3, 32, 32), torch.randn(2, 3, 45, 61)
    with torch.inference_mode():
        ref, ref_map = m(x), m.score_map(big)
        out, out_map = net(x), net.score_map(big)
    assert out.dtype == out_map.dtype == torch.float32 and out_map.shape == ref_map.shape
    assert rel(out, ref) < 5e-2 and rel(out_map, ref_map) < 5e-2
