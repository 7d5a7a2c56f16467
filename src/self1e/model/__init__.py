"""The SELF1E model: config, pixel (un)shuffle, attention mask, mask head, losses, processing, the
wrapper, checkpoint folders, the model registry and the importer of the authors' release."""
from self1e.model.config import Self1eConfig
from self1e.model.processing import Self1eProcessor
from self1e.model.registry import load_model
from self1e.model.self1e import ImageFeatures, Self1eModel, Self1eOutput

__all__ = ["ImageFeatures", "Self1eConfig", "Self1eModel", "Self1eOutput", "Self1eProcessor", "load_model"]
