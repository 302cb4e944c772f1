"""Fashion-MNIST (Xiao et al. 2017) from its IDX files: found in $VERYDEEP_DATA, ~/.cache/verydeep, or Debian's
dataset-fashion-mnist package (/usr/share/datasets/fashion-mnist); otherwise downloaded from the official source
with SHA-256 checks. The checksums are of the decompressed IDX payloads, so they hold for the official .gz files
and for re-compressed copies (Debian's) alike."""
from __future__ import annotations

import gzip
import hashlib
import logging
import math
import os
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from ..utils import atomic_write
from .sources import Sample, Source

log = logging.getLogger("verydeep.data")

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {  # name: (SHA-256 of the decompressed IDX bytes, size in bytes)
    "train-images-idx3-ubyte": ("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", 47040016),
    "train-labels-idx1-ubyte": ("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", 60008),
    "t10k-images-idx3-ubyte": ("5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", 7840016),
    "t10k-labels-idx1-ubyte": ("0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", 10008),
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def search_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("VERYDEEP_DATA"):
        dirs += [Path(os.environ["VERYDEEP_DATA"]) / "fashion-mnist", Path(os.environ["VERYDEEP_DATA"])]
    dirs += [Path.home() / ".cache" / "verydeep" / "fashion-mnist", DEBIAN_DIR]
    return dirs


def cache_dir() -> Path:
    base = os.environ.get("VERYDEEP_DATA") or Path.home() / ".cache" / "verydeep"
    return Path(base) / "fashion-mnist"


def parse_idx(data: bytes, name: str = "<idx>") -> np.ndarray:
    """An IDX array (LeCun's MNIST format): magic 0x0000 08 <ndim>, big-endian dims, uint8 data."""
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise UserError(f"{name}: not an unsigned-byte IDX file")
    ndim = data[3]
    if not 1 <= ndim <= 4 or len(data) < 4 + 4 * ndim:
        raise UserError(f"{name}: malformed IDX header")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    n = math.prod(dims)  # Python integers: no overflow
    if len(data) != 4 + 4 * ndim + n:
        raise UserError(f"{name}: IDX header says {dims} ({n} bytes) but the file holds {len(data) - 4 - 4 * ndim}")
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _read_checked(path: Path, name: str) -> bytes:
    raw = path.read_bytes()
    data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    digest, size = FILES[name]
    if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
        raise UserError(f"{path}: SHA-256 mismatch: not the official Fashion-MNIST {name} (corrupt download?)")
    return data


def find(name: str) -> Path | None:
    for d in search_dirs():
        for candidate in (d / f"{name}.gz", d / name):
            if candidate.is_file():
                return candidate
    return None


def download(name: str, opener=urllib.request.urlopen, base_url: str = URL) -> Path:
    """Fetch one file from the official source into the cache, check its SHA-256, then move it into place."""
    dst = cache_dir() / f"{name}.gz"
    url = base_url + f"{name}.gz"
    log.warning("downloading %s", url)
    try:
        with opener(url, timeout=60) as r:
            raw = r.read()
    except OSError as e:
        raise UserError(f"cannot download {url} ({e}); install Debian's dataset-fashion-mnist package or put the "
                        f"files in {cache_dir()}") from None
    data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    digest, size = FILES[name]
    if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
        raise UserError(f"{url}: SHA-256 mismatch: download corrupt or not Fashion-MNIST; nothing was saved")
    atomic_write(dst, lambda tmp: Path(tmp).write_bytes(raw))
    return dst


@lru_cache(maxsize=4)
def load_arrays(split: str = "train", allow_download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) int64) of the train (60,000) or test (10,000) split."""
    if split not in ("train", "test"):
        raise UserError(f"Fashion-MNIST split {split!r}: choose train or test")
    prefix = "train" if split == "train" else "t10k"
    arrays = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        name = f"{prefix}-{kind}"
        path = find(name)
        if path is None:
            if not allow_download:
                raise UserError(f"Fashion-MNIST {name} not found in {', '.join(map(str, search_dirs()))}")
            path = download(name)
        arrays.append(parse_idx(_read_checked(path, name), str(path)))
    images, labels = arrays
    if len(images) != len(labels):
        raise UserError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels")
    return images, labels.astype(np.int64)


class FashionMNIST(Source):
    """Fashion-MNIST as a Source of 28x28 grayscale pixels (converted to RGB by the transforms)."""

    classes = CLASSES

    def __init__(self, split: str = "train"):
        self.images, self._labels = load_arrays(split)
        self.root = Path(f"fashion-mnist:{split}")

    def __len__(self) -> int:
        return len(self._labels)

    def labels(self) -> np.ndarray:
        return self._labels

    def read(self, i: int) -> Sample:
        return Sample(Image.fromarray(self.images[i], "L"), int(self._labels[i]), f"{self.root}#{i}")


@dataclass
class FashionConfig:
    download: bool = True          # fetch the files from the official source when no copy is found


def run(cfg: FashionConfig) -> dict:
    """`verydeep data fashion-mnist`: find Fashion-MNIST (or download it), SHA-256 checked."""
    out = {}
    for split in ("train", "test"):
        images, labels = load_arrays(split, cfg.download)
        where = find(("train" if split == "train" else "t10k") + "-images-idx3-ubyte")
        out[split] = str(where)
        print(f"Fashion-MNIST {split}: {len(labels)} images {images.shape[1:]} from {where} (SHA-256 checked)")
    return out
