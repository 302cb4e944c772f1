"""MatConvNet SimpleNN .mat files (imagenet-vgg-verydeep-16/19.mat), written here in the layout of MatConvNet's
import-caffe.py (filters H x W x in x out, RGB first layer, FC layers as convolutions after the last pooling, pool pad
[0 1 0 1], averageImage), old and new field names; read by verydeep, and by an independent reader written the way
neural-style-transfer code indexes these files (scipy.io.loadmat's record arrays)."""
import numpy as np
import pytest
import scipy.io
import torch
import torch.nn.functional as F

import verydeep as vd
from conftest import tiny

MEAN = np.array([123.68, 116.779, 103.939], np.float32)


def write_mat(model, path, newer, v73=False):
    layers = []
    for name, module in zip(model.layer_names, list(model.features) + list(model.classifier)):
        if name.startswith(("conv", "fc")):
            w = module.weight.detach()
            if name.startswith("fc"):
                k = model.config.head_kernel if name == "fc6" else 1
                w = w.reshape(w.shape[0], -1, k, k)
            filters = w.permute(2, 3, 1, 0).numpy().astype(np.float32)  # H x W x in x out
            biases = module.bias.detach().numpy().astype(np.float32).reshape(1, -1)
            layer = {"name": name, "type": "conv", "stride": np.array([[1.0, 1.0]]),
                     "pad": np.array([[1.0] * 4 if name.startswith("conv") else [0.0] * 4])}
            if newer:
                cell = np.empty((1, 2), object)
                cell[0, 0], cell[0, 1] = filters, biases
                layer["weights"] = cell
            else:
                layer["filters"], layer["biases"] = filters, biases
        elif name.startswith("relu"):
            layer = {"name": name, "type": "relu"}
        elif name.startswith("pool"):
            layer = {"name": name, "type": "pool", "method": "max", "pool": np.array([[2.0, 2.0]]),
                     "stride": np.array([[2.0, 2.0]]), "pad": np.array([[0.0, 1.0, 0.0, 1.0]])}
        elif name.startswith("drop"):
            layer = {"name": name, "type": "dropout", "rate": 0.5}
        else:
            continue
        layers.append(layer)
    layers.append({"name": "prob", "type": "softmax"})
    cells = np.empty((1, len(layers)), object)
    for i, layer in enumerate(layers):
        cells[0, i] = layer
    avg = np.tile(MEAN, (model.config.crop_size, model.config.crop_size, 1))  # an average image, as older files
    doc = {"layers": cells, "meta": {"normalization": {"averageImage": MEAN.reshape(3, 1)}}} if newer else \
        {"layers": cells, "normalization": {"averageImage": avg}}
    if v73:  # MATLAB's HDF5 layout, written by hdf5storage (cells as references, structs as groups)
        hdf5storage = pytest.importorskip("hdf5storage")
        for layer in layers:
            for k, v in layer.items():
                layer[k] = np.str_(v) if isinstance(v, str) else v
        hdf5storage.savemat(str(path), doc, format="7.3", matlab_compatible=True)
    else:
        scipy.io.savemat(path, doc)


def neural_style_forward(path, x, newer):
    """The forward pass as neural-style code reads these files: loadmat's record arrays, layers[0][i][0][0], kernels
    taken as H x W x in x out, max-pooling padded as the file says."""
    data = scipy.io.loadmat(str(path))
    layers = data["layers"][0]
    h = x
    for layer in layers:
        rec = layer[0, 0]
        kind = str(rec["type"][0])
        if kind == "conv":
            if newer:
                kernels, bias = rec["weights"][0][0], rec["weights"][0][1]
            else:
                kernels, bias = rec["filters"], rec["biases"]
            kernels = kernels.reshape(kernels.shape + (1,) * (4 - kernels.ndim))
            w = torch.from_numpy(np.ascontiguousarray(kernels.transpose(3, 2, 0, 1)))
            pad = int(rec["pad"][0][0])
            h = F.conv2d(h, w, torch.from_numpy(bias.ravel()), padding=pad)
        elif kind == "relu":
            h = F.relu(h)
        elif kind == "pool":
            t, b, left, r = (int(v) for v in rec["pad"][0])
            h = F.max_pool2d(F.pad(h, (left, r, t, b), value=float("-inf")), 2, 2)
    return h


@pytest.mark.parametrize("newer", [False, True])
@pytest.mark.parametrize("name", ["vgg16", "vgg19"])
def test_matconvnet_file(tmp_path, name, newer):
    src = tiny(name)
    path = tmp_path / f"imagenet-{name}.mat"
    write_mat(src, path, newer)
    check(src, path, name, newer)


@pytest.mark.parametrize("newer", [False, True])
def test_matconvnet_v73_file(tmp_path, newer):
    # the same network in MATLAB v7.3 (HDF5) must load to the same model as its v5 twin
    src = tiny("vgg16")
    write_mat(src, tmp_path / "v5.mat", newer)
    write_mat(src, tmp_path / "v73.mat", newer, v73=True)
    assert (tmp_path / "v73.mat").read_bytes().startswith(b"MATLAB 7.3 MAT-file")
    a, b = vd.load(tmp_path / "v5.mat", "vgg16"), vd.load(tmp_path / "v73.mat", "vgg16")
    assert a.card == b.card
    for (n, x), (_, y) in zip(a.weight_layers(), b.weight_layers()):
        assert torch.equal(x.weight, y.weight) and torch.equal(x.bias, y.bias), n
    check(src, tmp_path / "v5.mat", "vgg16", newer)


def check(src, path, name, newer):
    assert vd.weights.detect_format(path) == "matconvnet"
    m = vd.load(path, name)
    assert m.config == src.config and m.card.origin == "matconvnet"
    assert m.input_convention.order == "RGB" and np.allclose(m.input_convention.mean, MEAN, atol=1e-3)
    assert m.card.pooling == "ceil"  # the importer's pad [0 1 0 1]
    rgb = torch.rand(2, 3, 64, 64)
    x = m.preprocess(rgb)
    torch.testing.assert_close(x, rgb * 255 - torch.from_numpy(MEAN).view(1, 3, 1, 1), rtol=0, atol=1e-3)
    with torch.no_grad():
        want = neural_style_forward(path, x, newer).flatten(1)
        torch.testing.assert_close(m(x), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
        odd = torch.randn(1, 3, 83, 117) * 50  # dense score maps on an odd size: the padded pooling of the file
        torch.testing.assert_close(m.score_map(odd), neural_style_forward(path, odd, newer), rtol=1e-4,
                                   atol=1e-4)


def test_matconvnet_malformed(tmp_path):
    scipy.io.savemat(tmp_path / "x.mat", {"weights": np.zeros(3)})
    with pytest.raises(vd.WeightsError, match="without a `layers` cell"):
        vd.load(tmp_path / "x.mat", "vgg16")
    (tmp_path / "v73.mat").write_bytes(b"MATLAB 7.3 MAT-file, Platform: GLNXA64" + b" " * 90)
    with pytest.raises(vd.WeightsError, match="v73.mat: cannot read as a MATLAB file"):
        vd.load(tmp_path / "v73.mat", "vgg16")
    (tmp_path / "t.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 200)
    with pytest.raises(vd.WeightsError, match="v73.mat|t.mat"):
        vd.load(tmp_path / "t.mat", "vgg16")
