"""torchvision state dicts and verydeep's own format; malformed and mismatched files."""
import os
import pickle

import numpy as np
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
    m = vd.load(path, name).eval()
    assert m.config == src.config  # classes, FC width, width and crop inferred from the file
    assert m.input_convention == vd.TORCHVISION
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(m(x), src(x), rtol=0, atol=0)


def test_stated_preprocessing_and_pooling_override_the_files_origin(tmp_path):
    # Caffe weights saved under torchvision's keys (e.g. vgg16-00b39a1b.pth): the keys say torchvision, the user
    # states caffe, in the API and on the command line
    from verydeep.options import NetOptions

    _, sd = _tv_state_dict("vgg16")
    torch.save(sd, tmp_path / "w.pth")
    assert vd.load(tmp_path / "w.pth", "vgg16").input_convention == vd.TORCHVISION
    m = vd.load(tmp_path / "w.pth", "vgg16", preprocess=vd.CAFFE, pooling="ceil")
    assert m.input_convention == vd.CAFFE and m.card.pooling == "ceil"
    assert all(p.ceil_mode for p in m.features if isinstance(p, torch.nn.MaxPool2d))
    net = NetOptions(weights=[str(tmp_path / "w.pth")], model="vgg16", preprocess="caffe", pooling="ceil").net()
    assert net.input_convention == vd.CAFFE and net.card.pooling == "ceil"


def test_torchvision_preprocess_convention():
    m = tiny("vgg16")
    m.card = m.card.but(preprocess=vd.TORCHVISION)
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
    src.card = src.card.but(preprocess=vd.Preprocess("RGB", 255.0, (120.0, 110.0, 100.0), (1.0, 1.0, 1.0)),
                            class_names=tuple(f"c{i}" for i in range(7)))
    vd.save(src, tmp_path / "a.safetensors")
    assert detect_format(tmp_path / "a.safetensors") == "verydeep"
    m = vd.load(tmp_path / "a.safetensors").eval()
    assert m.card == src.card  # the whole card travels
    assert m.config == src.config and m.input_convention == src.input_convention
    assert m.class_names == src.class_names
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(m(m.preprocess(x)), src(src.preprocess(x)))
    with pytest.raises(vd.WeightsError, match="holds a A-LRN model, not D"):
        vd.load(tmp_path / "a.safetensors", "D")
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # atomic write left no temp file


def test_mismatch_names_the_layer_and_both_shapes(tmp_path):
    # A 96-crop file (fc6 sees 3x3 pool5) loaded into a 64-crop model (2x2).
    src, sd = _tv_state_dict("vgg16", crop_size=96)
    torch.save(sd, tmp_path / "w.pth")
    c = src.feature_channels
    with pytest.raises(vd.WeightsError) as e:
        vd.load(tmp_path / "w.pth", "vgg16", crop_size=64)
    assert str(e.value) == (f"{tmp_path / 'w.pth'}: fc6.weight: file has (32, {c * 9}), "
                            f"model expects (32, {c * 4})")
    with pytest.raises(vd.WeightsError, match="file has 13 conv layers, model E has 16"):
        vd.load(tmp_path / "w.pth", "E")
    with pytest.raises(vd.WeightsError, match="use a \\*_bn model"):
        torch.save(_tv_state_dict("vgg16_bn")[1], tmp_path / "bn.pth")
        vd.load(tmp_path / "bn.pth", "vgg16")


def test_full_size_mismatch_message(tmp_path):
    # The example: an fc6 built for 3x3 pool5 in a 224 model.
    sd = {k: torch.zeros(v) for k, v in torchvision_layout("D", False).items()}
    sd["classifier.0.weight"] = torch.zeros(4096, 9216)
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(vd.WeightsError, match=r"fc6.weight: file has \(4096, 9216\), model expects \(4096, 25088\)"):
        vd.load(tmp_path / "w.pth", "D", crop_size=224)


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
        with pytest.raises(vd.WeightsError, match="not loaded: its pickle calls posix.system"):
            vd.load(p, "A")
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
        vd.load(p, "A")
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(vd.WeightsError, match="no such file"):
        vd.load(tmp_path / "nope.pth", "A")
    with pytest.raises(vd.WeightsError, match="is a directory"):
        vd.load(tmp_path, "A")


