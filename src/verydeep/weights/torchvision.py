"""PyTorch state dicts of VGG in the layouts people hold: torchvision's (features.N.* / classifier.{0,3,6}.*), timm's
(features.N.*, pre_logits.fc1/fc2 as 7x7 and 1x1 convolutions, head.fc), and Gatys-style neural-style files
(conv1_1.weight ... conv5_4.weight, optionally fc6-fc8; Caffe's weights, Caffe's input convention). Plain,
'module.'-prefixed (DataParallel/DDP) or wrapped as {'state_dict': ...} / {'model': ...}. Loaded with
weights_only=True: a .pth never runs code here."""
from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import torch

from ..card import CAFFE, TORCHVISION, Card, Preprocess
from ..checkpoint import torch_load
from ..errors import UserError, WeightsError
from .base import Layer, Tensors, register

log = logging.getLogger("verydeep")

# amdegroot/ssd.pytorch's VGG-16 features as torchvision ships them (VGG16_Weights.IMAGENET1K_FEATURES): 0-255 RGB
# minus the mean pixel, as the paper's Caffe model but in RGB order.
AMDEGROOT = Preprocess("RGB", 255.0, (123.0, 117.0, 104.0), (1.0, 1.0, 1.0))
# Released files under torchvision's keys whose keys do not tell their input convention, by the first 8 hex digits
# of the file's sha256 (the suffix torch.hub names them by and checks): torchvision's own (RGB, mean/std), and the
# authors' Caffe weights converted by jcjohnson/pytorch-vgg (BGR 0-255 minus the mean pixel; with torchvision's
# preprocessing their logits are off by ~25). Recognised by content, so a renamed copy is recognised too.
KNOWN_FILES: dict[str, tuple[str, Preprocess]] = {
    "00b39a1b": ("VGG-16 converted from the authors' Caffe model (jcjohnson/pytorch-vgg)", CAFFE),
    "d01eb7cb": ("VGG-19 converted from the authors' Caffe model (jcjohnson/pytorch-vgg)", CAFFE),
    "88682ab5": ("VGG-16 features of amdegroot/ssd.pytorch (torchvision IMAGENET1K_FEATURES)", AMDEGROOT),
    **{h: (f"torchvision's {n}", TORCHVISION) for h, n in (
        ("8a719046", "vgg11"), ("bbd30ac9", "vgg11"), ("19584684", "vgg13"), ("c768596a", "vgg13"),
        ("397923af", "vgg16"), ("dcbb9e9d", "vgg19"), ("6002323d", "vgg11_bn"), ("abd245e5", "vgg13_bn"),
        ("6c64b313", "vgg16_bn"), ("c79401a0", "vgg19_bn"))},
}


def fingerprint(path: Path) -> str:
    """The first 8 hex digits of the file's sha256 (torch.hub's file-name suffix)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:8]


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


_TIMM_HEAD = {"pre_logits.fc1": "classifier.0", "pre_logits.fc2": "classifier.3", "head.fc": "classifier.6"}
_GATYS = re.compile(r"^(conv(\d)_(\d)|fc([678]))\.(weight|bias)$")


def layout(sd: dict[str, torch.Tensor]) -> str:
    """Which family of keys a state dict uses: "timm", "gatys" or "torchvision" (the default)."""
    if any(k.startswith(("pre_logits.", "head.fc.")) for k in sd):
        return "timm"
    if sd and all(_GATYS.match(k) for k in sd):
        return "gatys"
    return "torchvision"


def to_torchvision_keys(sd: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """timm's and Gatys' keys renamed to torchvision's (FC weights as matrices); the weights are the same numbers."""
    if kind == "timm":
        out = {}
        for k, v in sd.items():
            for old, new in _TIMM_HEAD.items():
                if k.startswith(old + "."):
                    k = new + k[len(old):]
                    v = v.reshape(v.shape[0], -1) if k.endswith(".weight") else v
            out[k] = v
        return out
    if kind == "gatys":  # conv layers in (block, index) order, then fc6-fc8; indices only order them
        convs = sorted({(int(m.group(2)), int(m.group(3))) for m in map(_GATYS.match, sd) if m.group(2)})
        index = {f"conv{b}_{i}": f"features.{n}" for n, (b, i) in enumerate(convs)}
        index.update({f"fc{j}": f"classifier.{3 * (j - 6)}" for j in (6, 7, 8)})
        return {index[k.rsplit(".", 1)[0]] + "." + k.rsplit(".", 1)[1]: v for k, v in sd.items()}
    return sd


def from_state_dict(sd: dict[str, torch.Tensor], path: Path, fmt: str) -> Tensors:
    """Group a VGG state dict (torchvision's, timm's or Gatys' keys) into conv / batch-norm / FC layers in network
    order. A timm or Gatys file reports that as its format, with its origin's input convention."""
    kind = layout(sd)
    if kind != "torchvision":
        t = from_state_dict(to_torchvision_keys(sd, kind), path, fmt)
        t.fmt, t.preprocess = (kind, TORCHVISION if kind == "timm" else CAFFE)
        return t
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
    checkpoint = isinstance(obj, dict) and ("card" in obj or "model_config" in obj)
    if t.fmt == "torchvision":
        t.preprocess = TORCHVISION
    if t.fmt == "torchvision" and not checkpoint:
        known = KNOWN_FILES.get(fingerprint(path))
        if known:
            t.known, t.preprocess = known
            log.info("%s: recognised as %s", path, known[0])
    if t.fcs and all(not torch.isfinite(layer.weight).any() for layer in t.fcs):
        # torchvision's IMAGENET1K_FEATURES file fills its classifier with NaN: its features are what it holds
        log.warning("%s: the classifier weights are all NaN: loaded as a feature-only model", path)
        t.fcs = []
    if checkpoint:  # a verydeep training checkpoint
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
