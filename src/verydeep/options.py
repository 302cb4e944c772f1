"""Option groups that several commands share, so that the same idea has the same name and meaning everywhere: which
net (`NetOptions`, `NetsOptions`), and where and how to run it (`RunOptions`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .config import repeated
from .errors import ConfigError


@dataclass
class RunOptions:
    device: str = "auto"           # auto (CUDA when present, else cpu), cpu, cuda or cuda:N
    precision: Literal["auto", "fp32", "bf16", "int8"] = "auto"  # auto: bf16 where the hardware computes it
    # natively, else fp32; int8: CPU inference only
    threads: int | None = None     # CPU threads (default: every core)

    def runtime(self, training: bool = False):
        """Check the options, set the threads, and return (device, precision policy)."""
        from .distributed import check_device
        from .precision import Precision

        check_device(self.device)
        if self.threads is not None:
            if self.threads < 1:
                raise ConfigError(f"--threads {self.threads}: give at least 1")
            torch.set_num_threads(self.threads)
        device = torch.device("cuda" if self.device == "auto" and torch.cuda.is_available() else
                              "cpu" if self.device == "auto" else self.device)
        return device, Precision.resolve(self.precision, device, training)


@dataclass
class NetOptions:
    """The nets a command uses: weight files of any format (several: fused or stacked, where the command can), or
    an untrained net of a named architecture."""
    weights: list[str] = repeated()  # weights: verydeep .safetensors or checkpoint, torchvision .pth, Keras .h5,
    # Caffe .caffemodel (the format is detected); repeat the flag for several nets
    model: str | None = None       # architecture (A, A-LRN, B, C, D, E, B-shallow, vgg16, vgg16_bn, ...); needed for
    # formats that do not name it, or to build an untrained net
    width: float | None = None     # width multiplier of every conv layer (1: the paper's)
    fc_width: int | None = None    # width of fc6 and fc7 (4096)
    crop: int | None = None        # the crop the FC head is built for (224)
    in_channels: int | None = None  # input channels (3)
    num_classes: int | None = None  # classes (1000, or from the weights)
    preprocess: Literal["auto", "caffe", "torchvision", "verydeep"] = "auto"  # the input convention the weights
    # expect (auto: from the file's format or card; caffe: BGR 0-255 minus the mean, e.g. Caffe weights saved under
    # torchvision's keys; torchvision: RGB 0-1 normalised; verydeep: RGB 0-255 minus the training mean)
    pooling: Literal["auto", "floor", "ceil"] = "auto"  # max-pool output rounding (auto: the weights' origin: ceil
    # for Caffe files, as Caffe computed; floor otherwise, as PyTorch and Keras)

    def load_options(self) -> dict:
        from .card import CONVENTIONS

        opts = self.model_options()
        if self.preprocess != "auto":
            opts["preprocess"] = CONVENTIONS[self.preprocess]
        if self.pooling != "auto":
            opts["pooling"] = self.pooling
        return opts

    def model_options(self) -> dict:
        opts = {"width": self.width, "fc_width": self.fc_width, "crop_size": self.crop,
                "in_channels": self.in_channels, "num_classes": self.num_classes}
        return {k: v for k, v in opts.items() if v is not None}

    def nets(self) -> list:
        """Every net named: loaded from --weights (in eval mode), or one untrained net of --model."""
        from .models import vgg
        from .weights import load

        if self.weights:
            return [load(w, self.model, **self.load_options()) for w in self.weights]
        if not self.model:
            raise ConfigError("give --weights FILE (a trained net) or --model NAME (an untrained one)")
        return [vgg(self.model, **self.model_options()).eval()]

    def net(self):
        """The one net this command uses."""
        if len(self.weights) > 1:
            raise ConfigError(f"--weights: this command uses one net, {len(self.weights)} were given")
        return self.nets()[0]
