"""torchvision state dicts and verydeep's own format; malformed and mismatched files."""
import os
import pickle

import pytest
import torch

import verydeep as vd
from verydeep.weights import detect_format
from conftest import tiny

# torchvision's published VGG layer lists (torchvision/models/vgg.py, `cfgs`): ints are 3x3 convs, 'M' a max-pool.
TV_CFGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
TV_NAMES = {"vgg11": ("A", False), "vgg13": ("B", False), "vgg16": ("D", False), "vgg19": ("E", False),
            "vgg11_bn": ("A", True), "vgg13_bn": ("B", True), "vgg16_bn": ("D", True), "vgg19_bn": ("E", True)}


def torchvision_layout(cfg, bn, num_classes=1000):
    """The state-dict keys and shapes torchvision's VGG has: features.N indexes conv, [bn,] relu and pool modules."""
    keys, i, c = {}, 0, 3
    for v in TV_CFGS[cfg]:
        if v == "M":
            i += 1
            continue
        keys[f"features.{i}.weight"], keys[f"features.{i}.bias"] = (v, c, 3, 3), (v,)
        if bn:
            for p in ("weight", "bias", "running_mean", "running_var"):
                keys[f"features.{i + 1}.{p}"] = (v,)
            keys[f"features.{i + 1}.num_batches_tracked"] = ()
        i, c = i + (3 if bn else 2), v
    for j, (o, n) in zip((0, 3, 6), ((4096, 512 * 49), (4096, 4096), (num_classes, 4096))):
        keys[f"classifier.{j}.weight"], keys[f"classifier.{j}.bias"] = (o, n), (o,)
    return keys


@pytest.mark.parametrize("name", list(TV_NAMES))
def test_state_dict_layout_equals_torchvision(name):
    with torch.device("meta"):
        m = vd.vgg(name)
    got = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert got == torchvision_layout(*TV_NAMES[name])


def _tv_state_dict(name, **kw):
    m = tiny(name, **kw)
    if m.config.batch_norm:  # non-trivial running statistics
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m, m.state_dict()


@pytest.mark.parametrize("wrap", ["plain", "module", "state_dict", "legacy"])
@pytest.mark.parametrize("name", ["vgg16", "vgg11_bn"])
def test_torchvision_pth_round_trip(tmp_path, name, wrap):
    src, sd = _tv_state_dict(name)
    path = tmp_path / "w.pth"
    if wrap == "module":
        sd = {"module." + k: v for k, v in sd.items()}
    elif wrap == "state_dict":
        sd = {"state_dict": sd, "epoch": 3}
    torch.save(sd, path, _use_new_zipfile_serialization=(wrap != "legacy"))
    assert detect_format(path) == "torchvision"
    m = vd.vgg(name, weights=path).eval()
    assert m.config == src.config  # classes, FC width, width and crop inferred from the file
    assert m.input_convention == vd.TORCHVISION
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(m(x), src(x), rtol=0, atol=0)


def test_torchvision_preprocess_convention():
    m = tiny("vgg16")
    m.input_convention = vd.TORCHVISION
    x = torch.rand(1, 3, 8, 8)
    want = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1)
    torch.testing.assert_close(m.preprocess(x), want)


def test_caffe_preprocess_convention():
    x = torch.rand(1, 3, 4, 4)
    y = vd.CAFFE(x)
    torch.testing.assert_close(y[:, 0], x[:, 2] * 255 - 103.939)  # B
    torch.testing.assert_close(y[:, 2], x[:, 0] * 255 - 123.68)   # R


def test_native_round_trip_keeps_config_preprocess_and_labels(tmp_path):
    src = tiny("A-LRN")
    src.input_convention = vd.Preprocess("RGB", 255.0, (120.0, 110.0, 100.0), (1.0, 1.0, 1.0))
    src.class_names = [f"c{i}" for i in range(7)]
    vd.save(src, tmp_path / "a.safetensors")
    assert detect_format(tmp_path / "a.safetensors") == "verydeep"
    m = vd.load(tmp_path / "a.safetensors").eval()
    assert m.config == src.config and m.input_convention == src.input_convention
    assert m.class_names == src.class_names
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(m(m.preprocess(x)), src(src.preprocess(x)))
    with pytest.raises(vd.WeightsError, match="holds a A-LRN model, not D"):
        vd.vgg("D", weights=tmp_path / "a.safetensors")
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # atomic write left no temp file


