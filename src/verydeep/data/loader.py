"""Training batches: DataLoader workers decode and crop, the main process (or the GPU) does the rest.

Reproducibility: every sample's randomness (S, crop, flip, colour shift) comes from a generator seeded with
(seed, epoch, index), so the same seed gives the same crops whatever the worker count, and a global batch split
over N ranks is exactly the single-process batch (PAPER.md section 4: "the result is exactly the same").
Bad images never stop a run: each is skipped, logged once with its path and reason, counted, and summarised at the
end of the epoch; the run fails only when the skipped fraction passes a limit (1% by default)."""
from __future__ import annotations

import logging
import multiprocessing
from collections import Counter
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, get_worker_info

from ..errors import UserError
from ..transforms import BadImage, TrainTransform, as_rgb, center_crop_resized
from ..utils import cores, die_with_parent, release_freed_memory
from .sources import Source

log = logging.getLogger("verydeep.data")


class Skip(NamedTuple):
    path: str
    reason: str
    detail: str


class Batch(NamedTuple):
    images: torch.Tensor   # uint8 (N, 3, C, C), channels-last in memory (what the model runs fastest on)
    labels: torch.Tensor   # int64 (N,)
    shifts: torch.Tensor   # float32 (N, 3): the RGB colour shift, in [0, 1] pixel units
    indices: torch.Tensor  # int64 (N,): source indices (for audits and resumption)
    skips: list            # Skip for each unusable image of this batch


@dataclass
class LoaderConfig:
    batch_size: int = 256          # per process: the global batch divided by the world size
    workers: int = 4
    seed: int = 0
    shuffle: bool = True
    drop_last: bool = True
    max_skip_fraction: float = 0.01
    pin_memory: bool | None = None  # default: when CUDA is available
    prefetch_factor: int = 4
    cache: bool | None = None      # decode every image once into memory (default: when it fits in cache_bytes)
    cache_bytes: int = 4 << 30     # memory the decoded images may take
    keep_cache: bool = True        # a fixed S's decoded images kept on disk beside the data for the next run


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng((seed, epoch, index))


def load_sample(source: Source, transform: TrainTransform, seed: int, epoch: int, i: int, cache=None):
    """One training example (uint8 HWC image, label, colour shift, index) or a Skip; never raises for bad data."""
    try:
        rng = sample_rng(seed, epoch, i)
        if cache is not None:
            image = cache.view(i, transform, rng)
            return image[0], cache.labels[i], image[1], i
        sample = source.read(i)
        image, shift = transform(sample.image, rng)
        return image, sample.label, shift, i
    except Exception as e:  # one bad image in a million must not stop a run: skip, count, report
        return Skip(source.path(i), getattr(e, "reason", type(e).__name__), str(e)[:200])


