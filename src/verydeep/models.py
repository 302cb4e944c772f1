"""The paper's ConvNet configurations (PAPER.md section 1, Table 1) and one model class for all of them.

The module layout deliberately equals torchvision's (``features.N`` / ``classifier.{0,3,6}``) so that released
torchvision state dicts load without renaming; the paper's (Caffe's) layer names (conv1_1 ... fc8) are kept beside
it for feature access and for the weight converters.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, ResourceError

from .card import VERYDEEP, Card, Preprocess, VGGConfig
from .paper import BLOCKS, INIT_FROM_LAYERS, INIT_STD, LRN


@dataclass(frozen=True)
class _Spec:
    config: str
    lrn: bool = False
    batch_norm: bool = False
    aliases: tuple[str, ...] = field(default=())


# One registry of names (timm style). The paper's names first, then torchvision-style aliases.
_SPECS = {
    "A": _Spec("A", aliases=("vgg11",)),
    "A-LRN": _Spec("A", lrn=True, aliases=("vgg11_lrn",)),
    "B": _Spec("B", aliases=("vgg13",)),
    "C": _Spec("C", aliases=("vgg16_c",)),
    "D": _Spec("D", aliases=("vgg16",)),
    "E": _Spec("E", aliases=("vgg19",)),
    "B-shallow": _Spec("B-shallow", aliases=("vgg13_shallow",)),
    "vgg11_bn": _Spec("A", batch_norm=True),
    "vgg13_bn": _Spec("B", batch_norm=True),
    "vgg16_bn": _Spec("D", batch_norm=True),
    "vgg19_bn": _Spec("E", batch_norm=True),
}
_NAMES = {n: s for n, s in _SPECS.items()}
_NAMES.update({a: s for s in _SPECS.values() for a in s.aliases})


def list_models() -> list[str]:
    """Every name vgg() accepts: the paper's configs, their torchvision-style aliases, the BN variants."""
    return list(_SPECS) + [a for s in _SPECS.values() for a in s.aliases]


def model_config(name: str, **options) -> VGGConfig:
    spec = _NAMES.get(name) or _NAMES.get(name.upper()) or _NAMES.get(name.lower())
    if spec is None:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return VGGConfig(config=spec.config, lrn=spec.lrn, batch_norm=spec.batch_norm, **options)


def config_name(cfg: VGGConfig) -> str:
    """The registry name of a config's architecture ("D", "A-LRN", "vgg16_bn", ...)."""
    for name, spec in _SPECS.items():
        if (spec.config, spec.lrn, spec.batch_norm) == (cfg.config, cfg.lrn, cfg.batch_norm):
            return name
    return cfg.config + ("-LRN" if cfg.lrn else "") + ("_bn" if cfg.batch_norm else "")


_M32 = 0xFFFFFFFF


def _mix32(h: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser on int64 tensors holding uint32 values (products wrap; the low 32 bits stay exact)."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


class KeyedDropout(nn.Dropout):
    """Dropout (p = 0.5 on fc6/fc7, section 2) whose mask for a sample is a hash of (salt, sample key, unit).

    The trainer sets the keys (the samples' dataset indices) and the salt (seed, step, layer) before each forward, so a
    sample's mask does not depend on which micro-batch or which process it lands in: accumulated micro-batches and
    data-parallel ranks give exactly the single-process update (section 3.3). Without keys it is plain dropout.
    Keys and salt are tensors, so a compiled graph takes them as inputs: no recompilation per step, and compiled runs
    keep the masks of eager ones. They are plain attributes, not buffers: DDP would broadcast rank 0's keys."""

    def __init__(self, p: float = 0.5):
        super().__init__(p)
        self.keys: torch.Tensor | None = None
        self.salt = torch.zeros((), dtype=torch.int64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or self.keys is None:
            return super().forward(x)
        if self.keys.numel() != x.shape[0]:
            raise ValueError(f"dropout keys for {self.keys.numel()} samples, batch has {x.shape[0]}")
        units = x[0].numel()
        base = _mix32((self.keys.to(x.device, torch.int64) & _M32) ^ (self.salt.to(x.device) & _M32))
        idx = torch.arange(units, device=x.device, dtype=torch.int64) * 0x9E3779B9
        u = _mix32((base[:, None] + idx[None, :]) & _M32).to(torch.float32) * (1.0 / 2**32)
        keep = (u >= self.p).view_as(x)
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))