def test_mismatch_names_the_layer_and_both_shapes(tmp_path):
    # A 96-crop file (fc6 sees 3x3 pool5) loaded into a 64-crop model (2x2).
    src, sd = _tv_state_dict("vgg16", crop_size=96)
    torch.save(sd, tmp_path / "w.pth")
    c = src.feature_channels
    with pytest.raises(vd.WeightsError) as e:
        vd.vgg("vgg16", weights=tmp_path / "w.pth", crop_size=64)
    assert str(e.value) == (f"{tmp_path / 'w.pth'}: fc6.weight: file has (32, {c * 9}), "
                            f"model expects (32, {c * 4})")
    with pytest.raises(vd.WeightsError, match="file has 13 conv layers, model E has 16"):
        vd.vgg("E", weights=tmp_path / "w.pth")
    with pytest.raises(vd.WeightsError, match="use a \\*_bn model"):
        torch.save(_tv_state_dict("vgg16_bn")[1], tmp_path / "bn.pth")
        vd.vgg("vgg16", weights=tmp_path / "bn.pth")


def test_full_size_mismatch_message(tmp_path):
    # The example: an fc6 built for 3x3 pool5 in a 224 model.
    sd = {k: torch.zeros(v) for k, v in torchvision_layout("D", False).items()}
    sd["classifier.0.weight"] = torch.zeros(4096, 9216)
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(vd.WeightsError, match=r"fc6.weight: file has \(4096, 9216\), model expects \(4096, 25088\)"):
        vd.vgg("D", weights=tmp_path / "w.pth", crop_size=224)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_code_is_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("evil.pth", "wb") as f:
        pickle.dump({"features.0.weight": _Evil()}, f, protocol=2)
    torch.save({"features.0.weight": torch.zeros(1)}, "ok.pth")
    with open("evil2.pth", "wb") as f:  # a zip checkpoint whose pickle holds a callable
        torch.save(_Evil(), f)
    for p in ("evil.pth", "evil2.pth"):
        with pytest.raises(vd.WeightsError, match="cannot read as a PyTorch state dict"):
            vd.vgg("A", weights=p)
    assert not os.path.exists("pwned")


@pytest.mark.parametrize("content,match", [
    (b"", "empty file"),
    (b"hello world, not weights", "unrecognised weight file format"),
    (b"PK\x03\x04truncated zip", "cannot read as a PyTorch state dict"),
    (b"\x89HDF\r\n\x1a\n" + b"\0" * 40, "cannot read as Keras HDF5"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}garbage", "cannot read as safetensors"),
])
def test_malformed_files_give_one_line_errors(tmp_path, content, match):
    p = tmp_path / "bad.bin"
    p.write_bytes(content)
    with pytest.raises(vd.WeightsError, match=match) as e:
        vd.vgg("A", weights=p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(vd.WeightsError, match="no such file"):
        vd.vgg("A", weights=tmp_path / "nope.pth")
    with pytest.raises(vd.WeightsError, match="is a directory"):
        vd.vgg("A", weights=tmp_path)


def test_nan_weights_rejected(tmp_path):
    src, sd = _tv_state_dict("vgg11")
    sd["features.3.weight"][0, 0, 0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.pth")
    with pytest.raises(vd.WeightsError, match="conv2_1.weight: contains NaN"):
        vd.vgg("A", weights=tmp_path / "nan.pth")


def test_notop_files_need_strict_false(tmp_path):
    src, sd = _tv_state_dict("vgg11")
    conv_only = {k: v for k, v in sd.items() if k.startswith("features")}
    torch.save(conv_only, tmp_path / "notop.pth")
    with pytest.raises(vd.WeightsError, match="no fully-connected layers"):
        vd.vgg("A", weights=tmp_path / "notop.pth", num_classes=7, width=1 / 16)
    m = vd.vgg("A", weights=tmp_path / "notop.pth", strict=False, num_classes=7, crop_size=64, fc_width=32)
    assert torch.equal(m.layer("conv5_2").weight, src.layer("conv5_2").weight)
