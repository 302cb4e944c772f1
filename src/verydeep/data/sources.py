"""Image sources with one interface: ``len(source)`` and ``source.read(i) -> Sample`` (the image's encoded bytes or
pixels, its label, its boxes). Folders in the ImageNet layout, a flat folder plus a labels file (ILSVRC's val
layout), with PASCAL-VOC XML boxes when present (ILSVRC ships its boxes that way)."""
from __future__ import annotations

import logging
import os
import stat
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from ..transforms import read_bytes

log = logging.getLogger("verydeep.data")

MAX_ANNOTATION_BYTES = 16 << 20
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")


@dataclass
class Sample:
    image: bytes | Image.Image       # encoded bytes (decoded by the transform, in the worker) or pixels
    label: int
    path: str
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # xmin, ymin, xmax, ymax (px)
    box_labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))  # -1: name not a class
    size: tuple[int, int] | None = None  # (width, height) from the annotation, when given


class Source:
    """Map-style image source."""

    classes: list[str]
    root: Path

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, i: int) -> Sample:
        raise NotImplementedError

    def labels(self) -> np.ndarray:
        raise NotImplementedError

    def path(self, i: int) -> str:
        """Where sample i comes from, for messages."""
        return f"{self.root}#{i}"


def _check_dir(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such {what}")
    if not path.is_dir():
        raise UserError(f"{path}: not a directory")
    return path


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def parse_voc(path: str | os.PathLike, class_to_idx: dict[str, int] | None = None, difficult: bool = False):
    """PASCAL VOC / ILSVRC XML: (boxes (K, 4) as xmin, ymin, xmax, ymax in pixels, labels (K,), (width, height)),
    and with difficult=True each object's <difficult> flag (K,) too. VOC's 1-based pixel coordinates are kept as
    written; names that are not classes get label -1."""
    try:
        if os.path.getsize(path) > MAX_ANNOTATION_BYTES:
            raise ValueError(f"{path}: annotation of {os.path.getsize(path):,} bytes; VOC files are a few KB")
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise ValueError(f"{path}: unreadable annotation ({e})") from None
    boxes, labels, hard = [], [], []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        if bb is None:
            continue
        try:
            coords = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            raise ValueError(f"{path}: box with missing or non-numeric coordinates") from None
        if not all(np.isfinite(coords)) or coords[2] < coords[0] or coords[3] < coords[1]:
            raise ValueError(f"{path}: box with xmax < xmin or ymax < ymin: {coords}")
        boxes.append(coords)
        name = (obj.findtext("name") or "").strip()
        labels.append((class_to_idx or {}).get(name, -1))
        hard.append((obj.findtext("difficult") or "0").strip() == "1")
    size = None
    s = root.find("size")
    if s is not None and s.findtext("width") and s.findtext("height"):
        size = (int(float(s.findtext("width"))), int(float(s.findtext("height"))))
    out = np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64), size
    return (*out, np.asarray(hard, bool)) if difficult else out


class _FileSource(Source):
    """Common part of the folder sources: a list of (path, label) and optional annotation lookup."""

    def __init__(self, root: Path, items: list[tuple[str, int]], classes: list[str], boxes_dir: Path | None):
        if not items:
            raise UserError(f"{root}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)})")
        self.root, self.classes, self.boxes_dir = root, classes, boxes_dir
        self.paths = [p for p, _ in items]
        self._labels = np.asarray([l for _, l in items], np.int64)
        self.class_to_idx = {c: i for i, c in enumerate(classes)}

    def __len__(self) -> int:
        return len(self.paths)

    def labels(self) -> np.ndarray:
        return self._labels

    def path(self, i: int) -> str:
        return str(self.root / self.paths[i])

    def annotation_path(self, i: int) -> Path | None:
        rel = Path(self.paths[i])
        candidates = [self.root / rel.with_suffix(".xml")]
        if self.boxes_dir is not None:
            candidates.insert(0, self.boxes_dir / rel.with_suffix(".xml"))
            candidates.append(self.boxes_dir / (rel.stem + ".xml"))
        return next((c for c in candidates if c.is_file()), None)

    def read(self, i: int) -> Sample:
        path = self.path(i)
        sample = Sample(read_bytes(path), int(self._labels[i]), path)
        ann = self.annotation_path(i)
        if ann is not None:
            sample.boxes, sample.box_labels, sample.size = parse_voc(ann, self.class_to_idx)
        return sample


