"""Small helpers shared across verydeep."""
from __future__ import annotations

import ctypes
import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) then fsync and rename onto path: a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's malloc.h
_kept: bool | None = None


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for the next allocation instead of handing it back to the kernel:
    no mmap for large blocks, no trimming of the heap. A VGG step frees and re-allocates gigabytes of activations
    (and a bf16 copy of fc6's 103 M weights); from the kernel every fresh page costs a page fault and a zeroing,
    which measured 10-20% of a VGG-16 bf16 training step on the development machine (BENCHMARKS.md). The price:
    the process keeps its peak memory until it exits. VERYDEEP_MALLOC=system leaves malloc alone. Returns whether
    the setting is in force (False on a non-glibc system)."""
    global _kept
    if _kept is None:
        _kept = False
        if os.environ.get("VERYDEEP_MALLOC", "").lower() != "system":
            try:
                libc = ctypes.CDLL("libc.so.6")
                # -1 is SIZE_MAX once glibc converts it: never trim
                _kept = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, -1))
            except (OSError, AttributeError):
                pass
    return _kept
