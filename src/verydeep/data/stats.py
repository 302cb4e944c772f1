"""Training-set colour statistics (PAPER.md sections 1-2): the mean RGB value subtracted from every pixel, and the
RGB covariance's eigenvalues and eigenvectors for AlexNet's PCA colour shift. Stored beside the data as JSON."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from PIL import Image

from ..config import positional
from ..errors import UserError
from ..transforms import BadImage, as_rgb
from ..utils import atomic_write
from .sources import Source

log = logging.getLogger("verydeep.data")
STATS_FILE = "verydeep_stats.json"


@dataclass
class ColourStats:
    mean: tuple[float, float, float]             # RGB, 0-255 (what the model subtracts)
    # Of the covariance of RGB values in [0, 1]: AlexNet's shift, eigvec @ (alpha * eigval), depends on the units
    # (eigenvalues scale with their square); on [0, 1] pixels it is the few-percent shift AlexNet describes.
    eigval: tuple[float, float, float]           # descending
    eigvec: tuple[tuple[float, float, float], ...]  # 3x3, columns are eigenvectors
    images: int
    pixels: int

    def to_dict(self) -> dict:
        return {"mean_rgb": list(self.mean), "eigval": list(self.eigval), "eigvec": [list(r) for r in self.eigvec],
                "images": self.images, "pixels": self.pixels}

    @classmethod
    def from_dict(cls, d: dict) -> "ColourStats":
        return cls(tuple(d["mean_rgb"]), tuple(d["eigval"]), tuple(tuple(r) for r in d["eigvec"]), d["images"],
                   d["pixels"])


def default_path(source: Source) -> Path:
    """Beside the data (in the split's folder or shard folder); in the cache for sources that are not folders."""
    root = Path(source.root)
    if root.is_dir():
        return root / STATS_FILE
    return Path.home() / ".cache" / "verydeep" / f"{str(root).replace(':', '-')}.{STATS_FILE}"


def compute(source: Source, max_images: int | None = None, side: int = 128, seed: int = 0,
            progress: bool = True) -> ColourStats:
    """Mean and covariance of RGB pixel values over the training set (or a seeded random subset of max_images),
    each image rescaled to smallest side `side` first (the statistics of a colour distribution barely change with
    resolution; the cost does, by orders of magnitude). Every image weighs the same: the mean of the images' mean
    colours, and of their second moments, so that a few odd-shaped images cannot move the mean."""
    from tqdm import tqdm

    n = len(source)
    order = np.arange(n) if not max_images or max_images >= n else np.sort(
        np.random.default_rng(seed).choice(n, max_images, replace=False))
    s1, s2, count, used, skipped = np.zeros(3), np.zeros((3, 3)), 0, 0, 0
    for i in tqdm(order, desc="colour stats", unit="img", disable=not progress):
        try:
            sample = source.read(int(i))
            img = as_rgb(sample.image, side)
        except BadImage as e:
            skipped += 1
            log.warning("%s: skipped (%s)", source.path(int(i)), e)
            continue
        img.thumbnail((2 * side, 2 * side), Image.BILINEAR)  # bounded whatever the shape; colours barely change
        px = np.asarray(img, np.float64).reshape(-1, 3)
        s1 += px.mean(0)
        s2 += px.T @ px / len(px)
        count += len(px)
        used += 1
    if not used:
        raise UserError(f"{source.root}: no readable images for colour statistics")
    mean = s1 / used
    cov = (s2 / used - np.outer(mean, mean)) / 255.0**2
    val, vec = np.linalg.eigh(cov)
    order3 = np.argsort(val)[::-1]
    val, vec = np.clip(val[order3], 0, None), vec[:, order3]
    return ColourStats(tuple(mean.tolist()), tuple(val.tolist()), tuple(tuple(r) for r in vec.tolist()), used,
                       count)


def save(stats: ColourStats, path: Path) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(stats.to_dict(), indent=1)))


def load(path: Path) -> ColourStats | None:
    path = Path(path)
    if not path.is_file():
        return None
    try:
        st = ColourStats.from_dict(json.loads(path.read_text()))
        ok = len(st.mean) == 3 and len(st.eigval) == 3 and np.asarray(st.eigvec, float).shape == (3, 3)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: malformed colour statistics ({e}); delete it to recompute them") from None
    if not ok:
        raise UserError(f"{path}: malformed colour statistics (expected 3 channels); delete it to recompute them")
    return st


@dataclass
class StatsConfig:
    data: str = positional(default="")  # dataset: a folder (its train/ split when it has splits), shards, or
    # fashion-mnist
    max_images: int | None = None  # a seeded random subset of this many images (default: every image)
    side: int = 128                # each image is shrunk to at most twice this on its longer side first
    out: str | None = None         # output JSON (default: verydeep_stats.json beside the training images, e.g.
    # DATA/train/verydeep_stats.json, where training looks for it)


def run(cfg: StatsConfig) -> ColourStats:
    """`verydeep data stats`: mean RGB and the RGB covariance's eigen-decomposition of the training set."""
    from .open import open_source, splits_of

    if not cfg.data:
        raise UserError("give the dataset")
    source = open_source(cfg.data, split="train" if splits_of(Path(cfg.data)) else None)
    st = compute(source, max_images=cfg.max_images, side=cfg.side)
    out = Path(cfg.out) if cfg.out else default_path(source)
    save(st, out)
    print(f"{st.images} images ({st.pixels:,} pixels) from {source.root}")
    print(f"mean RGB {tuple(round(v, 3) for v in st.mean)}; covariance eigenvalues "
          f"{tuple(round(v, 3) for v in st.eigval)}; wrote {out}")
    return st
