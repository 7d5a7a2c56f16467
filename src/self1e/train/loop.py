"""The training loop: ``train(cfg) -> final model folder``, on accelerate (one CPU process by default,
DDP under ``accelerate launch``; DeepSpeed / FSDP through accelerate configs, untested on CPU).

AdamW with warm-up then linear decay, gradient clipping and accumulation; LoRA through peft when
enabled; periodic validation through ``self1e.eval``; atomic checkpoints that resume exactly.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from torch import nn
from tqdm import tqdm

from ..data.batching import Source, TrainBatches, load_samples
from ..model import Self1eModel
from . import checkpoint as ckpt
from .config import DataSpec, LoraSettings, TrainConfig

log = logging.getLogger(__name__)
LOSSES = ("loss", "lm_loss", "mask_loss")
SHARDED_STATE = "sharded_state"  # accelerate.save_state folder under DeepSpeed / FSDP


# ---- setup ---------------------------------------------------------------------------------------
def build_model(cfg: TrainConfig) -> Self1eModel:
    """``tiny:<name>`` -> a random-init tiny model (seeded); anything else -> a model folder. With
    ``cfg.image_size`` the ViT is moved to that tile size."""
    if cfg.model.startswith("tiny:"):
        from ..model.tiny import build_tiny_base

        base, tokenizer = build_tiny_base(cfg.model.split(":", 1)[1], seed=cfg.seed)
        base.set_attn_implementation(cfg.attn_implementation)
        model = Self1eModel.from_base(base, tokenizer, cfg.self1e)
    else:
        model = Self1eModel.from_pretrained(cfg.model, config=cfg.self1e, dtype=torch.float32,
                                            attn_implementation=cfg.attn_implementation)
    if cfg.image_size is not None and cfg.image_size != model.processor.image_size:
        model.set_image_size(cfg.image_size)
    return model


def lora_target_regex(lora: LoraSettings) -> str:
    """A full-match regex over module names of InternVLForConditionalGeneration."""
    parts = []
    if lora.llm_targets:
        parts.append(r"model\.language_model\.layers\.\d+\..*\b(" + "|".join(lora.llm_targets) + ")")
    if lora.vit_targets:
        parts.append(r"model\.vision_tower\.encoder\.layer\.\d+\..*\b(" + "|".join(lora.vit_targets) + ")")
    return "|".join(f"(?:{p})" for p in parts)


def configure_trainable(model: Self1eModel, lora: LoraSettings) -> list[nn.Parameter]:
    """LoRA off: everything trains. LoRA on: adapters + ``train_full`` modules + the mask head."""
    if not lora.enabled:
        for p in model.parameters():
            p.requires_grad_(True)
        return list(model.parameters())
    from peft import LoraConfig, inject_adapter_in_model

    regex = lora_target_regex(lora)
    if regex:
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=regex)
        inject_adapter_in_model(config, model.base)
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name or name.startswith("head."))
    for name in lora.train_full:
        try:
            module = model.base.get_submodule(name)
        except AttributeError:
            raise ValueError(f"config key 'lora.train_full': the base model has no module {name!r}") from None
        for p in module.parameters():
            p.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: not on biases, norms or embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(warmup: int, total: int):
    """Factor of the peak LR after ``s`` completed steps: linear warm-up, then linear decay to 0."""
    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        return max(0.0, (total - s) / max(1, total - warmup))
    return factor


class MetricsLog:
    """``metrics.jsonl`` (one JSON object per line) and, when installed, TensorBoard; rank 0 only."""

    def __init__(self, out: Path, enabled: bool, resume_step: int) -> None:
        self.path, self.enabled, self.tb = out / "metrics.jsonl", enabled, None
        if not enabled:
            return
        if self.path.is_file():  # drop lines past the checkpoint we resume from (or all, on a fresh run)
            keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= resume_step]
            self.path.write_text("".join(k + "\n" for k in keep))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        except ImportError:  # tensorboard is optional
            log.debug("tensorboard not installed; metrics go to %s only", self.path)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def validate(acc: Accelerator, model: nn.Module, samples: list, cfg: TrainConfig) -> dict[str, float]:
    """cIoU / gIoU on the validation samples, through the evaluation code (sharded over ranks)."""
    from ..eval.evaluate import PredictorSource, evaluate
    from ..predictor import Self1ePredictor

    with acc.autocast():
        result = evaluate(PredictorSource(Self1ePredictor(acc.unwrap_model(model))), samples,
                          batch_size=cfg.eval_batch_size, limit=cfg.val_limit, progress=False, desc="val")
    model.train()
    m = result.metrics
    return {"val/cIoU": m["cIoU"], "val/gIoU": m["gIoU"], "val/n": m["n"]}


def build_all(cfg: TrainConfig, rank: int, world: int) -> tuple[Self1eModel, list[nn.Parameter], TrainBatches]:
    """The model with its trainable parameters marked, and this rank's batch stream."""
    model = build_model(cfg)
    if cfg.gradient_checkpointing:
        model.base.activation_checkpointing_enable({"use_reentrant": False})  # non-reentrant: frozen inputs are fine
    trainable = configure_trainable(model, cfg.lora)
    sources = [Source(d.spec, select_kinds(load_samples(d.spec), d), d.ratio) for d in cfg.data]
    batches = TrainBatches(sources, model.processor, cfg.batch_size, cfg.expressions_per_image, cfg.seed,
                           rank, world, cfg.num_workers)
    return model, trainable, batches