def test_nan_weights_rejected(tmp_path):
    src, sd = _tv_state_dict("vgg11")
    sd["features.3.weight"][0, 0, 0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.pth")
    with pytest.raises(vd.WeightsError, match="conv2_1.weight: contains NaN"):
        vd.load(tmp_path / "nan.pth", "A")


def test_notop_files_need_strict_false(tmp_path):
    src, sd = _tv_state_dict("vgg11")
    conv_only = {k: v for k, v in sd.items() if k.startswith("features")}
    torch.save(conv_only, tmp_path / "notop.pth")
    with pytest.raises(vd.WeightsError, match="no fully-connected layers"):
        vd.load(tmp_path / "notop.pth", "A", num_classes=7, width=1 / 16)
    m = vd.load(tmp_path / "notop.pth", "A", strict=False, num_classes=7, crop_size=64, fc_width=32)
    assert torch.equal(m.layer("conv5_2").weight, src.layer("conv5_2").weight)


# ------------------------------------------------------------------------------------------- hostile files
def _h5_with(tmp_path, make):
    import h5py

    path = tmp_path / "w.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"block1_conv1"]
        g = f.create_group("block1_conv1")
        g.attrs["weight_names"] = [b"block1_conv1/kernel:0"]
        make(f, g)
    return path


def test_h5_declaring_more_than_it_holds_is_refused_unread(tmp_path):
    import resource

    path = _h5_with(tmp_path, lambda f, g: g.create_dataset("block1_conv1/kernel:0", shape=(2**31,), dtype="f8"))
    assert path.stat().st_size < 10_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(vd.WeightsError, match="declares over 17,179,869,184 bytes of weights but is"):
        vd.load(path, "vgg16")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: nothing of 16 GiB read


def test_h5_data_outside_the_file_is_refused(tmp_path):
    import h5py

    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)

    def external(f, g):
        g.create_dataset("block1_conv1/kernel:0", shape=(4, 4), dtype="f4",
                         external=[(str(tmp_path / "secret.bin"), 0, 64)])

    with pytest.raises(vd.WeightsError, match="keeps its data outside the file"):
        vd.load(_h5_with(tmp_path, external), "vgg16")

    def link(f, g):
        g["block1_conv1/kernel:0"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/x")

    with pytest.raises(vd.WeightsError, match="is a link to elsewhere"):
        vd.load(_h5_with(tmp_path, link), "vgg16")


def test_hdf5_with_a_layers_group_that_is_not_keras(tmp_path):
    import h5py

    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_group("layers").create_dataset("vars", data=np.zeros(3))
    with pytest.raises(vd.WeightsError) as e:
        vd.load(tmp_path / "x.h5", "vgg16")
    assert "\n" not in str(e.value)


def test_safetensors_header_that_is_a_json_list(tmp_path):
    from safetensors.torch import save_file

    src = tiny("A")
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, tmp_path / "l.safetensors",
              metadata={"verydeep": "[1, 2, 3]"})
    with pytest.raises(vd.WeightsError, match="malformed verydeep header: expected a JSON object, found list"):
        vd.load(tmp_path / "l.safetensors")


@pytest.mark.parametrize("dtype", [torch.int64, torch.complex64])
def test_non_float_tensors_are_refused(tmp_path, dtype):
    src, sd = _tv_state_dict("vgg11")
    sd["features.0.weight"] = sd["features.0.weight"].to(dtype)
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(vd.WeightsError, match=f"conv1_1.weight: holds {dtype} values; weights are floating point"):
        vd.load(tmp_path / "w.pth", "A")


