"""Very deep features for other datasets (PAPER.md section 7, the paper's Appendix B): a net applied densely at one
or several scales Q; a layer's map (the penultimate relu7, 4096-D, by default) globally average-pooled; averaged
with the flipped image's; scales averaged or stacked; several nets stacked; L2-normalised. Written as a
memory-mapped .npy with a JSON index, resumable: a killed extraction continues where it stopped."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import paper
from .data.sources import Source
from .errors import ConfigError, UserError
from .fast import FastVGG
from .models import VGG
from .options import NetOptions, RunOptions
from .transforms import BadImage, as_rgb, rescale, to_uint8

log = logging.getLogger("verydeep")


@torch.inference_mode()
def descriptor(models: list[VGG | FastVGG], img, scales: list[int], layer: str = "relu7",
               aggregate: str = "mean") -> np.ndarray:
    """One image's descriptor: per net and scale, the dense `layer` map pooled over space and averaged with the
    mirror image's; scales averaged ("mean", VOC) or concatenated ("stack", Caltech); nets concatenated; L2-norm.
    A FastVGG (prepared up to `layer`) computes the maps fast; a VGG the reference way."""
    if aggregate not in ("mean", "stack"):
        raise UserError(f"--aggregate {aggregate!r}: choose mean or stack")
    parts = []
    for m in models:
        if isinstance(m, FastVGG) and m.upto != layer:
            raise ConfigError(f"net prepared up to {m.upto}, descriptor of {layer} asked")
        per_scale = []
        for q in scales:
            x = m.preprocess(to_uint8(rescale(img, q))[None].float() / 255)
            both = torch.cat([x, x.flip(3)])
            f = m.score_map(both) if isinstance(m, FastVGG) else m.extract(both, [layer], dense=True)[layer]
            pooled = f.mean((2, 3)) if f.ndim == 4 else f
            per_scale.append(pooled.mean(0))
        parts.append(torch.stack(per_scale).mean(0) if aggregate == "mean" else torch.cat(per_scale))
    d = torch.cat(parts).double()
    return (d / d.norm().clamp_min(1e-12)).float().numpy()


def dimension(models: list[VGG], scales: list[int], layer: str, aggregate: str) -> int:
    dims = []
    for m in models:
        x = torch.zeros(1, m.config.in_channels, m.config.crop_size, m.config.crop_size)
        with torch.inference_mode():
            c = m.extract(x, [layer], dense=True)[layer].shape[1]
        dims.append(c * (len(scales) if aggregate == "stack" else 1))
    return sum(dims)


def extract(models: list[VGG], source: Source, out: str | Path, scales: list[int], layer: str = "relu7",
            aggregate: str = "mean", progress: bool = True, precision: object = "auto") -> tuple[np.ndarray, dict]:
    """Descriptors of every image into OUT.npy (memory-mapped, float32) + OUT.json (paths, labels, settings).
    Rerunning with the same settings continues an interrupted extraction."""
    from tqdm import tqdm

    out = Path(out)
    npy, meta_path = out.with_suffix(".npy"), out.with_suffix(".json")
    n, dim = len(source), dimension(models, scales, layer, aggregate)
    nets = [FastVGG(m, precision, upto=layer) for m in models]
    settings = {"layer": layer, "scales": scales, "aggregate": aggregate, "images": n, "dim": dim,
                "nets": [str(m.config) for m in models], "precision": nets[0].precision}
    from .provenance import provenance
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() and npy.is_file() else None
    if meta is not None and meta.get("settings") != settings:
        raise UserError(f"{meta_path}: holds features with other settings; choose another --out")
    if meta is None:
        meta = {"settings": settings, "provenance": provenance(nets[0].device, nets[0].policy), "done": 0,
                "paths": [source.path(i) for i in range(n)],
                "labels": source.labels().tolist(), "classes": list(source.classes), "skipped": []}
        if hasattr(source, "targets"):  # multi-label (VOC)
            has, ignore = source.targets()
            meta["targets"], meta["ignore"] = has.astype(int).tolist(), ignore.astype(int).tolist()
        np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=(n, dim)).flush()
    feats = np.load(npy, mmap_mode="r+")
    start = meta["done"]
    if start and progress:
        log.warning("resuming feature extraction at image %d of %d", start, n)
    bar = tqdm(total=n, initial=start, unit="img", desc="features", disable=not progress, mininterval=1.0)
    for i in range(start, n):
        try:
            s = source.read(i)
            img = as_rgb(s.image, min(scales))
            feats[i] = descriptor(nets, img, scales, layer, aggregate)
        except BadImage as e:
            feats[i] = 0
            meta["skipped"].append(i)
            log.warning("%s: skipped (%s)", source.path(i), e)
        bar.update(1)
        if (i + 1) % 64 == 0 or i + 1 == n:  # the features reach the disk before the index says so
            feats.flush()
            meta["done"] = i + 1
            meta_path.write_text(json.dumps(meta))
    bar.close()
    meta["done"] = n
    meta_path.write_text(json.dumps(meta))
    return np.load(npy, mmap_mode="r"), meta


@dataclass
class FeaturesConfig(NetOptions, RunOptions):
    data: str = ""                 # dataset: a folder (its --split), PASCAL VOC, labels-file folder, shards
    split: str | None = None       # the split of a folder holding train/, val/, test/ (VOC: trainval, test)
    out: str = ""                  # OUT.npy (memory-mapped features) and OUT.json (index, settings, skipped)
    layer: str = paper.FEATURE_LAYER  # any layer name; relu7 is the 4096-D penultimate layer (section 7)
    scales: str | None = None      # test scales Q (default: the paper's 256,384,512 at a 224 crop)
    aggregate: str = "mean"        # over scales: mean (VOC) or stack (Caltech)
    progress: bool = True          # progress bar


def run(cfg: FeaturesConfig) -> tuple[np.ndarray, dict]:
    """`verydeep features`: very deep features of every image of a dataset (section 7), resumable."""
    from .data import open_source
    from .evaluate import parse_scales

    if not cfg.out:
        raise UserError("give --out (features go to OUT.npy and OUT.json)")
    device, policy = cfg.runtime()
    models = [m.to(device) for m in cfg.nets()]
    crop = models[0].config.crop_size
    scales = parse_scales(cfg.scales, models[0]) if cfg.scales else paper.multi_scales(crop)
    feats, meta = extract(models, open_source(cfg.data, split=cfg.split), cfg.out, scales, cfg.layer,
                          cfg.aggregate, progress=cfg.progress, precision=policy)
    print(f"wrote {Path(cfg.out).with_suffix('.npy')} and .json: {feats.shape[0]} images x {feats.shape[1]} "
          f"({cfg.layer}, Q={scales}, {cfg.aggregate}, {len(models)} net(s), {meta['settings']['precision']}); "
          f"{len(meta['skipped'])} skipped")
    return feats, meta
