"""Training: the config (defaults <- YAML <- --set), the accelerate loop and atomic checkpoints."""
from .config import DataSpec, LoraSettings, TrainConfig, load_config
from .loop import train

__all__ = ["DataSpec", "LoraSettings", "TrainConfig", "load_config", "train"]
