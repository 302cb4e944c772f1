"""Export to ONNX: the fixed-size crop classifier (logits) and the fully-convolutional score-map graph of dense
evaluation (PAPER.md section 3) with dynamic batch, height and width. Both are checked against ONNX Runtime in the
tests; ``check_onnx`` does the same for a user's own export."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError
from .models import VGG
from .utils import atomic_write

GRAPHS = ("logits", "score_map")


class _Graph(nn.Module):
    def __init__(self, model: VGG, graph: str, with_preprocess: bool):
        super().__init__()
        self.model, self.graph, self.with_preprocess = model, graph, with_preprocess

    def forward(self, x):
        if self.with_preprocess:
            x = self.model.preprocess(x)
        return self.model(x) if self.graph == "logits" else self.model.score_map(x)


def export_onnx(model: VGG, path: str | os.PathLike, graph: str = "logits", with_preprocess: bool = False,
                opset: int = 18) -> Path:
    """Write an ONNX graph. graph="logits": input (N, C, crop, crop) -> (N, classes). graph="score_map": input
    (N, C, H, W), H, W >= crop -> (N, classes, h, w). with_preprocess bakes model.preprocess in (input RGB in [0, 1])."""
    if graph not in GRAPHS:
        raise ConfigError(f"unknown graph {graph!r}; choose one of {GRAPHS}")
    path = Path(path)
    model = model.eval()
    crop = model.config.crop_size
    batch = torch.export.Dim("batch", min=1, max=4096)
    dims = {0: batch}
    example = torch.zeros(2, model.config.in_channels, crop, crop)
    if graph == "score_map":
        dims.update({2: torch.export.Dim("height", min=crop, max=16384),
                     3: torch.export.Dim("width", min=crop, max=16384)})
        example = torch.zeros(2, model.config.in_channels, crop + 32, crop + 64)
    wrapper = _Graph(model, graph, with_preprocess).eval()

    def write(tmp: str) -> None:
        # The exporter is chatty (progress lines, warnings about torchvision ops): keep the user's terminal clean.
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (example,), tmp, dynamo=True, opset_version=opset, verbose=False,
                              input_names=["image"], output_names=["logits" if graph == "logits" else "scores"],
                              dynamic_shapes={"x": dims}, external_data=False)

    atomic_write(path, write)
    return path


def check_onnx(model: VGG, path: str | os.PathLike, x: torch.Tensor, graph: str = "logits",
               with_preprocess: bool = False) -> float:
    """Run the ONNX file with ONNX Runtime on x and return the max relative difference to PyTorch."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    with torch.inference_mode():
        want = _Graph(model.eval(), graph, with_preprocess)(x)
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))
