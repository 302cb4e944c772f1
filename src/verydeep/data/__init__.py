"""Data: image sources, tar shards, Fashion-MNIST, colour statistics and the training loader (PAPER.md §2-3)."""
from .fashion_mnist import FashionMNIST
from .loader import (Batch, CenterCropDataset, EpochSampler, LoaderConfig, Skip, SkipTracker, TrainDataset,
                     TrainLoader, eval_loader)
from .open import open_source, sample, splits_of
from .pack import pack
from .shards import TarShards
from .sources import VOC, ImageFolder, ImageList, Sample, Source, Subset, parse_voc, split
from .stats import ColourStats

__all__ = ["FashionMNIST", "Batch", "EpochSampler", "LoaderConfig", "Skip", "SkipTracker", "TrainDataset",
           "TrainLoader", "TarShards", "pack", "ImageFolder", "ImageList", "Sample", "Source", "open_source",
           "sample", "splits_of", "parse_voc", "ColourStats", "CenterCropDataset", "eval_loader", "Subset", "split",
           "VOC"]
