"""What a weight format module needs: the format-neutral `Tensors` a reader returns, `Lazy` tensors for data read
only after their shape was checked, and `register` to make the format known (detection and reading)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..card import VERYDEEP, Card, Preprocess


@dataclass
class Lazy:
    """A tensor known by shape and dtype, read only when asked (after its shape was checked against a model)."""
    shape: tuple[int, ...]
    dtype: np.dtype
    read: Callable[[], np.ndarray]   # returns the data in this shape (torch layout)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def load(self) -> torch.Tensor:
        arr = np.asarray(self.read())
        if tuple(arr.shape) != tuple(self.shape):
            raise ValueError(f"read {arr.shape}, expected {self.shape}")
        return torch.from_numpy(np.ascontiguousarray(arr))


@dataclass
class Layer:
    name: str                       # the layer's name in the file
    weight: torch.Tensor | Lazy     # torch layout: (out, in, kh, kw) or (out, in)
    bias: torch.Tensor | Lazy | None


@dataclass
class Tensors:
    """A weight file's contents, format-neutral: layers in network order, torch layouts."""

    fmt: str
    convs: list[Layer]
    fcs: list[Layer]
    bns: list[dict[str, torch.Tensor]] = field(default_factory=list)  # one per conv layer when present
    fc6_layout: str = "nchw"        # how fc6's input is flattened; Keras flattens NHWC
    preprocess: Preprocess = VERYDEEP  # the input convention of the file's origin
    pooling: str = "floor"          # the max-pool rounding its origin computed with
    card: Card | None = None        # files that carry a whole model card (verydeep's)
    lrn: bool | None = None         # whether the file's network has an LRN layer (A-LRN), where the file says
    known: str | None = None        # a released file recognised by its content (torchvision.KNOWN_FILES)


@dataclass(frozen=True)
class Format:
    name: str
    read: Callable[[Path], Tensors]
    detect: Callable[[bytes, Path], bool]   # from the file's first 64 bytes and its path
    order: int                              # detection order: distinctive magic numbers first, guesses last


FORMATS: dict[str, Format] = {}


def register(name: str, detect: Callable[[bytes, Path], bool], order: int = 50):
    """Decorator: make `read(path) -> Tensors` the reader of format `name`, chosen when `detect` says so."""
    def deco(read: Callable[[Path], Tensors]) -> Callable[[Path], Tensors]:
        FORMATS[name] = Format(name, read, detect, order)
        return read
    return deco
