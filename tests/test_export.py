"""ONNX export checked with ONNX Runtime: the fixed-size logits graph and the dynamic-size score-map graph."""
import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")

from verydeep.export import check_onnx, export_onnx  # noqa: E402
from conftest import tiny  # noqa: E402


def run(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return tiny("C")  # 1x1 and 3x3 convs


def test_logits_graph(model, tmp_path):
    p = export_onnx(model, tmp_path / "m.onnx", "logits")
    for n in (1, 3):
        x = torch.randn(n, 3, 64, 64)
        want = model(x).detach().numpy()
        got = run(p, x)
        assert got.shape == (n, 7)
        assert np.abs(got - want).max() / np.abs(want).max() < 1e-5


def test_score_map_graph_any_size(model, tmp_path):
    p = export_onnx(model, tmp_path / "s.onnx", "score_map")
    for shape in [(1, 3, 64, 64), (2, 3, 96, 160), (1, 3, 131, 77)]:
        x = torch.randn(*shape)
        want = model.score_map(x).detach().numpy()
        got = run(p, x)
        assert got.shape == want.shape
        assert np.abs(got - want).max() / np.abs(want).max() < 1e-5
    assert check_onnx(model, p, torch.randn(1, 3, 100, 120), "score_map") < 1e-5


def test_preprocess_baked_in(model, tmp_path):
    p = export_onnx(model, tmp_path / "pp.onnx", "logits", with_preprocess=True)
    x = torch.rand(2, 3, 64, 64)
    want = model(model.preprocess(x)).detach().numpy()
    assert np.abs(run(p, x) - want).max() / np.abs(want).max() < 1e-5


def test_score_map_graph_runs_in_opencv(model, tmp_path):
    # OpenCV's ONNX importer (an engine we did not write) refuses FC weights reshaped at run time; the exported dense
    # graph stores them in their conv shape, and OpenCV computes the same score maps, also at odd sizes
    import onnx

    cv2 = pytest.importorskip("cv2")
    p = export_onnx(model, tmp_path / "s.onnx", "score_map")
    assert not [n for n in onnx.load(str(p)).graph.node if n.op_type == "Reshape"]
    net = cv2.dnn.readNetFromONNX(str(p))
    for shape in [(1, 3, 64, 64), (1, 3, 83, 117)]:
        x = torch.randn(*shape)
        net.setInput(x.numpy())
        got = net.forward()
        want = model.score_map(x).detach().numpy()
        assert got.shape == want.shape
        assert np.abs(got - want).max() / np.abs(want).max() < 1e-4


def test_export_without_onnxscript_is_one_line(model, tmp_path, monkeypatch):
    import importlib.util

    from verydeep.errors import UserError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(UserError, match=r"ONNX export needs onnxscript: pip install 'verydeep\[onnx\]'"):
        export_onnx(model, tmp_path / "x.onnx", "logits")


@pytest.mark.parametrize("name,graph", [("C", "logits"), ("C", "score_map"), ("A-LRN", "logits")])
def test_onnx_file_loads_back_as_weights(tmp_path, name, graph):
    # an exported file read as weights: its initialisers and its card; the loaded net computes what ONNX Runtime
    # computes from the same file
    import verydeep as vd

    src = tiny(name)
    with torch.no_grad():
        for _, layer in src.weight_layers():
            layer.bias.uniform_(-0.1, 0.1)
    p = export_onnx(src, tmp_path / "m.onnx", graph)
    m = vd.load(p)
    assert m.config == src.config and m.card == src.card
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = m(x) if graph == "logits" else m.score_map(x)
    want = run(p, x)
    assert np.abs(ours.numpy() - want).max() / np.abs(want).max() < 1e-5


def test_foreign_onnx_vgg_loads_with_its_model_name(tmp_path):
    # a VGG exported by plain torch.onnx.export (no verydeep metadata, Gemm layers): the architecture from the name,
    # torchvision's convention
    import verydeep as vd

    src = tiny("vgg16")
    with torch.no_grad():
        for _, layer in src.weight_layers():
            layer.bias.uniform_(-0.1, 0.1)
    p = tmp_path / "plain.onnx"
    torch.onnx.export(src, (torch.zeros(1, 3, 64, 64),), str(p), dynamo=False, input_names=["x"])
    m = vd.load(p, "vgg16")
    assert m.card.origin == "onnx" and m.input_convention == vd.TORCHVISION
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert np.abs(m(x).numpy() - run(p, x)).max() / np.abs(run(p, x)).max() < 1e-5
