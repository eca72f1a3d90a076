"""Where a job runs: the device, mixed precision, and its rank in a torchrun job.

One device rule for training, evaluation and prediction (:func:`resolve_device`), and
the few collective operations the training loop needs; each is a no-op in a job of one
process, so single-process code calls them unconditionally.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from common.errors import UserError
from training.config import DEVICES
from training.errors import TrainError

__all__ = ["DEVICES", "Dist", "setup_distributed", "teardown_distributed", "resolve_device",
           "seed_everything", "default_workers", "amp_enabled", "autocast", "make_scaler", "unwrap",
           "on_main", "any_rank", "reduce_stats", "sync_buffers", "barrier", "gather_objects"]


@dataclass(frozen=True)
class Dist:
    """Where this process stands in a torchrun job (rank 0 of 1 without torchrun)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> Dist:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    info = Dist(rank=int(os.environ["RANK"]), world=world, local_rank=int(os.environ.get("LOCAL_RANK", 0)))
    use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if use_cuda:
        if info.local_rank >= torch.cuda.device_count():
            raise TrainError(f"process {info.rank} has LOCAL_RANK {info.local_rank}, but this node has "
                             f"{torch.cuda.device_count()} GPUs; use --nproc_per_node "
                             f"{torch.cuda.device_count()} or fewer")
        # Before the process group: NCCL and all_gather_object use the current device,
        # which is otherwise GPU 0 on every process.
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return info


def teardown_distributed(ddp: Dist) -> None:
    """Leave the process group :func:`setup_distributed` joined, if any."""
    if ddp.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def resolve_device(name: str, *, local_rank: int = 0, error: type[UserError] = TrainError) -> torch.device:
    """``--device`` as a torch device; ``auto`` picks cuda, then mps, then cpu.

    Raises ``error`` (naming the flag) for a device this machine does not have.
    """
    if name not in DEVICES:
        raise error(f"--device {name}: choose one of {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise error("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu or auto")
        return torch.device("cuda", local_rank)
    if name == "mps" and not torch.backends.mps.is_available():
        raise error("--device mps asked for, but MPS is not available; use --device cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_workers(device: torch.device) -> int:
    """DataLoader workers when ``--workers`` is not given: 0 on the CPU, up to 4 on a GPU."""
    return min(4, os.cpu_count() or 1) if device.type == "cuda" else 0


def amp_enabled(device: torch.device, flag: bool | None) -> bool:
    """--amp as asked, or by default on for CUDA only."""
    return device.type == "cuda" if flag is None else flag


def autocast(device: torch.device, enabled: bool):
    dtype = torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


def make_scaler(device: torch.device, amp: bool) -> torch.amp.GradScaler:
    """The gradient scaler: float16 needs loss scaling; bfloat16 (CPU, recent GPUs) does
    not, and the scaler is then a no-op."""
    return torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda"
                                and not torch.cuda.is_bf16_supported())


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DistributedDataParallel and/or torch.compile wrapper."""
    model = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    return getattr(model, "_orig_mod", model)


def on_main(ddp: Dist, work):
    """``work()`` on rank 0 only; every rank returns its result, or raises its error.

    Under torchrun, a rank left waiting for a result that rank 0 never sends would hang
    the job: the error travels with the result (as a message) and every rank raises it.
    """
    result = error = None
    if ddp.main:
        try:
            result = work()
        except UserError as exc:
            error = exc
    if ddp.world > 1:
        box = [result, None if error is None else str(error)]
        dist.broadcast_object_list(box, src=0)
        result, message = box
        if message is not None and error is None:
            error = TrainError(message)
    if error is not None:
        raise error
    return result


def any_rank(flag: bool, ddp: Dist) -> bool:
    """True if ``flag`` is true on any rank (every rank must call it)."""
    if ddp.world == 1:
        return flag
    t = torch.tensor([float(flag)])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return bool(t.item() > 0)


def reduce_stats(stats: dict, ddp: Dist) -> dict:
    """Sum loss, correct and count over processes so every rank logs the global figures."""
    if ddp.world == 1:
        return stats
    t = torch.tensor([stats["loss"] * stats["segments"], stats["acc"] * stats["segments"],
                      stats["segments"], stats["seconds"]], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    t = t.cpu()
    n = t[2].item()
    return {"loss": t[0].item() / n, "acc": t[1].item() / n, "segments": int(n),
            "seconds": t[3].item() / ddp.world}


def sync_buffers(model: torch.nn.Module, ddp: Dist) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    DDP broadcasts them at the start of each forward, but each rank's last training
    batch then updates its own copy: without this, ranks would evaluate their shares
    with different statistics than the checkpoint rank 0 saves.
    """
    if ddp.world == 1:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def barrier(ddp: Dist) -> None:
    """Wait for every rank (a no-op in a job of one process)."""
    if ddp.world > 1:
        dist.barrier()


def gather_objects(value, ddp: Dist) -> list:
    """``value`` of every rank, in rank order (``[value]`` in a job of one process)."""
    if ddp.world == 1:
        return [value]
    gathered = [None] * ddp.world
    dist.all_gather_object(gathered, value)
    return gathered