def set_dropout_keys(model: nn.Module, keys: torch.Tensor | None, seed: int = 0, step: int = 0) -> None:
    """Key every KeyedDropout of a model for this batch (None: plain dropout)."""
    layers = [m for m in model.modules() if isinstance(m, KeyedDropout)]
    for j, m in enumerate(layers):
        m.keys = keys
        salt = int(_mix32(torch.tensor([(seed * 1_000_003 + step * 7919 + j) & _M32]))[0])
        if keys is not None and m.salt.device != keys.device:
            m.salt = m.salt.to(keys.device)
        m.salt.fill_(salt)


class ChannelLRN(nn.LocalResponseNorm):
    """PyTorch's cross-channel LRN, computed as a (channels x channels) band matrix product on the channels-last view:
    the window's sum of squares is one small GEMM, the rest elementwise on contiguous memory. PyTorch's own goes
    through a 3-D average pooling that has no bfloat16 kernel and ran A-LRN's training step at a third of A's speed
    (the same values and gradients: tests/test_models.py)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        i = torch.arange(c, device=x.device)
        d = i[None, :] - i[:, None]   # PyTorch's window for channel j: j - size // 2 ... j + (size - 1) // 2
        band = ((d >= -(self.size // 2)) & (d <= (self.size - 1) // 2)).to(x.dtype) * (self.alpha / self.size)
        xl = x.permute(0, 2, 3, 1)
        scale = torch.matmul(xl * xl, band).add_(self.k).pow_(-self.beta)
        return (xl * scale).permute(0, 3, 1, 2)


class VGG(nn.Module):
    """A VGG net of any configuration. ``model(x)`` takes crops of ``config.crop_size``; ``score_map(x)`` takes any
    image at least that large and applies the FC layers as convolutions (PAPER.md section 3, dense evaluation).
    ``model.card`` says what the weights need (card.py): their preprocessing, classes, training scale, pooling."""

    def __init__(self, config: VGGConfig | Card, init: str | None = "paper"):
        super().__init__()
        card = config if isinstance(config, Card) else Card(
            config, VERYDEEP if config.in_channels == 3 else
            Preprocess("RGB", 255.0, (128.0,) * config.in_channels, (1.0,) * config.in_channels))
        config = card.config
        self.config = config
        layers: list[nn.Module] = []
        names: list[str] = []
        c_in = config.in_channels
        for b, block in enumerate(BLOCKS[config.config], start=1):
            for i, (c, k) in enumerate(block, start=1):
                c_out = config.channels(c)
                layers.append(nn.Conv2d(c_in, c_out, k, padding=k // 2))
                names.append(f"conv{b}_{i}")
                if config.batch_norm:
                    layers.append(nn.BatchNorm2d(c_out))
                    names.append(f"bn{b}_{i}")
                layers.append(nn.ReLU(inplace=True))
                names.append(f"relu{b}_{i}")
                if config.lrn and b == 1 and i == 1:
                    # PyTorch, like Caffe, divides alpha by n inside the sum, so Krizhevsky's alpha=1e-4 is n x 1e-4
                    # here (as in VGG's own prototxts).
                    layers.append(ChannelLRN(LRN["size"], alpha=LRN["alpha"] * LRN["size"], beta=LRN["beta"],
                                             k=LRN["k"]))
                    names.append("norm1")
                c_in = c_out
            layers.append(nn.MaxPool2d(2, 2))
            names.append(f"pool{b}")
        self.features = nn.Sequential(*layers)
        k = config.head_kernel
        fc = config.fc_width
        self.classifier = nn.Sequential(
            nn.Linear(c_in * k * k, fc), nn.ReLU(inplace=True), KeyedDropout(config.dropout),
            nn.Linear(fc, fc), nn.ReLU(inplace=True), KeyedDropout(config.dropout),
            nn.Linear(fc, config.num_classes),
        )
        self.feature_names = names
        self.head_names = ["fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8"]
        self.feature_channels = c_in
        self.card = card
        if init is not None:  # None: weights about to be overwritten (loading) keep the layers' own cheap init
            init_weights(self, init)

    @property
    def card(self) -> Card:
        return self._card

    @card.setter
    def card(self, card: Card) -> None:
        """A new card (the card is frozen: ``model.card = model.card.but(class_names=...)``); it must describe this
        architecture. Its pooling rule is applied to the max-pools."""
        if card.config != self.config:
            raise ConfigError(f"card for {card.config}, model is {self.config}")
        self._card = card
        for m in self.features:
            if isinstance(m, nn.MaxPool2d):
                m.ceil_mode = card.pooling == "ceil"

    # Read-only views of the card, for convenience.
    input_convention = property(lambda self: self._card.preprocess)
    class_names = property(lambda self: None if self._card.class_names is None else list(self._card.class_names))
    train_scale = property(lambda self: self._card.train_scale)
    box_mode = property(lambda self: self._card.box[0] if self._card.box else None)
    box_classes = property(lambda self: self._card.box[1] if self._card.box else None)

    # ----------------------------------------------------------------------------------------------- naming
    @property
    def layer_names(self) -> list[str]:
        """Every layer name in order: conv1_1, relu1_1, ..., pool5, fc6, relu6, drop6, fc7, relu7, drop7, fc8."""
        return self.feature_names + self.head_names

    def layer(self, name: str) -> nn.Module:
        if name in self.feature_names:
            return self.features[self.feature_names.index(name)]
        if name in self.head_names:
            return self.classifier[self.head_names.index(name)]
        raise KeyError(f"no layer {name!r}; layers are {', '.join(self.layer_names)}")

    def weight_layers(self) -> list[tuple[str, nn.Module]]:
        """The conv and FC layers in order, by their paper names: what the weight converters map onto."""
        return [(n, self.layer(n)) for n in self.layer_names if n.startswith(("conv", "fc"))]

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Map RGB floats in [0, 1], (N, C, H, W), to what this model's weights expect."""
        return self._card.preprocess(x)

    # ----------------------------------------------------------------------------------------------- forward
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """self.features(x), with each ReLU that feeds a max-pool applied after the pool instead: the maximum commutes
        with the ReLU, so the values and the gradients are the same (tests/test_models.py), while the ReLU and its
        backward touch a quarter of the elements. On the study's 1/8-width nets the full-size ReLU before each pool
        was a memory-bound pass over the largest maps: the training step runs 1.0-3.5% faster at one thread (B to E
        and A; A-LRN's first ReLU feeds its LRN), `benchmarks/relu_pool_order.py` (BENCHMARKS.md)."""
        layers = list(self.features)
        i = 0
        while i < len(layers):
            m = layers[i]
            if isinstance(m, nn.ReLU) and i + 1 < len(layers) and isinstance(layers[i + 1], nn.MaxPool2d):
                x = F.relu_(layers[i + 1](x))  # the pool's output is new memory, and the pool saved its input
                i += 2
            else:
                x = m(x)
                i += 1
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self._features(x)
        k = self.config.head_kernel
        if f.shape[-2:] != (k, k):
            raise ConfigError(
                f"input {tuple(x.shape[-2:])} does not match the {self.config.crop_size}x{self.config.crop_size} crop "
                f"this head is built for; use model.score_map(x) for dense evaluation of other sizes")
        return self.classifier(torch.flatten(f, 1))

    def _fc_as_conv(self, x: torch.Tensor, index: int) -> torch.Tensor:
        lin: nn.Linear = self.classifier[index]
        k = self.config.head_kernel if index == 0 else 1
        # A view of the Linear weight: the dense net and the crop net share their parameters.
        w = lin.weight.view(lin.out_features, -1, k, k)
        return F.conv2d(x, w, lin.bias)

    def _head(self, f: torch.Tensor, dense: bool):
        """Yield (name, output) through the FC layers, as FCs on a crop or as convolutions (dense)."""
        x = f if dense else torch.flatten(f, 1)
        for name, module, index in zip(self.head_names, self.classifier, range(7)):
            if isinstance(module, nn.Linear):
                x = self._fc_as_conv(x, index) if dense else module(x)
            else:
                x = module(x)
            yield name, x

    def score_map(self, x: torch.Tensor) -> torch.Tensor:
        """The class score map (N, classes, h, w) of a whole image: fc6 as a kxk conv, fc7/fc8 as 1x1 convs."""
        check_memory(self.config, x.shape, x.device, x.element_size())
        f = self._features(x)
        k = self.config.head_kernel
        if f.shape[-1] < k or f.shape[-2] < k:
            raise ConfigError(f"input {tuple(x.shape[-2:])} is smaller than the {self.config.crop_size} crop")
        for _, out in self._head(f, dense=True):
            pass
        return out

    def extract(self, x: torch.Tensor, layers: Sequence[str] | str, dense: bool = False) -> dict[str, torch.Tensor]:
        """Outputs of named layers (conv = before ReLU, relu = after). FC layers give (N, C) on a crop, or maps
        (N, C, h, w) with dense=True. Stops as soon as the last requested layer is computed."""
        wanted = [layers] if isinstance(layers, str) else list(layers)
        for n in wanted:
            self.layer(n)  # raises a clear KeyError for unknown names
        if dense:
            check_memory(self.config, x.shape, x.device, x.element_size())
        todo, out = set(wanted), {}
        y = x
        for name, module in zip(self.feature_names, self.features):
            # Out-of-place ReLU so that a stored pre-activation output is not overwritten.
            y = F.relu(y) if isinstance(module, nn.ReLU) else module(y)
            if name in todo:
                out[name] = y
                todo.discard(name)
            if not todo:
                return out
        if not dense and y.shape[-2:] != (self.config.head_kernel,) * 2:
            raise ConfigError(f"fc layers need a {self.config.crop_size} crop or dense=True; "
                             f"got input {tuple(x.shape[-2:])}")
        for name, y in self._head(y, dense):
            if name in todo:
                out[name] = y.clone() if name.startswith("fc") else y
                todo.discard(name)
            if not todo:
                break
        return out

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate 4096-D activations (relu7) of crops: the paper's image features (section 7)."""
        return self.extract(x, "relu7")["relu7"]


