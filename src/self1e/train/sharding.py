"""What differs between one process / DDP and DeepSpeed / FSDP when saving, exporting and restoring."""
from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn

from self1e.train import checkpoint as ckpt
from self1e.train.config import TrainConfig
from self1e.train.setup import build_model, configure_trainable

SHARDED_STATE = ckpt.SHARDED_STATE


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
            ckpt.load_scheduler(path, scheduler)
        else:
            ckpt.load_optimizer_and_scheduler(path, optimizer, scheduler)


