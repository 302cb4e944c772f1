"""Data: image sources, tar shards, Fashion-MNIST, colour statistics and the training loader (PAPER.md §2-3)."""
from .fashion_mnist import FashionMNIST
from .loader import Batch, CenterCropDataset, eval_loader, EpochSampler, LoaderConfig, ShardStream, Skip, SkipTracker, TrainDataset, TrainLoader
from .shards import TarShards, pack
from .sources import VOC, ImageFolder, ImageList, Sample, Source, Subset, open_source, parse_voc, split
from .stats import ColourStats

__all__ = ["FashionMNIST", "Batch", "EpochSampler", "LoaderConfig", "ShardStream", "Skip", "SkipTracker",
           "TrainDataset", "TrainLoader", "TarShards", "pack", "ImageFolder", "ImageList", "Sample", "Source",
           "open_source", "parse_voc", "ColourStats", "CenterCropDataset", "eval_loader", "Subset", "split", "VOC"]
