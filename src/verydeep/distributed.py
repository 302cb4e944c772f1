"""Data parallelism on an existing engine: torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; gloo on CPU, NCCL on GPU
(PAPER.md section 3.3: synchronous, gradients averaged, the same result as one device).

Restarts: torchrun's agent keeps one key-value store for all restart attempts of a run, and the process group's keys
carry no attempt number, so a restarted worker could read the killed attempt's addresses and connect to a dead
(or, through a surviving forked child, a silent) socket: a hang or "Connection refused". Each attempt therefore
works under its own key prefix. Every collective has a finite timeout (`timeout_s`), reported in one line."""
from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import UserError

joined = False  # this process has joined a process group (cli.main then ends it with leave())


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    timeout_s: float = 600.0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device(device: str) -> None:
    """auto, cpu, cuda or cuda:N, and CUDA only where it exists: one line otherwise."""
    if not DEVICE.match(device or ""):
        raise UserError(f"--device {device!r}: choose auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine (torch {torch.__version__}); "
                        f"use --device cpu")


def restart_count() -> int:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def restarted() -> bool:
    """True when torchrun --max-restarts brought this worker back after a failure."""
    return restart_count() > 0


def _store(rank: int, world: int, timeout: timedelta):
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not (addr and port):
        return None
    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(addr, int(port), world, is_master=rank == 0 and not agent_hosts, timeout=timeout,
                          multi_tenant=not agent_hosts)
    return dist.PrefixStore(f"verydeep/attempt_{restart_count()}", store)


def setup(device: str = "auto", timeout_s: float = 600.0) -> Dist:
    check_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        global joined
        joined = True
        timeout = timedelta(seconds=timeout_s)
        try:
            store = _store(rank, world, timeout)
            kwargs = {"store": store, "rank": rank, "world_size": world} if store is not None else {}
            dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout, **kwargs)
        except (RuntimeError, ValueError) as e:
            raise UserError(failure_message(e, timeout_s, "joining the process group")) from None
    return Dist(rank, world, local, dev, timeout_s)


def leave(code: int) -> None:
    """End a process that joined a process group: flush, then exit without the interpreter's finalisation. Gloo's
    worker threads outlive destroy_process_group while DDP's reducer holds the group, and one that drops the last
    reference to a finished collective's tensor then needs the GIL; during finalisation taking the GIL ends the
    thread, inside a C++ destructor, and the process aborts ("terminate called without an active exception",
    SIGABRT after a finished run: 3 of 37 runs of the torchrun restart test under load, 0 of 60 with this; PyTorch's
    own proposed fix, an atexit destroy_process_group, does not stop threads a DDP still holds). Nothing is lost:
    checkpoints and results are written and renamed before this point, the loader's workers die with their parent
    (utils.die_with_parent)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def failure_message(e: Exception, timeout_s: float, doing: str) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    first = re.sub(r"^\[[^\]]*\] ", "", first)[:200]
    hint = ("another process stopped or hangs" if re.search(r"time[d ]*out|timeout", first, re.I) else
            "another process died")
    return (f"rank {os.environ.get('RANK', '0')}: torch.distributed failed while {doing} ({first}): {hint}; "
            f"collectives wait at most {timeout_s:g} s (--dist-timeout)")


def is_comm_error(e: BaseException) -> bool:
    """A failure of the process group (a peer died, a timeout), as opposed to a bug in this process."""
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(s in text for s in ("gloo", "Gloo", "NCCL", "Connection reset",
                                                                    "Connection refused", "Timed out", "timed out"))


def all_reduce_sum(values: list[float], d: Dist) -> list[float]:
    """Sum numbers over ranks (metrics, sample counts)."""
    if not d.active:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def cleanup(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.destroy_process_group()