# --------------------------------------------------------------------------------------------------- init
INIT_SCHEMES = ("paper", "glorot", "kaiming")


def paper_fan_ins(cfg: VGGConfig) -> list[int]:
    """Each weight layer's fan-in in the paper's own net of this configuration (width 1, FC 4096, 224 crops)."""
    fans, c = [], cfg.in_channels
    for block in BLOCKS[cfg.config]:
        for co, k in block:
            fans.append(c * k * k)
            c = co
    return fans + [c * 7 * 7, 4096, 4096]


def init_weights(model: nn.Module, scheme: str = "paper") -> None:
    """PAPER.md section 2: "paper" = N(0, 0.01) weights, zero biases (the random init of net A); "glorot" = Glorot &
    Bengio 2010 uniform (the post-submission note: works without pre-training); "kaiming" = He et al. 2015 normal.

    "paper" on a narrower or smaller net (width < 1, smaller FC layers or crops) keeps each layer's gain, the std
    times the square root of the fan-in, equal to the paper net's: std = 0.01 sqrt(paper fan-in / fan-in). At the
    paper's geometry that is N(0, 0.01) exactly; at width 0.25 plain N(0, 0.01) halves every layer's gain and net A
    never leaves chance (BENCHMARKS.md, the miniature study)."""
    if scheme not in INIT_SCHEMES:
        raise ConfigError(f"unknown init scheme {scheme!r}; choose one of {INIT_SCHEMES}")
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    reference = paper_fan_ins(model.config) if isinstance(model, VGG) else [None] * len(layers)
    for m, ref in zip(layers, reference if len(reference) == len(layers) else [None] * len(layers)):
        if scheme == "paper":
            fan_in = m.weight[0].numel()
            nn.init.normal_(m.weight, 0.0, INIT_STD * math.sqrt(ref / fan_in) if ref else INIT_STD)
        elif scheme == "glorot":
            nn.init.xavier_uniform_(m.weight)
        else:
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@torch.no_grad()
def init_from(model: VGG, net_a: VGG, layers: Iterable[str] = INIT_FROM_LAYERS) -> list[str]:
    """Copy net A's first four conv layers and its three FC layers into a deeper net (PAPER.md section 2).

    A's first four conv layers are conv1_1, conv2_1, conv3_1, conv3_2; they go to the layers of the same name in
    the deeper net (the same positions in their blocks, hence the same shapes). Other layers keep their fresh init.
    Returns the names copied."""
    copied = []
    for name in layers:
        try:
            dst, src = model.layer(name), net_a.layer(name)
        except KeyError as e:
            raise ConfigError(f"init_from: {e.args[0]}") from None
        for p in ("weight", "bias"):
            a, b = getattr(src, p), getattr(dst, p)
            if a.shape != b.shape:
                raise ConfigError(f"init_from: {name}.{p}: source has {tuple(a.shape)}, "
                                 f"target expects {tuple(b.shape)}")
            b.copy_(a)
        copied.append(name)
    return copied


