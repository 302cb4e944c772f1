"""Writing a dataset as WebDataset-style tar shards (`verydeep data pack`); shards.py reads them."""
from __future__ import annotations

import io
import json
import logging
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import positional
from ..errors import UserError
from ..transforms import BadImage, as_rgb
from ..utils import atomic_write
from .shards import OFFSETS, SHARD_INDEX
from .open import open_source
from .sources import Sample, Source

log = logging.getLogger("verydeep.data")


def parse_shard_size(text: str | int) -> tuple[int | None, int | None]:
    """'1000' -> (1000 samples, None); '512MB' -> (None, 512 * 2**20 bytes)."""
    if isinstance(text, int):
        return text, None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(text), re.I)
    if not m:
        raise UserError(f"--shard-size {text!r}: give a sample count (1000) or a size (512MB, 1GB)")
    value, unit = float(m.group(1)), (m.group(2) or "").upper()
    if not unit:
        return int(value), None
    mult = {"B": 1, "KB": 2**10, "KIB": 2**10, "MB": 2**20, "MIB": 2**20, "GB": 2**30, "GIB": 2**30,
            "TB": 2**40, "TIB": 2**40}[unit]
    return None, int(value * mult)


def _encode(sample: Sample) -> tuple[bytes, str]:
    if isinstance(sample.image, (bytes, bytearray)):
        ext = Path(sample.path).suffix.lower().lstrip(".") or "jpg"
        return bytes(sample.image), "jpg" if ext == "jpeg" else ext
    buf = io.BytesIO()
    sample.image.save(buf, "PNG")  # pixels from an array source: lossless
    return buf.getvalue(), "png"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> tuple[int, int]:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    offset = tar.offset + len(info.tobuf(tar.format, tar.encoding, tar.errors))  # data follows the header
    tar.addfile(info, io.BytesIO(data))
    return offset, len(data)


def pack(source: Source, dst: str | os.PathLike, shard_size: str | int = "1000", progress: bool = True) -> dict:
    """Write a source as tar shards in dst (shard-000000.tar, ...), with shards.json and offsets."""
    from tqdm import tqdm

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    max_count, max_bytes = parse_shard_size(shard_size)
    shards, offsets, skipped = [], [], 0
    tar, count, nbytes = None, 0, 0

    def close():
        if tar is not None:
            tar.close()
            shards[-1]["count"] = count

    for i in tqdm(range(len(source)), desc="pack", unit="img", disable=not progress):
        try:
            sample = source.read(i)
            as_rgb(sample.image)  # every image is decoded once: a text file or a truncated JPEG is not packed
        except BadImage as e:
            log.warning("%s: skipped (%s)", source.path(i), e)
            skipped += 1
            continue
        data, ext = _encode(sample)
        meta = json.dumps({"path": sample.path, "boxes": sample.boxes.tolist(),
                           "box_labels": sample.box_labels.tolist(), "size": sample.size}).encode()
        if tar is None or (max_count and count >= max_count) or (max_bytes and nbytes + len(data) > max_bytes
                                                                   and count):
            close()
            name = f"shard-{len(shards):06d}.tar"
            shards.append({"name": name, "count": 0})
            tar = tarfile.open(dst / name, "w", format=tarfile.USTAR_FORMAT)
            count, nbytes = 0, 0
        key = f"{i:09d}"
        img_off, img_size = _add(tar, f"{key}.{ext}", data)
        _add(tar, f"{key}.cls", str(sample.label).encode())
        json_off, json_size = _add(tar, f"{key}.json", meta)
        offsets.append((len(shards) - 1, img_off, img_size, json_off, json_size, sample.label))
        count += 1
        nbytes += len(data) + len(meta) + 1536
    close()
    if not offsets:
        raise UserError(f"{source.root}: nothing to pack (every image skipped)")
    np.save(dst / OFFSETS, np.asarray(offsets, np.int64))
    index = {"format": "verydeep-shards/1", "classes": list(source.classes), "shards": shards,
             "count": len(offsets), "skipped": skipped}
    atomic_write(dst / SHARD_INDEX, lambda tmp: Path(tmp).write_text(json.dumps(index, indent=1)))
    return index


@dataclass
class PackConfig:
    src: str = positional(default="")   # dataset to pack: a folder (its classes), labels-file folder, VOC
    dst: str = positional(default="")   # folder for the shards, shards.json and the offsets
    shard_size: str = "1000"       # samples per shard (1000) or bytes (512MB)


def run(cfg: PackConfig) -> dict:
    """`verydeep data pack`: a dataset as WebDataset-style tar shards, each image checked by decoding it."""
    if not cfg.src or not cfg.dst:
        raise UserError("give the dataset and the output folder")
    index = pack(open_source(cfg.src), cfg.dst, cfg.shard_size)
    print(f"wrote {index['count']} samples in {len(index['shards'])} shards to {cfg.dst} "
          f"({index['skipped']} unusable files skipped)")
    return index