class ImageFolder(_FileSource):
    """root/<class>/<image>: classes sorted by folder name (ILSVRC's synset order gives its class indices)."""

    def __init__(self, root: str | os.PathLike, boxes_dir: str | os.PathLike | None = None,
                 classes: list[str] | None = None):
        root = _check_dir(Path(root), "dataset folder")
        try:
            found = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
        except OSError as e:
            raise UserError(f"{root}: cannot list the dataset folder ({e.strerror})") from None
        if not found:
            raise UserError(f"{root}: no class folders (expected {root}/<class>/<image>)")
        classes = list(classes) if classes is not None else found
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise UserError(f"{root}: class folder {unknown[0]!r} is not among the {len(classes)} known classes")
        items = []
        for label, name in enumerate(classes):
            d = root / name
            files = sorted(f for f in _walk(d) if _is_image(f)) if d.is_dir() else []
            if not files and d.is_dir():
                log.warning("%s: empty class folder (class %d kept, with no images)", d, label)
            items += [(str(Path(name) / f), label) for f in files]
        super().__init__(root, items, classes, Path(boxes_dir) if boxes_dir else None)


def _walk(d: Path) -> list[str]:
    """Regular files under d, relative to it, following symbolic links once: a link back to a folder already
    walked (a loop) is reported and not entered, and FIFOs, sockets and devices named like images are left out
    (reading one would block). An unreadable folder is an error naming it, not an empty class."""
    out, seen = [], set()

    def fail(e: OSError):
        raise UserError(f"{e.filename}: cannot list the folder ({e.strerror})")

    for dirpath, dirnames, files in os.walk(d, followlinks=True, onerror=fail):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            log.warning("%s: a symbolic link back to a folder already read (a loop); not followed", dirpath)
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        rel = os.path.relpath(dirpath, d)
        for f in files:
            try:
                regular = stat.S_ISREG(os.stat(os.path.join(dirpath, f)).st_mode)
            except OSError:  # a dangling link: kept, so that the loader counts it as a missing file
                regular = True
            if regular:
                out.append(f if rel == "." else os.path.join(rel, f))
            elif _is_image(f):
                log.warning("%s: not a regular file (FIFO, socket or device); left out", os.path.join(dirpath, f))
    return out