class ImageCache:
    """Every image of a source decoded once into memory, so that an epoch costs only its crops: for a fixed S
    (scale_min == scale_max) each image is kept rescaled to S and a crop is an array slice; for jittered S it is
    kept decoded (at the smallest DCT scale that keeps Smax) and each crop resizes only its own box. The views are
    those of the file path: the same draws (TrainTransform.view) from the same per-sample generators."""

    def __init__(self, source: Source, transform: TrainTransform, progress: bool = False, disk: bool = True):
        """disk: at a fixed S, read the decoded images from their file beside the data (data/cache.py) when it is
        current, else decode them and write it for the next run."""
        from tqdm import tqdm

        from ..transforms import BadImage, as_rgb, rescale
        from .cache import identify, load, save

        self.fixed = transform.scale_min == transform.scale_max
        self.labels = np.asarray(source.labels(), np.int64)
        self.images: list = []
        self.sizes: list = []       # the decoded image's (W, H), from which the crop positions follow
        self.bytes = 0
        self.from_disk = False
        where = identify(source, transform.scale_min, transform.scale_max) if disk and self.fixed else None
        path, key = where or (None, None)
        if path is not None:
            found = load(path, key, len(source))
            if found is not None:
                self.images, self.sizes = found
                self.bytes = sum(a.nbytes for a in self.images)
                self.from_disk = True
                return
        for i in tqdm(range(len(source)), desc="caching images", unit="img", disable=not progress,
                      mininterval=1.0):
            try:
                img = as_rgb(source.read(i).image, transform.scale_max)
                self.sizes.append(img.size)
                kept = np.asarray(rescale(img, transform.scale_min)) if self.fixed else img
            except BadImage as e:
                self.sizes.append(None)
                kept = Skip(source.path(i), e.reason, str(e)[:200])
            self.images.append(kept)
            self.bytes += kept.nbytes if isinstance(kept, np.ndarray) else (
                kept.size[0] * kept.size[1] * 3 if not isinstance(kept, Skip) else 0)
        if path is not None and not any(isinstance(a, Skip) for a in self.images):
            save(path, key, self.images, self.sizes)

    def view(self, i: int, transform: TrainTransform, rng) -> tuple[np.ndarray, np.ndarray]:
        from ..transforms import crop_resized

        kept = self.images[i]
        if isinstance(kept, Skip):
            raise BadImage(kept.reason, kept.detail)
        s, x, y, flip, shift = transform.view(rng, lambda s: self.sizes[i])
        c = transform.crop
        out = kept[y:y + c, x:x + c] if self.fixed else np.asarray(crop_resized(kept, s, c, x, y))
        return (out[:, ::-1] if flip else out), shift

    @staticmethod
    def estimate(source: Source, transform: TrainTransform, probe: int = 16) -> int:
        """Bytes the cache would take: decoded sizes of a few images, times the source's length."""
        from ..transforms import BadImage, as_rgb, scaled_size

        if len(source) == 0:
            return 0
        idx = np.linspace(0, len(source) - 1, min(probe, len(source))).astype(int)
        total, n = 0, 0
        for i in idx:
            try:
                img = as_rgb(source.read(int(i)).image, transform.scale_max)
            except BadImage:
                continue
            w, h = scaled_size(*img.size, transform.scale_min) if transform.scale_min == transform.scale_max \
                else img.size
            total, n = total + w * h * 3, n + 1
        return int(total / max(n, 1) * len(source))


class TrainDataset(Dataset):
    """Map-style: indexed by (epoch, index) so that persistent workers see the epoch without being restarted."""

    def __init__(self, source: Source, transform: TrainTransform, seed: int = 0, cache: ImageCache | None = None):
        self.source, self.transform, self.seed, self.cache = source, transform, seed, cache

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key):
        epoch, i = key
        return load_sample(self.source, self.transform, self.seed, epoch, i, self.cache)


class EpochSampler(Sampler):
    """A seeded permutation per epoch, split across ranks by striding (rank r takes positions r, r+N, ...), so the
    ranks' k-th batches together are the single-process k-th batch. Yields (epoch, index)."""

    def __init__(self, n: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world: int = 1,
                 limit: int | None = None):
        self.n, self.shuffle, self.seed, self.rank, self.world = n, shuffle, seed, rank, world
        self.limit = n // world if limit is None else min(limit, n // world)  # samples per rank per epoch
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """skip: samples of this rank's sequence already consumed (resuming mid-epoch)."""
        self.epoch, self.skip = epoch, skip

    def order(self) -> np.ndarray:
        perm = np.random.default_rng((self.seed, self.epoch, 0x5EED)).permutation(self.n) if self.shuffle \
            else np.arange(self.n)
        usable = self.n - self.n % self.world  # equal shares; the remainder waits for the next epoch's shuffle
        return perm[:usable][self.rank::self.world]

    def __iter__(self):
        for i in self.order()[self.skip:self.limit]:
            yield self.epoch, int(i)

    def __len__(self) -> int:
        return max(0, self.limit - self.skip)


