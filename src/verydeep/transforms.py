"""Decoding and the paper's image transforms (PAPER.md sections 2-3), each a small function.

Training (section 2): isotropic rescale to a smallest side S (fixed, or drawn per image from [Smin, Smax]), one
random CxC crop, random horizontal flip, AlexNet's PCA colour shift. Testing (section 3): the whole image rescaled
to Q (dense evaluation) and its flip; the 5x5 grid of CxC crops and their flips (50 per scale).

Speed: the training crop is cut *before* resizing (Pillow resizes only the crop's source box, which equals
rescale-then-crop), JPEGs are decoded with libjpeg-turbo through simplejpeg (bit-identical to Pillow, less
overhead) with DCT-domain downscaling when the target is at most half the source. Mean subtraction is not here:
it is the model's ``preprocess``, applied once on the batch, where the colour shift is also added (on the device).
"""
from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import ConfigError, UserError

try:  # optional accelerator; Pillow is the reference and the fallback
    import simplejpeg
except ImportError:  # pragma: no cover
    simplejpeg = None

# Pillow's own default guard (~89 M pixels); larger images are skipped as decompression bombs, and no whole-image
# view (dense evaluation, multi-crop, features, localisation) is rescaled to more.
MAX_PIXELS = 89_478_485
# Whole-image views of longer images are refused: their work grows with the length (a 400000x1 PNG of 1 KB would be
# a 102400000x256 image at Q = 256). Crops (training, validation) cut only their own box and have no such limit.
MAX_ASPECT = 16.0
# No image file is read past this (a 89 M-pixel PNG compresses to far less; an endless file is not an image).
MAX_FILE_BYTES = 1 << 30
_FILTER = Image.BICUBIC


class BadImage(Exception):
    """An input image that cannot be used: reason is a short phrase ("truncated", "not an image", ...)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason + (f" ({detail})" if detail else ""))
        self.reason = reason


# ---------------------------------------------------------------------------------------------------- decoding
def _to_rgb(img: Image.Image) -> Image.Image:
    """Every mode a dataset in the wild has, as 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr * (255.0 / hi), 0, 255).astype(np.uint8))
    elif img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))  # transparency composited onto white
        img = Image.alpha_composite(white, img)
    return img.convert("RGB")


