"""The paper's test protocols (PAPER.md section 3): a central crop (the peers' protocol) and dense evaluation of the
whole rescaled image through the fully-convolutional net, with flip averaging of soft-max posteriors."""
from __future__ import annotations

import torch
from PIL import Image

from .models import VGG
from .transforms import center_crop, rescale, to_tensor

PROTOCOLS = ("center", "dense")


@torch.inference_mode()
def dense_posteriors(model: VGG, x: torch.Tensor, flip: bool = True) -> torch.Tensor:
    """x: preprocessed (N, C, H, W) at the test scale. The class score map is spatially averaged, soft-maxed, and
    averaged with the flipped image's posteriors (section 3)."""
    p = model.score_map(x).mean(dim=(2, 3)).softmax(1)
    if flip:
        p = 0.5 * (p + model.score_map(x.flip(3)).mean(dim=(2, 3)).softmax(1))
    return p


@torch.inference_mode()
def predict_image(model: VGG, img: Image.Image, protocol: str = "dense", scale: int | None = None) -> torch.Tensor:
    """Soft-max posteriors (classes,) for one RGB image. scale: the test scale Q (default: 256/224 of the crop)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    crop = model.config.crop_size
    q = scale or round(crop * 256 / 224)
    if q < crop:
        raise ValueError(f"test scale {q} is smaller than the {crop} crop")
    model.eval()
    img = rescale(img, q)
    if protocol == "center":
        x = model.preprocess(to_tensor(center_crop(img, crop))[None])
        return model(x).softmax(1)[0]
    return dense_posteriors(model, model.preprocess(to_tensor(img)[None]))[0]