def collate(items: list) -> Batch:
    """Views (uint8 HWC arrays) stacked into one (N, 3, C, C) tensor whose memory is channels-last: one copy."""
    good = [x for x in items if not isinstance(x, Skip)]
    skips = [x for x in items if isinstance(x, Skip)]
    if good:
        images = torch.from_numpy(np.stack([g[0] for g in good])).permute(0, 3, 1, 2)
        shifts = torch.from_numpy(np.stack([g[2] for g in good]).astype(np.float32))
    else:
        images, shifts = torch.zeros(0, 3, 1, 1, dtype=torch.uint8), torch.zeros(0, 3)
    labels = torch.tensor([g[1] for g in good], dtype=torch.int64)
    indices = torch.tensor([g[3] for g in good], dtype=torch.int64)
    return Batch(images, labels, shifts, indices, skips)


def _worker_init(worker_id: int) -> None:
    die_with_parent()  # an orphaned worker would hold the dead parent's sockets (utils.die_with_parent)
    torch.set_num_threads(1)  # workers decode; the main process owns the cores for compute
    info = get_worker_info()
    np.random.seed((info.seed if info else worker_id) % 2**32)


class SkipTracker:
    """Counts unusable images, logs each path once, and enforces the skipped-fraction limit."""

    def __init__(self, limit: float = 0.01, total: int | None = None):
        self.limit, self.total = limit, total
        self.logged: set[str] = set()
        self.reset()

    def reset(self) -> None:
        self.seen, self.skipped, self.reasons = 0, 0, Counter()

    def update(self, batch: Batch) -> None:
        self.seen += len(batch.labels) + len(batch.skips)
        for s in batch.skips:
            self.skipped += 1
            self.reasons[s.reason] += 1
            if s.path not in self.logged:
                self.logged.add(s.path)
                log.warning("%s: skipped (%s)", s.path, s.detail or s.reason)
        # Fail early once the epoch can no longer end under the limit.
        if self.total and self.skipped > self.limit * self.total:
            raise UserError(self._over())

    def _over(self) -> str:
        return (f"{self.skipped} unusable images ({self.skipped / max(self.seen, 1):.2%} of {self.seen} read) pass "
                f"the {self.limit:.2%} limit ({', '.join(f'{n} {r}' for r, n in self.reasons.most_common())}); "
                f"fix the data or raise max_skip_fraction")

    def summary(self) -> str:
        if not self.skipped:
            return f"{self.seen} images, none skipped"
        return (f"{self.seen} images, {self.skipped} skipped ({self.skipped / max(self.seen, 1):.3%}): "
                + ", ".join(f"{n} {r}" for r, n in self.reasons.most_common()))

    def finish(self) -> str:
        if self.seen and self.skipped / self.seen > self.limit:
            raise UserError(self._over())
        return self.summary()


class TrainLoader:
    """Batches of training views for one process of a (possibly distributed) run."""

    def __init__(self, source: Source, transform: TrainTransform, cfg: LoaderConfig = LoaderConfig(),
                 rank: int = 0, world: int = 1, samples_per_epoch: int | None = None, progress: bool = False):
        """samples_per_epoch: per rank; the trainer passes whole optimisation steps' worth."""
        if len(source) == 0:
            raise UserError(f"{source.root}: empty dataset")
        self.cfg, self.source = cfg, source
        self.sampler = EpochSampler(len(source), cfg.shuffle, cfg.seed, rank, world, samples_per_epoch)
        pin = torch.cuda.is_available() if cfg.pin_memory is None else cfg.pin_memory
        self.cache = None
        if cfg.cache or (cfg.cache is None and ImageCache.estimate(source, transform) <= cfg.cache_bytes):
            self.cache = ImageCache(source, transform, progress, cfg.keep_cache)
            how = "read decoded from disk" if self.cache.from_disk else "decoded into memory"
            log.info("%s: %d images %s (%.0f MB)", source.root, len(source), how, self.cache.bytes / 2**20)
        # With the images in memory a crop is a slice: workers would cost more (processes fighting the compute
        # threads for the cores) than the crops themselves.
        workers = worker_options(0 if self.cache is not None and self.cache.fixed else cfg.workers)
        self.loader = DataLoader(
            TrainDataset(source, transform, cfg.seed, self.cache),
            batch_sampler=BatchSampler(self.sampler, cfg.batch_size, cfg.drop_last), collate_fn=collate,
            pin_memory=pin, persistent_workers=workers["num_workers"] > 0,
            prefetch_factor=cfg.prefetch_factor if workers["num_workers"] else None, **workers)
        self.skips = SkipTracker(cfg.max_skip_fraction, self.sampler.limit)
        self._forked = False

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int, skip_batches: int = 0) -> Iterator[Batch]:
        """This epoch's batches, from batch `skip_batches` on (resuming a killed run mid-epoch)."""
        self.sampler.set_epoch(epoch, skip_batches * self.cfg.batch_size)
        self.skips.reset()
        if self.loader.num_workers and not self._forked:
            release_freed_memory()  # the persistent workers fork now: not the heap this process keeps (utils.py)
            self._forked = True
        for batch in self.loader:
            self.skips.update(batch)
            yield batch
        log.info("epoch %d data: %s", epoch, self.skips.finish())


