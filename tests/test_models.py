"""Models: PAPER.md section 1 (Tables 1-2), dense evaluation (section 3), initialisation (section 2)."""
import math

import pytest
import torch
import torch.nn.functional as F

import verydeep as vd
from verydeep import paper
from verydeep.models import describe, multiply_adds, summary
from verydeep.paper import BLOCKS
from conftest import tiny

# Table 2, as transcribed once in paper.py: exact counts with biases and 1000 classes; multiply-adds at 224 (G).
PAPER_PARAMS, PAPER_PARAMS_M, PAPER_MACS = paper.TABLE2_PARAMS, paper.TABLE2_PARAMS_M, paper.TABLE2_MACS_G


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_parameter_count_equals_paper(name):
    with torch.device("meta"):
        m = vd.vgg(name)
    n = vd.count_parameters(m)
    assert n == PAPER_PARAMS[name]
    assert round(n / 1e6) == PAPER_PARAMS_M[name]
    assert summary(m.config)["params"] == n  # the analytic count used by `verydeep info` agrees


@pytest.mark.parametrize("name", list(PAPER_MACS))
def test_multiply_adds_equal_paper(name):
    cfg = vd.model_config(name)
    assert round(multiply_adds(cfg, 224) / 1e9, 2) == PAPER_MACS[name]
    assert summary(cfg)["macs"] == multiply_adds(cfg, 224)


def test_torchvision_bn_counts():
    # torchvision's published vgg*_bn parameter counts.
    published = {"vgg11_bn": 132_868_840, "vgg13_bn": 133_053_736, "vgg16_bn": 138_365_992, "vgg19_bn": 143_678_248}
    for name, n in published.items():
        with torch.device("meta"):
            assert vd.count_parameters(vd.vgg(name)) == n


def test_weight_layer_depths_and_receptive_fields():
    depth = {"A": 11, "A-LRN": 11, "B": 13, "C": 16, "D": 16, "E": 19, "B-shallow": 8}
    for name, d in depth.items():
        assert summary(vd.model_config(name))["weight_layers"] == d
    # Section 2.3: two stacked 3x3 convs see 5x5, three see 7x7.
    rows = {r.name: r.receptive_field for r in describe(vd.model_config("D"))}
    assert rows["conv1_1"] == 3 and rows["conv1_2"] == 5
    assert rows["conv5_3"] == 196 and rows["pool5"] == 212
    # C's 1x1 layers add no receptive field.
    rows_c = {r.name: r.receptive_field for r in describe(vd.model_config("C"))}
    assert rows_c["conv3_3"] == rows_c["conv3_2"]


def test_registry_lists_every_issue_name():
    names = set(vd.list_models())
    for n in ["A", "A-LRN", "B", "C", "D", "E", "vgg11", "vgg11_lrn", "vgg13", "vgg16_c", "vgg16", "vgg19",
              "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn", "B-shallow"]:
        assert n in names
    assert vd.model_config("vgg16") == vd.model_config("D")
    assert vd.model_config("vgg16_c") == vd.model_config("C")
    assert vd.model_config("vgg11_lrn").lrn
    with pytest.raises(ValueError, match="unknown model"):
        vd.vgg("vgg17")


@pytest.mark.parametrize("name", vd.list_models())
def test_every_model_runs_finite(name):
    m = tiny(name)
    x = torch.randn(2, 3, 64, 64)
    y = m(x)
    assert y.shape == (2, 7) and torch.isfinite(y).all()
    s = m.score_map(torch.randn(1, 3, 96, 160))
    assert s.shape == (1, 7, 2, 4) and torch.isfinite(s).all()


def test_architecture_of_c_and_shallow_b():
    c = vd.vgg("C", init="glorot")
    ks = [m.kernel_size[0] for _, m in c.weight_layers() if _.startswith("conv")]
    assert ks == [3, 3, 3, 3, 3, 3, 1, 3, 3, 1, 3, 3, 1]
    sb = tiny("B-shallow")
    assert [m.kernel_size for n, m in sb.weight_layers() if n.startswith("conv")] == [(5, 5)] * 5
    assert sb(torch.randn(1, 3, 64, 64)).shape == (1, 7)


def test_score_map_equals_forward_on_crop_and_shares_weights():
    m = tiny("D", crop_size=96)
    x = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(m.score_map(x)[:, :, 0, 0], m(x), atol=1e-5, rtol=1e-4)
    # Sharing: a change to the FC weights changes the dense output too.
    with torch.no_grad():
        m.classifier[0].weight.mul_(2)
        assert torch.allclose(m.score_map(x)[:, :, 0, 0], m(x), atol=1e-5, rtol=1e-4)
    assert not any("score" in n for n, _ in m.named_parameters())


