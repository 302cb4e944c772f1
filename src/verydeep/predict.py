"""`verydeep predict` (the top classes of images under any protocol) and `verydeep explain` (where in an image the
net sees its top class: the dense score map of section 3, over the image)."""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import paper
from .config import positional
from .errors import ConfigError, UserError
from .evaluate import Evaluator, parse_scales, predict_image
from .models import VGG
from .options import NetOptions, RunOptions
from .transforms import BadImage, load_rgb, rescale, to_uint8
from .utils import atomic_write

log = logging.getLogger("verydeep")


def class_names(model: VGG, labels: str | None = None) -> list[str]:
    """The names of a net's classes: a labels file (one per line), the weights' card, ImageNet's for 1000
    classes, else numbers."""
    if labels:
        path = Path(labels)
        if not path.is_file():
            raise UserError(f"{path}: no such labels file")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    elif model.class_names:
        names = list(model.class_names)
    elif model.config.num_classes == paper.CLASSES:
        from importlib.resources import files

        names = files("verydeep").joinpath("imagenet_classes.txt").read_text().splitlines()
    else:
        names = [f"class {i}" for i in range(model.config.num_classes)]
    if len(names) != model.config.num_classes:
        raise UserError(f"{labels}: {len(names)} labels for a {model.config.num_classes}-class model")
    return names


def _untrained_warning(opts: NetOptions) -> None:
    if not opts.weights:
        log.warning("no --weights: %s is untrained (random weights); its predictions mean nothing", opts.model)


@dataclass
class PredictConfig(NetOptions, RunOptions):
    images: list[str] = positional("+", default_factory=list)  # image files
    labels: str | None = None       # class names, one per line (default: from the weights, or ImageNet's)
    protocol: str = "dense"         # dense (the paper's: whole image + flip), center (the peers'), multicrop,
    # dense+multicrop, or any registered protocol
    scales: str | None = None       # test scales Q: 256,384,512, or auto / auto-multi (the paper's rules from the
    # training scale); default 256 at a 224 crop
    top: int = 5                    # classes shown per image
    json: str | None = None         # write the results as JSON to this file ("-": to standard output)


def predict(cfg: PredictConfig) -> dict:
    """Posteriors of each image (several nets: their posteriors averaged, Table 6's fusion); a bad image is reported
    in one line and the others still predicted."""
    if not cfg.images:
        raise ConfigError("give at least one image")
    device, policy = cfg.runtime()
    models = [m.to(device) for m in cfg.nets()]
    _untrained_warning(cfg)
    if len({m.config.num_classes for m in models}) > 1:
        raise ConfigError("--weights: fused nets must have the same classes")
    model = models[0]
    names = class_names(model, cfg.labels)
    scales = parse_scales(cfg.scales, model)
    evs = [Evaluator(m, device, batch_size=16, workers=0, precision=policy, progress=False) for m in models]
    ev = evs[0]
    results, failed = [], 0
    for image in cfg.images:
        t0 = time.perf_counter()
        try:
            img = load_rgb(image)
            p = torch.stack([predict_image(m, img, cfg.protocol, scales, evaluator=e)
                             for m, e in zip(models, evs)]).mean(0)
        except (UserError, BadImage) as e:
            print(f"verydeep predict: {e if isinstance(e, UserError) else f'{image}: {e}'}", file=sys.stderr)
            failed += 1
            continue
        top = p.topk(min(cfg.top, p.numel()))
        entry = {"image": str(image), "protocol": cfg.protocol, "scales": scales, "precision": ev.precision,
                 "nets": len(models),
                 "seconds": round(time.perf_counter() - t0, 4),
                 "top": [{"class": int(i), "name": names[int(i)], "probability": round(float(v), 6)}
                         for v, i in zip(top.values, top.indices)]}
        results.append(entry)
        if cfg.json != "-":
            print(f"{image}  ({cfg.protocol}, Q={','.join(map(str, scales))}, {ev.precision}, "
                  f"{entry['seconds']:.2f} s)")
            for r in entry["top"]:
                print(f"  {r['probability']:8.4f}  {r['class']:>4}  {r['name']}")
    if cfg.json:
        from .provenance import provenance

        doc = {"results": results, "provenance": provenance(device, policy)}
        if cfg.json == "-":
            print(json.dumps(doc, indent=2))
        else:
            atomic_write(cfg.json, lambda t: Path(t).write_text(json.dumps(doc, indent=2) + "\n"))
            print(f"wrote {cfg.json}")
    return {"results": results, "failed": failed}