def decode(data: bytes, min_side: int | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode image bytes to an RGB Pillow image. min_side: the smallest side the caller needs; JPEGs are then
    decoded at a DCT scale (1/2, 1/4, 1/8) that keeps the smallest side >= min_side. Raises BadImage."""
    if not data:
        raise BadImage("empty file")
    if simplejpeg is not None and simplejpeg.is_jpeg(data):
        try:
            h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError:
            h = w = None  # let Pillow decide what is wrong
            colorspace = None
        if h and w and h * w > max_pixels:
            raise BadImage("decompression bomb", f"{w}x{h} pixels")
        if colorspace in ("YCbCr", "Gray"):  # CMYK/YCCK go through Pillow (Adobe inversion)
            kw = {}
            if min_side and min(h, w) >= 2 * min_side:
                s = min(h, w) / min_side
                kw = {"min_height": int(np.ceil(h / s)), "min_width": int(np.ceil(w / s))}
            try:
                return Image.fromarray(simplejpeg.decode_jpeg(data, colorspace="RGB", **kw))
            except ValueError as e:
                raise BadImage("truncated or corrupt JPEG", str(e)[:80]) from None
    return _decode_pillow(data, min_side, max_pixels)


def _decode_pillow(data: bytes, min_side: int | None, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise BadImage("decompression bomb", f"{w}x{h} pixels")
            if w == 0 or h == 0:
                raise BadImage("empty image", f"{w}x{h}")
            if min_side and img.format == "JPEG":
                img.draft("RGB", (max(1, w * min_side // min(w, h)), max(1, h * min_side // min(w, h))))
            img.load()
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage("decompression bomb", str(e)[:80]) from None
    except UnidentifiedImageError:
        raise BadImage("not an image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise BadImage("truncated or corrupt image", str(e).splitlines()[0][:80] if str(e) else "") from None
    return _to_rgb(img)


def as_rgb(image: bytes | Image.Image, min_side: int | None = None) -> Image.Image:
    """A sample's image as RGB: encoded bytes are decoded (at a DCT scale keeping min_side), pixels converted."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode(bytes(image), min_side)
    return _to_rgb(image)


def read_bytes(path: str | os.PathLike) -> bytes:
    """A file's bytes, with unreadable files as BadImage (so one bad file never stops a run). Only regular files:
    opening a FIFO or a device named like an image would block, or never end."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise BadImage("not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise BadImage("file too large", f"{st.st_size:,} bytes")
        with open(path, "rb") as f:
            return f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise BadImage("missing file") from None
    except PermissionError:
        raise BadImage("permission denied") from None
    except IsADirectoryError:
        raise BadImage("is a directory") from None
    except OSError as e:
        raise BadImage("unreadable", e.strerror or str(e)) from None


def load_rgb(path: str | os.PathLike, min_side: int | None = None) -> Image.Image:
    """Decode one image file for a user command: a one-line UserError naming the file if it cannot be used."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    try:
        return decode(read_bytes(path), min_side)
    except BadImage as e:
        raise UserError(f"{path}: {'not an image file' if e.reason == 'not an image' else e}") from None


# ---------------------------------------------------------------------------------------------------- geometry
def scaled_size(w: int, h: int, smallest_side: int) -> tuple[int, int]:
    """(W, H) after the isotropic rescale that makes the smallest side equal S (or Q)."""
    if w <= h:
        return smallest_side, max(smallest_side, round(h * smallest_side / w))
    return max(smallest_side, round(w * smallest_side / h)), smallest_side


def check_whole_image(w: int, h: int, smallest_side: int) -> tuple[int, int]:
    """The size of the whole image rescaled to smallest side S or Q, or BadImage when that view would be
    unreasonable (longer than MAX_ASPECT:1, or more than MAX_PIXELS), checked before anything is allocated."""
    big_w, big_h = scaled_size(w, h, smallest_side)
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise BadImage("extreme aspect ratio", f"{w}x{h} would be {big_w}x{big_h} at smallest side "
                                               f"{smallest_side}; whole-image views allow at most {MAX_ASPECT:g}:1")
    if big_w * big_h > MAX_PIXELS:
        raise BadImage("too large after rescaling", f"{w}x{h} would be {big_w}x{big_h} at smallest side "
                                                    f"{smallest_side}, over {MAX_PIXELS:,} pixels")
    return big_w, big_h


def rescale(img: Image.Image, smallest_side: int) -> Image.Image:
    """Isotropic rescale so that the smallest side equals S or Q; small images are upscaled. Extreme shapes are
    refused before resizing (check_whole_image)."""
    size = check_whole_image(*img.size, smallest_side)
    return img if size == img.size else img.resize(size, _FILTER, reducing_gap=3.0)


def to_uint8(img: Image.Image) -> torch.Tensor:
    """Pillow RGB image -> uint8 tensor (3, H, W): what workers send (4x less than floats)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1)


# ---------------------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainTransform:
    """PAPER.md section 2: S fixed (scale_min == scale_max) or jittered in [Smin, Smax]; a CxC crop; flips; PCA
    colour shift with alpha ~ N(0, colour_std) when eigen-statistics of the training set are given."""

    scale_min: int = 256
    scale_max: int = 256
    crop: int = 224
    flip: bool = True
    colour_std: float = 0.1
    eigval: tuple[float, float, float] | None = None   # eigenvalues of the RGB covariance of [0, 1] pixels
    eigvec: tuple[tuple[float, ...], ...] | None = None  # columns are eigenvectors

    def __post_init__(self):
        if not self.crop <= self.scale_min <= self.scale_max:
            raise ConfigError(f"need crop <= Smin <= Smax, got crop {self.crop}, S in [{self.scale_min}, "
                             f"{self.scale_max}] (the paper requires S >= 224 for 224 crops)")

    def sample_scale(self, rng: np.random.Generator) -> int:
        """S for one image: fixed, or uniform over the integers of [Smin, Smax] (scale jittering)."""
        return int(rng.integers(self.scale_min, self.scale_max + 1))

    def colour_shift(self, rng: np.random.Generator) -> np.ndarray:
        """AlexNet's PCA colour augmentation: sum_i alpha_i * lambda_i * p_i, alpha_i ~ N(0, 0.1); RGB, [0, 1] units."""
        if self.eigval is None or self.colour_std <= 0:
            return np.zeros(3, np.float32)
        alpha = rng.normal(0.0, self.colour_std, 3)
        return (np.asarray(self.eigvec, np.float64) @ (alpha * np.asarray(self.eigval, np.float64))).astype(
            np.float32)

    def view(self, rng: np.random.Generator, size_at) -> tuple[int, int, int, bool, np.ndarray]:
        """A sample's random choices, drawn in one order from its own generator: S, the crop's corner in the image
        rescaled to S (`size_at(S)` is the image's (W, H) when decoded for S), the flip, the colour shift. Every
        data path (files, the in-memory cache) draws through here: the same seed gives the same views."""
        s = self.sample_scale(rng)
        x, y = crop_position(*scaled_size(*size_at(s), s), self.crop, rng)
        flip = self.flip and bool(rng.random() < 0.5)
        return s, x, y, flip, self.colour_shift(rng)

    def __call__(self, image: bytes | Image.Image, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One training view: uint8 (C, C, 3) and the RGB colour shift to add after conversion to floats."""
        decoded = {}

        def size_at(s):
            decoded["img"] = as_rgb(image, s)
            return decoded["img"].size

        s, x, y, flip, shift = self.view(rng, size_at)
        out = np.asarray(crop_resized(decoded["img"], s, self.crop, x, y))
        return (out[:, ::-1] if flip else out), shift


def crop_position(w: int, h: int, crop: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner of a uniformly random CxC crop inside a WxH image."""
    return int(rng.integers(0, w - crop + 1)), int(rng.integers(0, h - crop + 1))


def crop_resized(img: Image.Image, s: int, crop: int, x: int, y: int) -> Image.Image:
    """The CxC crop at (x, y) of the image rescaled to smallest side S, resizing only the crop's source box (the
    work is the crop's, whatever the image's size or shape)."""
    w, h = img.size
    big_w, big_h = scaled_size(w, h, s)
    sx, sy = w / big_w, h / big_h
    return img.resize((crop, crop), _FILTER, box=(x * sx, y * sy, (x + crop) * sx, (y + crop) * sy))


def random_crop_resized(img: Image.Image, s: int, crop: int, rng: np.random.Generator) -> Image.Image:
    """A random CxC crop of the image rescaled to smallest side S."""
    x, y = crop_position(*scaled_size(*img.size, s), crop, rng)
    return crop_resized(img, s, crop, x, y)


def center_crop_resized(img: Image.Image, q: int, crop: int) -> Image.Image:
    """The central CxC crop of the image rescaled to smallest side Q (the validation view, section 3)."""
    big_w, big_h = scaled_size(*img.size, q)
    return crop_resized(img, q, crop, (big_w - crop) // 2, (big_h - crop) // 2)


def to_model_input(images: torch.Tensor, shifts: torch.Tensor | None, preprocess) -> torch.Tensor:
    """The one place where a uint8 batch (N, 3, H, W) becomes model input: floats in [0, 1], plus the colour
    shift, then the model's preprocessing (mean subtraction, section 1). Run it on the device."""
    x = images.float().div_(255.0)
    if shifts is not None:
        x = x + shifts.to(x.dtype).view(-1, 3, 1, 1)  # [0, 1] units, like the pixels
    return preprocess(x)


# ---------------------------------------------------------------------------------------------------- testing
def grid_positions(w: int, h: int, crop: int, n: int = 5) -> list[tuple[int, int]]:
    """Top-left corners of an n x n regular grid of CxC crops spanning a WxH image (corners included)."""
    if w < crop or h < crop:
        raise ConfigError(f"image {w}x{h} is smaller than the {crop} crop")
    xs = np.linspace(0, w - crop, n).round().astype(int)
    ys = np.linspace(0, h - crop, n).round().astype(int)
    return [(int(x), int(y)) for y in ys for x in xs]
