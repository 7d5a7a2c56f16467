"""The training loop: ``train(cfg) -> final model folder``, on accelerate (one CPU process by default,
DDP under ``accelerate launch``; DeepSpeed / FSDP through accelerate configs, untested on CPU).

:func:`start_run` builds everything (accelerator, model, data, optimizer, checkpointer) and restores
a checkpoint when resuming; :func:`train` runs the step loop: set LR, forward, backward, clip, step,
log, evaluate, save, stop. Periodic validation goes through ``self1e.eval``.

A run that diverges stops with a ValueError naming the step, never writing NaN weights: a non-finite
loss is caught before its backward pass, a non-finite gradient norm before the optimizer step, and
the trained weights are checked before every checkpoint and before the final export.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from tqdm import tqdm

from self1e.common.distributed import any_rank
from self1e.common.files import write_text_atomic
from self1e.data.datasets import load_dataset
from self1e.eval.evaluate import PredictorSource, evaluate
from self1e.inference import Self1ePredictor
from self1e.train import checkpoint as ckpt
from self1e.train.batching import TrainBatches
from self1e.train.config import TrainConfig
from self1e.train.setup import build_batches, build_model, build_optimizer, configure_trainable, subset_record
from self1e.train.sharding import Sharding

log = logging.getLogger(__name__)
LOSSES = ("loss", "lm_loss", "mask_loss")


class MetricsLog:
    """``metrics.jsonl`` (one JSON object per line) and, when installed, TensorBoard; rank 0 only."""

    def __init__(self, out: Path, enabled: bool, resume_step: int) -> None:
        self.path, self.enabled, self.tb = out / "metrics.jsonl", enabled, None
        if not enabled:
            return
        if self.path.is_file():  # drop lines past the checkpoint we resume from (or all, on a fresh run)
            lines = [ln for ln in self.path.read_text().splitlines() if ln.strip()]
            keep = [ln for ln in lines if json.loads(ln)["step"] <= resume_step]
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
    with acc.autocast():
        result = evaluate(PredictorSource(Self1ePredictor(acc.unwrap_model(model))), samples,
                          batch_size=cfg.eval_batch_size, limit=cfg.val_limit, progress=False, desc="val")
    model.train()
    m = result.metrics
    return {"val/cIoU": m["cIoU"], "val/gIoU": m["gIoU"], "val/n": m["n"]}


@dataclass
class Run:
    """Everything a training run holds between steps."""

    cfg: TrainConfig
    acc: Accelerator
    model: nn.Module  # prepared (DDP / DeepSpeed / FSDP wrapped)
    trainable: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: TrainBatches
    sharding: Sharding
    checkpointer: ckpt.Checkpointer
    total: int  # optimizer steps of the schedule
    step: int  # completed optimizer steps
    val_samples: list | None

    def save(self) -> Path:
        check_finite_weights(self, "checkpoint")
        state = {"step": self.step, "data": self.batches.state_dict(), "world_size": self.acc.num_processes,
                 "total_steps": self.total}
        return self.checkpointer.save(self.step, self.model, self.optimizer, self.scheduler, state)


def start_run(cfg: TrainConfig, resume: bool) -> Run:
    """Accelerator, model, data, optimizer and checkpointer for ``cfg``; restored from the latest
    checkpoint with ``resume``. Writes the resolved config to ``OUT/config.yaml``."""
    if not cfg.data:
        raise ValueError("config key 'data': no training dataset given")
    cuda = torch.cuda.is_available()
    # cpu=True without CUDA also makes a torchrun / `accelerate launch --multi_gpu` start use gloo DDP
    acc = Accelerator(cpu=not cuda, mixed_precision="bf16" if cuda and cfg.bf16 else "no",
                      gradient_accumulation_steps=cfg.grad_accum, step_scheduler_with_optimizer=False)
    if not cuda and cfg.cpu_threads is not None:
        torch.set_num_threads(cfg.cpu_threads)
    out = Path(cfg.out)
    sharding = Sharding(acc, cfg)
    checkpointer = ckpt.Checkpointer(out, acc, sharding, cfg, cfg.keep_checkpoints)
    latest = checkpointer.find_latest(resume)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.yaml")
    set_seed(cfg.seed)
    model = build_model(cfg)
    if cfg.gradient_checkpointing:
        model.base.activation_checkpointing_enable({"use_reentrant": False})  # non-reentrant: frozen inputs are fine
    trainable = configure_trainable(model, cfg.lora)
    batches = build_batches(cfg, model, acc.process_index, acc.num_processes)
    if acc.is_main_process and any(d.max_images is not None for d in cfg.data):
        write_text_atomic(out / "data_subsets.json", json.dumps(subset_record(cfg, batches.sources)) + "\n")
    val_samples = load_dataset(cfg.val) if cfg.val else None
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(batches) / cfg.grad_accum))
    optimizer, scheduler = build_optimizer(model, cfg, total)
    set_seed(cfg.seed, device_specific=True)  # per-rank dropout streams, after the identical init
    if latest is not None:  # before prepare: ZeRO-3 / FSDP shard the parameters
        ckpt.load_trainable(model, latest / ckpt.TRAINABLE)
    if acc.is_main_process:
        log.info("training %.2f M of %.2f M parameters for %d steps (%d micro-batches per epoch per process, "
                 "%d processes)", sum(p.numel() for p in trainable) / 1e6,
                 sum(p.numel() for p in model.parameters()) / 1e6, total, len(batches), acc.num_processes)
    model, optimizer = acc.prepare(model, optimizer)
    step = checkpointer.restore(latest, optimizer, scheduler, batches) if latest is not None else 0
    return Run(cfg, acc, model, trainable, optimizer, scheduler, batches, sharding, checkpointer, total, step,
               val_samples)


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Train as ``cfg`` says; returns the final model folder ``OUT/final`` (a plain self1e
    checkpoint). With ``resume``, continue exactly from ``OUT/checkpoints/latest`` if it exists."""
    run = start_run(cfg, resume)
    acc, model = run.acc, run.model
    metrics = MetricsLog(Path(cfg.out), acc.is_main_process, run.step)
    model.train()
    data = iter(run.batches)
    bar = tqdm(total=run.total, initial=run.step, desc="train", unit="step", disable=not acc.is_local_main_process)
    start, sums, n_sum, ema, evaluated_at = time.time(), dict.fromkeys(LOSSES, 0.0), 0, None, -1
    try:  # the bar ends its line on an error too, so the message starts on its own
        while run.step < run.total:
            lr = run.scheduler.get_last_lr()[0]
            for _ in range(cfg.grad_accum):
                batch = next(data).to(acc.device)
                with acc.accumulate(model):
                    result = model(batch)
                    if result.loss is not None:
                        stop_if_not_finite(run, result.loss.detach(), "loss", lr)
                    acc.backward(result.loss)
                    if acc.sync_gradients and cfg.grad_clip > 0:
                        norm = acc.clip_grad_norm_(run.trainable, cfg.grad_clip)
                        if norm is not None:
                            stop_if_not_finite(run, torch.as_tensor(norm).detach(), "gradient norm", lr)
                    run.optimizer.step()
                    run.optimizer.zero_grad(set_to_none=True)
                for k in LOSSES:
                    v = getattr(result, k)
                    sums[k] += 0.0 if v is None else float(v.detach()) / cfg.grad_accum
            run.scheduler.step()
            run.step += 1
            n_sum += 1
            ema = sums["loss"] / n_sum if ema is None else 0.9 * ema + 0.1 * float(result.loss.detach())
            bar.update(1)
            if run.step % cfg.log_every == 0 or run.step == run.total:
                metrics.write({"step": run.step, **mean_losses(acc, sums, n_sum), "lr": lr,
                               "time": round(time.time() - start, 3)})
                bar.set_postfix(loss=f"{ema:.4f}", lr=f"{lr:.2e}")
                sums, n_sum = dict.fromkeys(LOSSES, 0.0), 0
            if run.val_samples is not None and cfg.eval_every and run.step % cfg.eval_every == 0:
                metrics.write({"step": run.step, **validate(acc, model, run.val_samples, cfg)})
                evaluated_at = run.step
            stop = (cfg.stop_at is not None and run.step >= cfg.stop_at) or (
                cfg.max_minutes is not None and any_rank(time.time() - start >= 60 * cfg.max_minutes, acc.device))
            if (cfg.save_every and run.step % cfg.save_every == 0) or stop or run.step == run.total:
                run.save()
            if stop:
                if acc.is_main_process:
                    log.info("stopping cleanly at step %d of %d (stop_at / max_minutes)", run.step, run.total)
                break
    finally:
        bar.close()
    if run.val_samples is not None and evaluated_at != run.step:
        metrics.write({"step": run.step, **validate(acc, model, run.val_samples, cfg)})
    metrics.close()
    if acc.device.type == "cuda" and acc.is_local_main_process:
        log.info("peak GPU memory %.2f GiB (process %d)", torch.cuda.max_memory_allocated(acc.device) / 2**30,
                 acc.process_index)
    check_finite_weights(run, "final model")
    final = export_final(acc, run.sharding, model, cfg, Path(cfg.out))
    # Release the DDP wrapper (its reducer holds the process group) while every rank is still alive:
    # freed after destroy_process_group, gloo's teardown can hang waiting for a peer that has exited.
    del model, run
    acc.free_memory()
    acc.wait_for_everyone()
    acc.end_training()
    return final


