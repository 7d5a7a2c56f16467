"""torch.distributed helpers shared by evaluation and training: who am I, start from the launcher's
environment, and agree on a flag across ranks."""
from __future__ import annotations

import os


def rank_world() -> tuple[int, int]:
    """(rank, world_size) when ``torch.distributed`` is initialised, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: str | None = None) -> bool:
    """Initialise ``torch.distributed`` from the launcher's environment (``WORLD_SIZE`` > 1, as set
    by ``torchrun`` / ``accelerate launch``). NCCL on CUDA, gloo otherwise. Returns True when this
    call initialised it (the caller then destroys the group at the end)."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return True


def any_rank(flag: bool, device=None) -> bool:
    """True on every rank when ``flag`` is true on any rank (``flag`` itself in one process)."""
    import torch
    import torch.distributed as dist

    if rank_world()[1] == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
