"""Opening a dataset by what the user names (a folder, shards, fashion-mnist) and taking samples of it."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import UserError
from .fashion_mnist import FashionMNIST
from .shards import SHARD_INDEX, TarShards
from .sources import VOC, ImageFolder, ImageList, Source, Subset

SPLITS = ("train", "val", "test", "trainval")


def splits_of(path: Path) -> list[str]:
    """The splits of a folder whose top level is train/, val/, test/ (a split layout), else []."""
    try:
        subdirs = {d.name for d in os.scandir(path) if d.is_dir() and not d.name.startswith(".")}
    except OSError:
        return []
    found = [s for s in SPLITS if s in subdirs]
    return found if found and subdirs <= set(SPLITS) else []


def open_source(path: str | os.PathLike, split: str | None = None, **kw) -> Source:
    """Open a dataset by path: a shard folder or index (shards.json), 'fashion-mnist[:train|test]', a PASCAL VOC
    folder, a folder with a labels file (labels.txt / val_labels.txt), or an ImageNet-layout folder. A folder of
    splits (train/, val/, test/) needs the split, and an unknown split is an error naming those that exist: split
    folders are never taken for classes."""
    spec = str(path)
    if spec.startswith("fashion-mnist"):
        _, _, which = spec.partition(":")
        return FashionMNIST(which or split or "train")
    path = Path(path)
    splits = splits_of(path) if path.is_dir() else []
    if splits:
        if split is None:
            raise UserError(f"{path}: holds the splits {', '.join(splits)}; give --split")
        if split not in splits:
            raise UserError(f"{path}: no split {split!r} (it holds {', '.join(splits)})")
        path = path / split
    if path.name == SHARD_INDEX or (path / SHARD_INDEX).is_file():
        return TarShards(path)
    if (path / "JPEGImages").is_dir() and (path / "ImageSets").is_dir():
        return VOC(path, split or "trainval")
    for name in ("labels.txt", "val_labels.txt"):
        if (path / name).is_file():
            return ImageList(path, path / name, **kw)
    return ImageFolder(path, **kw)


def sample(source: Source, n: int, seed: int = 0) -> Source:
    """A seeded sample of n images with every class in its share (class-stratified), in the source's order: what
    `--limit N` evaluates, so that N images are not the first classes only."""
    if n <= 0:
        raise UserError(f"--limit {n}: give a positive number of images")
    if n >= len(source):
        return source
    labels = source.labels()
    rng = np.random.default_rng((seed, 0x5A3))
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.floor(counts * n / len(labels)).astype(int)
    for c in rng.permutation(len(classes))[: n - quota.sum()]:  # the remainder, one each, to random classes
        quota[c] += 1
    chosen = np.concatenate([rng.choice(np.flatnonzero(labels == c), k, replace=False)
                             for c, k in zip(classes, quota) if k])
    return Subset(source, np.sort(chosen), f"{n} sampled, seed {seed}")
