"""Training checkpoints, written atomically, and the merged model export.

``OUT/checkpoints/step_XXXXXX/`` holds ``model/`` (a plain self1e checkpoint, LoRA merged),
``trainable.safetensors`` (the exact trained tensors, LoRA adapters included, for resuming),
``optimizer.json`` + ``optimizer.safetensors`` (the param-group structure and the state tensors),
``scheduler.json``, ``rng_rank<R>.json`` + ``rng_rank<R>.safetensors`` (python, numpy and torch
generators), ``trainer_state.json`` (step, data position, ...) and ``train_config.yaml``. No pickle
anywhere (:func:`save_state_tree`); checkpoints of older versions, whose state was in pickle files
(``optimizer.pt``, ...), are refused with a clear message. Everything is written into a temporary
folder that is fsynced and renamed into place; then ``OUT/checkpoints/latest`` is replaced
atomically. A crash mid-save therefore never leaves a broken ``latest``; when ``latest`` itself is
gone, resuming takes the newest complete ``step_*`` folder (:func:`latest_checkpoint`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from self1e.common.files import fsync_path, write_text_atomic

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
TRAINABLE = "trainable.safetensors"
STATE = "trainer_state.json"
OPTIMIZER = "optimizer"  # optimizer.json + optimizer.safetensors
SCHEDULER = "scheduler"  # scheduler.json
SHARDED_STATE = "sharded_state"  # accelerate.save_state folder under DeepSpeed / FSDP (instead of the optimizer)
LEGACY_PICKLES = ("optimizer.pt", "scheduler.pt", "rng_rank0.pt")


def rng_name(rank: int) -> str:
    return f"rng_rank{rank}"


# ---- pickle-free state files ---------------------------------------------------------------------
_TAGS = ("__tensor__", "__tuple__", "__items__")


def save_state_tree(folder: Path, name: str, tree: Any) -> None:
    """Write ``tree`` (dicts, lists, tuples, None, bools, numbers, strings and torch tensors, e.g. an
    optimizer's ``state_dict()``) as ``name.json``, its tensors in ``name.safetensors``; no pickle.
    :func:`load_state_tree` gives back an equal tree: same types (tuples, int keys), bit-exact floats
    and tensors."""
    tensors: dict[str, torch.Tensor] = {}

    def encode(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            key = str(len(tensors))
            tensors[key] = x.detach().cpu().contiguous()
            return {"__tensor__": key}
        if isinstance(x, np.generic):
            return encode(x.item())
        if isinstance(x, tuple):
            return {"__tuple__": [encode(v) for v in x]}
        if isinstance(x, list):
            return [encode(v) for v in x]
        if isinstance(x, dict):
            if all(isinstance(k, str) and k not in _TAGS for k in x):
                return {k: encode(v) for k, v in x.items()}
            return {"__items__": [[encode(k), encode(v)] for k, v in x.items()]}
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"cannot save a {type(x).__name__} in the training state {name} (no pickle)")

    text = json.dumps(encode(tree)) + "\n"  # floats as repr: exact
    if tensors:
        save_file(tensors, folder / f"{name}.safetensors")
    (folder / f"{name}.json").write_text(text)


def load_state_tree(folder: Path, name: str) -> Any:
    """The tree :func:`save_state_tree` wrote; a missing, damaged or inconsistent file raises
    ValueError naming it."""
    path = folder / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); the checkpoint is damaged") from None
    tensor_file = folder / f"{name}.safetensors"
    tensors: dict[str, torch.Tensor] | None = None

    def tensor(key: Any) -> torch.Tensor:
        nonlocal tensors
        if tensors is None:
            tensors = read_safetensors(tensor_file)
        if not isinstance(key, str) or key not in tensors:
            raise ValueError(f"{path} names a tensor {key!r} that {tensor_file} does not hold; the checkpoint "
                             "is damaged")
        return tensors[key]

    def decode(x: Any) -> Any:
        if isinstance(x, list):
            return [decode(v) for v in x]
        if not isinstance(x, dict):
            return x
        if "__tensor__" in x:
            return tensor(x["__tensor__"])
        if "__tuple__" in x:
            return tuple(decode(v) for v in x["__tuple__"])
        if "__items__" in x:
            return {decode(k): decode(v) for k, v in x["__items__"]}
        return {k: decode(v) for k, v in x.items()}

    try:
        return decode(data)
    except (TypeError, ValueError) as e:
        if str(path) in str(e) or str(tensor_file) in str(e):  # already names its file
            raise
        raise ValueError(f"{path}: malformed training state ({e}); the checkpoint is damaged") from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """``load_file`` with errors (missing, truncated, not safetensors) as ValueError naming the file."""
    try:
        return load_file(path)
    except (OSError, SafetensorError) as e:
        detail = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise ValueError(f"cannot read {path}: {detail} (the file is missing, truncated or damaged; resume from "
                         "another checkpoint)") from None


# ---- atomic file-system helpers ------------------------------------------------------------------
def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (then ``root`` itself)."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            fsync_path(Path(folder, name))
        fsync_path(Path(folder))


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
    fsync_path(final.parent)


def checkpoint_dir(out: Path, step: int) -> Path:
    return Path(out) / CHECKPOINTS / f"step_{step:06d}"


def _step_of(path: Path) -> int | None:
    match = re.fullmatch(r"step_(\d+)", path.name)
    return int(match.group(1)) if match and path.is_dir() else None


def is_complete(path: Path) -> bool:
    """Whether checkpoint folder ``path`` holds everything a resume reads."""
    optimizer = (path / f"{OPTIMIZER}.json").is_file() or (path / SHARDED_STATE).is_dir()
    return optimizer and all((path / f).is_file() for f in (STATE, TRAINABLE, f"{SCHEDULER}.json",
                                                             f"{rng_name(0)}.json"))


def latest_checkpoint(out: str | Path) -> Path | None:
    """The folder named by ``OUT/checkpoints/latest``; without that file, the newest complete
    ``step_*`` folder (an error when there are only incomplete ones); None when there is none yet."""
    root = Path(out) / CHECKPOINTS
    pointer = root / LATEST
    if pointer.is_file():
        name = pointer.read_text().strip()
        path = root / name
        if not re.fullmatch(r"step_\d+", name) or not (path / STATE).is_file():
            raise ValueError(f"{pointer} names {name!r}, which is missing or incomplete")
        return path
    steps = sorted((p for p in root.glob("step_*") if _step_of(p) is not None), key=_step_of, reverse=True)
    for path in steps:
        if is_complete(path):
            log.warning("%s is missing: taking the newest complete checkpoint, %s", pointer, path.name)
            return path
    if steps:
        raise ValueError(f"{root} holds checkpoints ({', '.join(p.name for p in steps[:5])}) but none is complete "
                         f"and {pointer} is missing; refusing to start over them (move them away, or use another "
                         "output folder)")
    return None


def prune_checkpoints(out: Path, keep: int) -> None:
    """Delete all but the ``keep`` most recent checkpoints (never the one ``latest`` names) and
    leftovers of interrupted saves."""
    root = Path(out) / CHECKPOINTS
    latest = latest_checkpoint(out)
    steps = sorted((p for p in root.glob("step_*") if _step_of(p) is not None), key=_step_of)
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
    """Copy the saved trainable tensors back; the set of names must match exactly, and every value
    must be finite. A missing or truncated file raises ValueError naming it."""
    state = read_safetensors(path)
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{path} holds NaN or inf values (in {bad[:3]}); refusing to resume from it")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(state) != set(params):
        missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        raise ValueError(f"{path} does not fit this model's trainable parameters (same config? same LoRA "
                         f"settings?): missing {missing[:5]}, unexpected {extra[:5]}")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(state[n])


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch generator states, as plain data and tensors (see :func:`save_state_tree`)."""
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
        save_state_tree(tmp, OPTIMIZER, optimizer.state_dict())
    save_state_tree(tmp, SCHEDULER, scheduler.state_dict())
    config.save(tmp / "train_config.yaml")
    (tmp / STATE).write_text(json.dumps(state, indent=2) + "\n")


def refuse_legacy(path: Path) -> None:
    """A checkpoint of an older version keeps its optimizer / scheduler / RNG state in pickle files,
    which are never loaded (a pickle can run code): ValueError saying so."""
    legacy = [name for name in LEGACY_PICKLES if (path / name).is_file()]
    if legacy and not (path / f"{SCHEDULER}.json").is_file():
        raise ValueError(f"{path} keeps its training state in pickle files ({', '.join(legacy)}), written by an older "
                         "version; pickles are never loaded (they can run code). Start a new run from its model "
                         f"(model={path / 'model'}) or resume from a newer checkpoint")


def read_state(path: Path, rank: int) -> dict[str, Any]:
    """``trainer_state.json`` plus this rank's RNG state (rank 0's if the run had fewer ranks)."""
    refuse_legacy(path)
    rng = rng_name(rank)
    if not (path / f"{rng}.json").is_file():
        log.warning("%s has no RNG state for rank %d (saved with fewer processes); using rank 0's", path, rank)
        rng = rng_name(0)
    try:
        state = json.loads((path / STATE).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {path / STATE}: {e}") from None
    if not isinstance(state, dict) or type(state.get("step")) is not int or state["step"] < 0 or \
            not isinstance(state.get("data"), dict):
        raise ValueError(f"{path / STATE}: expected an object with a whole-number 'step' and a 'data' position")
    state["rng"] = load_state_tree(path, rng)
    return state


def _load_into(target, path: Path, name: str) -> None:
    """``target.load_state_dict`` of the state tree ``name``; a state that does not fit raises
    ValueError naming the file."""
    state = load_state_tree(path, name)
    file = path / f"{name}.json"
    if not isinstance(state, dict):
        raise ValueError(f"{file}: expected an object, got {type(state).__name__}; the checkpoint is damaged")
    try:
        target.load_state_dict(state)
    except (KeyError, TypeError, AttributeError, RuntimeError, ValueError) as e:
        raise ValueError(f"{file} does not fit this run's {name}: {e}") from None


def load_scheduler(path: Path, scheduler) -> None:
    refuse_legacy(path)
    _load_into(scheduler, path, SCHEDULER)


def load_optimizer_and_scheduler(path: Path, optimizer, scheduler) -> None:
    refuse_legacy(path)
    _load_into(optimizer, path, OPTIMIZER)
    load_scheduler(path, scheduler)


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
            save_state_tree(tmp, rng_name(rank), rng_state())
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
                write_text_atomic(final.parent / LATEST, final.name + "\n", durable=True)
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
