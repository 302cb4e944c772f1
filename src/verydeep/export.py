"""Export to ONNX: the fixed-size crop classifier (logits) and the fully-convolutional score-map graph of dense
evaluation (PAPER.md section 3) with dynamic batch, height and width. Both are checked against ONNX Runtime in the
tests; ``check_onnx`` does the same for a user's own export."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError, UserError
from .models import VGG
from .options import NetOptions
from .utils import atomic_write

GRAPHS = ("logits", "score_map")


class _Graph(nn.Module):
    def __init__(self, model: VGG, graph: str, with_preprocess: bool):
        super().__init__()
        self.model, self.graph, self.with_preprocess = model, graph, with_preprocess
        if graph == "score_map":
            # The FC layers as convolutions whose weights are stored in their conv shape: a graph that reshapes
            # them at run time (three Reshape nodes) is refused by OpenCV's ONNX importer.
            self.head = nn.ModuleList()
            for i, m in enumerate(model.classifier):
                if isinstance(m, nn.Linear):
                    k = model.config.head_kernel if i == 0 else 1
                    conv = nn.Conv2d(m.in_features // (k * k), m.out_features, k)
                    conv.weight.data = m.weight.detach().reshape(conv.weight.shape).clone()
                    conv.bias.data = m.bias.detach().clone()
                    self.head.append(conv)
                elif isinstance(m, nn.ReLU):
                    self.head.append(nn.ReLU())

    def forward(self, x):
        if self.with_preprocess:
            x = self.model.preprocess(x)
        if self.graph == "logits":
            return self.model(x)
        x = self.model.features(x)
        for m in self.head:
            x = m(x)
        return x


def export_onnx(model: VGG, path: str | os.PathLike, graph: str = "logits", with_preprocess: bool = False,
                opset: int = 18) -> Path:
    """Write an ONNX graph. graph="logits": input (N, C, crop, crop) -> (N, classes). graph="score_map": input
    (N, C, H, W), H, W >= crop -> (N, classes, h, w). with_preprocess bakes model.preprocess in (input RGB in [0, 1])."""
    if graph not in GRAPHS:
        raise ConfigError(f"--graph {graph!r}: choose one of {', '.join(GRAPHS)}")
    import importlib.util

    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"ONNX export needs {' and '.join(missing)}: pip install 'verydeep[onnx]'")
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
        import onnx

        # The model card rides along, so that the file loads back as weights with its input convention and classes.
        m = onnx.load(tmp)
        m.metadata_props.add(key="verydeep", value=json.dumps({"card": model.card.to_dict(), "graph": graph,
                                                                "with_preprocess": with_preprocess}))
        onnx.save(m, tmp)

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


@dataclass
class ExportConfig(NetOptions):
    out: str = ""                  # FILE.onnx (checked with ONNX Runtime) or FILE.safetensors (verydeep's format)
    graph: str = "logits"          # logits (a fixed crop) or score_map (dense: any size at least the crop)
    with_preprocess: bool = False  # bake the preprocessing in: the graph takes RGB in [0, 1]


def run(cfg: ExportConfig) -> Path:
    """`verydeep export`: a net to ONNX, checked against PyTorch with ONNX Runtime, or to verydeep's format."""
    from .weights import save

    out = Path(cfg.out)
    if out.suffix not in (".onnx", ".safetensors"):
        raise UserError(f"{out}: choose an output ending in .onnx or .safetensors")
    model = cfg.net().eval()
    if out.suffix == ".safetensors":
        save(model, out)
        print(f"wrote {out} (verydeep format: safetensors weights + the model card)")
        return out
    export_onnx(model, out, graph=cfg.graph, with_preprocess=cfg.with_preprocess)
    crop = model.config.crop_size
    size = (crop, crop) if cfg.graph == "logits" else (crop + 32, crop + 96)
    x = torch.rand(2, model.config.in_channels, *size)
    if not cfg.with_preprocess:
        x = model.preprocess(x)
    err = check_onnx(model, out, x, cfg.graph, cfg.with_preprocess)
    print(f"wrote {out} ({cfg.graph} graph); ONNX Runtime vs PyTorch on {tuple(x.shape)}: "
          f"max relative difference {err:.2e}")
    if err > 1e-3:
        raise UserError(f"{out}: ONNX Runtime disagrees with PyTorch (relative difference {err:.2e})")
    return out