# --------------------------------------------------------------------------------------------------- builder
def vgg(name: str = "D", *, num_classes: int | None = None, init: str = "paper", **options) -> VGG:
    """Build any configuration by name ("A", "A-LRN", "B", "C", "D", "E", "B-shallow", "vgg16", "vgg16_bn", ...),
    freshly initialised. options: width, fc_width, in_channels, dropout, crop_size (see VGGConfig). Trained weights
    of any format: ``verydeep.load(path, name)``."""
    return VGG(model_config(name, num_classes=1000 if num_classes is None else num_classes, **options), init=init)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------------- analysis
@dataclass
class LayerInfo:
    name: str
    kind: str
    out_shape: tuple[int, int, int]
    params: int
    macs: int
    receptive_field: int


def describe(cfg: VGGConfig, size: int | None = None) -> list[LayerInfo]:
    """Per-layer output shape, parameters, multiply-adds and receptive field at a square input (Table 1 / 2)."""
    size = size or cfg.crop_size
    h, c, rf, jump = size, cfg.in_channels, 1, 1
    rows: list[LayerInfo] = []
    for b, block in enumerate(BLOCKS[cfg.config], start=1):
        for i, (co, k) in enumerate(block, start=1):
            co = cfg.channels(co)
            rf += (k - 1) * jump
            params = c * co * k * k + co + (2 * co if cfg.batch_norm else 0)
            rows.append(LayerInfo(f"conv{b}_{i}", f"conv{k}-{co}", (co, h, h), params, h * h * c * co * k * k, rf))
            c = co
        rf += jump
        jump *= 2
        h //= 2
        rows.append(LayerInfo(f"pool{b}", "maxpool", (c, h, h), 0, 0, rf))
    k = cfg.head_kernel
    dims = [c * k * k, cfg.fc_width, cfg.fc_width, cfg.num_classes]
    hh = max(h - k + 1, 1)
    rf += (k - 1) * jump  # fc6 sees a kxk window of pool5
    for j, name in enumerate(("fc6", "fc7", "fc8")):
        params = dims[j] * dims[j + 1] + dims[j + 1]
        rows.append(LayerInfo(name, f"FC-{dims[j + 1]}", (dims[j + 1], hh, hh), params,
                              hh * hh * dims[j] * dims[j + 1], rf))
    return rows