class ImageList(_FileSource):
    """A flat folder of images plus a labels file (ILSVRC's val layout). Labels file lines: ``name label`` (label a
    class index or class name), or one label per line for the sorted image names (ILSVRC devkit's ground truth,
    1-based: give one_based=True)."""

    def __init__(self, root: str | os.PathLike, labels_file: str | os.PathLike, classes: list[str] | None = None,
                 boxes_dir: str | os.PathLike | None = None, one_based: bool = False):
        root = _check_dir(Path(root), "image folder")
        labels_file = Path(labels_file)
        if not labels_file.is_file():
            raise UserError(f"{labels_file}: no such labels file")
        lines = [ln.split() for ln in labels_file.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        class_to_idx = {c: i for i, c in enumerate(classes or [])}
        items = []
        if lines and all(len(parts) == 1 for parts in lines):
            names = sorted(f for f in os.listdir(root) if _is_image(f))
            if len(names) != len(lines):
                raise UserError(f"{labels_file}: {len(lines)} labels for {len(names)} images in {root}")
            pairs = list(zip(names, (p[0] for p in lines)))
        else:
            pairs = []
            for n, parts in enumerate(lines, 1):
                if len(parts) < 2:
                    raise UserError(f"{labels_file}:{n}: expected 'image label', got {' '.join(parts)!r}")
                pairs.append((parts[0], parts[-1]))
        names_seen = set()
        for name, lab in pairs:
            if lab.lstrip("-").isdigit():
                label = int(lab) - (1 if one_based else 0)
            elif lab in class_to_idx:
                label = class_to_idx[lab]
            else:
                if classes is not None:
                    raise UserError(f"{labels_file}: label {lab!r} of {name} is not a known class")
                label = class_to_idx.setdefault(lab, len(class_to_idx))
            items.append((name, label))
            names_seen.add(name)
        n_classes = max(len(class_to_idx), max((l for _, l in items), default=-1) + 1)
        classes = list(classes) if classes is not None else (
            sorted(class_to_idx, key=class_to_idx.get) if class_to_idx else [str(i) for i in range(n_classes)])
        bad = [l for _, l in items if not 0 <= l < len(classes)]
        if bad:
            raise UserError(f"{labels_file}: label {bad[0]} outside [0, {len(classes)})")
        super().__init__(root, items, classes, Path(boxes_dir) if boxes_dir else None)


class Subset(Source):
    """A subset of another source (a held-out validation split)."""

    def __init__(self, source: Source, indices, name: str = "subset"):
        self.source, self.indices = source, np.asarray(indices, np.int64)
        self.classes, self.root = source.classes, Path(f"{source.root}[{name}]")

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, i: int) -> Sample:
        return self.source.read(int(self.indices[i]))

    def labels(self) -> np.ndarray:
        return self.source.labels()[self.indices]

    def path(self, i: int) -> str:
        return self.source.path(int(self.indices[i]))


def split(source: Source, fraction: float, seed: int = 0) -> tuple[Subset, Subset]:
    """A seeded, class-stratified (train, held-out) split."""
    rng = np.random.default_rng((seed, 0xA1))
    labels = source.labels()
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = int(round(len(idx) * fraction))
        held += rng.choice(idx, k, replace=False).tolist() if k else []
    held_set = set(held)
    train = [i for i in range(len(source)) if i not in held_set]
    return Subset(source, train, "train"), Subset(source, sorted(held), "held-out")


VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]


class VOC(Source):
    """The PASCAL VOC layout: JPEGImages/<id>.jpg, Annotations/<id>.xml, ImageSets/Main/<split>.txt. Multi-label:
    ``targets()`` is (N, 20), an image having a class when it has an object of it; ``label`` is its first object's."""

    classes = VOC_CLASSES

    def __init__(self, root: str | os.PathLike, split: str = "trainval"):
        self.root = _check_dir(Path(root), "VOC folder")
        ids_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not ids_file.is_file():
            raise UserError(f"{ids_file}: no such image set (VOC splits: train, val, trainval, test)")
        self.ids = [ln.split()[0] for ln in ids_file.read_text().splitlines() if ln.strip()]
        if not self.ids:
            raise UserError(f"{ids_file}: empty image set")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self._ann = [parse_voc(self.root / "Annotations" / f"{i}.xml", self.class_to_idx, difficult=True)
                     for i in self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def path(self, i: int) -> str:
        return str(self.root / "JPEGImages" / f"{self.ids[i]}.jpg")

    def labels(self) -> np.ndarray:
        return np.array([int(a[1][0]) if len(a[1]) else -1 for a in self._ann], np.int64)

    def targets(self) -> tuple[np.ndarray, np.ndarray]:
        """(has, ignore), both (N, 20): an image has a class when it has an object of it not marked difficult; an
        image whose only objects of a class are difficult is ignored for that class (the VOC devkit's rule: neither
        a positive nor a negative)."""
        has = np.zeros((len(self), len(self.classes)), bool)
        any_ = np.zeros_like(has)
        for i, (_, labels, _, hard) in enumerate(self._ann):
            known = labels >= 0
            any_[i, labels[known]] = True
            has[i, labels[known & ~hard]] = True
        return has, any_ & ~has

    def read(self, i: int) -> Sample:
        boxes, labels, size, _ = self._ann[i]
        return Sample(read_bytes(self.path(i)), int(labels[0]) if len(labels) else -1, self.path(i), boxes, labels,
                      size)
