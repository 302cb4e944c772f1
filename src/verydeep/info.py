"""`verydeep info`: Tables 1 and 2 of the paper for every configuration, our counts beside the paper's, or one
configuration layer by layer."""
from __future__ import annotations

from dataclasses import dataclass

from . import paper
from .config import positional
from .models import describe, list_models, model_config, summary


@dataclass
class InfoConfig:
    name: str | None = positional(default=None)  # one model (A ... E, vgg16, ...): its layers
    size: int | None = None        # input size for the per-layer table (default: the crop)
    width: float | None = None     # width multiplier of every conv layer (1: the paper's)
    fc_width: int | None = None    # width of fc6 and fc7 (4096)
    crop: int | None = None        # the crop the FC head is built for (224)
    in_channels: int | None = None  # input channels (3)
    num_classes: int | None = None  # classes (1000)


def run(cfg: InfoConfig) -> list[dict]:
    opts = {k: v for k, v in {"width": cfg.width, "fc_width": cfg.fc_width, "crop_size": cfg.crop,
                              "in_channels": cfg.in_channels, "num_classes": cfg.num_classes}.items()
            if v is not None}
    if cfg.name:
        config = model_config(cfg.name, **opts)
        size = cfg.size or config.crop_size
        print(f"{cfg.name}: {config}\nat {size}x{size} input\n")
        print(f"{'layer':<8} {'type':<12} {'output (C,H,W)':<18} {'params':>13} {'mult-adds':>15} {'RF':>5}")
        rows = describe(config, size)
        for r in rows:
            shape = "x".join(map(str, r.out_shape))
            print(f"{r.name:<8} {r.kind:<12} {shape:<18} {r.params:>13,} {r.macs:>15,} {r.receptive_field:>5}")
        s = summary(config, size)
        print(f"\ntotal: {s['weight_layers']} weight layers, {s['params']:,} parameters, "
              f"{s['macs'] / 1e9:.2f} G multiply-adds, receptive field of the last conv layer {s['receptive_field']}")
        return [vars(r) for r in rows]
    names = list_models()[:11]  # the paper's configs, B-shallow and the BN variants (aliases omitted)
    print("VGG configurations (Simonyan & Zisserman, Tables 1-2)" +
          (f" with {opts}" if opts else ", 1000 classes, 224x224 input"))
    print(f"{'name':<10} {'weight layers':>13} {'parameters':>14} {'(M)':>7} {'paper (M)':>9} "
          f"{'mult-adds (G)':>13} {'paper (G)':>9} {'RF last conv':>12}")
    out = []
    for name in names:
        s = summary(model_config(name, **opts))
        out.append(s)
        print(f"{name:<10} {s['weight_layers']:>13} {s['params']:>14,} {s['params'] / 1e6:>7.1f} "
              f"{paper.TABLE2_PARAMS_M.get(name, '-') if not opts else '-':>9} {s['macs'] / 1e9:>13.2f} "
              f"{paper.TABLE2_MACS_G.get(name, '-') if not opts else '-':>9} {s['receptive_field']:>12}")
    return out
