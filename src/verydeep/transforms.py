"""Image decoding and the geometric transforms of PAPER.md sections 2-3, on Pillow images and tensors."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import UserError


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode an image file to RGB (grayscale, palette, CMYK, RGBA converted); one-line UserError if unreadable."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            img.load()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not an image") from None
    except PermissionError:
        raise UserError(f"{path}: permission denied") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"{path}: image too large (decompression bomb guard)") from None
    except UnidentifiedImageError:
        raise UserError(f"{path}: not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: corrupt or truncated image ({str(e).splitlines()[0][:120]})") from None
    if img.mode != "RGB":
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float32)
            img = Image.fromarray((arr * (255.0 / max(arr.max(), 1.0))).astype(np.uint8))
        elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
            bg = Image.new("RGBA", img.size, (255, 255, 255, 255))  # composite transparency onto white
            img = Image.alpha_composite(bg, img)
        img = img.convert("RGB")
    return img


def rescale(img: Image.Image, smallest_side: int) -> Image.Image:
    """Isotropic rescale so that the smallest side equals S (or Q at test time); small images are upscaled."""
    w, h = img.size
    if min(w, h) == smallest_side:
        return img
    if w <= h:
        size = (smallest_side, max(1, round(h * smallest_side / w)))
    else:
        size = (max(1, round(w * smallest_side / h)), smallest_side)
    return img.resize(size, Image.BICUBIC, reducing_gap=3.0)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    if w < size or h < size:
        raise ValueError(f"image {w}x{h} is smaller than the {size} crop")
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def to_tensor(img: Image.Image) -> torch.Tensor:
    """Pillow RGB image -> float tensor (3, H, W) in [0, 1]."""
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
