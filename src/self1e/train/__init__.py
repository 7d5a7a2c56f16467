"""Training: the config (defaults <- YAML <- --set), the accelerate loop and atomic checkpoints."""
from self1e.train.config import DataSpec, LoraSettings, TrainConfig, load_config
from self1e.train.loop import train

__all__ = ["DataSpec", "LoraSettings", "TrainConfig", "load_config", "train"]
