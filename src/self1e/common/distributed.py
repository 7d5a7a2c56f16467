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


def gather_checked(payload: dict, error: Exception | None, what: str) -> list[dict]:
    """Every rank's ``payload`` (a picklable dict), in rank order, on every rank. A rank that failed
    passes its ``error`` and still joins the gather, so no rank waits forever: it re-raises its own
    exception, and the others raise a ValueError naming the failed rank and its error."""
    import torch.distributed as dist

    gathered: list = [None] * dist.get_world_size()
    message = None if error is None else f"{type(error).__name__}: {error}"
    dist.all_gather_object(gathered, {**payload, "error": message})
    if error is not None:
        raise error
    failed = [(r, p["error"]) for r, p in enumerate(gathered) if p["error"] is not None]
    if failed:
        raise ValueError(f"{what} failed on rank {failed[0][0]}: {failed[0][1]}")
    return gathered