def summary(cfg: VGGConfig, size: int | None = None) -> dict:
    rows = describe(cfg, size)
    convs = [r for r in rows if r.name.startswith("conv")]
    return {
        "name": config_name(cfg),
        "weight_layers": sum(1 for r in rows if r.name.startswith(("conv", "fc"))),
        "params": sum(r.params for r in rows),
        "macs": sum(r.macs for r in rows),
        "receptive_field": convs[-1].receptive_field,
    }


def activation_bytes(cfg: VGGConfig, n: int, height: int, width: int, itemsize: int = 4) -> int:
    """Peak bytes of one layer's input and output together in an inference pass over n images of height x width
    (the FC layers as convolutions): what a dense pass needs beyond the weights, known before it starts."""
    h, w, c = height, width, cfg.in_channels
    peak = 0
    for block in BLOCKS[cfg.config]:
        for co, _ in block:
            co = cfg.channels(co)
            peak = max(peak, (c + co) * h * w)
            c = co
        h, w = h // 2, w // 2
    k = cfg.head_kernel
    hh, ww = max(h - k + 1, 1), max(w - k + 1, 1)
    peak = max(peak, c * h * w + cfg.fc_width * hh * ww, (cfg.fc_width + cfg.num_classes) * hh * ww)
    return n * peak * itemsize


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes this process could still allocate on the device (MemAvailable on Linux), or None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(cfg: VGGConfig, shape: Sequence[int], device: torch.device | str = "cpu", itemsize: int = 4) -> None:
    """Refuse, before allocating, a pass whose activations would not fit: one line naming the input size."""
    n, _, h, w = shape
    need = activation_bytes(cfg, n, h, w, itemsize)
    free = available_memory(device)
    if free is not None and need > free:
        raise ResourceError(f"a pass of {config_name(cfg)} over {n} image(s) of {h}x{w} needs about "
                            f"{need / 2**30:.1f} GiB for its activations, {free / 2**30:.1f} GiB are free: use "
                            f"smaller test scales or batches")


def multiply_adds(cfg: VGGConfig, height: int, width: int | None = None) -> int:
    """Multiply-adds of a dense pass over an HxW image (convs and FC-as-conv layers)."""
    width = width or height
    total, h, w, c = 0, height, width, cfg.in_channels
    for block in BLOCKS[cfg.config]:
        for co, k in block:
            co = cfg.channels(co)
            total += h * w * c * co * k * k
            c = co
        h, w = h // 2, w // 2
    k = cfg.head_kernel
    hh, ww = max(h - k + 1, 0), max(w - k + 1, 0)
    dims = [c * k * k, cfg.fc_width, cfg.fc_width, cfg.num_classes]
    total += sum(hh * ww * dims[j] * dims[j + 1] for j in range(3))
    return total

