"""torchvision state dicts (features.N.* / classifier.{0,3,6}.*), plain, 'module.'-prefixed (DataParallel/DDP) or
wrapped as {'state_dict': ...} / {'model': ...}. Loaded with weights_only=True: a .pth never runs code here."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..card import TORCHVISION, Card
from ..checkpoint import torch_load
from ..errors import UserError, WeightsError
from .base import Layer, Tensors, register

_KEY = re.compile(r"^(features|classifier)\.(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")


def unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise WeightsError(f"{path}: not a state dict (found {type(obj).__name__})")
    sd = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise WeightsError(f"{path}: entry {k!r} is not a tensor")
        for prefix in ("module.", "_orig_mod."):  # DDP / torch.compile wrappers
            while k.startswith(prefix):
                k = k[len(prefix):]
        sd[k] = v
    return sd


def from_state_dict(sd: dict[str, torch.Tensor], path: Path, fmt: str) -> Tensors:
    """Group a torchvision-layout state dict into conv / batch-norm / FC layers in network order."""
    feats: dict[int, dict[str, torch.Tensor]] = {}
    cls: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        m = _KEY.match(k)
        if not m:
            raise WeightsError(f"{path}: unexpected key {k!r} for a VGG state dict")
        (feats if m.group(1) == "features" else cls).setdefault(int(m.group(2)), {})[m.group(3)] = v
    convs, bns = [], []
    for i in sorted(feats):
        p = feats[i]
        if "weight" not in p:
            raise WeightsError(f"{path}: features.{i} has no weight")
        if p["weight"].ndim == 4:
            convs.append(Layer(f"features.{i}", p["weight"], p.get("bias")))
        elif "running_mean" in p:
            bns.append(p)
        else:
            raise WeightsError(f"{path}: features.{i}.weight has unexpected shape {tuple(p['weight'].shape)}")
    fcs = [Layer(f"classifier.{i}", cls[i].get("weight"), cls[i].get("bias")) for i in sorted(cls)]
    for layer in fcs:
        if layer.weight is None or layer.weight.ndim != 2:
            raise WeightsError(f"{path}: {layer.name}.weight is missing or not a matrix")
    return Tensors(fmt, convs, fcs, bns)


def _is_torch(head: bytes, path: Path) -> bool:
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"  # a torch zip archive or a legacy pickle


@register("torchvision", detect=_is_torch, order=40)
def read(path: Path) -> Tensors:
    try:  # memory-mapped, without code: nothing larger than the file is read, no pickle runs a function
        obj = torch_load(path, "PyTorch state dict")
    except UserError as e:
        raise WeightsError(str(e).replace("unreadable PyTorch state dict", "cannot read as a PyTorch state dict")) \
            from None
    t = from_state_dict(unwrap(obj, path), path, "torchvision")
    t.preprocess = TORCHVISION
    if isinstance(obj, dict) and ("card" in obj or "model_config" in obj):  # a verydeep training checkpoint
        try:
            t.fmt = "verydeep checkpoint"
            if "card" in obj:
                t.card = Card.from_dict(obj["card"])
            else:  # checkpoints of verydeep 0.1 (before the card)
                cfg = obj.get("config") or {}
                t.card = Card.from_dict({"config": obj["model_config"], "preprocess": obj["preprocess"],
                                         "class_names": obj.get("class_names"),
                                         "train_scale": [cfg["scale_min"], cfg["scale_max"]]
                                         if cfg.get("scale_min") else None})
            t.preprocess, t.pooling = t.card.preprocess, t.card.pooling
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsError(f"{path}: malformed verydeep checkpoint header ({e})") from None
    return t