def test_score_map_is_the_fc_net_on_every_pool5_window():
    # Dense application (section 3) applies the FC head to every kxk window of pool5. (It is not the crop net on
    # image windows: crops are zero-padded at their borders, the dense net sees real context - the paper's point.)
    m = tiny("A")
    x = torch.randn(1, 3, 64 + 32, 64 + 64)
    with torch.no_grad():
        s = m.score_map(x)
        f = m.features(x)
        assert s.shape[-2:] == (2, 3) and f.shape[-2:] == (3, 4)
        for i in range(2):
            for j in range(3):
                window = f[:, :, i:i + 2, j:j + 2]
                assert torch.allclose(s[:, :, i, j], m.classifier(window.flatten(1)), atol=1e-5, rtol=1e-4)


def test_forward_refuses_other_sizes_and_score_map_small_inputs():
    m = tiny("A")
    with pytest.raises(ValueError, match="score_map"):
        m(torch.randn(1, 3, 96, 96))
    with pytest.raises(ValueError, match="smaller"):
        m.score_map(torch.randn(1, 3, 32, 64))


def test_head_kernel_follows_crop_size():
    assert vd.vgg("A", crop_size=224).classifier[0].in_features == 512 * 7 * 7
    m = tiny("A", crop_size=64)
    assert m.classifier[0].in_features == m.feature_channels * 2 * 2


def test_options_width_fc_channels_dropout():
    m = vd.vgg("A", width=0.5, fc_width=128, in_channels=1, dropout=0.3, num_classes=10, crop_size=32)
    assert m.layer("conv1_1").weight.shape == (32, 1, 3, 3)
    assert m.layer("conv5_2").weight.shape == (256, 256, 3, 3)
    assert m.layer("fc7").weight.shape == (128, 128)
    assert m.layer("drop6").p == 0.3
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="dropout"):
        vd.vgg("A", dropout=1.5)


def test_extract_named_layers_pre_and_post_relu():
    m = tiny("D")
    x = torch.randn(2, 3, 64, 64)
    out = m.extract(x, ["conv1_1", "relu1_1", "pool3", "conv5_3", "pool5", "fc6", "relu6", "fc7", "relu7", "fc8"])
    assert (out["conv1_1"] < 0).any()                       # before ReLU
    assert torch.equal(out["relu1_1"], out["conv1_1"].clamp_min(0))
    assert (out["fc7"] < 0).any() and torch.equal(out["relu7"], out["fc7"].clamp_min(0))
    assert out["pool3"].shape == (2, m.layer("conv3_3").out_channels, 8, 8)
    assert out["relu7"].shape == (2, 32)
    assert torch.allclose(out["fc8"], m(x), atol=1e-6)
    assert torch.equal(m.embed(x), out["relu7"])
    dense = m.extract(torch.randn(1, 3, 96, 96), ["relu7"], dense=True)["relu7"]
    assert dense.shape == (1, 32, 2, 2)
    with pytest.raises(KeyError, match="conv6_1"):
        m.extract(x, ["conv6_1"])
    with pytest.raises(ValueError, match="dense=True"):
        m.extract(torch.randn(1, 3, 96, 96), ["fc6"])


def test_layer_names_follow_caffe():
    m = vd.vgg("A-LRN", init="glorot")
    names = m.layer_names
    assert names[:4] == ["conv1_1", "relu1_1", "norm1", "pool1"]
    assert names[-7:] == ["fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8"]
    bn = tiny("vgg11_bn")
    assert bn.layer_names[:4] == ["conv1_1", "bn1_1", "relu1_1", "pool1"]


def test_lrn_is_krizhevsky():
    # Krizhevsky et al. 2012: b_c = a_c / (k + alpha * sum_{|c'-c|<=n/2} a_c'^2)^beta, k=2, n=5, alpha=1e-4, beta=.75
    m = tiny("A-LRN")
    a = torch.randn(2, 8, 5, 5) * 30
    sq = F.pad(a.pow(2), (0, 0, 0, 0, 2, 2))
    window = sum(sq[:, i:i + 8] for i in range(5))
    want = a / (2 + 1e-4 * window).pow(0.75)
    assert torch.allclose(m.layer("norm1")(a), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True])
