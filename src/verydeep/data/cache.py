"""The decoded training images at a fixed S, kept on disk beside the data between runs (loader.ImageCache's file).

Why: decoding and rescaling the study's 20,000 training images costs 14-18 s (0.7-0.9 ms an image on 2 cores), and the
miniature study trains 21 nets at S = 73 and 9 at S = 110 on the same images, each in a task of its own; the demo two.
The file is read back by memory-mapping it: no decode, no copy, and two processes training side by side share its
pages through the OS page cache instead of holding two copies.

One file per (image set, S) in `<data folder>/.verydeep-cache/` (a dot folder: ImageFolder does not list it), written
atomically. It is used only when its header's fingerprint matches the source now: every image's path, size and
modification time, S, and this format's version and verydeep's, so an edited, added or removed image (or a new
resize) rebuilds it. A file that does not parse is rebuilt, never trusted: the header is bounded by the image count
and every shape is checked against the file's length before anything is mapped. Sources that are not image files on
disk (tar shards, Fashion-MNIST's arrays) and read-only data folders keep the images in memory only, as before."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import time
from pathlib import Path

import numpy as np

from ..version import __version__
from ..errors import UserError
from ..utils import TMP_SUFFIX, atomic_write
from .sources import Source, _FileSource

log = logging.getLogger("verydeep.data")

MAGIC = b"VDIMGS01"
FOLDER = ".verydeep-cache"
ALIGN = 64
STALE_SECONDS = 3600   # a temporary file of a write this old was left by a killed one
HEADER_PER_IMAGE = 1024  # bytes of header an image may take (its shape and decoded size): the bound on reading it


def _base(source: Source) -> Source:
    while hasattr(source, "source"):  # a Subset (a held-out split) of a folder
        source = source.source
    return source


def identify(source: Source, s: int, s_max: int) -> tuple[Path, str] | None:
    """(the file for this source's images at S, the fingerprint its header must hold), or None where the images are
    not files on disk. The file is named by the images' paths inside the data folder (the same file whether the folder
    was named relative or absolute); the fingerprint adds each one's size and modification time, and the decode's
    settings: what the file's pixels depend on."""
    base = _base(source)
    if not isinstance(base, _FileSource) or not Path(base.root).is_dir():
        return None
    root = str(base.root) + os.sep  # the prefix the folder's own paths are built on
    paths = [source.path(i) for i in range(len(source))]
    names = [p[len(root):] if p.startswith(root) else os.path.relpath(p, root) for p in paths]
    which = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
    h = hashlib.sha256(f"{MAGIC.decode()} verydeep {__version__} S {s} decode {s_max} n {len(source)}\n".encode())
    for p, name in zip(paths, names):
        try:
            st = os.stat(p)
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{name}\0missing\n".encode())
    return Path(base.root) / FOLDER / f"S{s}-{which}.bin", h.hexdigest()


def load(path: Path, key: str, n: int) -> tuple[list, list] | None:
    """(images, sizes) from the file: images[i] a read-only (H, W, 3) uint8 view of the mapped file, sizes[i] the
    image's (W, H) as decoded before the rescale to S (what a crop's position is drawn from). None when the file is
    absent, stale or malformed (the caller rebuilds it)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if f.read(8) != MAGIC:
                raise ValueError("not a verydeep image cache")
            (length,) = struct.unpack("<Q", f.read(8))
            if length > HEADER_PER_IMAGE * n + 4096 or 16 + length > size:
                raise ValueError(f"header of {length} bytes")
            head = json.loads(f.read(length))
        if head.get("key") != key:
            return None  # the images changed since: rebuilt without a word
        shapes, sizes = head["shapes"], head["sizes"]
        pair = lambda s: isinstance(s, list) and len(s) == 2 and all(  # noqa: E731
            isinstance(v, int) and 0 < v < 1 << 20 for v in s)
        if len(shapes) != n or len(sizes) != n or not all(pair(s) and pair(z) for s, z in zip(shapes, sizes)):
            raise ValueError("bad image shapes")
        counts = [s[0] * s[1] * 3 for s in shapes]
        start = -(-(16 + length) // ALIGN) * ALIGN
        if start + sum(counts) != size:
            raise ValueError(f"{size} bytes, the shapes need {start + sum(counts)}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error) as e:
        log.warning("%s: unusable image cache (%s); rebuilding it", path, str(e)[:120])
        return None
    # a plain array over the map (slicing a memmap makes memmap objects: a third of the read for 20,000 images)
    buf = np.memmap(path, np.uint8, "r", offset=start, shape=(size - start,)).view(np.ndarray)
    images, offset = [], 0
    for s, c in zip(shapes, counts):
        images.append(buf[offset:offset + c].reshape(s[0], s[1], 3))
        offset += c
    return images, [tuple(z) for z in sizes]


def save(path: Path, key: str, images: list, sizes: list) -> bool:
    """Write the images (uint8 (H, W, 3) arrays) and their decoded (W, H) atomically; False where the folder is not
    writable (the run goes on with the images in memory). A set with an unusable image is not written: whether a
    file reads can change without its size or time changing (permissions), and a skip must not outlive its cause."""
    head = json.dumps({"key": key, "shapes": [list(a.shape[:2]) for a in images],
                       "sizes": [list(z) for z in sizes]}).encode()
    start = -(-(16 + len(head)) // ALIGN) * ALIGN

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(head)) + head + b"\0" * (start - 16 - len(head)))
            for a in images:
                f.write(np.ascontiguousarray(a, np.uint8).tobytes())

    for old in path.parent.glob(f".{path.name}.*{TMP_SUFFIX}"):  # a write killed outright (SIGKILL, power loss)
        try:
            if time.time() - old.stat().st_mtime > STALE_SECONDS:  # not another process writing it now
                old.unlink()
        except OSError:
            pass
    try:
        atomic_write(path, write)
    except UserError as e:  # read-only data, a full disk: the cache is an optimisation, never a reason to stop
        log.info("image cache not kept on disk: %s", e)
        return False
    return True