@dataclass
class ExplainConfig(NetOptions, RunOptions):
    image: str | None = positional(default=None)  # an image file
    labels: str | None = None       # class names, one per line (default: from the weights, or ImageNet's)
    scales: str | None = None       # the test scale Q (one; default 256 at a 224 crop)
    out: str | None = None          # PNG path (default IMAGE.explain.png in this folder)


def coverage_map(scores: np.ndarray, crop: int, size: tuple[int, int]) -> np.ndarray:
    """Per pixel of the rescaled image (H, W): the mean of the score-map cells whose window covers it. Cell (i, j)
    is the net on the crop-sized window at (32 j, 32 i) (section 3), so a pixel's value is what the windows that see
    it say: smooth where windows overlap, and honest about it (a 2x2 map is nearly uniform)."""
    h, w = scores.shape
    height, width = size
    total = np.zeros((height, width))
    count = np.zeros((height, width))
    for i in range(h):
        for j in range(w):
            y, x = paper.POOL_STRIDE * i, paper.POOL_STRIDE * j
            total[y:y + crop, x:x + crop] += scores[i, j]
            count[y:y + crop, x:x + crop] += 1
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def explain(cfg: ExplainConfig) -> dict:
    """A PNG of the image with the top class's per-location posterior over it (dense evaluation, section 3). The
    probability is predict's dense one (the score map averaged, soft-maxed, flip-averaged); the map is the
    unflipped image's, each pixel averaged over the windows that see it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .fast import FastVGG

    if not cfg.image:
        raise ConfigError("give an image")
    device, policy = cfg.runtime()
    model = cfg.net().to(device)
    _untrained_warning(cfg)
    names = class_names(model, cfg.labels)
    scales = parse_scales(cfg.scales, model)
    if len(scales) != 1:
        raise ConfigError(f"--scales: explain draws one test scale, got {scales}")
    q, crop = scales[0], model.config.crop_size
    img = load_rgb(cfg.image)
    big = rescale(img, q)
    net = FastVGG(model, policy, device)
    with torch.inference_mode():
        x = model.preprocess(to_uint8(big)[None].float().div_(255.0)).to(device)
        smap = net.score_map(x)[0].cpu()                                        # (classes, h, w)
        flipped = net.score_map(x.flip(3))[0].cpu()
        probs = 0.5 * (smap.mean((1, 2)).softmax(0) + flipped.mean((1, 2)).softmax(0))
        top = int(probs.argmax())
        heat = coverage_map(smap.softmax(0)[top].numpy(), crop, (big.size[1], big.size[0]))
    h, w = smap.shape[1:]
    fig, ax = plt.subplots(figsize=(7, 7 * big.size[1] / big.size[0]))
    ax.imshow(big)
    im = ax.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    label = names[top]
    ax.set_title(f"{label}: p = {float(probs[top]):.3f} (dense + flip, Q = {q}, {net.precision})\n"
                 f"score map {h}x{w}: windows of {crop} px every {paper.POOL_STRIDE} px", fontsize=10)
    ax.axis("off")
    fig.colorbar(im, ax=ax, fraction=0.03, label="P(top class), mean over the windows covering a pixel")
    fig.tight_layout()
    out = Path(cfg.out or Path(cfg.image).with_suffix(".explain.png").name)
    atomic_write(out, lambda t: fig.savefig(t, dpi=100, format="png"))
    plt.close(fig)
    print(f"{cfg.image}: {label} (p = {float(probs[top]):.3f}, dense + flip at Q = {q}, as predict), score map "
          f"{h}x{w} (windows of {crop} px every {paper.POOL_STRIDE} px); wrote {out}")
    return {"class": top, "name": label, "probability": float(probs[top]), "map": [h, w], "png": str(out)}