def stop_if_not_finite(run: Run, value: torch.Tensor, what: str, lr: float) -> None:
    """Raise ValueError on every rank when ``value`` (a loss or a gradient norm of step
    ``run.step + 1``) is NaN or inf on any rank; nothing of that step reaches the weights."""
    if not any_rank(not bool(torch.isfinite(value).all()), run.acc.device):
        return
    shown = float(value) if value.numel() == 1 else "not finite"
    try:
        last = ckpt.latest_checkpoint(run.cfg.out)
    except ValueError:  # no usable checkpoint: say so, the divergence is the error to report
        last = None
    kept = f"last checkpoint: {last}" if last is not None else "no checkpoint yet"
    raise ValueError(f"step {run.step + 1} of {run.total}: the {what} is {shown} (not finite): the run diverged, or "
                     "the data or the model is broken. Stopped before it reached the weights, without writing a "
                     f"final model ({kept}). Lower lr (now {lr:g}) or check the data and the model's weights")


def check_finite_weights(run: Run, what: str) -> None:
    """Raise ValueError (on every rank) instead of writing ``what`` when a trained weight is NaN or inf."""
    bad = any(not bool(torch.isfinite(p.detach()).all()) for p in run.trainable)
    if any_rank(bad, run.acc.device):
        raise ValueError(f"step {run.step}: the trained weights hold NaN or inf values (the run diverged); not "
                         f"writing the {what}. Lower lr (now {run.cfg.lr:g}) or resume from an earlier checkpoint")


def mean_losses(acc: Accelerator, sums: dict[str, float], n: int) -> dict[str, float]:
    """The losses averaged over the last ``n`` steps and over all ranks."""
    mean = {k: v / n for k, v in sums.items()}
    if acc.num_processes > 1:
        mean = {k: acc.reduce(torch.tensor(v, device=acc.device), "mean").item() for k, v in mean.items()}
    return mean


def export_final(acc: Accelerator, sharding: Sharding, model: nn.Module, cfg: TrainConfig, out: Path) -> Path:
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


