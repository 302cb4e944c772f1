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
            if not isinstance(header, dict):
                raise ValueError(f"expected a JSON object, found {type(header).__name__}")
            if header.get("format_version", 0) > FORMAT_VERSION:
                raise WeightsError(f"{path}: written by a newer verydeep (format {header['format_version']})")
            if not isinstance(header.get("config"), dict) or not isinstance(header.get("preprocess"), dict):
                raise ValueError("config and preprocess must be JSON objects")
            t.config = VGGConfig.from_dict(header["config"])
            t.preprocess = Preprocess.from_dict(header["preprocess"])
            box = header.get("box")
            t.box = (str(box[0]), int(box[1])) if box else None
            classes = t.box[1] if t.box else t.config.num_classes  # a box head has 4 (x classes) outputs
            names = header.get("class_names")
            if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)
                                      or len(names) != classes):
                raise ValueError(f"class_names must be {classes} strings")
            t.class_names = names
            scale = header.get("train_scale")
            t.train_scale = (int(scale[0]), int(scale[1])) if scale else None
        except WeightsError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise WeightsError(f"{path}: malformed verydeep header: {e}") from None
    return t