def select_kinds(samples: list, d: DataSpec) -> list:
    """The samples of ``d`` whose ``kind`` is one of ``d.kinds`` (all of them when kinds is unset)."""
    if d.kinds is None:
        return samples
    kept = [s for s in samples if s.kind in d.kinds]
    if not kept:
        found = sorted({str(s.kind) for s in samples})
        raise ValueError(f"dataset {d.spec!r}: no sample of kinds {list(d.kinds)} (its kinds: {found})")
    return kept


def restore(path: Path, acc: Accelerator, sharding: "Sharding", optimizer, scheduler, batches: TrainBatches) -> int:
    """Optimizer, scheduler, data position and RNG streams from a checkpoint; returns its step."""
    sharding.load(path, optimizer, scheduler)
    state = ckpt.read_state(path, acc.process_index)
    batches.load_state_dict(state["data"])
    ckpt.set_rng_state(state["rng"])
    if acc.is_main_process:
        log.info("resumed from %s at step %d", path, state["step"])
    return int(state["step"])


# ---- the loop ------------------------------------------------------------------------------------
def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Train as ``cfg`` says; returns the final model folder ``OUT/final`` (a plain self1e
    checkpoint). With ``resume``, continue exactly from ``OUT/checkpoints/latest`` if it exists."""
    if not cfg.data:
        raise ValueError("config key 'data': no training dataset given")
    cuda = torch.cuda.is_available()
    # cpu=True without CUDA also makes a torchrun / `accelerate launch --multi_gpu` start use gloo DDP
    acc = Accelerator(cpu=not cuda, mixed_precision="bf16" if cuda and cfg.bf16 else "no",
                      gradient_accumulation_steps=cfg.grad_accum, step_scheduler_with_optimizer=False)
    main, rank, world = acc.is_main_process, acc.process_index, acc.num_processes
    if not cuda and cfg.cpu_threads is not None:
        torch.set_num_threads(cfg.cpu_threads)
    sharding = Sharding(acc, cfg)
    out = Path(cfg.out)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.yaml")
    set_seed(cfg.seed)
    model, trainable, batches = build_all(cfg, rank, world)
    val_samples = load_samples(cfg.val) if cfg.val else None
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(batches) / cfg.grad_accum))
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup_steps, total))
    set_seed(cfg.seed, device_specific=True)  # per-rank dropout streams, after the identical init
    latest = ckpt.latest_checkpoint(out) if resume else None
    if not resume and (out / ckpt.CHECKPOINTS).is_dir():
        raise ValueError(f"{out / ckpt.CHECKPOINTS} holds an earlier run: pass --resume (resume=True) to continue "
                         "it, or use another output folder")
    if latest is not None:  # before prepare: ZeRO-3 / FSDP shard the parameters
        ckpt.load_trainable(model, latest / ckpt.TRAINABLE)
    if main:
        log.info("training %.2f M of %.2f M parameters for %d steps (%d micro-batches per epoch per process, "
                 "%d processes)", sum(p.numel() for p in trainable) / 1e6,
                 sum(p.numel() for p in model.parameters()) / 1e6, total, len(batches), world)
    model, optimizer = acc.prepare(model, optimizer)
    step = 0
    if latest is not None:
        step = restore(latest, acc, sharding, optimizer, scheduler, batches)
    elif resume and main:
        log.info("no checkpoint in %s: starting from scratch", out / ckpt.CHECKPOINTS)
    metrics = MetricsLog(out, main, step)

    def save(step: int) -> None:
        state = {"step": step, "data": batches.state_dict(), "world_size": world, "total_steps": total}
        ckpt.save_checkpoint(out, step, rank, lambda tmp: sharding.write_all(tmp, model),
                             lambda tmp: ckpt.write_training_files(tmp, sharding.full_model(model),
                                                                   sharding.optimizer_to_save(optimizer),
                                                                   scheduler, state, cfg),
                             lambda ok: not _any(acc, not ok), acc.wait_for_everyone)
        if main:
            ckpt.prune_checkpoints(out, cfg.keep_checkpoints)

    model.train()
    data = iter(batches)
    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=not acc.is_local_main_process)
    start, sums, n_sum, ema, evaluated_at = time.time(), dict.fromkeys(LOSSES, 0.0), 0, None, -1
    while step < total:
        # ---- one optimizer step: LR from the schedule; grad_accum micro-batches; clip; step
        lr = scheduler.get_last_lr()[0]
        for _ in range(cfg.grad_accum):
            batch = next(data).to(acc.device)
            with acc.accumulate(model):
                result = model(batch)
                acc.backward(result.loss)
                if acc.sync_gradients and cfg.grad_clip > 0:
                    acc.clip_grad_norm_(trainable, cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            for k in LOSSES:
                v = getattr(result, k)
                sums[k] += 0.0 if v is None else float(v.detach()) / cfg.grad_accum
        scheduler.step()
        step += 1
        # ---- log, evaluate, save, stop
        n_sum += 1
        ema = sums["loss"] / n_sum if ema is None else 0.9 * ema + 0.1 * float(result.loss.detach())
        bar.update(1)
        if step % cfg.log_every == 0 or step == total:
            mean = {k: v / n_sum for k, v in sums.items()}
            if world > 1:
                mean = {k: acc.reduce(torch.tensor(v, device=acc.device), "mean").item() for k, v in mean.items()}
            metrics.write({"step": step, **mean, "lr": lr, "time": round(time.time() - start, 3)})
            bar.set_postfix(loss=f"{ema:.4f}", lr=f"{lr:.2e}")
            sums, n_sum = dict.fromkeys(LOSSES, 0.0), 0
        if val_samples is not None and cfg.eval_every and step % cfg.eval_every == 0:
            metrics.write({"step": step, **validate(acc, model, val_samples, cfg)})
            evaluated_at = step
        stop = (cfg.stop_at is not None and step >= cfg.stop_at) or (
            cfg.max_minutes is not None and _any(acc, time.time() - start >= 60 * cfg.max_minutes))
        if (cfg.save_every and step % cfg.save_every == 0) or stop or step == total:
            save(step)
        if stop:
            if main:
                log.info("stopping cleanly at step %d of %d (stop_at / max_minutes)", step, total)
            break
    bar.close()
    if val_samples is not None and evaluated_at != step:
        metrics.write({"step": step, **validate(acc, model, val_samples, cfg)})
    metrics.close()
    final = export_final(acc, sharding, model, cfg, out)
    # Release the DDP wrapper (its reducer holds the process group) while every rank is still alive:
    # freed after destroy_process_group, gloo's teardown can hang waiting for a peer that has exited.
    del model
    acc.free_memory()
    acc.wait_for_everyone()
    acc.end_training()
    return final


def export_final(acc: Accelerator, sharding: "Sharding", model: nn.Module, cfg: TrainConfig, out: Path) -> Path:
    """``OUT/final``: the plain self1e checkpoint (LoRA merged) plus the resolved config, atomically."""
    final, tmp = out / "final", out / ".tmp_final"
    sharding.write_all(None, model)  # under ZeRO-3 / FSDP: gathers the weights (a collective)
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        ckpt.export_model(sharding.full_model(model), tmp)
        cfg.save(tmp / "train_config.yaml")
        ckpt.publish_dir(tmp, final)
        log.info("final model: %s", final)
    return final


class Sharding:
    """What differs under DeepSpeed / FSDP (untested here: no GPU). DDP and one process keep full
    parameters and optimizer state on rank 0; ZeRO-2 shards the optimizer state (saved through
    ``accelerate.save_state``); ZeRO-3 and FSDP also shard the parameters, which are gathered for
    the export and loaded into a full copy of the model on rank 0."""

    def __init__(self, acc: Accelerator, cfg: TrainConfig) -> None:
        kind = acc.distributed_type
        self.acc, self.cfg = acc, cfg
        self.state_sharded = kind in (DistributedType.DEEPSPEED, DistributedType.FSDP)
        zero3 = kind == DistributedType.DEEPSPEED and acc.state.deepspeed_plugin.zero_stage == 3
        self.params_sharded = kind == DistributedType.FSDP or zero3
        self._full: dict[str, torch.Tensor] | None = None
        if kind == DistributedType.DEEPSPEED:  # batches are not a prepared DataLoader: tell DeepSpeed
            acc.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.batch_size
        if self.params_sharded and cfg.val:
            raise ValueError("periodic validation needs full parameters on every process; under ZeRO-3 / FSDP set "
                             "val: null and evaluate OUT/final with `self1e eval`")

    def write_all(self, tmp: Path | None, model: nn.Module) -> None:
        """Every rank's part of a save: sharded training state, and the gathered weights."""
        if tmp is not None and self.state_sharded:
            self.acc.save_state(str(tmp / SHARDED_STATE))
        if self.params_sharded:
            self._full = self.acc.get_state_dict(model)  # full tensors on rank 0

    def full_model(self, model: nn.Module) -> nn.Module:
        """The model with full parameters, on rank 0."""
        if not self.params_sharded:
            return self.acc.unwrap_model(model)
        saved = ckpt.rng_state()  # building a copy must not move the training RNG streams
        copy = build_model(self.cfg)
        configure_trainable(copy, self.cfg.lora)
        copy.load_state_dict(self._full)
        ckpt.set_rng_state(saved)
        self._full = None
        return copy

    def optimizer_to_save(self, optimizer):
        return None if self.state_sharded else optimizer

    def load(self, path: Path, optimizer, scheduler) -> None:
        if self.state_sharded:
            self.acc.load_state(str(path / SHARDED_STATE))
            scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        else:
            ckpt.load_optimizer_and_scheduler(path, optimizer, scheduler)


def _any(acc: Accelerator, flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank."""
    if acc.num_processes == 1:
        return flag
    t = torch.tensor([int(flag)], device=acc.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())
