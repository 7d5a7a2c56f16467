"""Training checkpoints, written atomically, and the merged model export.

``OUT/checkpoints/step_XXXXXX/`` holds ``model/`` (a plain self1e checkpoint, LoRA merged),
``trainable.safetensors`` (the exact trained tensors, LoRA adapters included, for resuming),
``optimizer.pt``, ``scheduler.pt``, ``rng_rank<R>.pt`` (python, numpy and torch generators),
``trainer_state.json`` (step, data position, ...) and ``train_config.yaml``. Everything is written
into a temporary folder that is fsynced and renamed into place; then ``OUT/checkpoints/latest`` is
replaced atomically. A crash mid-save therefore never leaves a broken ``latest``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
TRAINABLE = "trainable.safetensors"
STATE = "trainer_state.json"


# ---- atomic file-system helpers ------------------------------------------------------------------
def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (then ``root`` itself)."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            _fsync_path(Path(folder, name))
        _fsync_path(Path(folder))


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small file so that readers see the old or the new content, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_path(path.parent)


def publish_dir(tmp: Path, final: Path) -> None:
    """Move a finished, fsynced folder into place (replacing an older one of the same name)."""
    fsync_tree(tmp)
    if final.exists():  # a re-save of the same step: move the old one aside first, then drop it
        old = final.with_name(f".old_{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_path(final.parent)


def checkpoint_dir(out: Path, step: int) -> Path:
    return Path(out) / CHECKPOINTS / f"step_{step:06d}"


def latest_checkpoint(out: str | Path) -> Path | None:
    """The folder named by ``OUT/checkpoints/latest``, or None when there is none yet."""
    pointer = Path(out) / CHECKPOINTS / LATEST
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / STATE).is_file():
        raise ValueError(f"{pointer} names {path.name}, which is missing or incomplete")
    return path


def prune_checkpoints(out: Path, keep: int) -> None:
    """Delete all but the ``keep`` most recent checkpoints (never the one ``latest`` names) and
    leftovers of interrupted saves."""
    root = Path(out) / CHECKPOINTS
    latest = latest_checkpoint(out)
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for p in steps[: max(0, len(steps) - keep)]:
        if p != latest:
            shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(".tmp_*"):
        shutil.rmtree(p, ignore_errors=True)


# ---- model export (LoRA merged) ------------------------------------------------------------------
@contextlib.contextmanager
def lora_merged(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily replace every LoRA-wrapped Linear by a plain Linear holding W + delta, so that
    the usual ``save_pretrained`` writes a plain checkpoint. The trained tensors are untouched
    (no in-place merge / unmerge round trip that would perturb the weights)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # peft not installed: nothing can be wrapped
        yield model
        return
    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for name, module in list(model.named_modules()):
            if not isinstance(module, LoraLayer):
                continue
            base = module.get_base_layer()
            if not isinstance(base, nn.Linear):
                raise TypeError(f"cannot merge LoRA into {name} ({type(base).__name__}); only Linear is supported")
            with torch.no_grad():
                weight = base.weight.detach().float().cpu().clone()
                for adapter in module.active_adapters:
                    weight += module.get_delta_weight(adapter).detach().float().cpu()
            merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
            merged.weight = nn.Parameter(weight.to(base.weight.dtype), requires_grad=False)
            merged.bias = base.bias
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            swaps.append((parent, attr, module))
            setattr(parent, attr, merged)
        yield model
    finally:
        for parent, attr, module in reversed(swaps):
            setattr(parent, attr, module)


def export_model(model: nn.Module, directory: Path) -> None:
    """Write ``model`` (a Self1eModel, LoRA merged) as a plain self1e checkpoint folder."""
    with lora_merged(model):
        model.save_pretrained(directory)


# ---- training state ------------------------------------------------------------------------------
def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: nn.Module, path: Path) -> None:
    """Copy the saved trainable tensors back; the set of names must match exactly."""
    state = load_file(path)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(state) != set(params):
        missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        raise ValueError(f"{path} does not fit this model's trainable parameters (same config? same LoRA "
                         f"settings?): missing {missing[:5]}, unexpected {extra[:5]}")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(state[n])


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch generator states, as plain data (loadable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss_np = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss_np))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_training_files(tmp: Path, model: nn.Module, optimizer, scheduler, state: dict[str, Any], config) -> None:
    """Rank 0's part of a checkpoint: merged model, trainable tensors, optimizer (None when a
    sharded backend saved it), scheduler, state and config."""
    export_model(model, tmp / "model")
    save_file(trainable_state(model), tmp / TRAINABLE)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    config.save(tmp / "train_config.yaml")
    (tmp / STATE).write_text(json.dumps(state, indent=2) + "\n")


def read_state(path: Path, rank: int) -> dict[str, Any]:
    """``trainer_state.json`` plus this rank's RNG state (rank 0's if the run had fewer ranks)."""
    rng_file = path / f"rng_rank{rank}.pt"
    if not rng_file.is_file():
        log.warning("%s has no RNG state for rank %d (saved with fewer processes); using rank 0's", path, rank)
        rng_file = path / "rng_rank0.pt"
    state = json.loads((path / STATE).read_text())
    state["rng"] = torch.load(rng_file, weights_only=True)
    return state


def load_optimizer_and_scheduler(path: Path, optimizer, scheduler) -> None:
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))


class Checkpointer:
    """A run's checkpoints under ``OUT/checkpoints``: find the latest, save one atomically on every
    rank, restore one exactly. ``sharding`` (a :class:`self1e.train.sharding.Sharding`) says what
    each rank writes and how full weights are gathered."""

    def __init__(self, out: Path, acc, sharding, cfg, keep: int) -> None:
        self.out, self.acc, self.sharding, self.cfg, self.keep = Path(out), acc, sharding, cfg, keep

    def find_latest(self, resume: bool) -> Path | None:
        """The checkpoint to resume from (None to start fresh); a fresh run over an old one is an error."""
        if not resume:
            if (self.out / CHECKPOINTS).is_dir():
                raise ValueError(f"{self.out / CHECKPOINTS} holds an earlier run: pass --resume (resume=True) to "
                                 "continue it, or use another output folder")
            return None
        latest = latest_checkpoint(self.out)
        if latest is None and self.acc.is_main_process:
            log.info("no checkpoint in %s: starting from scratch", self.out / CHECKPOINTS)
        return latest

    def save(self, step: int, model: nn.Module, optimizer, scheduler, state: dict[str, Any]) -> Path:
        """Write checkpoint ``step``. Every rank saves its RNG state and its share; rank 0 the rest. A
        failure on any rank leaves the previous checkpoint and ``latest`` as they were, everywhere,
        and the error is raised on every rank."""
        from self1e.common.distributed import any_rank

        acc, rank = self.acc, self.acc.process_index
        final = checkpoint_dir(self.out, step)
        tmp = final.with_name(f".tmp_{final.name}")
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        error: BaseException | None = None
        try:
            torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
            self.sharding.write_all(tmp, model)
            if rank == 0:
                write_training_files(tmp, self.sharding.full_model(model), self.sharding.optimizer_to_save(optimizer),
                                     scheduler, state, self.cfg)
        except Exception as e:  # noqa: BLE001 -- re-raised below, after the other ranks know
            error = e
        ok = not any_rank(error is not None, acc.device)
        if rank == 0:
            if ok:
                publish_dir(tmp, final)
                write_text_atomic(final.parent / LATEST, final.name + "\n")
                prune_checkpoints(self.out, self.keep)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        if error is not None:
            raise error
        if not ok:
            raise RuntimeError(f"saving checkpoint {final} failed on another process")
        return final

    def restore(self, path: Path, optimizer, scheduler, batches) -> int:
        """Optimizer, scheduler, data position and RNG streams from checkpoint ``path``; returns its step.
        (The trained tensors are loaded before ``accelerate.prepare``: :func:`load_trainable`.)"""
        self.sharding.load(path, optimizer, scheduler)
        state = read_state(path, self.acc.process_index)
        batches.load_state_dict(state["data"])
        set_rng_state(state["rng"])
        if self.acc.is_main_process:
            log.info("resumed from %s at step %d", path, state["step"])
        return int(state["step"])
