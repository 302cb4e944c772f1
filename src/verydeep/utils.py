"""Small helpers shared across verydeep: atomic writes, freed-memory reuse, fault injection for the crash tests."""
from __future__ import annotations

import ctypes
import os
import signal
import tempfile
from pathlib import Path
from typing import Callable

from .errors import UserError

TMP_SUFFIX = ".tmp"


def file_mode() -> int:
    """The mode a newly created file gets under this process' umask (mkstemp alone would give 0600)."""
    try:  # Linux >= 4.7 reports the umask without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_error(path: str | os.PathLike, e: OSError) -> UserError:
    """An OSError while writing `path` as the one line a user reads ("No space left on device", ...)."""
    return UserError(f"{path}: cannot write: {e.strerror or e}")


def cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) then fsync and rename onto path: a reader never sees a half-written file. The file gets
    the umask's mode; a failed write (disk full, ...) removes its temporary file and raises one line naming path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise write_error(path, e) from None
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise write_error(path, e) from None
        if isinstance(e, RuntimeError) and "write" in str(e).lower() and "file" in str(e).lower():
            # torch.save reports a failed write (a full disk) as RuntimeError from its zip writer
            raise UserError(f"{path}: cannot write ({str(e).splitlines()[0][:120]}); is the disk full?") from None
        raise
    sync_dir(path.parent)


def sync_dir(directory: Path) -> None:
    """Make a rename or link in `directory` durable."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def remove_temp_files(directory: Path) -> list[Path]:
    """Delete what killed atomic writes left behind in `directory` (a VGG-16 checkpoint's is ~1.1 GB)."""
    removed = []
    if Path(directory).is_dir():
        for p in Path(directory).iterdir():
            if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX) and p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


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


KERNEL_CACHE_ENTRIES = 128


def bound_kernel_caches() -> None:
    """oneDNN and PyTorch's ideep layer each keep up to 1,024 prepared convolution kernels, one for every layer and
    input shape met. Dense evaluation meets many shapes (images rescaled to a test scale: one per aspect ratio), and
    the caches grew a process by 0.6 GB that way (`verydeep evaluate` of the demo's D on 1,000 test images at 3
    scales: peak RSS 1.39-1.43 GB with 1,024 entries, 0.77-0.82 GB with 128, the same time within the runs' spread;
    BENCHMARKS.md). Training and crops meet a few shapes. Both libraries read the setting when they make their first
    kernel: a no-op after that, and a value set in the environment wins."""
    for var in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        os.environ.setdefault(var, str(KERNEL_CACHE_ENTRIES))


def release_freed_memory() -> None:
    """Hand the memory malloc keeps (keep_freed_memory) back to the kernel, once, now. Before forking workers: a
    forked child shares the parent's pages until one side writes them, and the parent, reusing its kept heap for
    activations, writes them; each child then holds private copies of the pages the parent rewrote. A jittered study
    training run of 700 steps (benchmarks/loader_memory.py --compare trim): peak 2,205 MB without, 2,099 MB with."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def die_with_parent() -> None:
    """Have the kernel kill this (child) process when its parent dies. A DataLoader worker forked after
    torch.distributed started holds copies of the parent's sockets; one that outlives a killed parent keeps its
    gloo listener open, and a restarted run connecting there hangs (issue: torchrun restarts). The study's task
    workers (jobs.py) would go on training. A parent already gone before the call: this process ends now."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)


def fault(point: str, step: int, rank: int = 0, restarted: bool = False) -> None:
    """Crash-test hook: VERYDEEP_FAULT=POINT@STEP[:RANK] kills this process with SIGKILL when it reaches POINT at
    global step STEP (on rank RANK, default any), on its first life only. Points: "step" (after an optimiser
    step), "checkpoint" (after a checkpoint is written, before best.pt and the metrics), "best" (after best.pt,
    before the metrics)."""
    spec = os.environ.get("VERYDEEP_FAULT")
    if not spec or restarted:
        return
    where, _, at = spec.partition("@")
    at, _, on_rank = at.partition(":")
    if where == point and int(at) == step and (not on_rank or int(on_rank) == rank):
        os.kill(os.getpid(), signal.SIGKILL)