def test_header_config_is_checked_before_the_model_is_allocated(tmp_path):
    """A header claiming a billion classes over small tensors: the shape check runs on the meta device."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    vd.save(tiny("A"), tmp_path / "a.safetensors")
    with safe_open(str(tmp_path / "a.safetensors"), "pt") as f:
        meta, sd = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    header = json.loads(meta["verydeep"])
    header["card"]["config"]["num_classes"], header["card"]["class_names"] = 10**9, None
    save_file(sd, tmp_path / "b.safetensors", metadata={"verydeep": json.dumps(header)})
    with pytest.raises(vd.WeightsError, match=r"fc8.weight: file has \(7, 32\), model expects \(1000000000, 32\)"):
        vd.load(tmp_path / "b.safetensors")


def test_a_lrn_and_a_are_told_apart_where_the_file_says(tmp_path):
    src = tiny("A")
    vd.save(src, tmp_path / "a.safetensors")
    with pytest.raises(vd.WeightsError, match="file holds a A model, not A-LRN"):
        vd.load_into(tiny("A-LRN"), tmp_path / "a.safetensors")
    with pytest.raises(vd.WeightsError, match="file holds a A model, not A-LRN"):
        vd.load(tmp_path / "a.safetensors", "A-LRN")


def test_refused_pickle_is_named_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("evil.pth", "wb") as f:
        torch.save(_Evil(), f)
    with pytest.raises(vd.WeightsError) as e:
        vd.load("evil.pth", "A")
    msg = str(e.value)
    assert msg == ("evil.pth: not loaded: its pickle calls posix.system, which could run code; only tensors and "
                   "plain data are read")
    assert "\x1b" not in msg and "weights_only" not in msg and not os.path.exists("pwned")


def test_training_checkpoint_missing_keys(tmp_path):
    torch.save({"model_config": tiny("A").config.to_dict(), "model": tiny("A").state_dict()}, tmp_path / "c.pt")
    with pytest.raises(vd.WeightsError, match="malformed verydeep checkpoint header"):
        vd.load(tmp_path / "c.pt")


@pytest.fixture
def npz_format():
    """A newcomer's weight format: numpy .npz with conv{i}.w/.b and fc{i}.w/.b in torch layouts, registered the one
    way there is (a module in verydeep/weights would do the same at import)."""
    from verydeep.weights import FORMATS
    from verydeep.weights.base import Layer, Tensors, register

    @register("npz-toy", detect=lambda head, path: path.suffix == ".npz", order=10)
    def read(path):
        with np.load(path) as z:
            layers = lambda kind: [Layer(f"{kind}{i}", torch.from_numpy(z[f"{kind}{i}.w"]),  # noqa: E731
                                         torch.from_numpy(z[f"{kind}{i}.b"]))
                                   for i in range(sum(k.startswith(kind) for k in z.files) // 2)]
            return Tensors("npz-toy", layers("conv"), layers("fc"))
    yield "npz-toy"
    FORMATS.pop("npz-toy")


def test_a_registered_format_is_detected_and_loaded(tmp_path, npz_format):
    src = tiny("A")
    arrays = {}
    for kind in ("conv", "fc"):
        for i, (_, m) in enumerate(l for l in src.weight_layers() if l[0].startswith(kind)):
            arrays[f"{kind}{i}.w"], arrays[f"{kind}{i}.b"] = m.weight.detach().numpy(), m.bias.detach().numpy()
    np.savez(tmp_path / "w.npz", **arrays)
    assert detect_format(tmp_path / "w.npz") == npz_format
    m = vd.load(tmp_path / "w.npz", "A")
    assert m.card.origin == npz_format
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(m(x), src(x))
    with pytest.raises(vd.WeightsError, match="known: caffe, keras, keras-archive, matconvnet, npz-toy, onnx, tf-slim, torchvision, verydeep"):
        (tmp_path / "x.bin").write_bytes(b"nothing known")
        vd.load(tmp_path / "x.bin", "A")


def _timm_state_dict(src):
    # timm's VGG (timm/models/vgg.py): features.N as torchvision; classifier.0 -> pre_logits.fc1 as a kxk conv,
    # classifier.3 -> pre_logits.fc2 as a 1x1 conv, classifier.6 -> head.fc (its pretrained_filter_fn's renaming)
    k, c = src.config.head_kernel, src.feature_channels
    out = {}
    for key, v in src.state_dict().items():
        if key.startswith("classifier.0."):
            key, v = "pre_logits.fc1." + key.split(".")[-1], v.reshape(v.shape[0], c, k, k) if v.ndim == 2 else v
        elif key.startswith("classifier.3."):
            key, v = "pre_logits.fc2." + key.split(".")[-1], v.reshape(v.shape[0], -1, 1, 1) if v.ndim == 2 else v
        elif key.startswith("classifier.6."):
            key = "head.fc." + key.split(".")[-1]
        out[key] = v.clone()
    return out


def _timm_forward(sd, x):
    # timm's forward written out from its layout: features, ConvMlp (conv kxk, ReLU, conv 1x1, ReLU), average pool,
    # head.fc; the conv stack comes from the same numbers through torch.nn.functional, not through verydeep
    f = x
    convs = sorted({int(key.split(".")[1]) for key in sd if key.startswith("features.")})
    for i in convs:
        f = torch.relu(torch.nn.functional.conv2d(f, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], padding=1))
        if i + 2 not in convs:  # a max-pool follows the last conv of each block (the next index is a pool)
            f = torch.nn.functional.max_pool2d(f, 2)
    f = torch.relu(torch.nn.functional.conv2d(f, sd["pre_logits.fc1.weight"], sd["pre_logits.fc1.bias"]))
    f = torch.relu(torch.nn.functional.conv2d(f, sd["pre_logits.fc2.weight"], sd["pre_logits.fc2.bias"]))
    return torch.nn.functional.linear(f.mean((2, 3)), sd["head.fc.weight"], sd["head.fc.bias"])


@pytest.mark.parametrize("container", ["pth", "safetensors"])
def test_timm_state_dict(tmp_path, container):
    from safetensors.torch import save_file

    src = tiny("vgg16")
    sd = _timm_state_dict(src)
    path = tmp_path / ("w.pth" if container == "pth" else "model.safetensors")
    torch.save(sd, path) if container == "pth" else save_file(sd, path)
    m = vd.load(path, "vgg16")
    assert m.card.origin == "timm" and m.input_convention == vd.TORCHVISION
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _timm_forward(sd, x), rtol=1e-5, atol=1e-5)
        big = torch.randn(1, 3, 96, 128)  # timm pools its head's map: verydeep's dense score map, averaged
        torch.testing.assert_close(m.score_map(big).mean((2, 3)), _timm_forward(sd, big),
                                   rtol=1e-5, atol=1e-5)


def test_released_files_are_recognised_by_content(tmp_path, monkeypatch, caplog):
    # Caffe weights under torchvision's keys (jcjohnson's vgg16-00b39a1b.pth) look like torchvision's own file; the
    # content's sha256 prefix (torch.hub's name suffix) tells them apart, whatever the file is called now
    from verydeep.weights import torchvision as tv

    _, sd = _tv_state_dict("vgg11", crop_size=64, width=1 / 16, fc_width=32)
    torch.save(sd, tmp_path / "renamed.pth")
    assert vd.load(tmp_path / "renamed.pth", "vgg11").input_convention == vd.TORCHVISION  # unknown: its keys' origin
    monkeypatch.setitem(tv.KNOWN_FILES, tv.fingerprint(tmp_path / "renamed.pth"), tv.KNOWN_FILES["00b39a1b"])
    m = vd.load(tmp_path / "renamed.pth", "vgg11")
    assert m.input_convention == vd.CAFFE and m.card.origin == "torchvision"
    with caplog.at_level("WARNING", logger="verydeep"):
        m = vd.load(tmp_path / "renamed.pth", "vgg11", preprocess=vd.TORCHVISION)
    assert m.input_convention == vd.TORCHVISION
    assert "authors' Caffe model" in caplog.text and "made for caffe input" in caplog.text


def test_a_classifier_of_nan_loads_as_features_only(tmp_path, caplog):
    # torchvision's vgg16_features-amdegroot-88682ab5.pth fills its classifier with NaN
    src, sd = _tv_state_dict("vgg16", crop_size=64, width=1 / 16, fc_width=32)
    sd = {k: (torch.full_like(v, float("nan")) if k.startswith("classifier") else v) for k, v in sd.items()}
    torch.save(sd, tmp_path / "f.pth")
    with caplog.at_level("WARNING", logger="verydeep"):
        m = vd.load(tmp_path / "f.pth", "vgg16", strict=False, crop_size=64, width=1 / 16)
    assert "all NaN: loaded as a feature-only model" in caplog.text
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m.extract(x, "relu5_3")["relu5_3"], src.extract(x, "relu5_3")["relu5_3"])


@pytest.mark.parametrize("with_fc", [False, True])
def test_gatys_style_file(tmp_path, with_fc):
    # vgg_conv.pth of Gatys' neural style code: conv1_1.weight ... conv5_4.bias (Caffe's VGG-19 weights, so Caffe's
    # input convention); some copies also carry fc6-fc8
    src = tiny("vgg19")
    sd = {}
    for (name, mod) in src.weight_layers():
        if name.startswith("conv") or with_fc:
            sd[f"{name}.weight"], sd[f"{name}.bias"] = mod.weight.detach().clone(), mod.bias.detach().clone()
    torch.save(sd, tmp_path / "vgg_conv.pth")
    if with_fc:
        m = vd.load(tmp_path / "vgg_conv.pth", "vgg19")
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(m(x), src(x), rtol=0, atol=0)
    else:  # a feature-only file: the conv layers, for perceptual losses
        with pytest.raises(vd.WeightsError, match="strict=False"):
            vd.load(tmp_path / "vgg_conv.pth", "vgg19")
        m = vd.load(tmp_path / "vgg_conv.pth", "vgg19", strict=False, crop_size=64, width=1 / 16)
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(m.extract(x, "relu5_4")["relu5_4"], src.extract(x, "relu5_4")["relu5_4"])
    assert m.card.origin == "gatys" and m.input_convention == vd.CAFFE


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_tf_slim_checkpoint_against_tensorflow(tmp_path, arch):
    # A V2 checkpoint written by TensorFlow's own SaveV2 under TF-slim's variable names and layouts (H x W x in x out;
    # fc6-fc8 as VALID convolutions), read by verydeep; the logits of TensorFlow's forward pass of slim's vgg_16 /
    # vgg_19 graph (SAME 3x3 convolutions, VALID 2x2 max-pooling) on the same preprocessed input.
    tf = pytest.importorskip("tensorflow")
    src = tiny(arch)
    convs = [(n, m) for n, m in src.weight_layers() if n.startswith("conv")]
    fcs = [m for n, m in src.weight_layers() if n.startswith("fc")]
    names, tensors = [], []
    for n, m in convs:  # conv3_2 -> vgg_16/conv3/conv3_2
        block = n[4:].split("_")[0]
        names += [f"{arch[:3]}_{arch[3:]}/conv{block}/{n}/weights", f"{arch[:3]}_{arch[3:]}/conv{block}/{n}/biases"]
        tensors += [m.weight.detach().permute(2, 3, 1, 0).numpy(), m.bias.detach().numpy()]
    k = src.config.head_kernel
    for j, m in zip((6, 7, 8), fcs):
        kk = k if j == 6 else 1
        w = m.weight.detach().reshape(m.out_features, -1, kk, kk).permute(2, 3, 1, 0).numpy()
        names += [f"{arch[:3]}_{arch[3:]}/fc{j}/weights", f"{arch[:3]}_{arch[3:]}/fc{j}/biases"]
        tensors += [w, m.bias.detach().numpy()]
    prefix = str(tmp_path / f"{arch[:3]}_{arch[3:]}.ckpt")
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)
    m = vd.load(prefix + ".index", arch)
    assert m.card.origin == "tf-slim" and m.input_convention.mean == (123.68, 116.78, 103.94)
    x = torch.randn(2, 3, 64, 64)
    y = tf.constant(x.permute(0, 2, 3, 1).numpy())
    blocks = [n[4:].split("_")[0] for n, _ in convs] + [None]
    for i in range(len(convs)):
        y = tf.nn.relu(tf.nn.conv2d(y, tensors[2 * i], 1, "SAME") + tensors[2 * i + 1])
        if blocks[i + 1] != blocks[i]:  # the last convolution of a block
            y = tf.nn.max_pool2d(y, 2, 2, "VALID")
    for i, j in enumerate((6, 7, 8)):
        w, b = tensors[2 * len(convs) + 2 * i], tensors[2 * len(convs) + 2 * i + 1]
        y = tf.nn.conv2d(y, w, 1, "VALID") + b
        y = tf.nn.relu(y) if j < 8 else y
    with torch.no_grad():
        torch.testing.assert_close(m(x), torch.from_numpy(tf.squeeze(y, [1, 2]).numpy()), rtol=1e-4, atol=1e-4)


def test_tf_checkpoint_is_recognised_and_needs_tensorflow(tmp_path):
    # a V2 checkpoint's index file ends with TensorFlow's table magic; without TensorFlow: one line naming it
    import importlib.util

    from verydeep.weights.tfslim import TABLE_MAGIC

    (tmp_path / "vgg_16.ckpt.index").write_bytes(b"\0" * 40 + TABLE_MAGIC)
    (tmp_path / "vgg_16.ckpt.data-00000-of-00001").write_bytes(b"\0" * 16)
    for f in ("vgg_16.ckpt.index", "vgg_16.ckpt.data-00000-of-00001"):
        assert vd.weights.detect_format(tmp_path / f) == "tf-slim"
        if importlib.util.find_spec("tensorflow") is None:
            with pytest.raises(vd.WeightsError, match=r"needs TensorFlow \(pip install tensorflow-cpu\)"):
                vd.load(tmp_path / f, "vgg16")
    (tmp_path / "notes.index").write_bytes(b"plain text, not a table")
    with pytest.raises(vd.WeightsError, match="unrecognised weight file format"):
        vd.load(tmp_path / "notes.index", "vgg16")
