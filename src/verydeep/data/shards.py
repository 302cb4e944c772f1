"""Reading WebDataset-style tar shards (pack.py writes them): each sample is the members ``<key>.jpg`` (or .png ...: the original encoded bytes),
``<key>.cls`` (the label) and ``<key>.json`` (source path, boxes), consecutive in a plain tar, so a shard can be
streamed from object storage or a cluster file system. ``shards.json`` lists the classes and shards, and
``shards.offsets.npy`` the byte offsets that also give random access to local shards."""
from __future__ import annotations

import json
import logging
import os
import tarfile
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import UserError
from ..transforms import MAX_FILE_BYTES, BadImage
from .sources import Sample, Source

log = logging.getLogger("verydeep.data")
SHARD_INDEX = "shards.json"
OFFSETS = "shards.offsets.npy"  # int64 (N, 6): shard, image offset, image size, json offset, json size, label


class TarShards(Source):
    """Tar shards written by pack(): streamed in order (``iterate``) or read at random from local files (``read``)."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        self.root = path.parent if path.name == SHARD_INDEX else path
        index_path = self.root / SHARD_INDEX
        if not index_path.is_file():
            raise UserError(f"{self.root}: no {SHARD_INDEX} (write shards with `verydeep data pack`)")
        try:
            index = json.loads(index_path.read_text())
            self.classes = list(index["classes"])
            self.shards = [s["name"] for s in index["shards"]]
            self.counts = [int(s["count"]) for s in index["shards"]]
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{index_path}: malformed shard index ({e})") from None
        off = self.root / OFFSETS
        try:  # memory-mapped: a header declaring more rows than the file holds is an error, not an allocation
            self.offsets = np.load(off, mmap_mode="r", allow_pickle=False) if off.is_file() else None
        except (OSError, ValueError) as e:
            raise UserError(f"{off}: malformed offsets ({str(e).splitlines()[0][:120]})") from None
        if self.offsets is not None and (self.offsets.ndim != 2 or self.offsets.shape[1] != 6
                                         or len(self.offsets) != sum(self.counts)):
            raise UserError(f"{off}: offsets of shape {self.offsets.shape} do not match {sum(self.counts)} samples")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    def __len__(self) -> int:
        return sum(self.counts)

    def labels(self) -> np.ndarray:
        if self.offsets is None:
            raise UserError(f"{self.root}: no {OFFSETS}: labels need a sequential pass")
        return self.offsets[:, 5].copy()

    def _sample(self, data: bytes, label: int, meta: dict, where: str) -> Sample:
        s = Sample(data, int(label), meta.get("path", where))
        s.boxes = np.asarray(meta.get("boxes", []), np.float32).reshape(-1, 4)
        s.box_labels = np.asarray(meta.get("box_labels", []), np.int64)
        s.size = tuple(meta["size"]) if meta.get("size") else None
        return s

    def read(self, i: int) -> Sample:
        if self.offsets is None:
            raise UserError(f"{self.root}: random access needs {OFFSETS}")
        shard, img_off, img_size, json_off, json_size, label = (int(v) for v in self.offsets[i])
        if not 0 <= shard < len(self.shards) or min(img_off, img_size, json_off, json_size) < 0 or \
                img_size > MAX_FILE_BYTES or json_size > MAX_FILE_BYTES:
            raise BadImage("malformed shard index", f"entry {i}")
        try:
            with open(self.root / self.shards[shard], "rb") as f:
                f.seek(img_off)
                data = f.read(img_size)
                f.seek(json_off)
                meta = json.loads(f.read(json_size) or b"{}")
        except (OSError, ValueError) as e:
            raise BadImage("unreadable shard member", str(e)[:80]) from None
        if len(data) != img_size:
            raise BadImage("truncated shard")
        return self._sample(data, label, meta, f"{self.shards[shard]}#{i}")

    def iterate(self, shard_ids: list[int] | None = None) -> Iterator[tuple[int, Sample]]:
        """Stream samples (global index, sample) shard by shard, reading each tar sequentially."""
        starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(int)
        for sid in shard_ids if shard_ids is not None else range(len(self.shards)):
            n, members = starts[sid], {}
            try:
                with tarfile.open(self.root / self.shards[sid], "r|") as tar:
                    for m in tar:
                        key, _, ext = m.name.partition(".")
                        if members and key != members["key"]:
                            yield n, self._group(members)
                            n += 1
                            members = {}
                        members["key"] = key
                        big = m.isfile() and m.size > MAX_FILE_BYTES  # an image is never this long
                        members[ext] = tar.extractfile(m).read() if m.isfile() and not big else b""
                    if members:
                        yield n, self._group(members)
            except (tarfile.TarError, OSError) as e:
                log.warning("%s: shard unreadable after sample %d (%s); rest of shard skipped",
                            self.shards[sid], n - starts[sid], e)

    def _group(self, members: dict) -> Sample:
        where = members["key"]
        image = next((v for k, v in members.items() if k not in ("key", "cls", "json")), b"")
        try:
            label = int(members.get("cls", b"-1").decode().strip())
            meta = json.loads(members.get("json") or b"{}")
        except (ValueError, UnicodeDecodeError):
            label, meta = -1, {}
        return self._sample(image, label, meta, where)