class CenterCropDataset(Dataset):
    """Validation views: the central CxC crop of the image rescaled to Q (uint8, label, index) or a Skip. Only the
    crop's source box is resized: the work is the crop's whatever the image's shape."""

    def __init__(self, source: Source, q: int, crop: int):
        self.source, self.q, self.crop = source, q, crop

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        try:
            sample = self.source.read(i)
            img = as_rgb(sample.image, self.q)
            return np.asarray(center_crop_resized(img, self.q, self.crop)), sample.label, np.zeros(3, np.float32), i
        except Exception as e:
            return Skip(self.source.path(i), getattr(e, "reason", type(e).__name__), str(e)[:200])


def worker_options(workers: int) -> dict:
    """The DataLoader arguments of every loader with worker processes: at most the usable cores, each dying with its
    parent and decoding on one thread (_worker_init), and forked whatever this process's default start method is.
    A forked worker shares the decoded images (ImageCache) and the dataset with its parent page by page; a spawned
    one unpickles a copy of its own. A study task runs in a process jobs.py spawns, whose own default is then spawn:
    a jittered training task with two workers took 10.7 GB instead of 2.1 (a 3 GB image cache three times;
    `python benchmarks/loader_memory.py --run RUN --compare spawn`)."""
    n = usable_workers(workers)
    options = {"num_workers": n, "worker_init_fn": _worker_init}
    if n and "fork" in multiprocessing.get_all_start_methods():
        options["multiprocessing_context"] = multiprocessing.get_context("fork")
    return options


def usable_workers(workers: int) -> int:
    """No more loader processes than the cores this process may run on: more only fight the compute threads
    (and PyTorch warns about them)."""
    return max(0, min(workers, cores()))


class InMemory(Dataset):
    """A dataset's items read once and kept, for a validation set read every epoch whose views never change: the
    miniature study's nets validate 1,000 images after every 10-20 s epoch, and decoding them again in fresh loader
    processes each time cost 3-4 s an epoch beside a second training process (study of 2026-11-23, seed 3)."""

    def __init__(self, dataset: Dataset):
        self.items = [dataset[i] for i in range(len(dataset))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def eval_loader(dataset: Dataset, batch_size: int, workers: int, rank: int = 0, world: int = 1,
                in_memory: bool = False) -> DataLoader:
    """In order; rank r takes every world-th image (metrics are summed over ranks). in_memory: this rank's items
    are read now, once, and served from memory in-process (the caller checks that they fit)."""
    view = torch.utils.data.Subset(dataset, list(range(rank, len(dataset), world)))
    if in_memory:
        view, workers = InMemory(view), 0
    return DataLoader(view, batch_size=batch_size, shuffle=False, collate_fn=collate,
                      pin_memory=torch.cuda.is_available(), **worker_options(workers))
