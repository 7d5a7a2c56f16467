"""SELF1E: an InternVL MLLM as an image segmenter with one [SEG] token and no mask decoder."""
from .model import Self1eConfig, Self1eModel, Self1eOutput
from .predictor import SegmentationResult, Self1ePredictor
from .processing import Self1eProcessor

__version__ = "0.1.0"
__all__ = ["Self1eConfig", "Self1eModel", "Self1eOutput", "Self1ePredictor", "Self1eProcessor",
           "SegmentationResult", "__version__"]
