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