def test_lrn_values_and_gradients_are_pytorchs(channels_last):
    # the band-matrix LRN against PyTorch's own, forward and backward, in both memory formats
    lrn = tiny("A-LRN").layer("norm1")
    a = torch.randn(3, 11, 6, 7, dtype=torch.float64) * 30
    if channels_last:
        a = a.contiguous(memory_format=torch.channels_last)
    a.requires_grad_()
    ours, theirs = lrn(a), F.local_response_norm(a, lrn.size, lrn.alpha, lrn.beta, lrn.k)
    assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(theirs)
    assert torch.allclose(*(torch.autograd.grad(y, a, g)[0] for y in (ours, theirs)), rtol=1e-9, atol=1e-12)
    assert ours.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("name", ["A", "A-LRN", "E", "vgg16_bn"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ceil", [False, True])
def test_relu_after_pool_gives_the_layer_orders_values_and_gradients(name, dtype, ceil):
    # VGG._features pools before each ReLU that feeds a pool; the layer order (ReLU, then pool) is the reference.
    # Exactly equal, ties included (bf16 rounds many activations to equal values), floor and ceil pooling.
    m = tiny(name).to(dtype)
    for mod in m.features:
        if isinstance(mod, torch.nn.MaxPool2d):
            mod.ceil_mode = ceil
    x = torch.randn(2, 3, 69, 75).to(dtype).contiguous(memory_format=torch.channels_last)
    ours = m.score_map(x)
    f = m.features(x)
    for _, theirs in m._head(f, dense=True):
        pass
    assert torch.equal(ours, theirs)
    grads, w = [], torch.randn(ours.shape)
    for run in (lambda: m.score_map(x), lambda: list(m._head(m.features(x), dense=True))[-1][1]):
        m.zero_grad()
        (run().float() * w).sum().backward()
        grads.append([p.grad.clone() for p in m.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    crop = torch.randn(3, 3, 64, 64).to(dtype)
    assert torch.equal(m(crop), m.classifier(torch.flatten(m.features(crop), 1)))


def test_init_schemes():
    m = vd.vgg("A", init="paper", crop_size=32)
    w = m.layer("conv5_2").weight
    assert abs(w.std().item() - 0.01) < 5e-4 and abs(w.mean().item()) < 1e-3
    assert all((mod.bias == 0).all() for _, mod in m.weight_layers())
    g = vd.vgg("A", init="glorot", crop_size=32)
    w = g.layer("conv5_2").weight
    fan_in, fan_out = 512 * 9, 512 * 9
    assert w.abs().max() <= math.sqrt(6 / (fan_in + fan_out)) + 1e-7
    assert abs(w.std().item() - math.sqrt(2 / (fan_in + fan_out))) < 1e-3
    k = vd.vgg("A", init="kaiming", crop_size=32)
    assert abs(k.layer("conv5_2").weight.std().item() - math.sqrt(2 / fan_in)) < 1e-3
    with pytest.raises(ValueError):
        vd.vgg("A", init="uniform")


@pytest.mark.parametrize("deeper", ["B", "C", "D", "E"])
def test_init_from_copies_net_a_layers_only(deeper):
    a = tiny("A")
    torch.manual_seed(1)
    d = tiny(deeper)
    before = {n: m.weight.clone() for n, m in d.weight_layers()}
    copied = vd.init_from(d, a)
    assert copied == ["conv1_1", "conv2_1", "conv3_1", "conv3_2", "fc6", "fc7", "fc8"]
    for name, mod in d.weight_layers():
        if name in copied:
            assert torch.equal(mod.weight, a.layer(name).weight) and torch.equal(mod.bias, a.layer(name).bias)
        else:
            assert torch.equal(mod.weight, before[name])  # untouched, fresh init
            if name in a.layer_names:
                assert not torch.equal(mod.weight, a.layer(name).weight)


def test_init_from_rejects_mismatch():
    with pytest.raises(ValueError, match="conv1_1.weight"):
        vd.init_from(tiny("D", width=1 / 8), tiny("A"))
    with pytest.raises(ValueError, match="conv1_1"):
        vd.init_from(tiny("D"), tiny("B-shallow"))


def test_blocks_match_table_1():
    # Table 1, conv widths per block: 64, 128, 256, 512, 512 in every config.
    for cfg, blocks in BLOCKS.items():
        assert [b[0][0] for b in blocks] == [64, 128, 256, 512, 512]
    assert [len(b) for b in BLOCKS["E"]] == [2, 2, 4, 4, 4]
