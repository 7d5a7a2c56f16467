"""The SELF1E model: config, pixel (un)shuffle, attention mask, mask head, losses, the wrapper."""
from .config import Self1eConfig
from .self1e import Self1eModel, Self1eOutput

__all__ = ["Self1eConfig", "Self1eModel", "Self1eOutput"]
