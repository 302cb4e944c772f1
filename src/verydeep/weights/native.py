"""verydeep's own format: a safetensors file (torchvision-layout keys) whose header metadata holds the model
config, the input convention and the class names as JSON. Safe to open from anyone: safetensors holds no code."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import WeightsError
from ..models import VGG, Preprocess, VGGConfig
from ..utils import atomic_write
from . import Tensors
from .torchvision import from_state_dict

FORMAT_VERSION = 1


def write(model: VGG, path: Path) -> None:
    from safetensors.torch import save_file

    header = {"format_version": FORMAT_VERSION, "config": model.config.to_dict(),
              "preprocess": model.input_convention.to_dict(), "class_names": model.class_names,
              "train_scale": list(model.train_scale) if model.train_scale else None,
              "box": [model.box_mode, model.box_classes] if model.box_mode else None}
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(sd, tmp, metadata={"verydeep": json.dumps(header)}))


def read(path: Path) -> Tensors:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: cannot read as safetensors: {str(e).splitlines()[0][:200]}") from None
    t = from_state_dict(sd, path, "verydeep")
    if "verydeep" in meta:
        try:
            header = json.loads(meta["verydeep"])
            if header.get("format_version", 0) > FORMAT_VERSION:
                raise WeightsError(f"{path}: written by a newer verydeep (format {header['format_version']})")
            t.config = VGGConfig.from_dict(header["config"])
            t.preprocess = Preprocess.from_dict(header["preprocess"])
            t.class_names = header.get("class_names")
            t.train_scale = tuple(header["train_scale"]) if header.get("train_scale") else None
            t.box = (str(header["box"][0]), int(header["box"][1])) if header.get("box") else None
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, WeightsError):
                raise
            raise WeightsError(f"{path}: malformed verydeep header: {e}") from None
    return t
