"""The model card: everything a set of weights needs to be used correctly, in one frozen record that travels with
them (verydeep's safetensors header, training checkpoints) and is written and read by one pair of functions.

- config: the architecture (a Table 1 configuration, widths, head size, crop);
- preprocess: the input convention of the weights' origin (PAPER.md section 8) or of the training set's mean RGB;
- class_names, train_scale (Smin, Smax: the test scales of section 5 follow from it);
- pooling: how max-pools round their output size ("floor" as PyTorch and Keras, "ceil" as Caffe did);
- origin: the format the weights came from; box: a localisation head (mode, classes); name: the run's name."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace

import torch

from .errors import ConfigError
from .paper import BLOCKS


@dataclass(frozen=True)
class Preprocess:
    """What the weights expect from an RGB image in [0, 1]: channel order, scale, then (x - mean) / std.

    mean and std are given in the target channel order (BGR means for Caffe weights)."""

    order: str = "RGB"
    scale: float = 255.0
    mean: tuple[float, ...] = (123.68, 116.779, 103.939)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)

    def __post_init__(self):
        if self.order not in ("RGB", "BGR"):
            raise ConfigError(f"preprocess order must be RGB or BGR, got {self.order!r}")
        if len(self.mean) != len(self.std) or not self.mean:
            raise ConfigError("preprocess mean and std must have the same, non-zero length")
        if any(s == 0 for s in self.std):
            raise ConfigError("preprocess std must not be 0")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != len(self.mean):
            raise ConfigError(f"preprocess expects (N, {len(self.mean)}, H, W), got {tuple(x.shape)}")
        if self.order == "BGR":
            x = x.flip(1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x * self.scale - mean) / std

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(order=d["order"], scale=float(d["scale"]), mean=tuple(map(float, d["mean"])),
                   std=tuple(map(float, d["std"])))


# The three conventions of PAPER.md section 8.
CAFFE = Preprocess("BGR", 255.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0))
TORCHVISION = Preprocess("RGB", 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# verydeep-trained models: 0-255 values minus the training set's mean RGB (section 1); ImageNet's until stats exist.
VERYDEEP = Preprocess()
CONVENTIONS = {"caffe": CAFFE, "torchvision": TORCHVISION, "verydeep": VERYDEEP}


@dataclass(frozen=True)
class VGGConfig:
    """Everything that determines a model's architecture."""

    config: str = "D"                 # key of paper.BLOCKS
    lrn: bool = False                 # A-LRN: LRN after conv1_1's ReLU
    batch_norm: bool = False          # the *_bn variants (not in the paper)
    num_classes: int = 1000
    width: float = 1.0                # multiplies every conv width (64 ... 512)
    fc_width: int = 4096
    in_channels: int = 3
    dropout: float = 0.5
    crop_size: int = 224              # the FC head is built for this crop: fc6 acts as a (crop/32)^2 conv

    def __post_init__(self):
        if self.config not in BLOCKS:
            raise ConfigError(f"unknown VGG configuration {self.config!r}; choose one of {sorted(BLOCKS)}")
        if self.crop_size < 32:
            raise ConfigError(f"crop_size must be at least 32 (five 2x2 pools), got {self.crop_size}")
        for name in ("num_classes", "fc_width", "in_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.width <= 0:
            raise ConfigError(f"width multiplier must be positive, got {self.width}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_kernel(self) -> int:
        return self.crop_size // 32

    def channels(self, c: int) -> int:
        return max(1, int(round(c * self.width)))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VGGConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)


POOLING = ("floor", "ceil")


@dataclass(frozen=True)
class Card:
    config: VGGConfig
    preprocess: Preprocess = VERYDEEP
    class_names: tuple[str, ...] | None = None
    train_scale: tuple[int, int] | None = None     # (Smin, Smax); equal for a fixed S
    pooling: str = "floor"
    origin: str = "verydeep"
    box: tuple[str, int] | None = None             # localisation nets: ("scr" | "pcr", classes)
    name: str | None = None                        # e.g. "D-s384-seed1": how tables name the net

    def __post_init__(self):
        if self.pooling not in POOLING:
            raise ConfigError(f"pooling must be one of {POOLING}, got {self.pooling!r}")
        if self.box is not None and (self.box[0] not in ("scr", "pcr") or int(self.box[1]) < 1):
            raise ConfigError(f"box head must be (scr|pcr, classes), got {self.box!r}")
        classes = self.box[1] if self.box else self.config.num_classes
        if self.class_names is not None and len(self.class_names) != classes:
            raise ConfigError(f"{len(self.class_names)} class names for {classes} classes")
        if self.train_scale is not None and not 0 < self.train_scale[0] <= self.train_scale[1]:
            raise ConfigError(f"train_scale must be (Smin, Smax) with 0 < Smin <= Smax, got {self.train_scale}")
        if len(self.preprocess.mean) != self.config.in_channels:
            raise ConfigError(f"preprocess has {len(self.preprocess.mean)} channels, the model "
                              f"{self.config.in_channels}")

    def but(self, **changes) -> "Card":
        """A copy with some fields changed (the card is frozen: it changes only as a whole)."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["config"], d["preprocess"] = self.config.to_dict(), self.preprocess.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Card":
        """The one reader of a card, from a file's header or a checkpoint: every field checked; ConfigError names
        what is wrong."""
        try:
            if not isinstance(d, dict):
                raise TypeError(f"expected a mapping, found {type(d).__name__}")
            unknown = set(d) - {f.name for f in fields(cls)}
            if unknown:
                raise ValueError(f"unknown card fields {sorted(unknown)}")
            if not isinstance(d.get("config"), dict) or not isinstance(d.get("preprocess", {}), dict):
                raise TypeError("config and preprocess must be mappings")
            names = d.get("class_names")
            if names is not None and (not isinstance(names, (list, tuple)) or
                                      not all(isinstance(n, str) for n in names)):
                raise TypeError("class_names must be a list of strings")
            scale, box = d.get("train_scale"), d.get("box")
            return cls(config=VGGConfig.from_dict(d["config"]),
                       preprocess=Preprocess.from_dict(d["preprocess"]) if "preprocess" in d else VERYDEEP,
                       class_names=tuple(names) if names is not None else None,
                       train_scale=(int(scale[0]), int(scale[1])) if scale else None,
                       pooling=str(d.get("pooling", "floor")), origin=str(d.get("origin", "verydeep")),
                       box=(str(box[0]), int(box[1])) if box else None,
                       name=str(d["name"]) if d.get("name") is not None else None)
        except ConfigError as e:
            raise ConfigError(f"malformed model card: {e}") from None
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ConfigError(f"malformed model card: {e}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "Card":
        try:
            return cls.from_dict(json.loads(text))
        except ValueError as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"malformed model card: {e}") from None
